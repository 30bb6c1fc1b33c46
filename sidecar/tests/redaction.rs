//! Redaction through the sidecar (`Route.spec.redact`): the provider sees placeholders, the app
//! gets its values back (`maskAndRestore`) or never sees a detected value (`mask`), a `block`
//! route refuses the prompt naming the detector; placeholders and values split across stream
//! events are caught for every provider type and both client dialects.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use gatehouse_mock_provider::{Behaviour, MockProvider};
use serde_json::{Value, json};
use support::Sidecar;

const KEY: &str = "sk-redaction-test-0123456789";
const AWS_ID: &str = "AKIDMOCKEXAMPLE";
const AWS_SECRET: &str = "mock-secret-access-key";
const KINDS: [&str; 6] = [
    "openai",
    "openaiCompatible",
    "azureOpenAI",
    "anthropic",
    "gemini",
    "bedrock",
];

const PROMPT: &str = "Write to bob@example.com about card 4111 1111 1111 1111, from 10.1.2.3";

/// A mock and a sidecar whose route `chat` goes to one provider of type `kind`, redacting with
/// `redact` (YAML flow mapping).
async fn stack(kind: &str, redact: &str) -> (MockProvider, Sidecar) {
    let (mock, model, key, extra, endpoint_suffix) = match kind {
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
            "",
        ),
        _ => (
            MockProvider::with_api_key(KEY).start().await.unwrap(),
            match kind {
                "anthropic" => "claude-sonnet-4-5",
                "gemini" => "gemini-2.0-flash",
                _ => "gpt-4o-mini",
            },
            KEY.to_string(),
            if kind == "azureOpenAI" {
                "  azure: {apiVersion: \"2024-10-21\"}\n"
            } else {
                ""
            },
            if matches!(kind, "openai" | "openaiCompatible") {
                "/v1"
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
  endpoint: {endpoint}{endpoint_suffix}
  apiKeySecretRef: {{name: p-key, key: apiKey}}
{extra}---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: chat}}
spec:
  models: ["chat"]
  targets: [{{provider: p, model: "{model}"}}]
  retry: {{attempts: 1}}
  redact: {redact}
"#,
        endpoint = mock.origin(),
    );
    (mock, Sidecar::start(&manifests).await)
}

/// Send `PROMPT` in `dialect` (`openai` or `anthropic`), streamed or not; the answer's text and
/// the number of events that carried text.
async fn ask(sidecar: &Sidecar, dialect: &str, stream: bool) -> (u16, String, usize) {
    let (path, body) = match dialect {
        "openai" => (
            "/v1/chat/completions",
            json!({"model": "chat", "stream": stream,
                   "messages": [{"role": "user", "content": PROMPT}]}),
        ),
        "responses" => (
            "/v1/responses",
            json!({"model": "chat", "stream": stream, "input": PROMPT}),
        ),
        _ => (
            "/v1/messages",
            json!({"model": "chat", "stream": stream, "max_tokens": 256,
                   "messages": [{"role": "user", "content": PROMPT}]}),
        ),
    };
    let resp = sidecar
        .client
        .post(sidecar.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    if !stream || status != 200 {
        let v: Value = resp.json().await.unwrap();
        let text = match dialect {
            "openai" if status == 200 => v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
            "responses" if status == 200 => responses_text(&v),
            _ if status == 200 => v["content"][0]["text"].as_str().unwrap().to_string(),
            _ => v.to_string(),
        };
        return (status, text, 0);
    }
    let body = resp.text().await.unwrap();
    let events: Vec<String> = body
        .split("\n\n")
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect();
    if dialect == "responses" {
        return responses_stream(&body);
    }
    let mut text = String::new();
    let mut carrying = 0;
    for e in &events {
        if e == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(e).unwrap();
        let piece = match dialect {
            "openai" => v["choices"][0]["delta"]["content"].as_str(),
            _ => v["delta"]["text"].as_str(),
        };
        if let Some(piece) = piece {
            text.push_str(piece);
            carrying += 1;
        }
    }
    (status, text, carrying)
}

/// The text of a Response's message items.
fn responses_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter())
        .filter_map(|c| c["text"].as_str())
        .collect()
}

