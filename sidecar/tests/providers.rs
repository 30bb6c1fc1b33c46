//! The sidecar in-process against the mock's native provider flavours: each adapter's request,
//! answer, stream, tools and errors, for OpenAI clients and Anthropic (`/v1/messages`) clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use gatehouse_mock_provider::{Behaviour, Fault, MockProvider};
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

const AWS_KEY: &str = "AKIDMOCKEXAMPLE:mock-secret-access-key";

/// A bedrock provider signing as `AWS_KEY` in us-east-1, a mock that checks both, and a route
/// `chat` to the embedding model `model`.
async fn bedrock_embeddings(model: &str) -> (MockProvider, Sidecar) {
    let mock = MockProvider::builder()
        .aws_credentials("AKIDMOCKEXAMPLE", "mock-secret-access-key")
        .aws_region("us-east-1")
        .start()
        .await
        .unwrap();
    let manifests = manifests(
        "bedrock",
        &mock.origin(),
        model,
        "  bedrock: {region: us-east-1}\n",
    )
    .replace(KEY, AWS_KEY);
    let sidecar = Sidecar::start(&manifests).await;
    (mock, sidecar)
}

async fn embed(sidecar: &Sidecar, body: Value) -> reqwest::Response {
    let mut body = body;
    body["model"] = json!("chat");
    post(sidecar, "/v1/embeddings", body).await
}

fn vectors(body: &Value) -> Vec<Value> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            d["embedding"].clone()
        })
        .collect()
}

