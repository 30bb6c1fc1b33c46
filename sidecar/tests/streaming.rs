//! Translated streams are forwarded as they arrive: for each provider whose stream the sidecar
//! translates (Anthropic SSE, Gemini SSE, Bedrock AWS event stream, Azure's OpenAI variant), the
//! mock holds its stream after the first content event and the client must already have the
//! translated role and content; once released, the rest arrives, ending with the usage.
//! Checked for OpenAI clients (`/v1/chat/completions`) and Anthropic clients (`/v1/messages`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::time::Duration;

use gatehouse_mock_provider::{Behaviour, MockProvider, StreamGate};
use serde_json::{Value, json};
use support::{Sidecar, SseReader, header};

const KEY: &str = "sk-stream-test-0123456789";
const AWS_ID: &str = "AKIDMOCKEXAMPLE";
const AWS_SECRET: &str = "mock-secret-access-key";
const WAIT: Duration = Duration::from_secs(5);
/// How long a held stream must stay silent at the client.
const HELD: Duration = Duration::from_millis(300);
const ANSWER: &str = "alpha beta gamma delta";
const PROVIDERS: [&str; 4] = ["anthropic", "gemini", "bedrock", "azureOpenAI"];

/// A mock and a sidecar whose route `chat` goes to one provider of type `kind` on that mock.
async fn translated(kind: &str) -> (MockProvider, Sidecar) {
    let (mock, model, key, extra) = match kind {
        "bedrock" => (
            MockProvider::builder()
                .aws_credentials(AWS_ID, AWS_SECRET)
                .aws_region("us-east-1")
                .start()
                .await
                .unwrap(),
            "anthropic.claude-3-haiku-20240307-v1:0",
            format!("{AWS_ID}:{AWS_SECRET}"),
            "  bedrock: {region: us-east-1}\n",
        ),
        _ => (
            MockProvider::with_api_key(KEY).start().await.unwrap(),
            match kind {
                "anthropic" => "claude-sonnet-4-5",
                "gemini" => "gemini-2.0-flash",
                _ => "gpt-4o-mini-prod",
            },
            KEY.to_string(),
            if kind == "azureOpenAI" {
                "  azure: {apiVersion: \"2024-10-21\"}\n"
            } else {
                ""
            },
        ),
    };
    let manifests = format!(
        r#"---
apiVersion: v1
kind: Secret
metadata: {{name: p-key}}
stringData: {{apiKey: "{key}"}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: p}}
spec:
  type: {kind}
  endpoint: {endpoint}
  apiKeySecretRef: {{name: p-key, key: apiKey}}
{extra}  models:
    - name: "{model}"
      pricing: {{inputPerMillion: "1", outputPerMillion: "2"}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: chat}}
spec:
  models: ["chat"]
  targets: [{{provider: p, model: "{model}"}}]
  retry: {{attempts: 1}}
"#,
        endpoint = mock.origin(),
    );
    (mock, Sidecar::start(&manifests).await)
}

/// Queue a stream of `ANSWER` held after its first content event; returns the gate.
fn hold_next_stream(mock: &MockProvider) -> StreamGate {
    let gate = StreamGate::new();
    mock.push(Behaviour::normal().content(ANSWER).gate(gate.clone()));
    gate
}

/// A started response: 200, an event stream, from provider `p`.
fn check_head(resp: &reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 200, "{what}");
    assert_eq!(
        header(resp, "content-type"),
        Some("text/event-stream"),
        "{what}"
    );
    assert_eq!(header(resp, "x-gatehouse-provider"), Some("p"), "{what}");
}

