//! Writes the CustomResourceDefinitions into `crds/`, one file per kind.
//!
//! Run from anywhere in the workspace: `cargo run -p gatehouse-crds --bin crdgen`.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, yaml) in gatehouse_crds::crd_files()? {
        let path = dir.join(&file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