#[tokio::test]
async fn bedrock_titan_embeddings_take_one_signed_call_per_input_in_order() {
    let (mock, sidecar) = bedrock_embeddings("amazon.titan-embed-text-v2:0").await;
    let inputs = [
        "alpha",
        "bravo charlie",
        "delta echo foxtrot",
        "golf",
        "hotel india",
    ];
    let resp = embed(&sidecar, json!({"input": inputs, "user": "u-7"})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-provider"), Some("p"));
    assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("1"));
    assert!(header(&resp, "x-gatehouse-cost-usd").is_some());
    assert!(
        header(&resp, "x-gatehouse-warning")
            .unwrap()
            .contains("'user'")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "amazon.titan-embed-text-v2:0");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 9, "total_tokens": 9})
    );
    let list = vectors(&body);
    assert_eq!(list.len(), inputs.len());

    // One InvokeModel call per input, each signed for bedrock in us-east-1.
    let seen = mock.requests();
    assert_eq!(seen.len(), inputs.len());
    let mut sent: Vec<&str> = Vec::new();
    for request in &seen {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("accept"), Some("application/json"));
        let auth = request.header("authorization").unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDMOCKEXAMPLE/")
                && auth.contains("/us-east-1/bedrock/aws4_request"),
            "{auth}"
        );
        assert!(!request.body_text.contains("mock-secret-access-key"));
        let b = request.body.as_ref().unwrap();
        assert_eq!(b["normalize"], true);
        assert!(b.get("dimensions").is_none());
        sent.push(b["inputText"].as_str().unwrap());
    }
    sent.sort_unstable();
    let mut expected = inputs.to_vec();
    expected.sort_unstable();
    assert_eq!(sent, expected);

    // Whatever order the calls finished in, data[i] is the vector of input i.
    for (i, input) in inputs.iter().enumerate() {
        let single: Value = embed(&sidecar, json!({"input": input}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(vectors(&single), [list[i].clone()], "input {i}");
    }
}

#[tokio::test]
async fn bedrock_titan_dimensions_and_base64() {
    let (mock, sidecar) = bedrock_embeddings("amazon.titan-embed-text-v2:0").await;
    let floats: Value = embed(&sidecar, json!({"input": ["a b", "c"], "dimensions": 256}))
        .await
        .json()
        .await
        .unwrap();
    let floats = vectors(&floats);
    assert_eq!(floats[0].as_array().unwrap().len(), 256);
    assert_eq!(
        mock.last_request().unwrap().body.unwrap()["dimensions"],
        256
    );

    let resp = embed(
        &sidecar,
        json!({"input": ["a b", "c"], "dimensions": 256, "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let encoded: Value = resp.json().await.unwrap();
    use base64::Engine;
    for (f, b) in floats.iter().zip(vectors(&encoded)) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b.as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let expected: Vec<f32> = f
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(decoded, expected);
    }

    // A size Titan V2 does not make is refused before any call.
    mock.clear();
    let resp = embed(&sidecar, json!({"input": "x", "dimensions": 300})).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("256, 512, 1024"), "{message}");
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn bedrock_cohere_embeddings_batch_texts_and_read_usage_from_the_header() {
    let (mock, sidecar) = bedrock_embeddings("us.cohere.embed-english-v3").await;
    let resp = embed(
        &sidecar,
        json!({"input": ["first text", "second one here"], "encoding_format": "float"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "total_tokens": 5})
    );
    let list = vectors(&body);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].as_array().unwrap().len(), 1024);
    assert_ne!(list[0], list[1]);
    let seen = mock.requests();
    assert_eq!(seen.len(), 1, "one call for both texts");
    assert_eq!(seen[0].path, "/model/us.cohere.embed-english-v3/invoke");
    assert_eq!(
        seen[0].body,
        Some(json!({"texts": ["first text", "second one here"], "input_type": "search_document"}))
    );

    // `input_type` from the client (the SDKs' extra_body) wins over the default.
    let resp = embed(
        &sidecar,
        json!({"input": "q", "input_type": "search_query"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        mock.last_request().unwrap().body.unwrap()["input_type"],
        "search_query"
    );
}

#[tokio::test]
async fn bedrock_embedding_errors_map_like_chat() {
    let (mock, sidecar) = bedrock_embeddings("amazon.titan-embed-text-v2:0").await;
    // Bedrock takes text: token ids are decoded (cl100k_base); ids that are no tokens are a
    // clear 400, with no call.
    for input in [json!([1_000_000_000]), json!([[1, 2], [1_000_000_000]])] {
        let resp = embed(&sidecar, json!({"input": input})).await;
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("token ids"),
            "{body}"
        );
    }
    assert_eq!(mock.request_count(), 0);
    // "hello IoT" in cl100k_base.
    let resp = embed(&sidecar, json!({"input": [[15339, 50180]]})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        mock.requests()[0].body.as_ref().unwrap()["inputText"],
        "hello IoT"
    );
    mock.clear();

    // ValidationException: the same status and the provider's message, not retried.
    mock.push(Behaviour::status(400).error_message("Malformed input request: too long"));
    let resp = embed(&sidecar, json!({"input": "x"})).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Malformed input request: too long"),
        "{body}"
    );
    assert_eq!(mock.request_count(), 1);

    // AccessDenied: 502 naming credentials, the upstream body dropped.
    mock.push(Behaviour::status(403).error_message("echo AKIDMOCKEXAMPLE"));
    let resp = embed(&sidecar, json!({"input": "x"})).await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(text.contains("credentials"), "{text}");
    assert!(!text.contains("AKIDMOCKEXAMPLE") && !text.contains("mock-secret"));

    // ThrottlingException: 429. Bedrock says no delay (the mock sends none whatever it is
    // asked), so the sidecar's default Retry-After.
    mock.push(Behaviour::rate_limited(3));
    let resp = embed(&sidecar, json!({"input": "x"})).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), Some("1"));

    // One failing call of a fanned-out request fails the attempt: 502, never a partial list.
    mock.clear();
    mock.push_n(Behaviour::normal(), 2);
    mock.push(Behaviour::status(500));
    let resp = embed(&sidecar, json!({"input": ["a", "b", "c"]})).await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_failed");
}

const BEDROCK_MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// One provider of each flavour on one mock, each under its own key.
#[derive(Clone, Copy)]
struct Flavour {
    /// Provider name, and the suffix of its routes `solo-<name>` (that provider only, one
    /// attempt) and `fo-<name>` (that provider, then `o`, an openai provider with the right key).
    name: &'static str,
    kind: &'static str,
    model: &'static str,
    /// The key in the provider's Secret.
    key: &'static str,
    extra: &'static str,
}

