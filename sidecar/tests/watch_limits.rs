//! The real binary on a node whose inotify limits are used up: it still starts, warns once naming
//! the limit, serves, and picks up key rotations and config edits by polling.
//!
//! The limits are real, not simulated: each sidecar runs in a user namespace of its own
//! (`unshare --user --map-root-user`) whose `/proc/sys/user/max_inotify_instances` or
//! `max_inotify_watches` the test lowers before exec'ing the sidecar. The kernel charges inotify
//! instances and watches to every user namespace up the chain, so inside it `inotify_init1` fails
//! with EMFILE and `inotify_add_watch` with ENOSPC exactly as on a node where other containers of
//! the same UID hold them all, while the machine's own limits, and everyone else's inotify, are
//! untouched. These tests need unprivileged user namespaces (or root); without them they fail
//! saying so.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use gatehouse_mock_provider::MockProvider;

/// A sidecar process in a user namespace with one inotify limit lowered.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

/// Which per-user-namespace limit to lower, and to what.
#[derive(Clone, Copy)]
enum Limit {
    Instances(u32),
    Watches(u32),
}

impl Proc {
    fn spawn(limit: Limit, args: &[&str]) -> Self {
        Self::spawn_with(limit, args, None)
    }

    /// With `KUBECONFIG=kubeconfig` for kube mode.
    fn spawn_with(limit: Limit, args: &[&str], kubeconfig: Option<&Path>) -> Self {
        let (file, value) = match limit {
            Limit::Instances(n) => ("max_inotify_instances", n),
            Limit::Watches(n) => ("max_inotify_watches", n),
        };
        let probe = Command::new("unshare")
            .args(["--user", "--map-root-user", "true"])
            .output();
        assert!(
            probe.as_ref().is_ok_and(|o| o.status.success()),
            "these tests run the sidecar in a user namespace of its own (unshare --user \
             --map-root-user) and could not create one: {probe:?}"
        );
        let mut cmd = Command::new("unshare");
        if let Some(path) = kubeconfig {
            cmd.env("KUBECONFIG", path);
        }
        let mut child = cmd
            .args(["--user", "--map-root-user", "sh", "-c"])
            .arg(format!(
                "echo {value} > /proc/sys/user/{file} && exec \"$0\" \"$@\""
            ))
            .arg(env!("CARGO_BIN_EXE_gatehouse-sidecar"))
            .args([
                "--listen=127.0.0.1:0",
                "--admin-listen=127.0.0.1:0",
                "--file-poll-interval-ms=100",
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Wait for a JSON log line satisfying `f`.
    fn wait_line(
        &mut self,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("no log line {what}; log so far:\n{}", self.log.join("\n"));
            };
            self.log.push(line.clone());
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if f(&json) {
                return json;
            }
        }
    }

    /// The first line satisfying `f`, already seen or still to come.
    fn find(&mut self, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let seen = self.log.iter().find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|j| f(j))
        });
        seen.unwrap_or_else(|| self.wait_line(what, f))
    }

    /// The proxy and admin addresses, from the "listening" line.
    fn addrs(&mut self) -> (String, String) {
        let line = self.find("listening", |j| {
            j["message"] == "gatehouse-sidecar listening"
        });
        (
            line["proxy_addr"].as_str().unwrap().to_string(),
            line["admin_addr"].as_str().unwrap().to_string(),
        )
    }

    /// Every line so far plus whatever comes within `wait`.
    fn drain(&mut self, wait: Duration) -> &[String] {
        while let Ok(line) = self.lines.recv_timeout(wait) {
            self.log.push(line);
        }
        &self.log
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubeconfig for an API server that is not there: kube mode starts without connecting.
const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\n\
    clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n\
    users: [{name: u, user: {token: t}}]\n\
    contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n";

fn secret(key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: llm-key}}\ndata:\n  apiKey: {}\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

