//! One etcd + kube-apiserver pair on loopback ports, in its own temp dir.
//!
//! Authentication: a static admin token (user `gatehouse-admin`, group `system:masters`) and
//! ServiceAccount tokens signed with a generated key, so TokenRequest works. Authorization:
//! RBAC only, so a ServiceAccount token can do exactly what its bindings allow.
//!
//! There is no controller-manager and no kubelet: namespaces get no `default` ServiceAccount
//! and nothing reconciles Pods. Create the ServiceAccounts a test needs.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tempfile::TempDir;

use crate::binaries::{Binaries, CommandOutput, run};
use crate::pki::Pki;

/// How long the apiserver may take to report ready. A cold start on a busy 2-core machine
/// takes a few seconds; this is generous so a loaded CI box does not flake.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

const ADMIN_USER: &str = "gatehouse-admin";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A running etcd + kube-apiserver. Dropping it stops both and removes the temp dir; the
/// shared instance (never dropped, it lives in a `static`) is cleaned up by a watchdog
/// process that notices when the test binary exits, however it exits.
pub struct ControlPlane {
    binaries: &'static Binaries,
    server: String,
    ca_pem: String,
    admin_token: String,
    kubeconfig: PathBuf,
    apiserver: Child,
    // Kept to start the same apiserver again (same port, certificates and etcd) after a stop.
    apiserver_args: Vec<String>,
    pgid: i32,
    etcd: Child,
    watchdog: Child,
    // Dropped last (fields drop in order), after the processes writing into it are gone.
    dir: TempDir,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// The CustomResourceDefinitions Gatehouse installs, as kubectl names them.
pub const GATEHOUSE_CRDS: [&str; 3] = [
    "crd/modelproviders.gatehouse.dev",
    "crd/routes.gatehouse.dev",
    "crd/budgets.gatehouse.dev",
];

impl ControlPlane {
    /// The control plane shared by every test in this test binary, started on first use.
    /// Tests sharing it must keep to their own namespaces ([`ControlPlane::create_namespace`])
    /// or to cluster-scoped objects they alone own.
    pub fn shared() -> Result<&'static ControlPlane> {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("failed to start the shared control plane: {e}"))
    }