/// A mock that wants `KEY` (and the AWS key id of `AWS_KEY` for bedrock), and a sidecar with a
/// provider per flavour plus `o`.
async fn flavours(flavours: &[Flavour]) -> (MockProvider, Sidecar) {
    let mock = MockProvider::with_api_key(KEY)
        .aws_credentials("AKIDMOCKEXAMPLE", "mock-secret-access-key")
        .aws_region("us-east-1")
        .start()
        .await
        .unwrap();
    let mut yaml =
        String::from("---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData:\n");
    yaml.push_str(&format!("  o: \"{KEY}\"\n"));
    for f in flavours {
        yaml.push_str(&format!("  {}: \"{}\"\n", f.name, f.key));
    }
    yaml.push_str(&format!(
        "---\napiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: o}}\n\
         spec:\n  type: openai\n  endpoint: {}\n  apiKeySecretRef: {{name: keys, key: o}}\n",
        mock.base_url()
    ));
    for f in flavours {
        let endpoint = match f.kind {
            "openai" => mock.base_url(),
            _ => mock.origin(),
        };
        yaml.push_str(&format!(
            "---\napiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: {n}}}\n\
             spec:\n  type: {k}\n  endpoint: {endpoint}\n  apiKeySecretRef: {{name: keys, key: {n}}}\n{x}\
             ---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: solo-{n}}}\n\
             spec:\n  targets: [{{provider: {n}, model: \"{m}\"}}]\n  retry: {{attempts: 1}}\n\
             ---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: fo-{n}}}\n\
             spec:\n  targets:\n    - {{provider: {n}, model: \"{m}\", priority: 0}}\n\
             \x20   - {{provider: o, model: gpt-4o-mini, priority: 1}}\n  retry: {{attempts: 2}}\n",
            n = f.name,
            k = f.kind,
            m = f.model,
            x = f.extra,
        ));
    }
    let sidecar = Sidecar::start(&yaml).await;
    (mock, sidecar)
}

const AZURE: &str = "  azure: {apiVersion: \"2024-10-21\"}\n";
const BEDROCK: &str = "  bedrock: {region: us-east-1}\n";

