//! A provider answering garbage — a body that is not JSON, a wrong content type, a body or stream
//! cut off inside an event (connection aborted, or the body ended cleanly half a frame short) —
//! gets a clean answer from the sidecar for every provider flavour, both client dialects, JSON and
//! stream: a 502 in the client's error shape, or, once a stream has started, an error event after
//! the first event. Never a panic, a hang, a `[DONE]` / `message_stop`, or a key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::time::Duration;

use gatehouse_mock_provider::{Behaviour, MockProvider};
use serde_json::{Value, json};
use support::{Sidecar, header};

const KEY: &str = "sk-garbage-test-0123456789";
const AWS_ID: &str = "AKIDMOCKEXAMPLE";
const AWS_SECRET: &str = "mock-secret-access-key";

/// (provider type, upstream model, extra spec lines).
const FLAVOURS: &[(&str, &str, &str)] = &[
    ("openai", "gpt-4o-mini", ""),
    (
        "azureOpenAI",
        "gpt4o-deploy",
        "  azure: {apiVersion: \"2024-10-21\"}\n",
    ),
    ("anthropic", "claude-sonnet-4-5", ""),
    ("gemini", "gemini-2.0-flash", ""),
    (
        "bedrock",
        "anthropic.claude-3-haiku-20240307-v1:0",
        "  bedrock: {region: us-east-1}\n",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Garbage {
    /// 200 with a body (or an event, or a frame) that does not parse.
    NotJson,
    /// 200 `text/html`.
    WrongContentType,
    /// Half of a body, or a stream cut inside its third content event / frame; the connection
    /// is aborted.
    Cut,
    /// The same, but the body ends normally: only the framing shows it is short.
    Truncated,
}

impl Garbage {
    fn behaviour(self) -> Behaviour {
        let b = match self {
            Self::NotJson => Behaviour::garbage(),
            Self::WrongContentType => Behaviour::wrong_content_type(),
            Self::Cut => Behaviour::cut_inside(2),
            Self::Truncated => Behaviour::truncated(2),
        };
        // Events leave one by one, so which of them arrived before the stream was committed to
        // the client does not depend on how TCP happened to coalesce them.
        b.chunk_delay(Duration::from_millis(5))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 502 with the dialect's error body.
    BadGateway,
    /// 200, valid events, then an error event.
    ErrorEvent,
}

/// What the client gets. A stream fails over (502) when garbage comes before its first event,
/// and ends with an error event when it comes after.
fn expect(kind: &str, garbage: Garbage, stream: bool) -> Expect {
    match (garbage, stream) {
        (_, false) | (Garbage::WrongContentType, true) => Expect::BadGateway,
        // Gemini's garbage stream opens with the unparseable event; every other flavour opens
        // with a valid event (OpenAI's role chunk, Azure's prompt filter + role chunks,
        // Anthropic's message_start, Bedrock's messageStart frame).
        (Garbage::NotJson, true) if kind == "gemini" => Expect::BadGateway,
        (_, true) => Expect::ErrorEvent,
    }
}

fn manifests(mock: &MockProvider) -> String {
    let mut yaml = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: keys}}\nstringData:\n  \
         key: \"{KEY}\"\n  aws: \"{AWS_ID}:{AWS_SECRET}\"\n"
    );
    for (kind, model, extra) in FLAVOURS {
        let endpoint = if *kind == "openai" {
            mock.base_url()
        } else {
            mock.origin()
        };
        let key = if *kind == "bedrock" { "aws" } else { "key" };
        let name = kind.to_lowercase();
        yaml.push_str(&format!(
            "---\napiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: {name}}}\n\
             spec:\n  type: {kind}\n  endpoint: {endpoint}\n  apiKeySecretRef: {{name: keys, key: {key}}}\n{extra}\
             ---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: via-{name}}}\n\
             spec:\n  targets: [{{provider: {name}, model: \"{model}\"}}]\n  retry: {{attempts: 1}}\n  \
             timeouts: {{attempt: 5s, request: 8s}}\n"
        ));
    }
    yaml
}

/// Send one request and read the whole answer, failing the test if that takes more than 15 s.
async fn call(sidecar: &Sidecar, path: &str, body: Value) -> (u16, Option<String>, String) {
    tokio::time::timeout(Duration::from_secs(15), async {
        let resp = sidecar
            .client
            .post(sidecar.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let content_type = header(&resp, "content-type").map(str::to_string);
        // The sidecar never aborts its own answer: reading it to the end must succeed.
        let text = resp.text().await.unwrap();
        (status, content_type, text)
    })
    .await
    .expect("the sidecar hung on a garbage answer")
}

/// `(event name, data)` of each SSE event.
fn events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, data)
        })
        .collect()
}

