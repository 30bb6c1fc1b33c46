//! The programs the tests run: etcd, kube-apiserver and helm built by `tests/control-plane/ensure`
//! into the shared cache, and a kubectl from the machine within version skew of the apiserver.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};

/// Minor version of the pinned kube-apiserver (`tests/control-plane/versions.env`).
const APISERVER_MINOR: u32 = 34;

/// Where the other kubectl builds live on machines with the Google Cloud SDK Debian package.
const KUBECTL_CANDIDATES: &[&str] = &[
    "/usr/lib/google-cloud-sdk/bin/kubectl.1.34",
    "/usr/lib/google-cloud-sdk/bin/kubectl.1.35",
    "/usr/lib/google-cloud-sdk/bin/kubectl.1.33",
    "/usr/lib/google-cloud-sdk/bin/kubectl",
    "/usr/local/bin/kubectl",
    "/usr/bin/kubectl",
];

/// Absolute paths of the programs the harness runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `etcd`, built from `go.etcd.io/etcd/server/v3`.
    pub etcd: PathBuf,
    /// `kube-apiserver`, built from `k8s.io/kubernetes/cmd/kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `helm`, built from `helm.sh/helm/v4/cmd/helm` (`GATEHOUSE_HELM` overrides).
    pub helm: PathBuf,
    /// A kubectl within one minor version of the apiserver (`GATEHOUSE_KUBECTL` overrides).
    pub kubectl: PathBuf,
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Whether it exited 0.
    pub success: bool,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl CommandOutput {
    /// The stdout of a successful run, or an error carrying the command line and its stderr.
    pub fn ok(self, what: &str) -> Result<String> {
        if self.success {
            Ok(self.stdout)
        } else {
            Err(anyhow!(
                "{what} failed:\nstderr: {}\nstdout: {}",
                self.stderr.trim(),
                self.stdout.trim()
            ))
        }
    }
}

impl Binaries {
    /// The binaries for this process, built on first use by `tests/control-plane/ensure`
    /// (a no-op when the cache already holds them). `GATEHOUSE_CONTROL_PLANE_BIN` points at a
    /// directory that already holds etcd, kube-apiserver and helm and skips the build.
    pub fn get() -> Result<&'static Binaries> {
        static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
        BINARIES
            .get_or_init(|| Self::locate().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    fn locate() -> Result<Self> {
        let bin_dir = match std::env::var_os("GATEHOUSE_CONTROL_PLANE_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => ensure()?,
        };
        let find = |name: &str| -> Result<PathBuf> {
            let path = bin_dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!("{name} is missing from {}", bin_dir.display())
            }
        };
        Ok(Self {
            etcd: find("etcd")?,
            kube_apiserver: find("kube-apiserver")?,
            helm: match std::env::var_os("GATEHOUSE_HELM") {
                Some(path) => PathBuf::from(path),
                None => find("helm")?,
            },
            kubectl: kubectl()?,
        })
    }
}

/// Directory of the control-plane Go module in this repository.
pub(crate) fn control_plane_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../control-plane")
}

/// Runs `tests/control-plane/ensure`, which builds into the cache when needed and prints the
/// bin directory as its last line of stdout. Build logs go to our stderr, so a slow first
/// build shows up in `cargo test -- --nocapture` output.
fn ensure() -> Result<PathBuf> {
    let script = control_plane_dir().join("ensure");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed with {}", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .ok_or_else(|| anyhow!("{} printed no bin directory", script.display()))?;
    Ok(PathBuf::from(dir.trim()))
}

/// Picks a kubectl whose client minor version is within one of the apiserver's (the supported
/// skew); `GATEHOUSE_KUBECTL` wins if set.
fn kubectl() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("GATEHOUSE_KUBECTL") {
        return Ok(PathBuf::from(path));
    }
    let mut seen = Vec::new();
    for candidate in KUBECTL_CANDIDATES.iter().map(PathBuf::from) {
        if !candidate.is_file() {
            continue;
        }
        match kubectl_minor(&candidate) {
            Some(minor) if minor.abs_diff(APISERVER_MINOR) <= 1 => return Ok(candidate),
            Some(minor) => seen.push(format!("{} (1.{minor})", candidate.display())),
            None => seen.push(format!("{} (unknown version)", candidate.display())),
        }
    }
    bail!(
        "no kubectl within one minor version of kube-apiserver 1.{APISERVER_MINOR}; \
         set GATEHOUSE_KUBECTL. Found: [{}]",
        seen.join(", ")
    )
}

fn kubectl_minor(path: &Path) -> Option<u32> {
    let out = Command::new(path)
        .args(["version", "--client", "-o", "json"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let minor = json.pointer("/clientVersion/minor")?.as_str()?;
    // Some builds report e.g. "33+".
    minor.trim_end_matches('+').parse().ok()
}

/// Runs `program args…`, feeding `stdin` if given, and collects its output.
pub(crate) fn run<I, S>(
    program: &Path,
    args: I,
    envs: &[(&str, &OsStr)],
    stdin: Option<&[u8]>,
) -> Result<CommandOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start {}", program.display()))?;
    // Feed stdin from a thread so a child that writes a lot before reading cannot deadlock us.
    let writer = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => {
            let input = input.to_vec();
            Some(std::thread::spawn(move || pipe.write_all(&input)))
        }
        _ => None,
    };
    let out = child
        .wait_with_output()
        .with_context(|| format!("failed to wait for {}", program.display()))?;
    if let Some(writer) = writer {
        writer
            .join()
            .map_err(|_| anyhow!("stdin writer of {} panicked", program.display()))?
            .with_context(|| format!("failed to write stdin of {}", program.display()))?;
    }
    Ok(CommandOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