#[tokio::test]
async fn credential_refusals_fail_over_and_end_as_a_502_naming_the_provider_reason() {
    const WRONG: &str = "wrong-key-0123456789abcdef";
    const WRONG_AWS: &str = "AKIDWRONGEXAMPLE:mock-secret-access-key";
    let cases = [
        // Gemini refuses a wrong (or expired) key with 400 INVALID_ARGUMENT + API_KEY_INVALID.
        (
            Flavour {
                name: "gemini",
                kind: "gemini",
                model: "gemini-2.0-flash",
                key: WRONG,
                extra: "",
            },
            None,
            Some("API_KEY_INVALID"),
        ),
        (
            Flavour {
                name: "bedrock",
                kind: "bedrock",
                model: BEDROCK_MODEL,
                key: WRONG_AWS,
                extra: BEDROCK,
            },
            None,
            Some("UnrecognizedClientException"),
        ),
        // Bedrock documents IncompleteSignature as a 400.
        (
            Flavour {
                name: "bedrock-sig",
                kind: "bedrock",
                model: BEDROCK_MODEL,
                key: AWS_KEY,
                extra: BEDROCK,
            },
            Some(Behaviour::normal().with_fault(Fault::Status {
                status: 400,
                message: Some("Authorization header requires 'Signature' parameter.".into()),
                error_type: Some("IncompleteSignatureException".into()),
                code: None,
                param: None,
                retry_after_secs: None,
            })),
            Some("IncompleteSignatureException"),
        ),
        (
            Flavour {
                name: "anthropic",
                kind: "anthropic",
                model: "claude-sonnet-4-5",
                key: WRONG,
                extra: "",
            },
            None,
            Some("authentication_error"),
        ),
        (
            Flavour {
                name: "azure",
                kind: "azureOpenAI",
                model: "gpt4o-deploy",
                key: WRONG,
                extra: AZURE,
            },
            None,
            None,
        ),
        (
            Flavour {
                name: "openai",
                kind: "openai",
                model: "gpt-4o-mini",
                key: WRONG,
                extra: "",
            },
            None,
            Some("invalid_api_key"),
        ),
    ];
    let all: Vec<Flavour> = cases.iter().map(|(f, _, _)| *f).collect();
    let (mock, sidecar) = flavours(&all).await;
    for (f, behaviour, reason) in &cases {
        for stream in [false, true] {
            let case = format!("{} (stream={stream})", f.name);
            // Alone: a 502 that names the provider's refusal and no key.
            mock.clear();
            if let Some(b) = behaviour {
                mock.push(b.clone());
            }
            let resp = sidecar.chat(&format!("solo-{}", f.name), stream).await;
            assert_eq!(resp.status(), 502, "{case}");
            let text = resp.text().await.unwrap();
            let body: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["error"]["type"], "api_error", "{case}");
            assert_eq!(body["error"]["code"], "upstream_failed", "{case}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("rejected the gateway's credentials"),
                "{case}: {message}"
            );
            if let Some(reason) = reason {
                assert!(message.contains(reason), "{case}: {message}");
            }
            for secret in [WRONG, KEY, "mock-secret-access-key", "AKIDWRONG"] {
                assert!(!text.contains(secret), "{case}: {text}");
            }
            assert_eq!(mock.request_count(), 1, "{case}: one attempt");

            // With a fallback: the next target answers.
            mock.clear();
            if let Some(b) = behaviour {
                mock.push(b.clone());
            }
            let resp = sidecar.chat(&format!("fo-{}", f.name), stream).await;
            assert_eq!(resp.status(), 200, "{case}");
            assert_eq!(header(&resp, "x-gatehouse-provider"), Some("o"), "{case}");
            assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("2"), "{case}");
            let seen = mock.requests();
            assert_eq!(seen.len(), 2, "{case}");
            assert_eq!(seen[1].path, "/v1/chat/completions", "{case}");
        }
    }
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains(
            r#"gatehouse_upstream_attempts_total{provider="gemini",outcome="auth_failed"} 4"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_gemini_bad_request_that_is_not_about_the_key_is_still_passed_back() {
    let (mock, sidecar) = flavours(&[Flavour {
        name: "gemini",
        kind: "gemini",
        model: "gemini-2.0-flash",
        key: KEY,
        extra: "",
    }])
    .await;
    mock.push(Behaviour::status(400).error_message("* GenerateContentRequest.contents: bad"));
    let resp = sidecar.chat("fo-gemini", false).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("contents: bad"),
        "{body}"
    );
    assert_eq!(mock.request_count(), 1, "a 400 is not retried");
}