fn check_openai(case: &str, expect: Expect, status: u16, ct: Option<&str>, text: &str) {
    match expect {
        Expect::BadGateway => {
            assert_eq!(status, 502, "{case}: {text}");
            assert_eq!(ct, Some("application/json"), "{case}");
            let body: Value = serde_json::from_str(text).unwrap();
            assert_eq!(body["error"]["type"], "api_error", "{case}: {text}");
            assert_eq!(body["error"]["code"], "upstream_failed", "{case}: {text}");
            assert!(body["error"]["message"].is_string(), "{case}: {text}");
        }
        Expect::ErrorEvent => {
            assert_eq!(status, 200, "{case}: {text}");
            assert_eq!(ct, Some("text/event-stream"), "{case}");
            let events = events(text);
            assert!(events.len() >= 2, "{case}: {text}");
            let first: Value = serde_json::from_str(&events[0].1).unwrap();
            assert_eq!(first["object"], "chat.completion.chunk", "{case}: {text}");
            for (_, data) in &events[..events.len() - 1] {
                let chunk: Value = serde_json::from_str(data).unwrap_or_else(|_| {
                    panic!("{case}: an event that is not JSON was relayed: {text}")
                });
                assert!(chunk.get("error").is_none(), "{case}: {text}");
            }
            let last: Value = serde_json::from_str(&events[events.len() - 1].1).unwrap();
            let code = last["error"]["code"].as_str().unwrap_or_default();
            assert!(
                code == "upstream_stream_broken" || code == "upstream_invalid_event",
                "{case}: last event is not the error: {text}"
            );
            assert!(!text.contains("[DONE]"), "{case}: {text}");
            assert!(
                !events
                    .iter()
                    .any(|(_, d)| d.contains("\"finish_reason\":\"stop\"")),
                "{case}: a cut stream must not look finished: {text}"
            );
        }
    }
}

fn check_anthropic(case: &str, expect: Expect, status: u16, ct: Option<&str>, text: &str) {
    match expect {
        Expect::BadGateway => {
            assert_eq!(status, 502, "{case}: {text}");
            assert_eq!(ct, Some("application/json"), "{case}");
            let body: Value = serde_json::from_str(text).unwrap();
            assert_eq!(body["type"], "error", "{case}: {text}");
            assert_eq!(body["error"]["type"], "api_error", "{case}: {text}");
            assert!(body["error"]["message"].is_string(), "{case}: {text}");
        }
        Expect::ErrorEvent => {
            assert_eq!(status, 200, "{case}: {text}");
            assert_eq!(ct, Some("text/event-stream"), "{case}");
            let events = events(text);
            assert!(events.len() >= 2, "{case}: {text}");
            assert_eq!(
                events[0].0.as_deref(),
                Some("message_start"),
                "{case}: {text}"
            );
            for (name, data) in &events {
                let value: Value = serde_json::from_str(data).unwrap_or_else(|_| {
                    panic!("{case}: an event that is not JSON was relayed: {text}")
                });
                assert_eq!(value["type"].as_str(), name.as_deref(), "{case}: {text}");
            }
            let (name, data) = &events[events.len() - 1];
            assert_eq!(name.as_deref(), Some("error"), "{case}: {text}");
            let last: Value = serde_json::from_str(data).unwrap();
            assert_eq!(last["error"]["type"], "api_error", "{case}: {text}");
            assert!(
                !events
                    .iter()
                    .any(|(n, _)| matches!(n.as_deref(), Some("message_stop" | "message_delta"))),
                "{case}: a cut stream must not look finished: {text}"
            );
        }
    }
}

#[tokio::test]
async fn garbage_from_every_flavour_is_a_clean_502_or_an_error_event() {
    let mock = MockProvider::with_api_key(KEY)
        .aws_credentials(AWS_ID, AWS_SECRET)
        .aws_region("us-east-1")
        .start()
        .await
        .unwrap();
    let sidecar = Sidecar::start(&manifests(&mock)).await;
    let garbage = [
        Garbage::NotJson,
        Garbage::WrongContentType,
        Garbage::Cut,
        Garbage::Truncated,
    ];
    let mut rows = 0;
    for (kind, _, _) in FLAVOURS {
        let route = format!("via-{}", kind.to_lowercase());
        for g in garbage {
            for stream in [false, true] {
                let expected = expect(kind, g, stream);

                // OpenAI client.
                let case = format!("{kind} {g:?} stream={stream} /v1/chat/completions");
                mock.clear();
                mock.push(g.behaviour());
                let (status, ct, text) = call(
                    &sidecar,
                    "/v1/chat/completions",
                    json!({"model": route, "stream": stream,
                           "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
                           "messages": [{"role": "user", "content": "Say hello"}]}),
                )
                .await;
                check_openai(&case, expected, status, ct.as_deref(), &text);
                assert_no_key(&case, &text);
                assert_eq!(mock.request_count(), 1, "{case}: one attempt, no retry");

                // Anthropic client.
                let case = format!("{kind} {g:?} stream={stream} /v1/messages");
                mock.clear();
                mock.push(g.behaviour());
                let (status, ct, text) = call(
                    &sidecar,
                    "/v1/messages",
                    json!({"model": route, "stream": stream, "max_tokens": 64,
                           "messages": [{"role": "user", "content": "Say hello"}]}),
                )
                .await;
                check_anthropic(&case, expected, status, ct.as_deref(), &text);
                assert_no_key(&case, &text);
                assert_eq!(mock.request_count(), 1, "{case}: one attempt, no retry");
                rows += 2;
            }
        }
    }
    assert_eq!(rows, FLAVOURS.len() * garbage.len() * 2 * 2);

    // Every broken stream was counted as such.
    let metrics = sidecar.metrics().await;
    for (kind, _, _) in FLAVOURS {
        let streams = garbage
            .iter()
            .filter(|g| expect(kind, **g, true) == Expect::ErrorEvent)
            .count()
            * 2;
        let needle = format!(
            "gatehouse_streams_broken_total{{route=\"via-{}\"}} {streams}",
            kind.to_lowercase()
        );
        assert!(metrics.contains(&needle), "missing {needle} in\n{metrics}");
    }
}

fn assert_no_key(case: &str, text: &str) {
    for secret in [KEY, AWS_ID, AWS_SECRET] {
        assert!(!text.contains(secret), "{case}: a key leaked: {text}");
    }
}
