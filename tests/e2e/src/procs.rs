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

/// A kube-mode sidecar of a pod, started with the flags the injection webhook gives it (kube
/// mode, the pod's identity with ServiceAccount `app`, the keys directory, the budget ledger),
/// its proxy on a free loopback port and its JSON log in `log`.
#[derive(Debug)]
pub struct KubeSidecar<'a> {
    /// The control plane whose API server it watches.
    pub control_plane: &'a ControlPlane,
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The ServiceAccount token it reads the API with.
    pub api_token: &'a Path,
    /// The keys Secret as the kubelet mounts it (`kubelet::mount_secret`).
    pub keys_dir: &'a Path,
    /// The pod's name.
    pub pod: &'a str,
    /// `--workload`, when the test names one.
    pub workload: Option<&'a str>,
    /// `--ledger-url` (a comma-separated list).
    pub ledger_url: &'a str,
    /// The projected token it syncs with the ledger with.
    pub ledger_token: &'a Path,
    /// Where its admin port listens: `127.0.0.1`, or `0.0.0.0` to be reached at a pod IP.
    pub admin_host: &'a str,
}

/// A started [`KubeSidecar`], ready.
#[derive(Debug)]
pub struct StartedSidecar {
    /// The process; killed on drop.
    pub proc: Proc,
    /// `http://127.0.0.1:<proxy port>`.
    pub base: String,
    /// `http://127.0.0.1:<admin port>`.
    pub admin: String,
    /// The admin port.
    pub admin_port: u16,
}

impl KubeSidecar<'_> {
    /// Start it, its log in `log`, and wait until its `/readyz` answers 200 (at most 60 s).
    pub async fn start(&self, http: &reqwest::Client, log: PathBuf) -> Result<StartedSidecar> {
        let (proxy, admin_port) = (free_port()?, free_port()?);
        let mut cmd = Command::new(binary("gatehouse-sidecar"));
        cmd.env("KUBECONFIG", self.control_plane.kubeconfig())
            .args([
                "--kube".to_string(),
                format!("--namespace={}", self.namespace),
                format!("--kube-token-file={}", self.api_token.display()),
                format!("--keys-dir={}", self.keys_dir.display()),
                format!("--listen=127.0.0.1:{proxy}"),
                format!("--admin-listen={}:{admin_port}", self.admin_host),
                format!("--pod-name={}", self.pod),
                "--service-account=app".into(),
                format!("--ledger-url={}", self.ledger_url),
                format!("--ledger-token-file={}", self.ledger_token.display()),
                "--log-format=json".into(),
            ])
            .args(self.workload.map(|w| format!("--workload={w}")));
        let proc = Proc::spawn(cmd, log)?;
        let admin = format!("http://127.0.0.1:{admin_port}");
        crate::wait::answers_ok(
            http,
            &format!("{admin}/readyz"),
            "sidecar ready",
            std::time::Duration::from_secs(60),
        )
        .await?;
        Ok(StartedSidecar {
            proc,
            base: format!("http://127.0.0.1:{proxy}"),
            admin,
            admin_port,
        })
    }
}
