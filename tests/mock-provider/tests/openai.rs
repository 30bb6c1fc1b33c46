//! The mock's OpenAI surface and every knob, through a real HTTP client.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns fail the test loudly"
)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;
use gatehouse_mock_provider::{Behaviour, Fault, MockProvider, StreamGate, refusing_base_url};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the gateway"}
        ],
        "stream": stream,
    })
}

async fn post(mock: &MockProvider, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.base_url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Splits an SSE body into its `data:` payloads, checking the framing on the way.
fn sse_data(text: &str) -> Vec<String> {
    assert!(
        text.ends_with("\n\n"),
        "stream must end with a blank line: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without `data: `: {event:?}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn chat_completion_has_openai_shape_and_echoes_model() {
    let mock = MockProvider::start().await.unwrap();
    let resp = post(&mock, "/chat/completions", &chat_body("gpt-4o-mini", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().contains_key("x-request-id"));
    let v: Value = resp.json().await.unwrap();

    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(v["model"], "gpt-4o-mini");
    assert!(v["system_fingerprint"].as_str().unwrap().starts_with("fp_"));
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(
        choice["message"]["content"],
        "This is gpt-4o-mini mock speaking."
    );
    let usage = &v["usage"];
    // "You are terse." (3) + "Say hello to the gateway" (5)
    assert_eq!(usage["prompt_tokens"], 8);
    assert_eq!(usage["completion_tokens"], 5);
    assert_eq!(usage["total_tokens"], 13);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
}

#[tokio::test]
async fn cached_and_reasoning_tokens_and_max_tokens() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::normal().cached_tokens(6).reasoning_tokens(10));
    let v: Value = post(&mock, "/chat/completions", &chat_body("m", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 6);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        10
    );
    assert_eq!(v["usage"]["completion_tokens"], 15);

    let mut body = chat_body("m", false);
    body["max_tokens"] = json!(2);
    let v: Value = post(&mock, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["message"]["content"], "This is");
    assert_eq!(v["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn stream_framing_without_usage() {
    let mock = MockProvider::start().await.unwrap();
    let resp = post(&mock, "/chat/completions", &chat_body("gpt-4o", true)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = sse_data(&resp.text().await.unwrap());
    // role chunk + 5 content chunks + finish chunk + [DONE]
    assert_eq!(data.len(), 8);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..7]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert_eq!(c["model"], "gpt-4o");
        assert!(
            c.get("usage").is_none(),
            "no usage key without include_usage"
        );
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    assert_eq!(chunks[0]["choices"][0]["finish_reason"], Value::Null);
    let text: String = chunks[1..6]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "This is gpt-4o mock speaking.");
    assert_eq!(chunks[6]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn stream_with_include_usage_ends_with_usage_chunk() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::normal().chunks(3).cached_tokens(2));
    let mut body = chat_body("gpt-4o", true);
    body["stream_options"] = json!({"include_usage": true});
    let data = sse_data(
        &post(&mock, "/chat/completions", &body)
            .await
            .text()
            .await
            .unwrap(),
    );
    // role + 3 content + finish + usage + [DONE]
    assert_eq!(data.len(), 7);
    assert_eq!(data[6], "[DONE]");
    let chunks: Vec<Value> = data[..6]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for c in &chunks[..5] {
        assert_eq!(c["usage"], Value::Null);
        assert!(c.get("usage").is_some(), "usage: null must be present");
    }
    let last = &chunks[5];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 8);
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert_eq!(last["usage"]["total_tokens"], 11);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
}

#[tokio::test]
async fn queued_statuses_then_default() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::rate_limited(7));
    mock.push_n(Behaviour::status(503), 2);
    mock.push(Behaviour::status(500).error_message("boom"));

    let resp = post(&mock, "/chat/completions", &chat_body("m", false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["param"], Value::Null);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Rate limit")
    );

    for _ in 0..2 {
        let resp = post(&mock, "/chat/completions", &chat_body("m", true)).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "server_error");
    }
    let resp = post(&mock, "/chat/completions", &chat_body("m", false)).await;
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "boom");

    let resp = post(&mock, "/chat/completions", &chat_body("m", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.queued(), 0);
    assert_eq!(mock.request_count(), 5);
}

