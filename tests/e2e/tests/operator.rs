//! The operator and a kube-mode sidecar, both as processes, against the real control plane:
//! CRs in → rendered config → the sidecar (authenticated as a ServiceAccount bound only to the
//! sidecar RBAC, keys in a kubelet-style mounted dir) serves through a mock provider. Then route
//! changes (propagation p50/p99), key rotation without failed requests, provider deletion, an
//! operator restart without writes, and RBAC for a ServiceAccount without the binding.
//!
//! The binaries are built with `cargo build -p gatehouse-operator -p gatehouse-sidecar` by the test
//! itself (a no-op when up to date), so `cargo test -p gatehouse-e2e --test operator` is enough.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use gatehouse_crds::{ModelProvider, Route};
use gatehouse_e2e::{ControlPlane, eventually, reconciled_after};
use gatehouse_mock_provider::MockProvider;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `cargo build` of the operator and the sidecar, once per test binary.
fn build() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
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
        if status.success() {
            Ok(())
        } else {
            Err("cargo build of the operator and sidecar failed".into())
        }
    })
    .clone()
    .map_err(|e| anyhow!("{e}"))
}

fn install_crds(cp: &ControlPlane) -> Result<()> {
    cp.install_crds(&repo_root().join("crds")).map(|_| ())
}

/// The shared control plane with the CRDs installed and both binaries built, once per test binary.
fn setup() -> Result<&'static ControlPlane> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let cp = ControlPlane::shared()?;
    DONE.get_or_init(|| {
        build()
            .and_then(|()| install_crds(cp))
            .map_err(|e| format!("{e:#}"))
    })
    .as_ref()
    .map_err(|e| anyhow!("setup failed: {e}"))?;
    Ok(cp)
}

fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join(name)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed on drop, its stderr copied to a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Result<Self> {
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
        Ok(Self { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// SIGTERM and wait (graceful shutdown), SIGKILL after 10 s.
    fn stop(mut self) -> Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.success(),
                    "exited with {status}; log {}",
                    self.log.display()
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("did not stop within 10 s after SIGTERM")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kube-mode sidecar process, as the pod would run it.
struct Sidecar {
    _proc: Proc,
    base: String,
    admin: String,
}

impl Sidecar {
    fn start(
        cp: &ControlPlane,
        ns: &str,
        dir: &Path,
        token_file: &Path,
        keys_dir: &Path,
    ) -> Result<Self> {
        let (proxy_port, admin_port) = (free_port()?, free_port()?);
        let mut cmd = Command::new(binary("gatehouse-sidecar"));
        cmd.env("KUBECONFIG", cp.kubeconfig()).args([
            "--kube",
            &format!("--namespace={ns}"),
            &format!("--kube-token-file={}", token_file.display()),
            &format!("--keys-dir={}", keys_dir.display()),
            &format!("--listen=127.0.0.1:{proxy_port}"),
            &format!("--admin-listen=127.0.0.1:{admin_port}"),
        ]);
        Ok(Self {
            _proc: Proc::spawn(cmd, dir.join("sidecar.log"))?,
            base: format!("http://127.0.0.1:{proxy_port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
        })
    }

    async fn wait_ready(&self, http: &reqwest::Client) -> Result<()> {
        eventually("sidecar ready", Duration::from_secs(30), || {
            let url = format!("{}/readyz", self.admin);
            let http = http.clone();
            async move {
                Ok(http
                    .get(url)
                    .send()
                    .await?
                    .status()
                    .is_success()
                    .then_some(()))
            }
        })
        .await
    }
}

struct Operator {
    proc: Proc,
    admin: String,
}

impl Operator {
    fn start(cp: &ControlPlane, ns: &str, dir: &Path, n: u32) -> Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new(binary("gatehouse-operator"));
        cmd.env("KUBECONFIG", cp.kubeconfig())
            .env(
                "RUST_LOG",
                std::env::var("GATEHOUSE_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args([
                &format!("--admin-listen=127.0.0.1:{port}"),
                "--ledger-listen=127.0.0.1:0",
                &format!("--watch-namespace={ns}"),
                &format!("--lease-namespace={ns}"),
                &format!("--identity=operator-{n}"),
            ]);
        let proc = Proc::spawn(cmd, dir.join(format!("operator-{n}.log")))?;
        Ok(Self {
            proc,
            admin: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Sum of a counter family from `/metrics`.
    async fn counter(&self, http: &reqwest::Client, name: &str) -> Result<u64> {
        let text = http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }
}

/// Set label `gatehouse.dev/test-touch=<n>` on the namespace: the operator's primary object, so it
/// reconciles, and nothing it renders changes.
async fn touch_namespace(client: &Client, ns: &str, n: u64) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::apply("e2e-touch"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"gatehouse.dev/test-touch": n.to_string()}}})),
        )
        .await?;
    Ok(())
}

