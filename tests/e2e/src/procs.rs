//! Gatehouse's own programs as processes of a test: built once per test binary, started with
//! their stderr copied to a log file, killed when the test lets go of them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};

use crate::ControlPlane;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shared control plane, once the operator and the sidecar are built (debug) and the CRDs
/// installed; both happen once per test binary.
pub fn with_operator_and_sidecar() -> Result<&'static ControlPlane> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let cp = ControlPlane::shared()?;
    DONE.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .current_dir(repo_root())
            .args([
                "build",
                "-p",
                "gatehouse-operator",
                "-p",
                "gatehouse-sidecar",
            ])
            .status()
            .map_err(|e| format!("failed to run cargo build: {e}"))?;
        if !built.success() {
            return Err("cargo build of the operator and sidecar failed".into());
        }
        cp.install_crds(&repo_root().join("crds"))
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    })
    .as_ref()
    .map_err(|e| anyhow!("setup failed: {e}"))?;
    Ok(cp)
}

/// The debug build of Gatehouse program `name`.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join(name)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed on drop, its stderr copied to a log file.
#[derive(Debug)]
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Start `cmd`, its stderr going to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Result<Self> {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to spawn {cmd:?}"))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let file = std::fs::File::create(&log)?;
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = file;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
            }
        });
        Ok(Self { child })
    }

    /// SIGKILL, as a crash or a lost node would.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