/// A Responses stream's text (its `response.output_text.delta` events) and how many events
/// carried text, after checking that it is numbered 0, 1, 2, … and that every event repeating
/// the text whole (`output_text.done`, `content_part.done`, `output_item.done`,
/// `response.completed`) repeats exactly what the deltas said.
fn responses_stream(body: &str) -> (u16, String, usize) {
    let mut text = String::new();
    let mut carrying = 0;
    let mut repeated = Vec::new();
    for (n, e) in body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .enumerate()
    {
        let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
        let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], name, "{e}");
        assert_eq!(
            v["sequence_number"], n as u64,
            "numbering of {e} in:\n{body}"
        );
        match name {
            "response.output_text.delta" => {
                text.push_str(v["delta"].as_str().unwrap());
                carrying += 1;
            }
            "response.output_text.done" => repeated.push(v["text"].as_str().unwrap().to_string()),
            "response.content_part.done" => {
                repeated.push(v["part"]["text"].as_str().unwrap().to_string());
            }
            "response.output_item.done" if v["item"]["type"] == "message" => {
                repeated.push(
                    v["item"]["content"][0]["text"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            "response.completed" => repeated.push(responses_text(&v["response"])),
            _ => {}
        }
    }
    assert_eq!(repeated.len(), 4, "{body}");
    for r in repeated {
        assert_eq!(r, text, "repeated whole:\n{body}");
    }
    (200, text, carrying)
}

/// What the provider received, as text.
fn sent(mock: &MockProvider) -> String {
    mock.last_request().unwrap().body_text
}

#[tokio::test]
async fn mask_and_restore_round_trips_split_placeholders_for_every_provider_and_dialect() {
    // The provider answers with the placeholders it was given, split across events, and a value
    // of its own (an email the prompt never had), also split.
    let pieces = [
        "OK, I wrote to [EM",
        "AIL_1",
        "] about [CREDIT_C",
        "ARD_1]. Ask jo",
        "hn.smith@exa",
        "mple.org too.",
    ];
    let want = "OK, I wrote to bob@example.com about 4111 1111 1111 1111. Ask [EMAIL_2] too.";
    for kind in KINDS {
        let (mock, sidecar) = stack(kind, "{action: maskAndRestore}").await;
        for dialect in ["openai", "anthropic", "responses"] {
            for stream in [true, false] {
                mock.push(Behaviour::normal().pieces(pieces));
                let (status, text, carrying) = ask(&sidecar, dialect, stream).await;
                let what = format!("{kind}, {dialect} client, stream {stream}");
                assert_eq!(status, 200, "{what}: {text}");
                assert_eq!(text, want, "{what}");
                let upstream = sent(&mock);
                assert!(
                    upstream.contains("[EMAIL_1]")
                        && upstream.contains("[CREDIT_CARD_1]")
                        && upstream.contains("[IP_ADDRESS_1]"),
                    "{what}: {upstream}"
                );
                for value in ["bob@example.com", "4111 1111 1111 1111", "10.1.2.3"] {
                    assert!(
                        !upstream.contains(value),
                        "{what}: {value} left: {upstream}"
                    );
                }
                if stream {
                    // Every upstream text event was forwarded (text may move to the next one,
                    // no event waits for more than the next).
                    assert!(carrying >= pieces.len(), "{what}: {carrying} text events");
                }
            }
        }
    }
}

#[tokio::test]
async fn mask_keeps_detected_values_from_the_app() {
    let (mock, sidecar) = stack("openai", "{action: mask}").await;
    let pieces = [
        "Your card 4111 11",
        "11 1111 1111 and [EMAIL_1] are ",
        "noted",
    ];
    for stream in [true, false] {
        mock.push(Behaviour::normal().pieces(pieces));
        let (status, text, _) = ask(&sidecar, "openai", stream).await;
        assert_eq!(status, 200);
        // Masked, and a placeholder is not restored on a mask route.
        assert_eq!(
            text, "Your card [CREDIT_CARD_1] and [EMAIL_1] are noted",
            "stream {stream}"
        );
        assert!(sent(&mock).contains("[EMAIL_1]"));
    }
    let metrics = sidecar.metrics().await;
    for line in [
        r#"gatehouse_redactions_total{route="chat",detector="email",direction="request"} 2"#,
        r#"gatehouse_redactions_total{route="chat",detector="creditCard",direction="request"} 2"#,
        r#"gatehouse_redactions_total{route="chat",detector="creditCard",direction="response"} 2"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    assert!(!metrics.contains("bob@example.com") && !metrics.contains("4111"));
}

#[tokio::test]
async fn block_refuses_the_prompt_naming_the_detector_never_the_value() {
    let (mock, sidecar) = stack(
        "anthropic",
        "{action: block, detectors: [email, creditCard]}",
    )
    .await;
    for dialect in ["openai", "anthropic"] {
        let (status, body, _) = ask(&sidecar, dialect, false).await;
        assert_eq!(status, 400, "{dialect}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let message = match dialect {
            "openai" => {
                assert_eq!(v["error"]["code"], "sensitive_data_blocked", "{body}");
                assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
                v["error"]["message"].as_str().unwrap().to_string()
            }
            _ => {
                assert_eq!(v["type"], "error", "{body}");
                assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
                v["error"]["message"].as_str().unwrap().to_string()
            }
        };
        assert!(
            message.contains("email") && message.contains("creditCard"),
            "{message}"
        );
        assert!(!message.contains("ipAddress"), "not enabled: {message}");
        for value in ["bob@example.com", "4111"] {
            assert!(!body.contains(value), "{body}");
        }
    }
    assert_eq!(mock.request_count(), 0, "nothing left the cluster");
}

#[tokio::test]
async fn custom_detectors_and_a_detector_subset() {
    let (mock, sidecar) = stack(
        "openai",
        r#"{detectors: [email], custom: [{name: ticket, pattern: 'TCK-[0-9]{5}'}]}"#,
    )
    .await;
    mock.push(Behaviour::normal().content("done"));
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .json(&json!({"model": "chat", "messages": [{"role": "user",
            "content": "ticket TCK-12345 for bob@example.com, card 4111 1111 1111 1111"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let upstream = sent(&mock);
    assert!(
        upstream.contains("ticket [TICKET_1] for [EMAIL_1], card 4111 1111 1111 1111"),
        "only the enabled detectors run: {upstream}"
    );
}

#[tokio::test]
async fn mask_keeps_detected_values_out_of_every_event_of_a_responses_stream() {
    // The card is split across deltas; under `mask` neither the deltas nor the events repeating
    // the text whole (`*.done`, `response.completed`) may carry it, and it counts once.
    let pieces = ["Your card 4111 11", "11 1111 1111 is ", "noted"];
    for kind in KINDS {
        let (mock, sidecar) = stack(kind, "{action: mask}").await;
        mock.push(Behaviour::normal().pieces(pieces));
        let resp = sidecar
            .client
            .post(sidecar.url("/v1/responses"))
            .json(&json!({"model": "chat", "stream": true, "input": PROMPT}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{kind}");
        let body = resp.text().await.unwrap();
        assert!(
            !body.contains("4111") && !body.contains("1111"),
            "{kind}: {body}"
        );
        let (_, text, _) = responses_stream(&body);
        assert_eq!(text, "Your card [CREDIT_CARD_1] is noted", "{kind}");
        let metrics = sidecar.metrics().await;
        let line = r#"gatehouse_redactions_total{route="chat",detector="creditCard",direction="response"} 1"#;
        assert!(
            metrics.lines().any(|l| l == line),
            "{kind}: {line}:\n{metrics}"
        );
    }
}