/// Wait until `operator` is idle: a reconcile that started after every earlier change finished
/// without writing (see [`reconciled_after`]).
async fn settled(
    operator: &Operator,
    http: &reqwest::Client,
    client: &Client,
    ns: &str,
) -> Result<()> {
    for _ in 0..10 {
        let before = operator
            .counter(http, "gatehouse_operator_api_writes_total")
            .await?;
        reconciled_after(
            Duration::from_secs(30),
            |n| touch_namespace(client, ns, n),
            || operator.counter(http, "gatehouse_operator_reconciles_total"),
        )
        .await?;
        let after = operator
            .counter(http, "gatehouse_operator_api_writes_total")
            .await?;
        if after == before {
            return Ok(());
        }
    }
    bail!("the operator kept writing through 10 rounds of reconciles")
}

/// Write `keys` into `dir` exactly as the kubelet updates a Secret volume: a fresh timestamped
/// folder, then `..data` swapped to it by an atomic rename, with one `name -> ..data/name` link per key.
fn kubelet_write_keys(dir: &Path, keys: &[(String, Vec<u8>)]) -> Result<()> {
    static GEN: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let folder = format!(
        "..2025_01_01_00_00_00.{}",
        GEN.fetch_add(1, Ordering::Relaxed)
    );
    std::fs::create_dir(dir.join(&folder))?;
    for (name, value) in keys {
        std::fs::write(dir.join(&folder).join(name), value)?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&folder, &tmp)?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data"))?;
    for (name, _) in keys {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link)?;
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

async fn mount_keys(client: &Client, ns: &str, dir: &Path) -> Result<()> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get("gatehouse-keys")
        .await?;
    let keys: Vec<(String, Vec<u8>)> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    kubelet_write_keys(dir, &keys)
}

fn route_json(model: &str) -> serde_json::Value {
    json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "Route",
           "metadata": {"name": "chat"},
           "spec": {"models": ["chat"], "targets": [{"provider": "llm", "model": model}],
                    "retry": {"attempts": 1}}})
}

async fn chat(http: &reqwest::Client, base: &str) -> Result<reqwest::Response> {
    Ok(http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?)
}