#[tokio::test]
async fn default_behaviour_can_change() {
    let mock = MockProvider::builder()
        .default_behaviour(Behaviour::status(502))
        .start()
        .await
        .unwrap();
    let resp = post(&mock, "/chat/completions", &chat_body("m", false)).await;
    assert_eq!(resp.status(), 502);
    mock.set_default(Behaviour::normal());
    let resp = post(&mock, "/chat/completions", &chat_body("m", false)).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn latency_delays_headers_and_chunk_delay_paces_stream() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::normal().latency(Duration::from_millis(200)));
    let started = Instant::now();
    let resp = post(&mock, "/chat/completions", &chat_body("m", false)).await;
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(200));

    mock.push(
        Behaviour::normal()
            .chunks(3)
            .chunk_delay(Duration::from_millis(50)),
    );
    let started = Instant::now();
    let resp = post(&mock, "/chat/completions", &chat_body("m", true)).await;
    let headers_after = started.elapsed();
    let _ = resp.text().await.unwrap();
    // 3 content chunks + finish + [DONE], each after a delay
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(headers_after < Duration::from_millis(200));
}

#[tokio::test]
async fn cut_stream_aborts_without_done() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::cut_after(2));
    let resp = post(&mock, "/chat/completions", &chat_body("m", true)).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a cut stream must end in an error, not a clean end");
    let text = String::from_utf8(received).unwrap();
    assert!(!text.contains("[DONE]"));
    assert!(!text.contains("\"finish_reason\":\"stop\""));
    assert_eq!(
        text.matches("data: ").count(),
        3,
        "role + 2 content chunks: {text}"
    );

    // A cut non-streamed answer fails while reading the body.
    mock.push(Behaviour::cut_after(0));
    let resp = post(&mock, "/chat/completions", &chat_body("m", false)).await;
    assert!(resp.bytes().await.is_err());
}

