//! The end-of-request record: every request is recorded once in the metrics (and the access
//! log), whatever happened to it: answered, refused upstream, or abandoned by its client while
//! the attempts ran or in the middle of a stream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::time::Duration;

use gatehouse_mock_provider::{Behaviour, MockProvider, StreamGate};
use support::{Sidecar, SseReader, provider};

const KEY: &str = "sk-record-test-0123456789";
const WAIT: Duration = Duration::from_secs(5);

async fn setup() -> (MockProvider, Sidecar) {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let manifests = format!(
        r#"{}---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: chat}}
spec:
  models: ["chat"]
  targets: [{{provider: p, model: gpt-4o-mini}}]
  retry: {{attempts: 1}}
"#,
        provider("p", &mock.base_url(), Some(KEY)),
    );
    (mock, Sidecar::start(&manifests).await)
}

/// Wait until the metrics contain every one of `needles`; fail with the metrics otherwise.
async fn metrics_with(sidecar: &Sidecar, needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = sidecar.metrics().await;
        if needles.iter().all(|n| metrics.contains(n)) {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing one of {needles:?} in\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_leaving_mid_stream_is_recorded_once() {
    let (mock, sidecar) = setup().await;
    let gate = StreamGate::new();
    mock.push(
        Behaviour::normal()
            .content("one two three")
            .gate(gate.clone()),
    );
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp);
    assert!(reader.next(WAIT).await.is_some());
    drop(reader);
    let disconnect = r#"gatehouse_client_disconnects_total{route="chat"} 1"#;
    let request =
        r#"gatehouse_requests_total{route="chat",provider="p",model="gpt-4o-mini",status="200"} 1"#;
    metrics_with(&sidecar, &[disconnect, request]).await;
    // The upstream goes on, but the request already ended: nothing is recorded twice.
    gate.open();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = metrics_with(&sidecar, &[disconnect, request]).await;
    assert!(
        !metrics.contains("gatehouse_streams_broken_total{"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gatehouse_upstream_attempts_total{provider="p",outcome="success"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_leaving_during_the_attempt_is_recorded_once() {
    let (mock, sidecar) = setup().await;
    mock.push(Behaviour::normal().latency(Duration::from_secs(2)));
    let sent = sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .timeout(Duration::from_millis(200))
        .json(
            &serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await;
    assert!(sent.is_err(), "the client gave up first");
    let metrics = metrics_with(
        &sidecar,
        &[
            r#"gatehouse_client_disconnects_total{route="chat"} 1"#,
            r#"gatehouse_requests_total{route="chat",provider="",model="",status="499"} 1"#,
        ],
    )
    .await;
    assert!(!metrics.contains(r#"status="200""#), "{metrics}");
}

#[tokio::test]
async fn an_upstream_refusal_counts_as_a_client_error_attempt() {
    let (mock, sidecar) = setup().await;
    mock.push(Behaviour::status(422));
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 422);
    let metrics = metrics_with(
        &sidecar,
        &[r#"gatehouse_upstream_attempts_total{provider="p",outcome="client_error"} 1"#],
    )
    .await;
    assert!(!metrics.contains(r#"outcome="success""#), "{metrics}");
    assert_eq!(mock.request_count(), 1, "a refusal is not retried");
}