fn provider(url: &str) -> String {
    format!(
        "apiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: llm}}\nspec:\n  \
         type: openaiCompatible\n  endpoint: {url}\n  apiKeySecretRef: {{name: llm-key, key: apiKey}}\n"
    )
}

fn route(model: &str) -> String {
    format!(
        "apiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: chat}}\nspec:\n  \
         targets: [{{provider: llm, model: {model}}}]\n  retry: {{attempts: 1}}\n"
    )
}

/// Replace a file by rename, as editors and config tools do.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Three manifests in two places: a folder with a sub-folder, and a file elsewhere.
struct Manifests {
    dir: tempfile::TempDir,
}

impl Manifests {
    fn new(url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config/routes")).unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("config/provider.yaml"), provider(url)).unwrap();
        std::fs::write(dir.path().join("config/routes/chat.yaml"), route("model-a")).unwrap();
        std::fs::write(dir.path().join("keys/secret.yaml"), secret("sk-one")).unwrap();
        Self { dir }
    }

    fn flag(&self) -> String {
        format!(
            "--manifests={},{}",
            self.dir.path().join("config").display(),
            self.dir.path().join("keys/secret.yaml").display()
        )
    }

    fn rotate_key(&self, key: &str) {
        replace(&self.dir.path().join("keys/secret.yaml"), &secret(key));
    }

    fn change_route(&self, model: &str) {
        // Written in place: a plain write, not a rename.
        std::fs::write(
            self.dir.path().join("config/routes/chat.yaml"),
            route(model),
        )
        .unwrap();
    }
}

async fn chat(proxy: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{proxy}/v1/chat/completions"))
        .json(
            &serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap()
}

/// Poll until `f` holds; the bound only proves the change was picked up at all.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(admin: &str) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Serves, then sees a key rotation and a route change, whatever the method. Returns the admin
/// address.
async fn serves_and_follows_edits(
    proc: &mut Proc,
    manifests: &Manifests,
    mock: &MockProvider,
) -> String {
    let (proxy, admin) = proc.addrs();
    proc.find("configuration applied", |j| {
        j["message"] == "configuration applied"
    });
    let r = chat(&proxy).await;
    assert_eq!(r.status(), 200);
    assert_eq!(mock.last_request().unwrap().bearer(), Some("sk-one"));

    manifests.rotate_key("sk-two");
    eventually("the key rotation", async || {
        chat(&proxy).await.status() == 200
            && mock.last_request().unwrap().bearer() == Some("sk-two")
    })
    .await;

    manifests.change_route("model-b");
    eventually("the route change", async || {
        let r = chat(&proxy).await;
        r.headers()
            .get("x-gatehouse-model")
            .is_some_and(|m| m == "model-b")
    })
    .await;
    admin
}

/// The warnings about inotify (a request before the first config is another warning).
fn warnings(log: &[String]) -> Vec<&String> {
    log.iter()
        .filter(|l| l.contains("\"WARN\"") && l.contains("inotify"))
        .collect()
}

#[tokio::test]
async fn with_no_inotify_instance_left_it_starts_warns_once_and_polls() {
    let mock = MockProvider::start().await.unwrap();
    let manifests = Manifests::new(&mock.base_url());
    let mut proc = Proc::spawn(Limit::Instances(0), &[&manifests.flag()]);
    let warning = proc.wait_line("the fallback warning", |j| j["level"] == "WARN");
    let message = warning["message"].as_str().unwrap();
    assert!(
        message.contains("fs.inotify.max_user_instances")
            && message.contains("polling every 100 ms")
            && message.contains("the manifests"),
        "{message}"
    );
    assert_eq!(warning["limit"], "fs.inotify.max_user_instances");
    let admin = serves_and_follows_edits(&mut proc, &manifests, &mock).await;
    let text = metrics(&admin).await;
    assert!(
        text.contains("gatehouse_config_file_watch{method=\"poll\"} 1"),
        "{text}"
    );
    let log = proc.drain(Duration::from_millis(300)).to_vec();
    assert_eq!(
        warnings(&log).len(),
        1,
        "one warning: {:#?}",
        warnings(&log)
    );
}

#[tokio::test]
async fn with_no_inotify_watch_left_it_names_the_watch_limit_and_polls() {
    let mock = MockProvider::start().await.unwrap();
    let manifests = Manifests::new(&mock.base_url());
    let mut proc = Proc::spawn(Limit::Watches(0), &[&manifests.flag()]);
    let warning = proc.wait_line("the fallback warning", |j| j["level"] == "WARN");
    assert_eq!(warning["limit"], "fs.inotify.max_user_watches");
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("sysctl -w fs.inotify.max_user_watches="),
        "{warning}"
    );
    serves_and_follows_edits(&mut proc, &manifests, &mock).await;
}

