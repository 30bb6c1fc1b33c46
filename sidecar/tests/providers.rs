//! The sidecar in-process against the mock's native provider flavours: each adapter's request,
//! answer, stream, tools and errors, for OpenAI clients and Anthropic (`/v1/messages`) clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use gatehouse_mock_provider::{Behaviour, MockProvider};
use serde_json::{Value, json};
use support::{Sidecar, header, sse_events};

const KEY: &str = "sk-ant-test-0123456789";

fn manifests(kind: &str, endpoint: &str, model: &str, extra: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Secret
metadata: {{name: p-key}}
stringData: {{apiKey: "{KEY}"}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: p}}
spec:
  type: {kind}
  endpoint: {endpoint}
  apiKeySecretRef: {{name: p-key, key: apiKey}}
{extra}  models:
    - name: {model}
      pricing: {{inputPerMillion: "1", outputPerMillion: "2", cachedInputPerMillion: "0.5"}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: chat}}
spec:
  models: ["chat"]
  targets: [{{provider: p, model: {model}}}]
  retry: {{attempts: 1}}
"#
    )
}

async fn anthropic() -> (MockProvider, Sidecar) {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(
        "anthropic",
        &mock.origin(),
        "claude-sonnet-4-5",
        "",
    ))
    .await;
    (mock, sidecar)
}

async fn post(sidecar: &Sidecar, path: &str, body: Value) -> reqwest::Response {
    sidecar
        .client
        .post(sidecar.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}])
}

#[tokio::test]
async fn anthropic_chat_is_translated_both_ways() {
    let (mock, sidecar) = anthropic().await;
    let resp = post(
        &sidecar,
        "/v1/chat/completions",
        json!({"model": "chat", "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Say hello"}], "seed": 7}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-provider"), Some("p"));
    assert!(
        header(&resp, "x-gatehouse-warning")
            .unwrap()
            .contains("'seed'")
    );
    assert!(header(&resp, "x-gatehouse-cost-usd").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(KEY));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    let sent = seen.body.unwrap();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["system"][0]["text"], "Be terse.");
    assert_eq!(sent["max_tokens"], 4096);
}

#[tokio::test]
async fn anthropic_stream_becomes_openai_chunks_with_usage() {
    let (_mock, sidecar) = anthropic().await;
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.is_empty());
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
}

#[tokio::test]
async fn anthropic_tool_calls_round_trip() {
    let (mock, sidecar) = anthropic().await;
    mock.push(Behaviour::tool_call(
        "get_weather",
        json!({"location": "Paris"}),
    ));
    let resp = post(
        &sidecar,
        "/v1/chat/completions",
        json!({"model": "chat", "tools": weather_tools(), "tool_choice": "required",
               "messages": [{"role": "user", "content": "Weather in Paris?"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["location"], "Paris");
    let sent = mock.last_request().unwrap().body.unwrap();
    assert_eq!(sent["tool_choice"]["type"], "any");
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");

    // The result goes back as a tool_result block.
    let resp = post(
        &sidecar,
        "/v1/chat/completions",
        json!({"model": "chat", "tools": weather_tools(), "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "18C"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let sent = mock.last_request().unwrap().body.unwrap();
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(sent["messages"][2]["content"][0]["tool_use_id"], call["id"]);
}

#[tokio::test]
async fn anthropic_errors_map_to_the_client_dialect() {
    let (mock, sidecar) = anthropic().await;
    mock.push(Behaviour::status(400).error_message("max_tokens: too large"));
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too large"),
        "{body}"
    );
    assert_eq!(mock.request_count(), 1, "a 400 is not retried");

    mock.push(Behaviour::status(401));
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("credentials"));

    mock.push(Behaviour::rate_limited(7));
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), Some("7"));

    // A stream cut after the first events ends with an error event, never [DONE].
    mock.push(Behaviour::cut_after(2));
    let resp = sidecar.chat("chat", true).await;
    let events = sse_events(resp).await;
    assert!(events.last().unwrap().contains("\"error\""), "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
}

#[tokio::test]
async fn messages_endpoint_passes_anthropic_through_natively() {
    let (mock, sidecar) = anthropic().await;
    let request = json!({"model": "chat", "max_tokens": 64, "system": "Be terse.",
        "messages": [{"role": "user", "content": "Say hello"}], "top_k": 5});
    let resp = post(&sidecar, "/v1/messages", request.clone()).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert!(body["usage"]["input_tokens"].as_u64().is_some());
    let sent = mock.last_request().unwrap().body.unwrap();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["top_k"], 5, "native: untranslated fields pass");

    let mut streaming = request;
    streaming["stream"] = json!(true);
    let resp = post(&sidecar, "/v1/messages", streaming).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("event: message_start"));
    assert!(
        text.trim_end()
            .ends_with("data: {\"type\":\"message_stop\"}"),
        "{text}"
    );

    let resp = post(
        &sidecar,
        "/v1/messages",
        json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn messages_endpoint_translates_for_openai_targets() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let sidecar = Sidecar::start(&manifests("openai", &mock.base_url(), "gpt-4o-mini", "")).await;
    let request = json!({"model": "chat", "max_tokens": 64, "system": "Be terse.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]});
    let resp = post(&sidecar, "/v1/messages", request.clone()).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["stop_reason"], "end_turn");
    let sent = mock.last_request().unwrap().body.unwrap();
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["messages"][1]["content"], "Say hello");

    let mut streaming = request;
    streaming["stream"] = json!(true);
    let resp = post(&sidecar, "/v1/messages", streaming).await;
    let text = resp.text().await.unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert!(names.contains(&"content_block_delta"));
    assert_eq!(
        &names[names.len() - 2..],
        &["message_delta", "message_stop"],
        "{text}"
    );
    assert!(text.contains("\"output_tokens\""));

    mock.push(Behaviour::status(400).error_message("bad thing"));
    let resp = post(
        &sidecar,
        "/v1/messages",
        json!({"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad thing")
    );
}

#[tokio::test]
async fn azure_uses_the_deployment_url_and_drops_the_prompt_filter_chunk() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(
        "azureOpenAI",
        &mock.origin(),
        "gpt-4o-mini-prod",
        "  azure: {apiVersion: \"2024-10-21\"}\n",
    ))
    .await;
    let resp = post(
        &sidecar,
        "/v1/chat/completions",
        json!({"model": "chat", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.path,
        "/openai/deployments/gpt-4o-mini-prod/chat/completions"
    );
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen.header("api-key"), Some(KEY));
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // Azure opens with a prompt-filter chunk (empty id, no choices); the sidecar drops it.
    for chunk in &chunks {
        let empty = chunk["choices"].as_array().unwrap().is_empty();
        assert!(
            !empty || chunk["usage"].is_object(),
            "chunk with nothing: {chunk}"
        );
    }
    let ids: std::collections::BTreeSet<&str> =
        chunks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one id across the stream: {ids:?}");
    assert!(
        chunks.last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
}
