//! The mock's Anthropic Messages surface through a real HTTP client.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail the test loudly"
)]

use std::time::Duration;

use gatehouse_mock_provider::{Behaviour, MockProvider, StreamGate};
use serde_json::{Value, json};

async fn post(mock: &MockProvider, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/messages", mock.origin()))
        .header("anthropic-version", "2023-06-01")
        .json(body);
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    req.send().await.unwrap()
}

fn body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": "Be terse.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello there"}]}],
        "stream": stream,
    })
}

fn weather_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": stream,
        "tools": [{"name": "get_weather", "description": "Weather now",
                   "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}],
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    })
}

/// `(event name, data)` pairs of an SSE body, checking the framing.
fn events(text: &str) -> Vec<(String, Value)> {
    assert!(text.ends_with("\n\n"), "{text:?}");
    text.split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str(), "event name matches data.type");
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn message_has_anthropic_shape() {
    let mock = MockProvider::with_api_key("sk-ant").start().await.unwrap();
    mock.push(Behaviour::normal().cached_tokens(2));
    let resp = post(&mock, Some("sk-ant"), &body(false)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("request-id"));
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(
        v["content"][0]["text"],
        "This is claude-sonnet-4-5 mock speaking."
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    // "Be terse." (2) + "Say hello there" (3) = 5, of which 2 cached (reported apart).
    assert_eq!(v["usage"]["input_tokens"], 3);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 2);
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 0);
    assert_eq!(v["usage"]["output_tokens"], 5);
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.header("x-api-key"), Some("sk-ant"));
    assert_eq!(sent.path, "/v1/messages");
}

#[tokio::test]
async fn cache_writes_are_reported_apart_from_input_and_reads() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(
        Behaviour::normal()
            .cached_tokens(2)
            .cache_write_tokens(1)
            .reasoning_tokens(4),
    );
    let v: Value = post(&mock, None, &body(false)).await.json().await.unwrap();
    // 5 prompt tokens: 2 read, 1 written, 2 neither; thinking counts as output.
    assert_eq!(v["usage"]["input_tokens"], 2);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 2);
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 1);
    assert_eq!(v["usage"]["output_tokens"], 9);
}

#[tokio::test]
async fn max_tokens_stops_with_max_tokens() {
    let mock = MockProvider::start().await.unwrap();
    let mut b = body(false);
    b["max_tokens"] = json!(2);
    let v: Value = post(&mock, None, &b).await.json().await.unwrap();
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["content"][0]["text"], "This is");
}

#[tokio::test]
async fn stream_events_in_order() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::normal().chunks(3));
    let resp = post(&mock, None, &body(true)).await;
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let evs = events(&resp.text().await.unwrap());
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(evs[0].1["message"]["usage"]["input_tokens"], 5);
    assert_eq!(
        evs[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = evs[3..6]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, "This is claude-sonnet-4-5");
    assert_eq!(evs[7].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(evs[7].1["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn weather_prompt_gets_tool_use_then_text_after_result() {
    let mock = MockProvider::start().await.unwrap();
    let v: Value = post(&mock, None, &weather_body(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], json!({"location": "Paris"}));

    let mut follow = weather_body(false);
    follow["messages"] = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [block]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"], "content": "sunny"}]},
    ]);
    let v: Value = post(&mock, None, &follow).await.json().await.unwrap();
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["content"][0]["type"], "text");
}