    /// Starts a private control plane (building the binaries first if the cache lacks them)
    /// and waits until `/readyz` answers ok.
    pub fn start() -> Result<Self> {
        let binaries = Binaries::get()?;
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-cp-")
            .tempdir()
            .context("failed to create control plane temp dir")?;
        let root = dir.path();
        let pki = Pki::generate()?;
        let admin_token = random_token()?;

        let write = |name: &str, contents: &str| -> Result<PathBuf> {
            let path = root.join(name);
            fs::write(&path, contents)
                .with_context(|| format!("failed to write {}", path.display()))?;
            Ok(path)
        };
        let ca_file = write("ca.crt", &pki.ca_cert)?;
        let cert_file = write("apiserver.crt", &pki.serving_cert)?;
        let key_file = write("apiserver.key", &pki.serving_key)?;
        let sa_key_file = write("service-account.key", &pki.service_account_key)?;
        let sa_pub_file = write("service-account.pub", &pki.service_account_pub)?;
        // Format: token,user,uid,"group1,group2".
        let tokens_file = write(
            "tokens.csv",
            &format!("{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n"),
        )?;

        let etcd_client_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let apiserver_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");

        let etcd_log = log_file(root, "etcd.log")?;
        let etcd = Command::new(&binaries.etcd)
            .arg("--name=gatehouse-e2e")
            .arg(format!("--data-dir={}", root.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=gatehouse-e2e={peer_url}"))
            // Test data is thrown away; skipping fsync makes writes ~10x faster.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(etcd_log.try_clone()?)
            .stderr(etcd_log)
            // Own process group: a Ctrl-C aimed at `cargo test` must not kill the servers
            // before the watchdog and Drop can clean up in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("failed to start {}", binaries.etcd.display()))?;
        let pgid = etcd.id();

        // The watchdog holds the read end of a pipe whose write end only this process holds.
        // When this process exits for any reason the read hits EOF, and the watchdog kills
        // the process group and removes the temp dir: the shared instance is never dropped.
        // (No wait loop on `kill -0`: the orphaned servers linger as zombies until reaped.)
        let watchdog = Command::new("bash")
            .arg("-c")
            .arg(
                r#"read -r _ || true
                kill -TERM -- "-$1" 2>/dev/null
                sleep 1
                kill -KILL -- "-$1" 2>/dev/null
                rm -rf -- "$2""#,
            )
            .arg("gatehouse-cp-watchdog")
            .arg(pgid.to_string())
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("failed to start the control plane watchdog")?;

        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={apiserver_port}"),
            format!("--cert-dir={}", root.join("cert-dir").display()),
            format!("--tls-cert-file={}", cert_file.display()),
            format!("--tls-private-key-file={}", key_file.display()),
            format!("--token-auth-file={}", tokens_file.display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={ISSUER}"),
            format!("--service-account-key-file={}", sa_pub_file.display()),
            format!(
                "--service-account-signing-key-file={}",
                sa_key_file.display()
            ),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            // Nothing would ever clean up the endpoints of the kubernetes Service.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        let pgid = i32::try_from(pgid).context("pid out of range")?;
        let apiserver = spawn_apiserver(binaries, root, &apiserver_args, pgid)?;

        let server = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig = root.join("kubeconfig");
        fs::write(
            &kubeconfig,
            kubeconfig_yaml(&server, &ca_file, &admin_token)?,
        )
        .with_context(|| format!("failed to write {}", kubeconfig.display()))?;

        let mut cp = Self {
            binaries,
            server,
            ca_pem: pki.ca_cert,
            admin_token,
            kubeconfig,
            apiserver,
            apiserver_args,
            pgid,
            etcd,
            watchdog,
            dir,
        };
        cp.wait_ready()?;
        eprintln!(
            "gatehouse-e2e: control plane ready at {} in {:.1}s (KUBECONFIG={})",
            cp.server,
            started.elapsed().as_secs_f64(),
            cp.kubeconfig.display()
        );
        Ok(cp)
    }

    /// Kills the kube-apiserver (SIGKILL, as a crash or a lost node would), keeping etcd and its
    /// data: clients see connection refused until [`ControlPlane::restart_apiserver`]. Only on a
    /// private instance ([`ControlPlane::start`]); the shared one is used by other tests.
    pub fn stop_apiserver(&mut self) -> Result<()> {
        if self.apiserver.try_wait()?.is_none() {
            self.apiserver
                .kill()
                .context("failed to kill kube-apiserver")?;
        }
        self.apiserver
            .wait()
            .context("failed to wait for kube-apiserver")?;
        Ok(())
    }

    /// Starts the kube-apiserver again with the same flags (same port, certificates, tokens and
    /// etcd, so every object and credential survives) and waits until `/readyz` answers ok.
    pub fn restart_apiserver(&mut self) -> Result<()> {
        if self.apiserver.try_wait()?.is_none() {
            bail!("kube-apiserver is still running; stop it first");
        }
        let started = Instant::now();
        self.apiserver = spawn_apiserver(
            self.binaries,
            self.dir.path(),
            &self.apiserver_args,
            self.pgid,
        )?;
        self.wait_ready()?;
        eprintln!(
            "gatehouse-e2e: kube-apiserver restarted in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = match (self.etcd.try_wait()?, self.apiserver.try_wait()?) {
                (Some(status), _) => Some(("etcd", status)),
                (None, Some(status)) => Some(("kube-apiserver", status)),
                (None, None) => None,
            };
            if let Some((name, status)) = exited {
                bail!(
                    "{name} exited with {status} before the control plane was ready\n{}",
                    self.log_tails()
                );
            }
            let out = self.kubectl(["get", "--raw=/readyz"])?;
            if out.success && out.stdout.trim() == "ok" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {READY_TIMEOUT:?}; last /readyz: {}{}\n{}",
                    out.stdout.trim(),
                    out.stderr.trim(),
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tails(&self) -> String {
        ["etcd.log", "kube-apiserver.log"]
            .iter()
            .map(|name| {
                let text = fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                // kube-apiserver logs every flag at startup; they bury the error.
                let lines: Vec<&str> = text.lines().filter(|l| !l.contains("FLAG: --")).collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                format!("--- last lines of {name} ---\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Process id of the kube-apiserver (to read its memory and CPU from `/proc`).
    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver.id()
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A kubeconfig with the admin (`system:masters`) credential.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// PEM of the CA that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The programs this harness runs (etcd, kube-apiserver, helm, kubectl).
    pub fn binaries(&self) -> &'static Binaries {
        self.binaries
    }

    /// The temp dir holding certificates, logs (`etcd.log`, `kube-apiserver.log`) and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client acting as cluster admin. Build one per test: a client is tied to the tokio
    /// runtime it first runs on, and each `#[tokio::test]` has its own.
    pub async fn admin_client(&self) -> Result<Client> {
        self.client_with_token(&self.admin_token).await
    }

    /// A client that authenticates with `token` only (e.g. from [`ControlPlane::mint_token`]).
    pub async fn client_for_token(&self, token: &str) -> Result<Client> {
        self.client_with_token(token).await
    }

    async fn client_with_token(&self, token: &str) -> Result<Client> {
        // Kubeconfig (rather than Config fields) keeps the token type kube's own business.
        let kubeconfig: Kubeconfig = serde_json::from_value(kubeconfig_doc(
            &self.server,
            &self.dir.path().join("ca.crt"),
            "e2e",
            token,
        ))
        .context("failed to build kubeconfig")?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("failed to load kubeconfig")?;
        Client::try_from(config).context("failed to build kube client")
    }

    /// Writes to `path` a kubeconfig for this control plane that authenticates with `token` only
    /// (e.g. from [`ControlPlane::mint_token`]), for a process that must run with exactly that
    /// identity: `KUBECONFIG=path some-binary`.
    pub fn write_kubeconfig_for_token(&self, path: &Path, token: &str) -> Result<()> {
        let yaml = serde_yaml::to_string(&kubeconfig_doc(
            &self.server,
            &self.dir.path().join("ca.crt"),
            "e2e",
            token,
        ))
        .context("failed to render kubeconfig")?;
        fs::write(path, yaml).with_context(|| format!("failed to write {}", path.display()))
    }

    /// Creates a namespace `e2e-<prefix>-<n>` unique within this test binary and returns its name.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "e2e-{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.admin_client().await?)
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("failed to create namespace {name}"))?;
        Ok(name)
    }

    /// Creates ServiceAccount `name` in `namespace` (no controller-manager creates any).
    pub async fn create_service_account(&self, namespace: &str, name: &str) -> Result<()> {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        Api::<ServiceAccount>::namespaced(self.admin_client().await?, namespace)
            .create(&PostParams::default(), &sa)
            .await
            .with_context(|| format!("failed to create serviceaccount {namespace}/{name}"))?;
        Ok(())
    }

    /// Mints a one-hour token for an existing ServiceAccount through the TokenRequest API.
    pub async fn mint_token(&self, namespace: &str, service_account: &str) -> Result<String> {
        self.mint_token_for(namespace, service_account, &[]).await
    }

    /// Mints a one-hour token for an existing ServiceAccount with these audiences (none: the
    /// API server's own), as the kubelet projects one into a pod (e.g. the budget ledger's).
    pub async fn mint_token_for(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
    ) -> Result<String> {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let response = Api::<ServiceAccount>::namespaced(self.admin_client().await?, namespace)
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .with_context(|| {
                format!("failed to mint token for serviceaccount {namespace}/{service_account}")
            })?;
        response
            .status
            .map(|s| s.token)
            .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{service_account} had no status"))
    }

    /// Runs kubectl against this control plane as admin. Succeeds even when kubectl fails:
    /// check [`CommandOutput::success`], or use [`ControlPlane::kubectl_ok`].
    pub fn kubectl<I, S>(&self, args: I) -> Result<CommandOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&self.binaries.kubectl, args, &self.tool_env(), None)
    }

    /// Runs kubectl with `stdin` (for `apply -f -`).
    pub fn kubectl_stdin<I, S>(&self, args: I, stdin: &str) -> Result<CommandOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(
            &self.binaries.kubectl,
            args,
            &self.tool_env(),
            Some(stdin.as_bytes()),
        )
    }

    /// Applies the CRD manifests in `dir` (the repo's `crds/`) and waits until every Gatehouse
    /// CRD is Established; returns kubectl apply's output.
    pub fn install_crds(&self, dir: &Path) -> Result<String> {
        let out = self.kubectl_ok(["apply", "-f", &dir.to_string_lossy()])?;
        self.wait_crds_established()?;
        Ok(out)
    }

    /// Waits (up to 60 s) until every Gatehouse CRD is Established.
    pub fn wait_crds_established(&self) -> Result<()> {
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(GATEHOUSE_CRDS);
        self.kubectl_ok(args).map(|_| ())
    }

    /// Runs kubectl and returns its stdout, or an error with its stderr if it failed.
    pub fn kubectl_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let line = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        self.kubectl(args)?.ok(&format!("kubectl {line}"))
    }

    /// Runs helm against this control plane as admin, with helm's cache, config and data dirs
    /// inside the temp dir so nothing touches `$HOME`.
    pub fn helm<I, S>(&self, args: I) -> Result<CommandOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&self.binaries.helm, args, &self.tool_env(), None)
    }

    fn tool_env(&self) -> Vec<(&'static str, &OsStr)> {
        let root = self.dir.path();
        vec![
            ("KUBECONFIG", self.kubeconfig.as_os_str()),
            ("HELM_CACHE_HOME", root.as_os_str()),
            ("HELM_CONFIG_HOME", root.as_os_str()),
            ("HELM_DATA_HOME", root.as_os_str()),
        ]
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // kube-apiserver first so it does not log a storm of etcd errors; SIGKILL is fine,
        // nothing here is worth a graceful shutdown.
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Closing the pipe lets the watchdog finish (its kills now find nothing).
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// Starts kube-apiserver in process group `pgid` (etcd's, which the watchdog kills), appending to
/// `kube-apiserver.log` so a restart keeps the earlier log.
fn spawn_apiserver(binaries: &Binaries, root: &Path, args: &[String], pgid: i32) -> Result<Child> {
    let path = root.join("kube-apiserver.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    Command::new(&binaries.kube_apiserver)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(pgid)
        .spawn()
        .with_context(|| format!("failed to start {}", binaries.kube_apiserver.display()))
}

fn log_file(dir: &Path, name: &str) -> Result<fs::File> {
    let path = dir.join(name);
    fs::File::create(&path).with_context(|| format!("failed to create {}", path.display()))
}

/// A free loopback port. Another process could take it before our server binds it; on this
/// single-user test machine that race has not been worth a retry loop.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("failed to find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("failed to read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn kubeconfig_yaml(server: &str, ca_file: &Path, token: &str) -> Result<String> {
    serde_yaml::to_string(&kubeconfig_doc(server, ca_file, ADMIN_USER, token))
        .context("failed to render kubeconfig")
}

/// A kubeconfig with one cluster (`server`, trusting `ca_file`) and one bearer-token user.
fn kubeconfig_doc(server: &str, ca_file: &Path, user: &str, token: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "gatehouse-e2e", "cluster": {
            "server": server,
            "certificate-authority": ca_file,
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "gatehouse-e2e", "context": {
            "cluster": "gatehouse-e2e",
            "user": user,
        }}],
        "current-context": "gatehouse-e2e",
    })
}