fn forbidden<T>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ready(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn resource_versions(client: &Client, ns: &str) -> Result<Vec<(String, Option<String>)>> {
    let rv =
        |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.resource_version.clone();
    Ok(vec![
        (
            "configmap".into(),
            rv(&Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get("gatehouse-config")
                .await?
                .metadata),
        ),
        (
            "secret".into(),
            rv(&Api::<Secret>::namespaced(client.clone(), ns)
                .get("gatehouse-keys")
                .await?
                .metadata),
        ),
        (
            "role".into(),
            rv(&Api::<Role>::namespaced(client.clone(), ns)
                .get("gatehouse-sidecar")
                .await?
                .metadata),
        ),
        (
            "rolebinding".into(),
            rv(&Api::<RoleBinding>::namespaced(client.clone(), ns)
                .get("gatehouse-sidecar")
                .await?
                .metadata),
        ),
        (
            "route".into(),
            rv(&Api::<Route>::namespaced(client.clone(), ns)
                .get("chat")
                .await?
                .metadata),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_to_sidecar_end_to_end() -> Result<()> {
    let cp = setup()?;
    let dir = tempfile::tempdir()?;
    let ns = cp.create_namespace("op").await?;
    let admin = cp.admin_client().await?;
    let http = reqwest::Client::new();
    let mock = MockProvider::start().await?;

    // The user's objects.
    let pp = PatchParams::apply("e2e").force();
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    let key_secret = |key: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-key"},
               "stringData": {"api-key": key}})
    };
    secrets
        .patch("llm-key", &pp, &Patch::Apply(key_secret("sk-one")))
        .await?;
    let providers = Api::<ModelProvider>::namespaced(admin.clone(), &ns);
    providers
        .patch(
            "llm",
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "ModelProvider",
                "metadata": {"name": "llm"},
                "spec": {"type": "openaiCompatible", "endpoint": mock.base_url(),
                         "apiKeySecretRef": {"name": "llm-key", "key": "api-key"}}}),
            ),
        )
        .await?;
    let routes = Api::<Route>::namespaced(admin.clone(), &ns);
    routes
        .patch("chat", &pp, &Patch::Apply(route_json("model-0")))
        .await?;

    // The operator renders.
    let operator = Operator::start(cp, &ns, dir.path(), 1)?;
    let configs = Api::<ConfigMap>::namespaced(admin.clone(), &ns);
    eventually("gatehouse-config", Duration::from_secs(30), || {
        let configs = configs.clone();
        async move { Ok(configs.get_opt("gatehouse-config").await?.map(|_| ())) }
    })
    .await?;

    // The pod: a ServiceAccount (bound by the operator's RoleBinding), its token, the keys mount.
    cp.create_service_account(&ns, "app").await?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, cp.mint_token(&ns, "app").await?)?;
    let keys_dir = dir.path().join("keys");
    mount_keys(&admin, &ns, &keys_dir).await?;
    let sidecar = Sidecar::start(cp, &ns, dir.path(), &token_file, &keys_dir)?;
    sidecar.wait_ready(&http).await?;
    let base = sidecar.base.clone();
    let r = chat(&http, &base).await?;
    ensure!(
        r.status() == 200,
        "first request: {} {}",
        r.status(),
        r.text().await?
    );
    let seen = mock.last_request().context("mock saw nothing")?;
    ensure!(
        seen.bearer() == Some("sk-one"),
        "upstream key {:?}",
        seen.bearer()
    );
    ensure!(
        seen.model() == Some("model-0"),
        "upstream model {:?}",
        seen.model()
    );

    // Propagation: route change applied → first request served with the new rule. Polled every
    // 2 ms so the poll interval does not dominate the measurement; the sample count can be raised
    // for the benchmark (docs/benchmarks.md).
    let wanted: usize = std::env::var("GATEHOUSE_PROPAGATION_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let mut samples = Vec::new();
    for i in 1..=wanted {
        let model = format!("model-{i}");
        let started = Instant::now();
        routes
            .patch("chat", &pp, &Patch::Apply(route_json(&model)))
            .await?;
        loop {
            let r = chat(&http, &base).await?;
            let served = r
                .headers()
                .get("x-gatehouse-model")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if served.as_deref() == Some(model.as_str()) {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "route change {i} was not served within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "route propagation over {} changes (apply -> first request served with it): p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        p50,
        p99,
        samples[samples.len() - 1]
    );
    ensure!(p99 < Duration::from_secs(2), "p99 propagation {p99:?}");

    // Key rotation under load: none may fail, and the new key takes over.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (http, base, stop, failures, sent) = (
            http.clone(),
            base.clone(),
            stop.clone(),
            failures.clone(),
            sent.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match chat(&http, &base).await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // The load is running (a few requests served) before the rotation starts.
    let sent_by = |n: u64| {
        let sent = sent.clone();
        move || {
            let now = sent.load(Ordering::Relaxed);
            async move { Ok((now >= n).then_some(())) }
        }
    };
    eventually("load started", Duration::from_secs(10), sent_by(10)).await?;
    secrets
        .patch("llm-key", &pp, &Patch::Apply(key_secret("sk-two")))
        .await?;
    eventually(
        "operator rotates gatehouse-keys",
        Duration::from_secs(10),
        || {
            let secrets = secrets.clone();
            async move {
                let s = secrets.get("gatehouse-keys").await?;
                let v = s.data.unwrap_or_default().get("llm").map(|v| v.0.clone());
                Ok((v.as_deref() == Some(b"sk-two".as_slice())).then_some(()))
            }
        },
    )
    .await?;
    mount_keys(&admin, &ns, &keys_dir).await?; // what the kubelet does next
    mock.clear();
    eventually("new key upstream", Duration::from_secs(10), || {
        let seen = mock.last_request();
        async move { Ok((seen.as_ref().and_then(|r| r.bearer()) == Some("sk-two")).then_some(())) }
    })
    .await?;
    // Some more requests after the switch, to catch a failure right after it.
    let switched = sent.load(Ordering::Relaxed);
    eventually(
        "load after the switch",
        Duration::from_secs(10),
        sent_by(switched + 10),
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    load.await?;
    ensure!(
        failures.load(Ordering::Relaxed) == 0,
        "{} of {} requests failed during rotation",
        failures.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed)
    );
    mock.clear();
    chat(&http, &base).await?;
    ensure!(
        mock.last_request()
            .and_then(|r| r.bearer().map(str::to_string))
            .as_deref()
            == Some("sk-two"),
        "after rotation the new key is used"
    );
    println!(
        "key rotation: {} requests during rotation, 0 failed",
        sent.load(Ordering::Relaxed)
    );

    // Delete the provider: the Route turns Ready=False with a reason, the alias gets a clear error.
    providers.delete("llm", &DeleteParams::default()).await?;
    let reason = eventually("Route Ready=False", Duration::from_secs(10), || {
        let routes = routes.clone();
        async move {
            let r = routes.get("chat").await?;
            let c = r.status.map(|s| s.conditions).unwrap_or_default();
            Ok(ready(&c)
                .filter(|(s, _)| s == "False")
                .map(|(_, reason)| reason))
        }
    })
    .await?;
    ensure!(reason == "ProviderNotFound", "reason {reason}");
    let (status, body) = eventually("sidecar refuses the alias", Duration::from_secs(10), || {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = chat(&http, &base).await?;
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            Ok((status != 200).then_some((status, body)))
        }
    })
    .await?;
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(status == 503, "status {status}, body {body}");
    ensure!(
        message.contains("llm"),
        "error should name the missing provider: {body}"
    );
    println!("after provider deletion: {status} {message}");

    // Restart the operator: nothing is written and nothing changes. First the first operator
    // finishes what the deletion started (its last writes are the Route's status and an Event).
    settled(&operator, &http, &admin, &ns).await?;
    let before = resource_versions(&admin, &ns).await?;
    let rss = operator.proc.rss_kib().unwrap_or_default();
    let writes_first = operator
        .counter(&http, "gatehouse_operator_api_writes_total")
        .await?;
    let reconciles_first = operator
        .counter(&http, "gatehouse_operator_reconciles_total")
        .await?;
    println!(
        "operator 1: RSS {} MiB, {} reconciles, {} API writes ({:.2} per reconcile)",
        rss / 1024,
        reconciles_first,
        writes_first,
        writes_first as f64 / reconciles_first.max(1) as f64
    );
    operator.proc.stop()?;
    let operator = Operator::start(cp, &ns, dir.path(), 2)?;
    eventually(
        "restarted operator reconciled",
        Duration::from_secs(30),
        || {
            let op = &operator;
            let http = http.clone();
            async move {
                Ok((op
                    .counter(&http, "gatehouse_operator_reconciles_total")
                    .await
                    .unwrap_or(0)
                    >= 1)
                    .then_some(()))
            }
        },
    )
    .await?;
    // The positive signal that it has seen everything: a reconcile that started after a touch of
    // the namespace, itself after the first full reconcile, has finished. Only then does "no
    // writes" mean something.
    reconciled_after(
        Duration::from_secs(30),
        |n| touch_namespace(&admin, &ns, n),
        || operator.counter(&http, "gatehouse_operator_reconciles_total"),
    )
    .await?;
    let writes = operator
        .counter(&http, "gatehouse_operator_api_writes_total")
        .await?;
    let skipped = operator
        .counter(&http, "gatehouse_operator_api_writes_skipped_total")
        .await?;
    ensure!(
        writes == 0,
        "restart wrote {writes} times (log: {})",
        operator.proc.log.display()
    );
    ensure!(
        skipped >= 4,
        "restart should have checked the rendered objects ({skipped})"
    );
    let after = resource_versions(&admin, &ns).await?;
    ensure!(
        before == after,
        "objects changed on restart: {before:?} -> {after:?}"
    );
    println!(
        "operator restart: 0 writes, {skipped} no-op writes skipped, resourceVersions unchanged"
    );

    // A ServiceAccount without the binding (another namespace) reads nothing; the bound one reads
    // only the config (not the keys, not other ConfigMaps).
    let other = cp.create_namespace("op-other").await?;
    cp.create_service_account(&other, "stranger").await?;
    let stranger = cp
        .client_for_token(&cp.mint_token(&other, "stranger").await?)
        .await?;
    ensure!(forbidden(
        Api::<ConfigMap>::namespaced(stranger.clone(), &ns)
            .get("gatehouse-config")
            .await
    ));
    ensure!(forbidden(
        Api::<Secret>::namespaced(stranger.clone(), &ns)
            .get("gatehouse-keys")
            .await
    ));
    ensure!(forbidden(
        Api::<ConfigMap>::namespaced(stranger.clone(), &other)
            .list(&ListParams::default())
            .await
    ));
    ensure!(forbidden(
        Api::<Secret>::namespaced(stranger, &other)
            .list(&ListParams::default())
            .await
    ));
    let app = cp
        .client_for_token(&std::fs::read_to_string(&token_file)?)
        .await?;
    Api::<ConfigMap>::namespaced(app.clone(), &ns)
        .get("gatehouse-config")
        .await?;
    ensure!(forbidden(
        Api::<Secret>::namespaced(app.clone(), &ns)
            .get("gatehouse-keys")
            .await
    ));
    ensure!(forbidden(
        Api::<ConfigMap>::namespaced(app, &ns)
            .list(&ListParams::default())
            .await
    ));

    // Neither key ever shows where an operator or an app can look: the operators' and the
    // sidecar's logs, events, the custom resources' status, the rendered config, both /metrics.
    let mut places: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            places.push((path.display().to_string(), std::fs::read_to_string(&path)?));
        }
    }
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    ensure!(!events.items.is_empty(), "the operator recorded events");
    places.push(("events".into(), serde_json::to_string(&events.items)?));
    let routes_now = Api::<Route>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    places.push(("routes".into(), serde_json::to_string(&routes_now.items)?));
    let providers_now = Api::<ModelProvider>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    places.push((
        "providers".into(),
        serde_json::to_string(&providers_now.items)?,
    ));
    let config = Api::<ConfigMap>::namespaced(admin.clone(), &ns)
        .get_opt("gatehouse-config")
        .await?;
    places.push(("rendered config".into(), serde_json::to_string(&config)?));
    for (name, url) in [
        ("operator /metrics", format!("{}/metrics", operator.admin)),
        ("sidecar /metrics", format!("{}/metrics", sidecar.admin)),
    ] {
        places.push((name.into(), http.get(url).send().await?.text().await?));
    }
    for (place, text) in &places {
        for key in ["sk-one", "sk-two"] {
            ensure!(!text.contains(key), "key {key} leaked into {place}");
        }
    }

    operator.proc.stop()?;
    Ok(())
}

