//! Edges of the request path: a sidecar whose config source has not delivered yet (not ready on
//! the admin port, 503 `not_ready` on the API), and request bodies without a `content-length`
//! held to the body limit as they stream in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use gatehouse_mock_provider::MockProvider;
use serde_json::{Value, json};
use support::{Sidecar, header, provider};

const ROUTE: &str = r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {name: chat}
spec:
  targets: [{provider: p, model: gpt-4o-mini}]
"#;

/// Poll `/metrics` until the source has rejected a config at least once.
async fn wait_rejected(sidecar: &Sidecar) {
    for _ in 0..200 {
        let metrics = sidecar.metrics().await;
        if metrics.contains(r#"gatehouse_config_reloads_total{result="error"}"#) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the manifests source never reported the broken manifest");
}

#[tokio::test]
async fn before_the_first_config_it_is_not_ready_and_answers_503_not_ready() {
    // The only manifest does not parse: the source has run (and said so) but delivered nothing.
    let sidecar = Sidecar::launch("kind: [this is not yaml\n", |_| {}).await;
    wait_rejected(&sidecar).await;
    assert!(!sidecar.running.store.is_ready());

    let admin = |path: &str| sidecar.client.get(sidecar.admin_url(path)).send();
    assert_eq!(admin("/healthz").await.unwrap().status(), 200, "alive");
    let readyz = admin("/readyz").await.unwrap();
    assert_eq!(readyz.status(), 503);
    assert!(readyz.text().await.unwrap().contains("no configuration"));

    let chat = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    let mut stream = chat.clone();
    stream["stream"] = json!(true);
    let requests = [
        ("/v1/chat/completions", Some(chat)),
        ("/v1/chat/completions", Some(stream)),
        (
            "/v1/embeddings",
            Some(json!({"model": "chat", "input": "hi"})),
        ),
        ("/v1/models", None),
    ];
    for (path, body) in requests {
        let resp = match &body {
            Some(body) => sidecar.client.post(sidecar.url(path)).json(body),
            None => sidecar.client.get(sidecar.url(path)),
        }
        .send()
        .await
        .unwrap();
        let what = format!("{path} {body:?}");
        assert_eq!(resp.status(), 503, "{what}");
        assert_eq!(
            header(&resp, "content-type"),
            Some("application/json"),
            "{what}"
        );
        assert!(header(&resp, "x-gatehouse-request-id").is_some(), "{what}");
        assert!(header(&resp, "x-gatehouse-attempts").is_none(), "{what}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], "api_error", "{what}: {body}");
        assert_eq!(body["error"]["code"], "not_ready", "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("configuration"),
            "{what}: {body}"
        );
    }
    // Anthropic clients get their own error shape.
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/messages"))
        .json(&json!({"model": "chat", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "overloaded_error", "{body}");

    // Once a config arrives the same sidecar is ready and serves.
    let mock = MockProvider::start().await.unwrap();
    let manifests = provider("p", &mock.base_url(), None) + ROUTE;
    std::fs::write(sidecar.manifest_path(), manifests).unwrap();
    assert!(sidecar.running.wait_ready(Duration::from_secs(10)).await);
    assert_eq!(admin("/readyz").await.unwrap().status(), 200);
    assert_eq!(sidecar.chat("chat", false).await.status(), 200);
    assert_eq!(mock.request_count(), 1);
}

/// A chat request for `chat` padded with whitespace to exactly `len` bytes.
fn padded_request(len: usize) -> Vec<u8> {
    let mut body =
        br#"{"model":"chat","messages":[{"role":"user","content":"Say hello"}]}"#.to_vec();
    assert!(body.len() <= len);
    body.resize(len, b' ');
    body
}

/// POST `body` in 1000-byte chunks: no `content-length`, `transfer-encoding: chunked`. With
/// `unfinished`, the body never ends after those bytes (the client keeps the request open).
async fn post_chunked(sidecar: &Sidecar, body: Vec<u8>, unfinished: bool) -> reqwest::Response {
    use futures::StreamExt;
    let body = Bytes::from(body);
    let pieces: Vec<Result<Bytes, std::io::Error>> = (0..body.len())
        .step_by(1000)
        .map(|i| Ok(body.slice(i..(i + 1000).min(body.len()))))
        .collect();
    let mut stream = futures::stream::iter(pieces).boxed();
    if unfinished {
        stream = stream.chain(futures::stream::pending()).boxed();
    }
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_chunked_body_is_held_to_the_limit_as_it_streams_in() {
    const LIMIT: usize = 64 * 1024;
    let mock = MockProvider::start().await.unwrap();
    let manifests = provider("p", &mock.base_url(), None) + ROUTE;
    let sidecar = Sidecar::start_with(&manifests, |args| args.max_body_bytes = LIMIT).await;

    // Exactly the limit is accepted: chunked bodies are read, not refused for lacking a length.
    let resp = post_chunked(&sidecar, padded_request(LIMIT), false).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.request_count(), 1);

    // One byte more is refused; so is a body that is still coming once it passed the limit: the
    // sidecar answers without waiting for its end.
    for (len, unfinished) in [(LIMIT + 1, false), (4 * LIMIT, false), (LIMIT + 1, true)] {
        let resp = post_chunked(&sidecar, padded_request(len), unfinished).await;
        assert_eq!(resp.status(), 413, "{len} bytes, unfinished: {unfinished}");
        assert!(header(&resp, "x-gatehouse-request-id").is_some());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["error"]["code"], "request_too_large", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&LIMIT.to_string()),
            "{body}"
        );
    }
    assert_eq!(
        mock.request_count(),
        1,
        "nothing past the limit went upstream"
    );
}