/// Everything the sidecar watches (here three folders for two manifest paths) shares one
/// instance: with a limit of one it still uses inotify, and sees edits (`--file-watch=inotify`
/// never polls, so only inotify can have seen them).
#[tokio::test]
async fn one_inotify_instance_is_all_it_needs() {
    let mock = MockProvider::start().await.unwrap();
    let manifests = Manifests::new(&mock.base_url());
    let mut proc = Proc::spawn(
        Limit::Instances(1),
        &[&manifests.flag(), "--file-watch=inotify"],
    );
    let watching = proc.wait_line("watching files", |j| j["message"] == "watching files");
    assert_eq!(watching["method"], "inotify");
    serves_and_follows_edits(&mut proc, &manifests, &mock).await;
    let log = proc.drain(Duration::from_millis(300)).to_vec();
    assert!(warnings(&log).is_empty(), "{:#?}", warnings(&log));
}

/// With `--file-watch=inotify` a missing instance is an error naming what the mode watches and
/// the limit.
#[test]
fn file_watch_inotify_fails_naming_what_each_mode_watches() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), "").unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, KUBECONFIG).unwrap();
    let keys = dir.path().join("keys");
    let manifests = format!("--manifests={}", dir.path().join("m.yaml").display());
    let keys_flag = format!("--keys-dir={}", keys.display());
    for (args, names) in [
        (
            vec![manifests.as_str()],
            format!(
                "failed to watch the manifests {} with inotify",
                dir.path().join("m.yaml").display()
            ),
        ),
        (
            vec!["--kube", keys_flag.as_str()],
            format!(
                "failed to watch the keys directory {} with inotify",
                keys.display()
            ),
        ),
    ] {
        let mut all = args.clone();
        all.push("--file-watch=inotify");
        let mut cmd = Proc::spawn_with(Limit::Instances(0), &all, Some(&kubeconfig));
        let status = cmd.child.wait().unwrap();
        assert!(!status.success());
        let log = cmd.drain(Duration::from_millis(500)).join("\n");
        assert!(log.contains(&names), "{log}");
        assert!(
            log.contains("Too many open files") && log.contains("fs.inotify.max_user_instances"),
            "{log}"
        );
        assert!(!log.contains("failed to watch manifests"), "{log}");
    }
}

/// Kube mode starts too (the config watch is the API's; only the keys directory is a file).
#[test]
fn kube_mode_starts_without_inotify_and_names_the_keys_directory() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, KUBECONFIG).unwrap();
    let keys = dir.path().join("keys");
    let keys_flag = format!("--keys-dir={}", keys.display());
    let mut proc = Proc::spawn_with(
        Limit::Instances(0),
        &["--kube", &keys_flag],
        Some(&kubeconfig),
    );
    let warning = proc.wait_line("the fallback warning", |j| j["level"] == "WARN");
    let message = warning["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("the keys directory {}", keys.display()))
            && message.contains("fs.inotify.max_user_instances"),
        "{message}"
    );
    proc.addrs();
    assert!(
        proc.child.try_wait().unwrap().is_none(),
        "the sidecar exited"
    );
}