#[tokio::test]
async fn translated_openai_chunks_reach_the_client_while_the_upstream_is_held() {
    for kind in PROVIDERS {
        let (mock, sidecar) = translated(kind).await;
        let gate = hold_next_stream(&mock);
        let resp = sidecar.chat("chat", true).await;
        check_head(&resp, kind);
        let mut reader = SseReader::new(resp);

        // Everything up to the first content delta arrives while the mock holds the rest.
        let mut held: Vec<Value> = Vec::new();
        loop {
            let event = reader.next(WAIT).await.unwrap_or_else(|| {
                panic!("{kind}: the stream ended while the upstream was held: {held:?}")
            });
            assert_ne!(event, "[DONE]", "{kind}");
            let chunk: Value = serde_json::from_str(&event).unwrap();
            let content = chunk["choices"][0]["delta"]["content"].as_str();
            let done = content.is_some_and(|c| !c.is_empty());
            held.push(chunk);
            if done {
                break;
            }
        }
        let roles: Vec<&Value> = held
            .iter()
            .map(|c| &c["choices"][0]["delta"]["role"])
            .filter(|r| !r.is_null())
            .collect();
        assert_eq!(roles, [&json!("assistant")], "{kind}: {held:?}");
        assert_eq!(
            held[0]["choices"][0]["delta"]["role"], "assistant",
            "{kind}: the role comes first: {held:?}"
        );
        assert_eq!(text(&held), "alpha", "{kind}: {held:?}");
        for chunk in &held {
            assert_eq!(chunk["object"], "chat.completion.chunk", "{kind}: {chunk}");
            assert!(
                chunk["choices"][0]["finish_reason"].is_null(),
                "{kind}: {chunk}"
            );
            assert!(chunk["usage"].is_null(), "{kind}: {chunk}");
        }
        assert!(
            reader.quiet_for(HELD).await,
            "{kind}: more arrived while the upstream was held"
        );

        gate.open();
        let rest = reader.rest(WAIT).await;
        assert_eq!(rest.last().map(String::as_str), Some("[DONE]"), "{kind}");
        let after: Vec<Value> = rest[..rest.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(
            after.iter().all(|c| c.get("error").is_none()),
            "{kind}: {after:?}"
        );
        assert_eq!(text(&held) + &text(&after), ANSWER, "{kind}: {after:?}");
        assert!(
            after
                .iter()
                .any(|c| c["choices"][0]["finish_reason"] == "stop"),
            "{kind}: {after:?}"
        );
        let ids: std::collections::BTreeSet<&str> = held
            .iter()
            .chain(&after)
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "{kind}: one id across the stream: {ids:?}");
        // The final chunk (asked for with include_usage) carries the usage and no choice.
        let last = after.last().unwrap();
        assert_eq!(last["choices"], json!([]), "{kind}: {last}");
        let usage = &last["usage"];
        let (prompt, completion) = (
            usage["prompt_tokens"].as_u64().unwrap(),
            usage["completion_tokens"].as_u64().unwrap(),
        );
        assert!(prompt > 0, "{kind}: {usage}");
        assert_eq!(completion, 4, "{kind}: one token per word: {usage}");
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(prompt + completion),
            "{kind}: {usage}"
        );
        assert_eq!(mock.request_count(), 1, "{kind}");
    }
}

#[tokio::test]
async fn anthropic_events_reach_a_messages_client_while_the_upstream_is_held() {
    for kind in PROVIDERS {
        let (mock, sidecar) = translated(kind).await;
        let gate = hold_next_stream(&mock);
        let resp = sidecar
            .client
            .post(sidecar.url("/v1/messages"))
            .json(&json!({"model": "chat", "max_tokens": 64, "stream": true,
                "messages": [{"role": "user", "content": "Say hello"}]}))
            .send()
            .await
            .unwrap();
        check_head(&resp, kind);
        let mut reader = SseReader::new(resp);

        let mut held: Vec<Value> = Vec::new();
        loop {
            let event = reader.next(WAIT).await.unwrap_or_else(|| {
                panic!("{kind}: the stream ended while the upstream was held: {held:?}")
            });
            let event: Value = serde_json::from_str(&event).unwrap();
            let done = event["type"] == "content_block_delta";
            held.push(event);
            if done {
                break;
            }
        }
        assert_eq!(held[0]["type"], "message_start", "{kind}: {held:?}");
        assert_eq!(held[0]["message"]["role"], "assistant", "{kind}");
        assert_eq!(
            held.last().unwrap()["delta"]["text"],
            "alpha",
            "{kind}: {held:?}"
        );
        assert!(
            !held
                .iter()
                .any(|e| e["type"] == "message_delta" || e["type"] == "message_stop"),
            "{kind}: {held:?}"
        );
        assert!(
            reader.quiet_for(HELD).await,
            "{kind}: more arrived while the upstream was held"
        );

        gate.open();
        let after: Vec<Value> = reader
            .rest(WAIT)
            .await
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let types: Vec<&str> = after.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert!(!types.contains(&"error"), "{kind}: {after:?}");
        assert_eq!(
            &types[types.len() - 2..],
            ["message_delta", "message_stop"],
            "{kind}: {types:?}"
        );
        let text: String = held
            .iter()
            .chain(&after)
            .filter(|e| e["type"] == "content_block_delta")
            .map(|e| e["delta"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, ANSWER, "{kind}");
        let delta = &after[after.len() - 2];
        assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{kind}: {delta}");
        assert_eq!(delta["usage"]["output_tokens"], 4, "{kind}: {delta}");
    }
}

/// The content of OpenAI chunks, joined.
fn text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}