#[tokio::test]
async fn streamed_tool_use_sends_partial_json() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::tool_call("lookup", json!({"q": "rust"})));
    let evs = events(&post(&mock, None, &body(true)).await.text().await.unwrap());
    assert_eq!(evs[1].1["content_block"]["type"], "tool_use");
    assert_eq!(evs[1].1["content_block"]["name"], "lookup");
    assert_eq!(evs[1].1["content_block"]["input"], json!({}));
    let json: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        json!({"q": "rust"})
    );
    let delta = evs.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn auth_version_and_validation_errors() {
    let mock = MockProvider::with_api_key("sk-ant").start().await.unwrap();
    let resp = post(&mock, None, &body(false)).await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    let resp = post(&mock, Some("sk-wrong"), &body(false)).await;
    assert_eq!(resp.status(), 401);

    let resp = reqwest::Client::new()
        .post(format!("{}/v1/messages", mock.origin()))
        .header("x-api-key", "sk-ant")
        .json(&body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "anthropic-version: header is required"
    );

    for missing in ["max_tokens", "messages", "model"] {
        let mut b = body(false);
        b.as_object_mut().unwrap().remove(missing);
        let resp = post(&mock, Some("sk-ant"), &b).await;
        assert_eq!(resp.status(), 400, "{missing}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], format!("{missing}: Field required"));
    }
}

#[tokio::test]
async fn status_faults_take_anthropic_error_shapes() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::rate_limited(3));
    mock.push(Behaviour::status(529));
    mock.push(Behaviour::status(500));
    let resp = post(&mock, None, &body(false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let resp = post(&mock, None, &body(false)).await;
    assert_eq!(resp.status(), 529);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "overloaded_error"
    );
    let resp = post(&mock, None, &body(false)).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "api_error"
    );
}

#[tokio::test]
async fn stream_faults_cut_error_garbage_gate() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::cut_after(1));
    let resp = post(&mock, None, &body(true)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.text().await.is_err(),
        "a cut stream is an error, not an end"
    );

    mock.push(Behaviour::stream_error(2, 529));
    let evs = events(&post(&mock, None, &body(true)).await.text().await.unwrap());
    let last = evs.last().unwrap();
    assert_eq!(last.0, "error");
    assert_eq!(last.1["error"]["type"], "overloaded_error");
    assert_eq!(
        evs.iter()
            .filter(|(n, _)| n == "content_block_delta")
            .count(),
        2
    );

    mock.push(Behaviour::garbage());
    let text = post(&mock, None, &body(true)).await.text().await.unwrap();
    assert!(text.contains("<<not json"));

    mock.push(Behaviour::wrong_content_type());
    let resp = post(&mock, None, &body(false)).await;
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    let gate = StreamGate::new();
    mock.push(Behaviour::normal().chunks(3).gate(gate.clone()));
    let mut resp = post(&mock, None, &body(true)).await;
    let mut seen = String::new();
    while !seen.contains("content_block_delta") {
        seen.push_str(&String::from_utf8_lossy(
            &resp.chunk().await.unwrap().unwrap(),
        ));
    }
    let held = tokio::time::timeout(Duration::from_millis(100), resp.chunk()).await;
    assert!(held.is_err(), "the gate holds the second delta");
    gate.open();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

#[tokio::test]
async fn structured_output_schemas_are_checked_like_claudes() {
    let mock = MockProvider::start().await.unwrap();
    let with_schema = |schema: Value| {
        let mut b = body(false);
        b["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
        b
    };
    let ok = json!({"type": "object", "properties": {"n": {"type": "integer"}},
                    "required": ["n"], "additionalProperties": false});
    let resp = post(&mock, None, &with_schema(ok)).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(v["content"][0]["text"].as_str().unwrap()).unwrap(),
        json!({"n": 1})
    );
    for (schema, message) in [
        (
            json!({"type": "object", "additionalProperties": false,
                   "properties": {"n": {"type": "integer", "minimum": 0}}}),
            "output_config.format.schema: For 'integer' type, property 'minimum' is not supported",
        ),
        (
            json!({"type": "object", "additionalProperties": false,
                   "properties": {"s": {"type": ["string", "null"], "maxLength": 3}}}),
            "output_config.format.schema: For 'string' type, property 'maxLength' is not supported",
        ),
        (
            json!({"type": "object", "properties": {}}),
            "output_config.format.schema: For 'object' type, 'additionalProperties' must be explicitly set to false",
        ),
    ] {
        let resp = post(&mock, None, &with_schema(schema)).await;
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["message"], message);
    }
}
