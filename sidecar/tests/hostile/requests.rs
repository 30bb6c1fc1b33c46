//! Hostile request bodies: million-element arrays, thousands of unknown parameters, maximum-size
//! bodies at once, bodies that stop half-way; and the `/v1/messages` edge cases of issue #9.
//!
//! Memory is asserted as the peak RSS above idle (`VmHWM` after `clear_refs`, minus `VmRSS` before
//! the request) against a multiple of the body's size: the issue's target is "at most about 4x the
//! body size above idle" for one maximum-size request. The body is read once (1x) and, for a target
//! of the client's own dialect, copied once with `model` spliced (1x); everything else is small.

use std::time::{Duration, Instant};

use gatehouse_mock_provider::{Behaviour, MockProvider};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::proc::SidecarProc;

const KEY: &str = "sk-hostile-requests-0123456789";
/// The sidecar's default `--max-body-bytes`.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// One OpenAI-compatible provider (`pass` route), one Anthropic (`claude`), one Gemini (`gemini`)
/// and one Bedrock (`bedrock`), all served by `mock`; `openai-for-messages` sends Anthropic
/// clients to the OpenAI one (translated).
fn manifests(mock: &MockProvider) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Secret
metadata: {{name: k}}
stringData: {{apiKey: "{KEY}", aws: "AKIDHOSTILEREQUESTS:hostile-requests-secret"}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: oai}}
spec:
  type: openaiCompatible
  endpoint: {base}
  apiKeySecretRef: {{name: k, key: apiKey}}
  models: [{{name: gpt-4o-mini, pricing: {{inputPerMillion: "1", outputPerMillion: "2"}}}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: ant}}
spec:
  type: anthropic
  endpoint: {origin}
  apiKeySecretRef: {{name: k, key: apiKey}}
  models: [{{name: claude-sonnet-4-5, pricing: {{inputPerMillion: "1", outputPerMillion: "2"}}}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: gem}}
spec:
  type: gemini
  endpoint: {origin}
  apiKeySecretRef: {{name: k, key: apiKey}}
  models: [{{name: gemini-2.0-flash, pricing: {{inputPerMillion: "1", outputPerMillion: "2"}}}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: bed}}
spec:
  type: bedrock
  endpoint: {origin}
  bedrock: {{region: us-east-1}}
  apiKeySecretRef: {{name: k, key: aws}}
  models: [{{name: anthropic.claude-3-haiku, pricing: {{inputPerMillion: "1", outputPerMillion: "2"}}}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: pass}}
spec:
  models: ["pass", "openai-for-messages"]
  targets: [{{provider: oai, model: gpt-4o-mini}}]
  retry: {{attempts: 1}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: claude}}
spec:
  models: ["claude"]
  targets: [{{provider: ant, model: claude-sonnet-4-5}}]
  retry: {{attempts: 1}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: gemini}}
spec:
  models: ["gemini"]
  targets: [{{provider: gem, model: gemini-2.0-flash}}]
  retry: {{attempts: 1}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: bedrock}}
spec:
  models: ["bedrock"]
  targets: [{{provider: bed, model: anthropic.claude-3-haiku}}]
  retry: {{attempts: 1}}
"#,
        base = mock.base_url(),
        origin = mock.origin(),
    )
}