#[tokio::test]
async fn hang_never_answers() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::hang());
    let err = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&chat_body("m", false))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn drop_connection_resets_without_response() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::drop_connection());
    let err = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&chat_body("m", false))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout());
    let resp = post(&mock, "/chat/completions", &chat_body("m", false)).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn garbage_and_wrong_content_type() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::garbage());
    let resp = post(&mock, "/chat/completions", &chat_body("m", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(serde_json::from_str::<Value>(&resp.text().await.unwrap()).is_err());

    mock.push(Behaviour::garbage());
    let text = post(&mock, "/chat/completions", &chat_body("m", true))
        .await
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    assert!(serde_json::from_str::<Value>(&data[1]).is_err());

    mock.push(Behaviour::wrong_content_type());
    let resp = post(&mock, "/chat/completions", &chat_body("m", true)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
}

#[tokio::test]
async fn stop_refuses_and_reopen_serves_again() {
    let mock = MockProvider::start().await.unwrap();
    let c = client();
    let ok = c
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    mock.stop().await;
    // The pooled keep-alive connection is reset too, and a new connection is refused.
    let err = c
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err}");
    let err = client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");

    mock.reopen().await.unwrap();
    let ok = client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let err = client()
        .get(format!("{}/models", refusing_base_url().unwrap()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
}

#[tokio::test]
async fn close_listener_refuses_new_connections() {
    let mock = MockProvider::start().await.unwrap();
    mock.close_listener().await;
    let err = client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
}

#[tokio::test]
async fn request_log_records_headers_and_body() {
    let mock = MockProvider::start().await.unwrap();
    let body = chat_body("gpt-4o", false);
    client()
        .post(format!("{}/chat/completions?x=1", mock.base_url()))
        .bearer_auth("sk-test-123")
        .header("x-custom", "yes")
        .json(&body)
        .send()
        .await
        .unwrap();
    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.query.as_deref(), Some("x=1"));
    assert_eq!(r.header("Authorization"), Some("Bearer sk-test-123"));
    assert_eq!(r.bearer(), Some("sk-test-123"));
    assert_eq!(r.header("x-custom"), Some("yes"));
    assert_eq!(r.body.as_ref(), Some(&body));
    assert_eq!(r.model(), Some("gpt-4o"));
    assert_eq!(mock.last_request().as_ref(), Some(r));

    mock.clear();
    assert!(mock.requests().is_empty());
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn record_off_still_counts() {
    let mock = MockProvider::builder().record(false).start().await.unwrap();
    for _ in 0..3 {
        post(&mock, "/chat/completions", &chat_body("m", false)).await;
    }
    assert!(mock.requests().is_empty());
    assert_eq!(mock.request_count(), 3);
    assert!(mock.wait_for_requests(3, Duration::from_millis(10)).await);
}

#[tokio::test]
async fn api_key_is_checked() {
    let mock = MockProvider::with_api_key("sk-right-key-0000")
        .start()
        .await
        .unwrap();
    let url = format!("{}/chat/completions", mock.base_url());

    let resp = client()
        .post(&url)
        .json(&chat_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], Value::Null);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("didn't provide an API key")
    );

    let resp = client()
        .post(&url)
        .bearer_auth("sk-wrong-key-1234")
        .json(&chat_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Incorrect API key provided: sk-***1234"),
        "{message}"
    );
    assert!(!message.contains("wrong-key"));

    let resp = client()
        .post(&url)
        .bearer_auth("sk-right-key-0000")
        .json(&chat_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn invalid_requests_get_openai_400s() {
    let mock = MockProvider::start().await.unwrap();
    let resp = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("parse the JSON")
    );

    let resp = post(&mock, "/chat/completions", &json!({"messages": []})).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "model");

    let resp = post(&mock, "/chat/completions", &json!({"model": "m"})).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "messages");
    assert_eq!(v["error"]["code"], "missing_required_parameter");

    let resp = post(
        &mock,
        "/chat/completions",
        &json!({"model": "m", "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 400);

    let resp = post(
        &mock,
        "/chat/completions",
        &json!({"model": 5, "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 400);

    let resp = post(&mock, "/nope", &json!({})).await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "Invalid URL (POST /v1/nope)");
}

#[tokio::test]
async fn embeddings_float_and_base64_agree() {
    let mock = MockProvider::start().await.unwrap();
    let resp = post(
        &mock,
        "/embeddings",
        &json!({"model": "text-embedding-3-small", "input": ["hello world", "bye"], "dimensions": 8}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["object"], "embedding");
    assert_eq!(v["data"][1]["index"], 1);
    let floats: Vec<f32> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats.len(), 8);

    let v: Value = post(
        &mock,
        "/embeddings",
        &json!({"model": "text-embedding-3-small", "input": "hello world", "dimensions": 8, "encoding_format": "base64"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(decoded, floats);

    let v: Value = post(
        &mock,
        "/embeddings",
        &json!({"model": "text-embedding-3-large", "input": [1, 2, 3]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 3072);
    assert_eq!(v["usage"]["prompt_tokens"], 3);

    let resp = post(&mock, "/embeddings", &json!({"model": "m"})).await;
    assert_eq!(resp.status(), 400);
    let resp = post(
        &mock,
        "/embeddings",
        &json!({"model": "m", "input": "x", "encoding_format": "int8"}),
    )
    .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn models_list_and_retrieve() {
    let mock = MockProvider::builder()
        .models(["gpt-4o", "o3"])
        .start()
        .await
        .unwrap();
    let v: Value = client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][1]["id"], "o3");
    assert_eq!(v["data"][1]["object"], "model");
    assert_eq!(v["data"][1]["owned_by"], "openai");
    let resp = client()
        .get(format!("{}/models/o3", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .get(format!("{}/models/nope", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn gate_holds_stream_after_first_content_chunk() {
    let mock = MockProvider::start().await.unwrap();
    let gate = StreamGate::new();
    mock.push(Behaviour::normal().chunks(3).gate(gate.clone()));
    let resp = post(&mock, "/chat/completions", &chat_body("m", true)).await;
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while text.matches("data: ").count() < 2 {
        let bytes = stream.next().await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    assert_eq!(
        text.matches("data: ").count(),
        2,
        "role + first content chunk"
    );
    // Nothing more while the gate is shut.
    assert!(
        tokio::time::timeout(Duration::from_millis(150), stream.next())
            .await
            .is_err()
    );
    gate.release(1);
    let bytes = stream.next().await.unwrap().unwrap();
    assert!(
        std::str::from_utf8(&bytes)
            .unwrap()
            .contains("\"content\":\" is\"")
    );
    gate.open();
    while let Some(bytes) = stream.next().await {
        text.push_str(std::str::from_utf8(&bytes.unwrap()).unwrap());
    }
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn control_api_drives_the_mock() {
    let mock = MockProvider::start().await.unwrap();
    let c = client();
    let control = |path: &str| format!("{}/__mock/{path}", mock.origin());

    let resp = c
        .post(control("behaviours"))
        .json(&json!([
            {"fault": {"kind": "status", "status": 429, "retry_after_secs": 1}},
            {"fault": {"kind": "cut_after", "chunks": 1}, "chunk_delay_ms": 1}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.queued(), 2);

    let resp = c
        .post(control("behaviours"))
        .json(&json!({"fault": {"kind": "bogus"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let resp = post(&mock, "/chat/completions", &chat_body("m", false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");

    let resp = c
        .put(control("default"))
        .json(&json!({"chunks": 2, "content": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = c
        .get(control("default"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["chunks"], 2);
    assert_eq!(v["fault"], json!({"kind": "none"}));

    let resp = c.delete(control("behaviours")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = post(&mock, "/chat/completions", &chat_body("m", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "This is");

    let requests: Value = c
        .get(control("requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(requests.as_array().unwrap().len(), 2);
    assert_eq!(requests[0]["path"], "/v1/chat/completions");
    assert_eq!(requests[0]["body"]["model"], "m");

    let stats: Value = c
        .get(control("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats, json!({"requests": 2, "queued": 0}));

    c.delete(control("requests")).send().await.unwrap();
    assert_eq!(mock.request_count(), 0);
    assert!(mock.requests().is_empty());
}

#[test]
fn behaviour_json_round_trips() {
    let b = Behaviour::rate_limited(3)
        .latency(Duration::from_millis(20))
        .chunks(9);
    let json = serde_json::to_value(&b).unwrap();
    assert_eq!(json["latency_ms"], 20);
    assert_eq!(json["fault"]["kind"], "status");
    assert_eq!(json["fault"]["retry_after_secs"], 3);
    let back: Behaviour = serde_json::from_value(json).unwrap();
    assert_eq!(back, b);
    let parsed: Behaviour = serde_json::from_value(json!({"fault": {"kind": "hang"}})).unwrap();
    assert_eq!(parsed.fault, Fault::Hang);
    assert!(serde_json::from_value::<Behaviour>(json!({"latncy_ms": 1})).is_err());
}

#[tokio::test]
async fn tool_calls_json_and_stream_and_stream_error() {
    let mock = MockProvider::start().await.unwrap();
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);
    let body = json!({"model": "m", "tools": tools,
        "messages": [{"role": "user", "content": "weather in Paris?"}]});
    let v: Value = post(&mock, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"location":"Paris"}"#);

    // The tool result goes back: the answer is text.
    let follow = json!({"model": "m", "tools": tools, "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]});
    let v: Value = post(&mock, "/chat/completions", &follow)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let data = sse_data(
        &post(&mock, "/chat/completions", &streamed)
            .await
            .text()
            .await
            .unwrap(),
    );
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let first = &chunks[1]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["function"]["name"], "get_weather");
    let args: String = chunks[1..]
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"location":"Paris"}"#);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    mock.push(Behaviour::stream_error(1, 500));
    let data = sse_data(
        &post(&mock, "/chat/completions", &chat_body("m", true))
            .await
            .text()
            .await
            .unwrap(),
    );
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error");
}