/// Whether the rendered config names model `after` (diagnostics).
async fn configs_after(client: &Client, ns: &str) -> Result<bool> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("gatehouse-config")
        .await?;
    Ok(cm
        .data
        .unwrap_or_default()
        .get("config.json")
        .is_some_and(|c| c.contains("\"after\"")))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// The model the sidecar served a request with (`x-gatehouse-model`), or the failure.
async fn served_model(http: &reqwest::Client, base: &str) -> Result<String> {
    let r = chat(http, base).await?;
    let status = r.status();
    let model = r
        .headers()
        .get("x-gatehouse-model")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match model {
        Some(m) if status == 200 => Ok(m),
        _ => bail!("{status} {}", r.text().await.unwrap_or_default()),
    }
}

/// The API server goes away (SIGKILL, etcd keeps the data): the sidecar keeps serving on its last
/// good config, and the operator rides it out. The API server comes back: both reconnect on their
/// own, and a Route change made afterwards reaches the sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_serves_through_an_apiserver_outage_and_reconnects() -> Result<()> {
    // A private control plane: killing the shared one's apiserver would break the other tests.
    let mut cp = tokio::task::block_in_place(ControlPlane::start)?;
    build()?;
    install_crds(&cp)?;
    let dir = tempfile::tempdir()?;
    let ns = cp.create_namespace("outage").await?;
    let admin = cp.admin_client().await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mock = MockProvider::start().await?;

    let pp = PatchParams::apply("e2e").force();
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .patch(
            "llm-key",
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "llm-key"}, "stringData": {"api-key": "sk-one"}})),
        )
        .await?;
    Api::<ModelProvider>::namespaced(admin.clone(), &ns)
        .patch(
            "llm",
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "ModelProvider",
                "metadata": {"name": "llm"},
                "spec": {"type": "openaiCompatible", "endpoint": mock.base_url(),
                         "apiKeySecretRef": {"name": "llm-key", "key": "api-key"}}}),
            ),
        )
        .await?;
    let routes = Api::<Route>::namespaced(admin.clone(), &ns);
    routes
        .patch("chat", &pp, &Patch::Apply(route_json("before")))
        .await?;

    let mut operator = Operator::start(&cp, &ns, dir.path(), 1)?;
    let configs = Api::<ConfigMap>::namespaced(admin.clone(), &ns);
    eventually("gatehouse-config", Duration::from_secs(30), || {
        let configs = configs.clone();
        async move { Ok(configs.get_opt("gatehouse-config").await?.map(|_| ())) }
    })
    .await?;
    cp.create_service_account(&ns, "app").await?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, cp.mint_token(&ns, "app").await?)?;
    let keys_dir = dir.path().join("keys");
    mount_keys(&admin, &ns, &keys_dir).await?;
    let sidecar = Sidecar::start(&cp, &ns, dir.path(), &token_file, &keys_dir)?;
    sidecar.wait_ready(&http).await?;
    eventually(
        "served with the first rule",
        Duration::from_secs(10),
        || {
            let (http, base) = (http.clone(), sidecar.base.clone());
            async move { Ok((served_model(&http, &base).await? == "before").then_some(())) }
        },
    )
    .await?;

    // Outage. Shorter than the operator's lease (15 s) so the leader keeps it; the sidecar has no
    // such limit, but a test must end.
    let outage = Duration::from_secs(6);
    tokio::task::block_in_place(|| cp.stop_apiserver())?;
    let down = Instant::now();
    let mut served = 0;
    while down.elapsed() < outage {
        let model = served_model(&http, &sidecar.base)
            .await
            .with_context(|| format!("request {served} during the outage failed"))?;
        ensure!(model == "before", "served {model} during the outage");
        let ready = http.get(format!("{}/readyz", sidecar.admin)).send().await?;
        ensure!(
            ready.status().is_success(),
            "sidecar not ready during the outage: {}",
            ready.status()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        mock.last_request()
            .and_then(|r| r.bearer().map(str::to_string))
            .as_deref()
            == Some("sk-one"),
        "the key stays in use"
    );
    println!(
        "apiserver down for {:?}: {served} requests served with the last good config, 0 failed",
        down.elapsed()
    );

    tokio::task::block_in_place(|| cp.restart_apiserver())?;
    println!("apiserver back after {:?}", down.elapsed());
    // The leader rides out an outage shorter than its lease instead of exiting.
    ensure!(
        operator.proc.child.try_wait()?.is_none(),
        "the operator exited during a {outage:?} outage (log: {})",
        operator.proc.log.display()
    );

    // A change made after the restart reaches the sidecar through its re-established watch.
    let admin = cp.admin_client().await?;
    let routes_after = Api::<Route>::namespaced(admin.clone(), &ns);
    let changed = Instant::now();
    eventually("route patch accepted", Duration::from_secs(30), || {
        let routes = routes_after.clone();
        let pp = pp.clone();
        async move {
            Ok(routes
                .patch("chat", &pp, &Patch::Apply(route_json("after")))
                .await
                .ok()
                .map(|_| ()))
        }
    })
    .await?;
    // The operator's watches reconnect within seconds (their backoff stops at 5 s) and relist
    // after the `410 Gone` a restarted API server answers, so it renders the change without
    // being restarted.
    let rendered = eventually(
        "operator renders the change made after the restart",
        Duration::from_secs(20),
        || {
            let admin = admin.clone();
            let ns = ns.clone();
            async move { Ok(configs_after(&admin, &ns).await?.then_some(())) }
        },
    )
    .await;
    if let Err(e) = rendered {
        bail!("{e:#}\n--- operator log ---\n{}", tail(&operator.proc.log));
    }
    println!(
        "after the restart: change rendered by the operator {:?} after the patch",
        changed.elapsed()
    );
    let watch_errors = operator
        .counter(&http, "gatehouse_operator_watch_errors_total")
        .await?;
    ensure!(
        watch_errors > 0,
        "the operator's metrics count the watch failures of the outage"
    );
    let outcome = eventually(
        "sidecar serves the rule changed after the restart",
        Duration::from_secs(30),
        || {
            let (http, base) = (http.clone(), sidecar.base.clone());
            async move {
                // Requests keep working throughout: a failure ends the wait, only the model may
                // lag behind.
                Ok(match served_model(&http, &base).await {
                    Ok(model) if model == "before" => None,
                    Ok(model) if model == "after" => Some(Ok(())),
                    Ok(model) => Some(Err(anyhow!("served unexpected model {model}"))),
                    Err(e) => Some(Err(e)),
                })
            }
        },
    )
    .await;
    if let Err(e) = outcome.and_then(|r| r) {
        let rendered = configs_after(&admin, &ns).await;
        bail!(
            "{e:#}\nrendered config has the change: {rendered:?}\n--- sidecar log ---\n{}\n--- operator log ---\n{}",
            tail(&dir.path().join("sidecar.log")),
            tail(&operator.proc.log)
        );
    }
    println!(
        "after the restart: Route change served {:?} after the patch",
        changed.elapsed()
    );
    // The rendered config is written before the status, so the status may trail it briefly.
    eventually(
        "the operator records the change in the Route's status",
        Duration::from_secs(15),
        || {
            let routes = routes_after.clone();
            async move {
                let route = routes.get("chat").await?;
                Ok(
                    (route.status.and_then(|s| s.observed_generation) == route.metadata.generation)
                        .then_some(()),
                )
            }
        },
    )
    .await?;
    operator.proc.stop()?;
    Ok(())
}