/// A body of just under `max` bytes: `model`, `max_tokens`, and as many one-letter user messages
/// as fit (about a million at 32 MiB).
fn million_messages(model: &str, max: usize) -> Vec<u8> {
    let mut body = format!(r#"{{"model":"{model}","max_tokens":16,"messages":["#).into_bytes();
    let message: &[u8] = br#"{"role":"user","content":"x"},"#;
    while body.len() + message.len() + 2 <= max {
        body.extend_from_slice(message);
    }
    body.pop();
    body.extend_from_slice(b"]}");
    body
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-api-key", "client-key")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Peak RSS above idle, in KiB, while `f` runs one request.
async fn peak_above_idle<F: Future<Output = reqwest::Response>>(
    sidecar: &SidecarProc,
    f: F,
) -> (u64, reqwest::StatusCode) {
    let idle = sidecar.rss_kib();
    sidecar.reset_peak();
    let resp = f.await;
    let status = resp.status();
    resp.bytes().await.unwrap();
    let peak = sidecar.peak_rss_kib().saturating_sub(idle);
    // What the allocator gave back (docs/benchmarks.md compares allocators with these lines).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sidecar.rss_kib().saturating_sub(idle);
    eprintln!("rss: idle {idle} KiB, peak +{peak} KiB, 1 s after the answer +{after} KiB");
    (peak, status)
}

async fn quiet_mock() -> MockProvider {
    // Not recording: the mock keeps no copy of the big bodies (it runs in the test process).
    MockProvider::with_api_key(KEY)
        .record(false)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maximum_size_body_of_a_million_messages_stays_within_four_times_its_size() {
    let mock = quiet_mock().await;
    let sidecar = SidecarProc::start(&manifests(&mock), &[]);
    let client = reqwest::Client::new();
    // Warm up every path once, so that idle already holds what any request keeps (pools, caches).
    for (path, model) in [
        ("/v1/chat/completions", "pass"),
        ("/v1/messages", "claude"),
        ("/v1/messages", "openai-for-messages"),
    ] {
        let small = million_messages(model, 4096);
        assert_eq!(post(&client, &sidecar.url(path), small).await.status(), 200);
    }

    let body_kib = (MAX_BODY / 1024) as u64;
    let target = 4 * body_kib;
    for (case, path, model, status) in [
        ("OpenAI passthrough", "/v1/chat/completions", "pass", 200),
        ("/v1/messages to Anthropic", "/v1/messages", "claude", 200),
        (
            "unknown model",
            "/v1/chat/completions",
            "no-such-model",
            404,
        ),
        (
            "/v1/messages unknown model",
            "/v1/messages",
            "no-such-model",
            404,
        ),
    ] {
        let body = million_messages(model, MAX_BODY);
        assert!(body.len() > MAX_BODY - 64 && body.len() <= MAX_BODY);
        let (above, got) = peak_above_idle(&sidecar, post(&client, &sidecar.url(path), body)).await;
        eprintln!("{case}: peak {above} KiB above idle for a {body_kib} KiB body");
        assert_eq!(got, status, "{case}");
        assert!(
            above <= target,
            "{case}: peak RSS {above} KiB above idle, more than 4x the {body_kib} KiB body"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_million_message_bodies_are_served_and_their_memory_bounded() {
    let mock = quiet_mock().await;
    let sidecar = SidecarProc::start(&manifests(&mock), &[]);
    let client = reqwest::Client::new();
    let translated = [
        (
            "/v1/messages to OpenAI",
            "/v1/messages",
            "openai-for-messages",
        ),
        ("OpenAI to Anthropic", "/v1/chat/completions", "claude"),
        ("OpenAI to Gemini", "/v1/chat/completions", "gemini"),
        ("OpenAI to Bedrock", "/v1/chat/completions", "bedrock"),
        ("/v1/messages to Gemini", "/v1/messages", "gemini"),
        ("/v1/messages to Bedrock", "/v1/messages", "bedrock"),
    ];
    for (case, path, model) in translated {
        let small = million_messages(model, 4096);
        let resp = post(&client, &sidecar.url(path), small).await;
        assert_eq!(resp.status(), 200, "{case}: {}", resp.text().await.unwrap());
    }
    let body_kib = (MAX_BODY / 1024) as u64;

    // Translated message by message from the bytes (docs/architecture.md): the body (1x), the
    // translation written as it goes (about 1x for these messages; `/v1/messages` to Gemini or
    // Bedrock goes through OpenAI's bytes first), one message's tree at a time.
    for (case, path, model) in translated {
        let body = million_messages(model, MAX_BODY);
        let url = sidecar.url(path);
        let (above, status) = peak_above_idle(&sidecar, post(&client, &url, body)).await;
        eprintln!("{case}: peak {above} KiB above idle for a {body_kib} KiB body");
        assert_eq!(status, 200, "{case}");
        assert!(
            above <= 4 * body_kib,
            "{case}: peak RSS {above} KiB above idle, more than 4x the {body_kib} KiB body"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_maximum_size_bodies_are_shed_beyond_the_budget() {
    let mock = quiet_mock().await;
    // Each answer takes a while, so the bodies admitted hold their share of the budget while the
    // others arrive.
    mock.set_default(Behaviour::normal().latency(Duration::from_secs(2)));
    let budget = MAX_BODY * 5 / 2;
    let sidecar = SidecarProc::start(
        &manifests(&mock),
        &["--max-inflight-body-bytes", &budget.to_string()],
    );
    let client = reqwest::Client::new();
    let idle = sidecar.rss_kib();
    sidecar.reset_peak();
    let body = million_messages("pass", MAX_BODY);
    let requests = (0..8).map(|_| {
        let client = client.clone();
        let url = sidecar.url("/v1/chat/completions");
        let body = body.clone();
        tokio::spawn(async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match resp {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    Some((status, retry_after, body))
                }
                // A shed request is answered before its body is read: the sidecar drains the rest
                // so the 503 reaches the client instead of a reset under its upload.
                Err(e) => panic!("a request got no answer: {e}"),
            }
        })
    });
    let results: Vec<_> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let above = sidecar.peak_rss_kib().saturating_sub(idle);
    let ok = results.iter().flatten().filter(|r| r.0 == 200).count();
    let shed: Vec<_> = results.iter().flatten().filter(|r| r.0 == 503).collect();
    eprintln!(
        "8 concurrent: {ok} served, {} shed ({} cut), peak {above} KiB above idle",
        shed.len(),
        results.iter().filter(|r| r.is_none()).count()
    );
    assert!(
        (1..=2).contains(&ok),
        "the budget holds two bodies: {ok} served"
    );
    assert!(!shed.is_empty(), "nothing was shed");
    for (status, retry_after, body) in &shed {
        assert_eq!(*status, 503);
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
    }
    assert!(
        results.iter().flatten().all(|r| r.0 == 200 || r.0 == 503),
        "{results:?}"
    );
    // Two bodies in flight, each at most 4x its size; the shed ones cost nothing.
    let bound = 2 * 4 * (MAX_BODY / 1024) as u64;
    assert!(
        above <= bound,
        "peak RSS {above} KiB above idle, over {bound} KiB"
    );

    // The budget is given back: the next request is served.
    mock.set_default(Behaviour::normal());
    let resp = post(
        &client,
        &sidecar.url("/v1/chat/completions"),
        million_messages("pass", 4096),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_stay_responsive_while_a_big_body_is_parsed() {
    let mock = quiet_mock().await;
    let sidecar = SidecarProc::start(&manifests(&mock), &[]);
    let client = reqwest::Client::new();
    // A translation of the whole body: an OpenAI client to an Anthropic target, a million
    // messages parsed and written one by one.
    let big = tokio::spawn({
        let (client, url) = (client.clone(), sidecar.url("/v1/chat/completions"));
        async move { post(&client, &url, million_messages("claude", MAX_BODY)).await }
    });
    let mut slowest = Duration::ZERO;
    let mut samples = 0;
    while !big.is_finished() {
        let sent = Instant::now();
        let resp = client.get(sidecar.url("/v1/models")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        slowest = slowest.max(sent.elapsed());
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(big.await.unwrap().status(), 200);
    eprintln!("/v1/models: {samples} answers during the big request, slowest {slowest:?}");
    assert!(samples >= 3, "the big request was over too soon to tell");
    // Generous: a loaded 2-core machine; a worker blocked by the parse took seconds.
    assert!(
        slowest < Duration::from_secs(2),
        "/v1/models took {slowest:?}"
    );
}

/// Send the head and part of a body, then nothing; return what the sidecar answered and whether
/// it then closed the connection.
async fn stall(addr: &str, path: &str) -> (String, Duration) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"model\":\"pass\","
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let sent = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the connection was neither answered nor closed")
        .unwrap();
    (
        String::from_utf8_lossy(&answer).into_owned(),
        sent.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_half_way_gets_408_and_the_connection_is_closed() {
    let mock = quiet_mock().await;
    let sidecar = SidecarProc::start(&manifests(&mock), &["--body-read-timeout-ms", "300"]);
    for (path, check) in [
        (
            "/v1/chat/completions",
            (|v: &Value| v["error"]["code"] == "request_timeout") as fn(&Value) -> bool,
        ),
        ("/v1/messages", |v: &Value| {
            v["type"] == "error" && v["error"]["type"] == "timeout_error"
        }),
    ] {
        // read_to_end returning at all proves the connection was closed.
        let (answer, took) = stall(&sidecar.proxy, path).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        assert!(check(&body), "{path}: {answer}");
        assert!(took < Duration::from_secs(10), "{path}: took {took:?}");
    }
    // The sidecar still serves.
    let resp = post(
        &reqwest::Client::new(),
        &sidecar.url("/v1/chat/completions"),
        million_messages("pass", 1024),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

/// A client that trickles its body one byte at a time, each just inside the progress timeout,
/// would hold its declared length of the in-flight budget for ever: the whole-body deadline cuts
/// it off with 408, and the budget it held is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_at_the_whole_body_deadline_and_its_budget_returned() {
    let mock = quiet_mock().await;
    // The budget holds exactly one declared 1 MiB body.
    let declared = 1024 * 1024;
    let sidecar = SidecarProc::start(
        &manifests(&mock),
        &[
            "--body-read-timeout-ms",
            "400",
            "--body-deadline-ms",
            "1500",
            "--max-inflight-body-bytes",
            &declared.to_string(),
        ],
    );
    let stream = tokio::net::TcpStream::connect(&sidecar.proxy)
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let sent = Instant::now();
    // The answer is read as it comes, so a reset after it cannot swallow it.
    let answer = tokio::spawn(async move {
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut answer)).await;
        (
            String::from_utf8_lossy(&answer).into_owned(),
            Instant::now(),
        )
    });
    let trickle = tokio::spawn(async move {
        // One byte every 200 ms: always inside the 400 ms progress timeout.
        while sent.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    // While it trickles, the budget is taken: another body is shed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let shed = post(
        &client,
        &sidecar.url("/v1/chat/completions"),
        million_messages("pass", 1024),
    )
    .await;
    assert_eq!(
        shed.status(),
        503,
        "the trickled body did not hold the budget"
    );
    let (answer, answered) = answer.await.unwrap();
    trickle.abort();
    let took = answered.duration_since(sent);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took < Duration::from_secs(10),
        "the trickled body was not cut off at the deadline ({took:?})"
    );
    // The budget is back: the same request is served now.
    let resp = post(
        &client,
        &sidecar.url("/v1/chat/completions"),
        million_messages("pass", 1024),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_unknown_parameters_make_a_short_warning_and_the_request_works() {
    let mock = quiet_mock().await;
    let sidecar = SidecarProc::start(&manifests(&mock), &[]);
    let mut body = serde_json::Map::new();
    body.insert("model".into(), json!("claude"));
    body.insert(
        "messages".into(),
        json!([{"role": "user", "content": "hi"}]),
    );
    for i in 0..10_000 {
        body.insert(format!("unknown_parameter_{i}"), json!(i));
    }
    // An OpenAI client to an Anthropic target: every unknown parameter is dropped with a warning.
    let resp = reqwest::Client::new()
        .post(sidecar.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let warning = resp
        .headers()
        .get("x-gatehouse-warning")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(warning.len() <= 1024, "{} bytes", warning.len());
    assert!(
        warning.starts_with("10000 parameters are not supported by anthropic and were dropped:"),
        "{warning}"
    );
    assert!(warning.contains("(+"), "{warning}");
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_only_route_takes_documents_server_tools_and_thinking() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let sidecar = SidecarProc::start(&manifests(&mock), &[]);
    let client = reqwest::Client::new();
    let request = |model: &str| {
        json!({
            "model": model,
            "max_tokens": 2048,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}],
            "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "A memo."}},
                {"type": "text", "text": "Summarize the memo."}
            ]}]
        })
    };
    // Anthropic target: everything goes through as sent, and nothing is said to be dropped.
    let resp = client
        .post(sidecar.url("/v1/messages"))
        .json(&request("claude"))
        .send()
        .await
        .unwrap();
    let warning = resp.headers().get("x-gatehouse-warning").cloned();
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(warning, None);
    assert_eq!(answer["type"], "message");
    let seen = mock.last_request().unwrap().body.unwrap();
    assert_eq!(seen["model"], "claude-sonnet-4-5");
    assert_eq!(seen["thinking"]["budget_tokens"], 1024);
    assert_eq!(seen["tools"][0]["type"], "web_search_20250305");
    assert_eq!(seen["messages"][0]["content"][0]["type"], "document");

    // An OpenAI target cannot take a document: the clear 400, in Anthropic's shape.
    let resp = client
        .post(sidecar.url("/v1/messages"))
        .json(&request("openai-for-messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only available when the route's target is anthropic"),
        "{body}"
    );
    // And there `thinking` is dropped, and the warning says so.
    let resp = client
        .post(sidecar.url("/v1/messages"))
        .json(&json!({
            "model": "openai-for-messages",
            "max_tokens": 64,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let warning = resp.headers()["x-gatehouse-warning"].to_str().unwrap();
    assert!(warning.contains("'thinking'"), "{warning}");
}
