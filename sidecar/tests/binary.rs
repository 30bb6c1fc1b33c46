//! The real binary: flags and environment, JSON logs, and provider keys never leaking into logs,
//! metrics or error bodies.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use gatehouse_mock_provider::{Behaviour, MockProvider};

const KEY: &str = "sk-live-SECRET-4f9a8b7c6d5e4f3a2b1c";

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Proc {
    fn spawn(manifests: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse-sidecar"))
            // flags from the environment, as design.md promises
            .env("GATEHOUSE_MANIFESTS", manifests)
            .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
            .env("GATEHOUSE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "trace")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
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
    fn wait_line(&mut self, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("log line");
            self.log.push(line.clone());
            let json: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            if f(&json) {
                return json;
            }
        }
    }

    fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        self.log
    }
}

#[tokio::test]
async fn keys_never_reach_logs_metrics_or_error_bodies() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifests = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: upstream-key}}
data:
  apiKey: {b64}
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: upstream}}
spec:
  type: openai
  endpoint: {url}
  apiKeySecretRef: {{name: upstream-key, key: apiKey}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: chat}}
spec:
  targets: [{{provider: upstream, model: gpt-4o-mini}}]
  retry: {{attempts: 1}}
"#,
        b64 = base64::engine::general_purpose::STANDARD.encode(KEY),
        url = mock.base_url(),
    );
    std::fs::write(dir.path().join("m.yaml"), manifests).unwrap();
    let mut proc = Proc::spawn(dir.path());
    // "listening" and "configuration applied" may come in either order.
    let first = proc.wait_line(|j| {
        j["message"] == "gatehouse-sidecar listening" || j["message"] == "configuration applied"
    });
    let listening = if first["message"] == "configuration applied" {
        proc.wait_line(|j| j["message"] == "gatehouse-sidecar listening")
    } else {
        proc.wait_line(|j| j["message"] == "configuration applied");
        first
    };
    let proxy = listening["proxy_addr"].as_str().unwrap().to_string();
    let admin = listening["admin_addr"].as_str().unwrap().to_string();

    let client = reqwest::Client::new();
    let chat = |stream: bool| {
        client
            .post(format!("http://{proxy}/v1/chat/completions"))
            .json(&serde_json::json!({"model": "chat", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let mut bodies = Vec::new();
    // success, the provider echoing the key in a 401, a server error, a cut stream
    let resp = chat(false).await.unwrap();
    assert_eq!(resp.status(), 200);
    bodies.push(resp.text().await.unwrap());
    mock.push(Behaviour::status(401).error_message(format!("Incorrect API key provided: {KEY}")));
    let resp = chat(false).await.unwrap();
    assert_eq!(resp.status(), 502);
    bodies.push(resp.text().await.unwrap());
    mock.push(Behaviour::status(500));
    bodies.push(chat(false).await.unwrap().text().await.unwrap());
    mock.push(Behaviour::cut_after(1));
    bodies.push(chat(true).await.unwrap().text().await.unwrap());
    bodies.push(
        client
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(bodies[1].contains("credentials"), "{}", bodies[1]);

    // The mock did receive the key: the leak check below is not vacuous.
    assert_eq!(mock.last_request().unwrap().bearer(), Some(KEY));
    proc.wait_line(|j| j["message"] == "stream finished");
    let log = proc.stop();
    assert!(
        log.iter().any(|l| l.contains("\"status\":502")),
        "access log written"
    );
    for text in bodies.iter().chain(log.iter()) {
        assert!(!text.contains(KEY), "key leaked: {text}");
        assert!(!text.contains("SECRET"), "key fragment leaked: {text}");
    }
}

#[test]
fn bad_flags_fail_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-sidecar"))
        .args(["--manifests", "/nonexistent", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen"), "{stderr}");
}
