//! A kube-mode sidecar on a node whose inotify instances are used up: it starts, warns once naming
//! the limit, serves the config it watches through the real API server, and picks up a key
//! rotation in its kubelet-style keys directory by polling.
//!
//! The limit is real: the sidecar runs in a user namespace of its own (`unshare --user
//! --map-root-user`) whose `/proc/sys/user/max_inotify_instances` is 0, so `inotify_init1` fails
//! with EMFILE there as on a full node, and nothing else on the machine is affected (see
//! `sidecar/tests/watch_limits.rs`). The config is rendered by `gatehouse_crds::render` and written
//! straight into the ConfigMap: the operator is not what this test is about.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use gatehouse_crds::contract::{CONFIG_KEY, CONFIG_NAME};
use gatehouse_crds::{Inputs, ModelProvider, Route, SecretData, render};
use gatehouse_e2e::{ControlPlane, eventually};
use gatehouse_mock_provider::MockProvider;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `cargo build -p gatehouse-sidecar`, once (a no-op when up to date).
fn sidecar_binary() -> Result<PathBuf> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(repo_root())
            .args(["build", "-p", "gatehouse-sidecar"])
            .status()
            .map_err(|e| format!("failed to run cargo build: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err("cargo build of the sidecar failed".into())
        }
    })
    .clone()
    .map_err(|e| anyhow!("{e}"))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    Ok(target.join("debug").join("gatehouse-sidecar"))
}

/// The namespace's config as the operator would render it: provider `llm` at `url`, Route `chat`
/// to `model`. Returns the ConfigMap data.
fn rendered(ns: &str, url: &str, model: &str) -> Result<String> {
    let provider: ModelProvider = serde_yaml::from_value(serde_yaml::to_value(json!({
        "apiVersion": "gatehouse.dev/v1alpha1", "kind": "ModelProvider",
        "metadata": {"name": "llm", "namespace": ns},
        "spec": {"type": "openaiCompatible", "endpoint": url,
                 "apiKeySecretRef": {"name": "llm-key", "key": "api-key"}}}))?)?;
    let route: Route = serde_yaml::from_value(serde_yaml::to_value(json!({
        "apiVersion": "gatehouse.dev/v1alpha1", "kind": "Route",
        "metadata": {"name": "chat", "namespace": ns},
        "spec": {"models": ["chat"], "targets": [{"provider": "llm", "model": model}],
                 "retry": {"attempts": 1}}}))?)?;
    let mut secrets = SecretData::default();
    secrets.insert_key("llm-key", "api-key", b"unused".to_vec());
    let out = render(&Inputs {
        namespace: ns,
        providers: &[provider],
        routes: &[route],
        budgets: &[],
        secrets: &secrets,
    });
    ensure!(
        out.problems.is_empty(),
        "render problems: {:?}",
        out.problems
    );
    Ok(serde_json::to_string(&out.config)?)
}

async fn apply_config(api: &Api<ConfigMap>, config: String) -> Result<()> {
    api.patch(
        CONFIG_NAME,
        &PatchParams::apply("e2e-watch-limits").force(),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CONFIG_NAME}, "data": {CONFIG_KEY: config}})),
    )
    .await?;
    Ok(())
}

/// Write the key of provider `llm` as the kubelet updates a Secret volume: a new timestamped
/// folder, `..data` swapped to it by rename, `llm -> ..data/llm`.
fn kubelet_write_key(dir: &Path, generation: u32, key: &str) -> Result<()> {
    let folder = format!("..2026_01_01_00_00_0{generation}.1");
    std::fs::create_dir_all(dir.join(&folder))?;
    std::fs::write(dir.join(&folder).join("llm"), key)?;
    if std::fs::symlink_metadata(dir.join("llm")).is_err() {
        std::os::unix::fs::symlink("..data/llm", dir.join("llm"))?;
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&folder, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    Ok(())
}

/// The sidecar, its stderr lines collected.
struct Sidecar {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn log(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

async fn served(http: &reqwest::Client, base: &str) -> Result<(u16, Option<String>)> {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    let model = r
        .headers()
        .get("x-gatehouse-model")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((r.status().as_u16(), model))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_mode_without_inotify_polls_the_keys_and_still_follows_the_config() -> Result<()> {
    let binary = sidecar_binary()?;
    let cp = ControlPlane::shared()?;
    let ns = cp.create_namespace("inotify").await?;
    let mock = MockProvider::start().await?;
    let configs = Api::<ConfigMap>::namespaced(cp.admin_client().await?, &ns);
    apply_config(&configs, rendered(&ns, &mock.base_url(), "model-a")?).await?;
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys");
    kubelet_write_key(&keys, 1, "sk-one")?;

    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .output();
    ensure!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "this test runs the sidecar in a user namespace of its own and could not create one: {probe:?}"
    );
    let free = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (proxy, admin) = (free()?, free()?);
    let mut child = Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c"])
        .arg("echo 0 > /proc/sys/user/max_inotify_instances && exec \"$0\" \"$@\"")
        .arg(&binary)
        .args([
            "--kube",
            &format!("--namespace={ns}"),
            &format!("--keys-dir={}", keys.display()),
            &format!("--listen=127.0.0.1:{proxy}"),
            &format!("--admin-listen=127.0.0.1:{admin}"),
            "--file-poll-interval-ms=100",
        ])
        .env("KUBECONFIG", cp.kubeconfig())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to start the sidecar")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
    let sidecar = Sidecar { child, lines };
    let base = format!("http://127.0.0.1:{proxy}");
    let http = reqwest::Client::new();

    // Serves the config from the API, with the key from the directory.
    eventually("first answer", Duration::from_secs(30), || {
        let (http, base) = (http.clone(), base.clone());
        async move { Ok((served(&http, &base).await?.0 == 200).then_some(())) }
    })
    .await?;
    ensure!(
        mock.last_request()
            .and_then(|r| r.bearer().map(str::to_string))
            .as_deref()
            == Some("sk-one")
    );

    // The key rotates in the directory: polling sees the `..data` swap.
    kubelet_write_key(&keys, 2, "sk-two")?;
    eventually("the rotated key upstream", Duration::from_secs(20), || {
        let (http, base) = (http.clone(), base.clone());
        let mock = &mock;
        async move {
            let (status, _) = served(&http, &base).await?;
            let key = mock
                .last_request()
                .and_then(|r| r.bearer().map(str::to_string));
            Ok((status == 200 && key.as_deref() == Some("sk-two")).then_some(()))
        }
    })
    .await?;

    // A config change through the API still applies (the API watch needs no inotify).
    apply_config(&configs, rendered(&ns, &mock.base_url(), "model-b")?).await?;
    eventually("the new route served", Duration::from_secs(20), || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let (_, model) = served(&http, &base).await?;
            Ok((model.as_deref() == Some("model-b")).then_some(()))
        }
    })
    .await?;

    let log = sidecar.log();
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("\"WARN\"") && l.contains("inotify"))
        .collect();
    ensure!(
        warnings.len() == 1,
        "one inotify warning expected; log:\n{}",
        log.join("\n")
    );
    ensure!(
        warnings[0].contains("fs.inotify.max_user_instances")
            && warnings[0].contains(&format!("the keys directory {}", keys.display())),
        "{}",
        warnings[0]
    );
    let metrics = http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains("gatehouse_config_file_watch{method=\"poll\"} 1"),
        "{metrics}"
    );
    Ok(())
}
