//! The Gatehouse API (`gatehouse.dev/v1alpha1`): custom resource types, the rendered sidecar config
//! and the pure [`render`] function from one to the other; and the rest of the operator↔sidecar
//! contract: the rendered objects' names ([`contract`]), key material ([`keys`]) and how provider
//! usage is counted ([`usage`]).

#![warn(missing_docs)]

pub mod budget;
pub mod cache;
pub mod catalog;
pub mod conditions;
pub mod config;
pub mod contract;
pub mod guardrails;
pub mod keys;
pub mod ledger;
pub mod observed;
pub mod provider;
pub mod render;
pub mod route;
pub mod usage;

pub use budget::{Budget, BudgetSpec, BudgetStatus};
pub use keys::{ProviderKeys, SecretData};
pub use provider::{ModelProvider, ModelProviderSpec, ModelProviderStatus, ProviderType};
pub use render::{DurationError, Inputs, ObjectKind, Problem, Rendered, parse_duration_ms, render};
pub use route::{Route, RouteSpec, RouteStatus};

use kube::CustomResourceExt;

/// The generated CRD manifests: `(file name, YAML)` for each kind, in a stable order.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    let crds = [ModelProvider::crd(), Route::crd(), Budget::crd()];
    crds.iter()
        .map(|crd| {
            let file = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
            Ok((file, serde_yaml::to_string(crd)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// CI guard: the committed CRD YAML must be exactly what the types generate.
    #[test]
    fn committed_crd_yaml_matches_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (file, generated) in super::crd_files().unwrap() {
            let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
            assert!(
                committed == generated,
                "crds/{file} is out of date with the Rust types; regenerate it with \
                 `cargo run -p gatehouse-crds --bin crdgen` and commit the result"
            );
        }
    }
}
