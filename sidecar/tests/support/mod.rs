//! Shared fixtures: a sidecar started in-process on ephemeral ports over manifests in a temp dir.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fixtures"
)]

use std::path::PathBuf;
use std::time::Duration;

use gatehouse_sidecar::{Args, Running};

pub struct Sidecar {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Sidecar {
    pub async fn start(manifests: &str) -> Self {
        Self::start_with(manifests, |_| {}).await
    }

    pub async fn start_with(manifests: &str, tweak: impl FnOnce(&mut Args)) -> Self {
        let sidecar = Self::launch(manifests, tweak).await;
        assert!(
            sidecar.running.wait_ready(Duration::from_secs(5)).await,
            "sidecar never became ready"
        );
        sidecar
    }

    /// Start without waiting for the first config (which may never come).
    pub async fn launch(manifests: &str, tweak: impl FnOnce(&mut Args)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gatehouse.yaml"), manifests).unwrap();
        // Parsed like the binary's flags, so every flag not named here keeps its default.
        let mut args = <Args as clap::Parser>::parse_from([
            "gatehouse-sidecar",
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
            "--manifests",
            dir.path().to_str().unwrap(),
            "--max-body-bytes=1048576",
            "--connect-timeout-ms=2000",
            "--log-format=text",
        ]);
        tweak(&mut args);
        let running = gatehouse_sidecar::start(&args).await.unwrap();
        Self {
            running,
            dir,
            client: reqwest::Client::new(),
        }
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("gatehouse.yaml")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.proxy_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.admin_addr, path)
    }

    /// The admin port's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn chat(&self, model: &str, stream: bool) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": model,
                "messages": [{"role": "user", "content": "Say hello"}],
                "stream": stream,
                "stream_options": if stream { serde_json::json!({"include_usage": true}) } else { serde_json::Value::Null },
            }))
            .send()
            .await
            .unwrap()
    }
}

pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A provider, its key Secret and nothing else.
pub fn provider(name: &str, base_url: &str, key: Option<&str>) -> String {
    match key {
        Some(key) => format!(
            r#"---
apiVersion: v1
kind: Secret
metadata:
  name: {name}-key
stringData:
  apiKey: "{key}"
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata:
  name: {name}
spec:
  type: openaiCompatible
  endpoint: {base_url}
  apiKeySecretRef:
    name: {name}-key
    key: apiKey
  models:
    - name: gpt-4o-mini
      pricing:
        inputPerMillion: "0.15"
        outputPerMillion: "0.60"
"#
        ),
        None => format!(
            r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata:
  name: {name}
spec:
  type: openaiCompatible
  endpoint: {base_url}
"#
        ),
    }
}

/// A base URL whose port refuses connections.
pub fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

/// Read an SSE response to the end, returning the `data:` payloads.
pub async fn sse_events(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_string))
        .collect()
}

/// Reads an SSE response event by event as it arrives, so a test can tell what the client had
/// before the upstream went on.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    pending: String,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        use futures::StreamExt;
        Self {
            body: resp.bytes_stream().boxed(),
            pending: String::new(),
        }
    }

    /// The next event's `data:` payload (`event:` lines dropped), or `None` when the body ended.
    /// Fails the test if nothing complete arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<String> {
        use futures::StreamExt;
        loop {
            if let Some(pos) = self.pending.find("\n\n") {
                let event: String = self.pending.drain(..pos + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
                continue;
            }
            match tokio::time::timeout(wait, self.body.next()).await {
                Err(_) => panic!(
                    "no complete event within {wait:?}; pending: {:?}",
                    self.pending
                ),
                Ok(None) => {
                    assert!(
                        self.pending.trim().is_empty(),
                        "the body ended inside an event: {:?}",
                        self.pending
                    );
                    return None;
                }
                Ok(Some(chunk)) => self
                    .pending
                    .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap()),
            }
        }
    }

    /// Every remaining payload until the body ends.
    pub async fn rest(&mut self, wait: Duration) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(event) = self.next(wait).await {
            events.push(event);
        }
        events
    }

    /// True when, for `wait`, no complete event is waiting, nothing arrives and the body does not
    /// end: the stream is open but held.
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        use futures::StreamExt;
        if self.pending.contains("\n\n") {
            return false;
        }
        match tokio::time::timeout(wait, self.body.next()).await {
            Err(_) => true,
            Ok(None) => false,
            Ok(Some(chunk)) => {
                self.pending
                    .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
                false
            }
        }
    }
}
