//! Pod termination, through the binary: SIGTERM arriving while a stream is in flight.
//!
//! A sidecar stopped together with its app (a regular container; `GATEHOUSE_DRAIN_MS`, which the
//! injection webhook sets) keeps serving the stream, new requests on new connections, and requests
//! on the app's open connections, until the app has gone (its connections closed), and only then
//! exits. Without a drain (a native sidecar, stopped after its app) it stops accepting at once and
//! still finishes the stream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_mock_provider::{Behaviour, MockProvider};

mod support;

struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    proxy: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn start(manifests: &str, drain_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gatehouse.yaml"), manifests).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse-sidecar"))
            .env("GATEHOUSE_MANIFESTS", dir.path())
            .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
            .env("GATEHOUSE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("GATEHOUSE_DRAIN_MS", drain_ms.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut proc = Self {
            child,
            log,
            proxy: String::new(),
            admin: String::new(),
            _dir: dir,
        };
        let listening = proc.wait_log("gatehouse-sidecar listening");
        proc.proxy = listening["proxy_addr"].as_str().unwrap().to_string();
        proc.admin = listening["admin_addr"].as_str().unwrap().to_string();
        proc.wait_log("configuration applied");
        proc
    }

    fn wait_log(&self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.log.lock().unwrap().iter().find_map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .filter(|j| j["message"] == message)
            });
            if let Some(j) = found {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {message:?}:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn has_log(&self, message: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(&format!("\"message\":\"{message}\"")))
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {limit:?} later:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CHUNKS: usize = 20;

/// A mock whose streams take about 20 × 150 ms, behind a sidecar with `drain_ms`.
async fn setup(drain_ms: u64) -> (MockProvider, Proc) {
    let mock = MockProvider::builder()
        .default_behaviour(
            Behaviour::default()
                .chunk_delay(Duration::from_millis(150))
                .chunks(CHUNKS),
        )
        .start()
        .await
        .unwrap();
    let manifests = format!(
        "{}---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: chat}}\nspec:\n  targets: [{{provider: mock, model: gpt-4o-mini}}]\n",
        support::provider("mock", &mock.base_url(), None)
    );
    (mock, Proc::start(&manifests, drain_ms))
}

async fn chat(
    client: &reqwest::Client,
    proc: &Proc,
    stream: bool,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(proc.url("/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "chat", "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .send()
        .await
}

#[tokio::test]
async fn sigterm_mid_stream_drains_until_the_app_has_gone() {
    let (_mock, mut proc) = setup(1_000).await;
    let app = reqwest::Client::new();
    let response = chat(&app, &proc, true).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = support::SseReader::new(response);
    let first = stream
        .next(Duration::from_secs(10))
        .await
        .expect("a first event");
    assert!(first.contains("chat.completion.chunk"), "{first}");

    let sigterm = Instant::now();
    proc.signal("-TERM");
    proc.wait_log("draining: serving until the app's connections are closed");

    // New requests, on a new connection, while the stream is in flight and after the minimum
    // drain has passed: the app is still running (its connection is open), so the sidecar serves.
    let newcomer = reqwest::Client::new();
    let answer = chat(&newcomer, &proc, false).await.unwrap();
    assert_eq!(answer.status(), 200);
    let rest = stream.rest(Duration::from_secs(20)).await;
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"), "{rest:?}");
    let content = rest.iter().filter(|e| e.contains("\"content\"")).count();
    assert!(content + 1 >= CHUNKS, "the stream lost chunks: {rest:?}");
    assert!(
        sigterm.elapsed() > Duration::from_secs(1),
        "the stream ended before the drain"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        proc.exited().is_none(),
        "exited with the app's connections open"
    );
    let again = chat(&app, &proc, false).await.unwrap();
    assert_eq!(
        again.status(),
        200,
        "the app's own connection after the stream"
    );
    assert!(!proc.has_log("shutting down"));

    // The app stops: its connections close, and the sidecar follows.
    let gone = Instant::now();
    drop(app);
    drop(newcomer);
    let status = proc.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    proc.wait_log("drained: no client connection left");
    println!(
        "SIGTERM to exit: {:?}, of which {:?} after the app's connections closed",
        sigterm.elapsed(),
        gone.elapsed()
    );
}

#[tokio::test]
async fn without_a_drain_sigterm_stops_accepting_and_still_finishes_the_stream() {
    let (_mock, mut proc) = setup(0).await;
    let app = reqwest::Client::new();
    let response = chat(&app, &proc, true).await.unwrap();
    let mut stream = support::SseReader::new(response);
    stream
        .next(Duration::from_secs(10))
        .await
        .expect("a first event");
    proc.signal("-TERM");
    proc.wait_log("shutting down");
    // The listener is closed: a new connection is refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match chat(&reqwest::Client::new(), &proc, false).await {
            Err(e) if e.is_connect() => break,
            _ => assert!(Instant::now() < deadline, "still accepting after SIGTERM"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rest = stream.rest(Duration::from_secs(20)).await;
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"), "{rest:?}");
    let status = proc.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_second_signal_ends_a_drain_at_once() {
    let (_mock, mut proc) = setup(60_000).await;
    let app = reqwest::Client::new();
    assert_eq!(chat(&app, &proc, false).await.unwrap().status(), 200);
    proc.signal("-TERM");
    proc.wait_log("draining: serving until the app's connections are closed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(proc.exited().is_none());
    let second = Instant::now();
    proc.signal("-TERM");
    let status = proc.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    assert!(proc.has_log("interrupted: stopping without waiting"));
    println!("second SIGTERM to exit: {:?}", second.elapsed());
    // Its admin port answered throughout; nothing more to check once it is gone.
    let _ = &proc.admin;
}