#[tokio::test]
async fn rate_limits_answer_429_with_the_delay_each_provider_gave_or_one_second() {
    let cases = [
        // (flavour, Retry-After when the provider was asked to say 37 s)
        (
            Flavour {
                name: "openai",
                kind: "openai",
                model: "gpt-4o-mini",
                key: KEY,
                extra: "",
            },
            "37",
        ),
        (
            Flavour {
                name: "azure",
                kind: "azureOpenAI",
                model: "gpt4o-deploy",
                key: KEY,
                extra: AZURE,
            },
            "37",
        ),
        (
            Flavour {
                name: "anthropic",
                kind: "anthropic",
                model: "claude-sonnet-4-5",
                key: KEY,
                extra: "",
            },
            "37",
        ),
        // Gemini says it in the body: google.rpc.RetryInfo.retryDelay "37s".
        (
            Flavour {
                name: "gemini",
                kind: "gemini",
                model: "gemini-2.0-flash",
                key: KEY,
                extra: "",
            },
            "37",
        ),
        // Bedrock's ThrottlingException says nothing: the default.
        (
            Flavour {
                name: "bedrock",
                kind: "bedrock",
                model: BEDROCK_MODEL,
                key: AWS_KEY,
                extra: BEDROCK,
            },
            "1",
        ),
    ];
    let all: Vec<Flavour> = cases.iter().map(|(f, _)| *f).collect();
    let (mock, sidecar) = flavours(&all).await;
    for (f, expected) in &cases {
        for stream in [false, true] {
            let case = format!("{} (stream={stream})", f.name);
            mock.push(Behaviour::rate_limited(37));
            let resp = sidecar.chat(&format!("solo-{}", f.name), stream).await;
            assert_eq!(resp.status(), 429, "{case}");
            assert_eq!(header(&resp, "retry-after"), Some(*expected), "{case}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["type"], "rate_limit_error", "{case}");

            // A 429 that says nothing: the default, one second.
            mock.push(Behaviour::status(429));
            let resp = sidecar.chat(&format!("solo-{}", f.name), stream).await;
            assert_eq!(resp.status(), 429, "{case}");
            assert_eq!(header(&resp, "retry-after"), Some("1"), "{case}");
        }
    }
    // The Anthropic dialect gets it too.
    mock.push(Behaviour::rate_limited(37));
    let resp = post(
        &sidecar,
        "/v1/messages",
        json!({"model": "solo-gemini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), Some("37"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn anthropic_beta_reaches_anthropic_targets_only() {
    const BETA: &str = "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19";
    let request = json!({"model": "chat", "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello"}]});
    let with_beta = |sidecar: &Sidecar, path: &str, body: Value| {
        sidecar
            .client
            .post(sidecar.url(path))
            .header("anthropic-beta", BETA)
            .json(&body)
            .send()
    };

    // An Anthropic client to an Anthropic target: the header goes along, buffered and streamed.
    let (mock, sidecar) = anthropic().await;
    for stream in [false, true] {
        let mut body = request.clone();
        body["stream"] = json!(stream);
        let resp = with_beta(&sidecar, "/v1/messages", body).await.unwrap();
        assert_eq!(resp.status(), 200, "stream {stream}");
        assert_eq!(header(&resp, "x-gatehouse-warning"), None);
        resp.bytes().await.unwrap();
        let seen = mock.last_request().unwrap();
        assert_eq!(seen.header("anthropic-beta"), Some(BETA), "stream {stream}");
        assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    }
    // Without the header, none is invented.
    post(&sidecar, "/v1/messages", request.clone()).await;
    assert_eq!(mock.last_request().unwrap().header("anthropic-beta"), None);
    // An OpenAI client's stray anthropic-beta header is not forwarded (it is not that API).
    let resp = with_beta(
        &sidecar,
        "/v1/chat/completions",
        json!({"model": "chat", "messages": [{"role": "user", "content": "Say hello"}]}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.last_request().unwrap().header("anthropic-beta"), None);

    // An Anthropic client routed to an OpenAI target: not forwarded, and the client is told.
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let sidecar = Sidecar::start(&manifests("openai", &mock.base_url(), "gpt-4o-mini", "")).await;
    let resp = with_beta(&sidecar, "/v1/messages", request).await.unwrap();
    assert_eq!(resp.status(), 200);
    let warning = header(&resp, "x-gatehouse-warning")
        .unwrap_or_default()
        .to_string();
    assert!(
        warning.contains("anthropic-beta not forwarded"),
        "{warning}"
    );
    assert_eq!(mock.last_request().unwrap().header("anthropic-beta"), None);
}

/// Every flavour, for parallel tool calls: the mock calls each of two tools the prompt names.
fn parallel_flavours() -> [Flavour; 5] {
    let f = |name, kind, model, key, extra| Flavour {
        name,
        kind,
        model,
        key,
        extra,
    };
    [
        f("openai", "openai", "gpt-4o-mini", KEY, ""),
        f("azure", "azureOpenAI", "gpt4o-deploy", KEY, AZURE),
        f("anthropic", "anthropic", "claude-sonnet-4-5", KEY, ""),
        f("gemini", "gemini", "gemini-2.0-flash", KEY, ""),
        f("bedrock", "bedrock", BEDROCK_MODEL, AWS_KEY, BEDROCK),
    ]
}

const PARALLEL_ASK: &str = "Call get_weather and get_time for Paris";

fn city_schema() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
}

/// `(name, arguments)` of the tool calls in a client's answer, in order, for each dialect and
/// either framing (stream deltas joined).
async fn calls_in(dialect: &str, stream: bool, resp: reqwest::Response) -> Vec<(String, Value)> {
    assert_eq!(resp.status(), 200, "{dialect}");
    let mut calls: Vec<(String, String)> = Vec::new();
    if !stream {
        let body: Value = resp.json().await.unwrap();
        let items: Vec<(String, String)> = match dialect {
            "chat" => body["choices"][0]["message"]["tool_calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["function"]["name"].as_str().unwrap().into(),
                        c["function"]["arguments"].as_str().unwrap().into(),
                    )
                })
                .collect(),
            "messages" => body["content"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .map(|b| (b["name"].as_str().unwrap().into(), b["input"].to_string()))
                .collect(),
            _ => body["output"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["type"] == "function_call")
                .map(|o| {
                    (
                        o["name"].as_str().unwrap().into(),
                        o["arguments"].as_str().unwrap().into(),
                    )
                })
                .collect(),
        };
        calls = items;
    } else {
        let text = resp.text().await.unwrap();
        // Every event's data line (Anthropic's and Responses' events also have a name line).
        let data = text
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")));
        for event in data {
            if event == "[DONE]" {
                continue;
            }
            let e: Value = serde_json::from_str(event).unwrap();
            match dialect {
                "chat" => {
                    for d in e["choices"][0]["delta"]["tool_calls"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        let i = usize::try_from(d["index"].as_u64().unwrap()).unwrap();
                        if let Some(name) = d["function"]["name"].as_str() {
                            assert_eq!(i, calls.len(), "a new call takes the next index");
                            calls.push((name.into(), String::new()));
                        }
                        calls[i]
                            .1
                            .push_str(d["function"]["arguments"].as_str().unwrap_or(""));
                    }
                }
                "messages" => match e["type"].as_str().unwrap() {
                    "content_block_start" if e["content_block"]["type"] == "tool_use" => {
                        calls.push((
                            e["content_block"]["name"].as_str().unwrap().into(),
                            String::new(),
                        ));
                    }
                    "content_block_delta" if e["delta"]["type"] == "input_json_delta" => {
                        calls
                            .last_mut()
                            .unwrap()
                            .1
                            .push_str(e["delta"]["partial_json"].as_str().unwrap());
                    }
                    _ => {}
                },
                _ => {
                    if e["type"] == "response.output_item.done"
                        && e["item"]["type"] == "function_call"
                    {
                        calls.push((
                            e["item"]["name"].as_str().unwrap().into(),
                            e["item"]["arguments"].as_str().unwrap().into(),
                        ));
                    }
                }
            }
        }
    }
    calls
        .into_iter()
        .map(|(name, args)| (name, serde_json::from_str(&args).unwrap()))
        .collect()
}

#[tokio::test]
async fn parallel_tool_calls_reach_every_dialect_from_every_flavour() {
    let (_mock, sidecar) = flavours(&parallel_flavours()).await;
    let names = ["get_weather", "get_time"];
    let expected: Vec<(String, Value)> = names
        .iter()
        .map(|n| (n.to_string(), json!({"city": "mock"})))
        .collect();
    for flavour in parallel_flavours() {
        let model = format!("solo-{}", flavour.name);
        for stream in [false, true] {
            let chat = json!({"model": model, "stream": stream,
                "messages": [{"role": "user", "content": PARALLEL_ASK}],
                "tools": names.iter().map(|n| json!({"type": "function", "function": {"name": n, "parameters": city_schema()}})).collect::<Vec<_>>()});
            let messages = json!({"model": model, "stream": stream, "max_tokens": 64,
                "messages": [{"role": "user", "content": PARALLEL_ASK}],
                "tools": names.iter().map(|n| json!({"name": n, "input_schema": city_schema()})).collect::<Vec<_>>()});
            let responses = json!({"model": model, "stream": stream, "input": PARALLEL_ASK,
                "tools": names.iter().map(|n| json!({"type": "function", "name": n, "parameters": city_schema()})).collect::<Vec<_>>()});
            for (dialect, path, body) in [
                ("chat", "/v1/chat/completions", chat),
                ("messages", "/v1/messages", messages),
                ("responses", "/v1/responses", responses),
            ] {
                let resp = reqwest::Client::new()
                    .post(sidecar.url(path))
                    .header("anthropic-version", "2023-06-01")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let got = calls_in(dialect, stream, resp).await;
                assert_eq!(got, expected, "{} {dialect} stream={stream}", flavour.name);
            }
        }
    }
}
