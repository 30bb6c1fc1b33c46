//! Golden translation tests: real-shaped provider payloads (fixtures/<provider>/) through each
//! adapter, both ways, snapshotted with insta; and a property test that no stream translator
//! panics on arbitrary bytes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use bytes::BytesMut;
use gatehouse_crds::config::ProviderKind;
use gatehouse_sidecar::dialect::{self, Dialect, Inbound, Operation, messages};
use gatehouse_sidecar::providers::{self, anthropic, bedrock, gemini};
use serde_json::{Map, Value, json};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn fixture_json(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).unwrap()
}

fn openai_request() -> Map<String, Value> {
    fixture_json("openai/chat_request.json")
        .as_object()
        .unwrap()
        .clone()
}

/// Replace generated ids and timestamps, so snapshots are stable.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if k == "created" {
                    *val = json!(0);
                } else if k == "id"
                    && let Some(s) = val.as_str()
                    && let Some(pos) = s.rfind(|c: char| !c.is_ascii_hexdigit())
                    && s.len() - pos > 20
                {
                    *val = json!(format!("{}<generated>", &s[..=pos]));
                } else {
                    normalize(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn inbound(dialect: Dialect, req: Map<String, Value>, stream: bool) -> Inbound {
    Inbound {
        dialect,
        op: Operation::Chat,
        openai: req,
        native: None,
        stream,
        warnings: Vec::new(),
        anthropic_beta: None,
    }
}

/// Run `bytes` through the translator for `kind`, split into `split`-byte pieces.
fn translate(kind: ProviderKind, dialect: Dialect, bytes: &[u8], split: usize) -> (String, bool) {
    let mut req = openai_request();
    if dialect == Dialect::Anthropic {
        req.remove("stream_options");
    }
    let inbound = inbound(dialect, req, true);
    let Some(mut t) = providers::translate(kind, "upstream-model", &inbound) else {
        // Native pair (e.g. Anthropic client, Anthropic provider): bytes pass through untouched.
        return (String::from_utf8_lossy(bytes).into_owned(), true);
    };
    let mut out = BytesMut::new();
    let mut ok = true;
    for piece in bytes.chunks(split.max(1)) {
        ok &= t.feed(piece, &mut out).is_ok();
    }
    ok &= t.finish(&mut out).is_ok();
    (String::from_utf8(out.to_vec()).unwrap(), ok)
}

/// The `data:` payloads of an SSE text, JSON-normalized.
fn sse_json(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| {
            let data = e.lines().find_map(|l| l.strip_prefix("data: "))?;
            let mut v = serde_json::from_str::<Value>(data).unwrap_or(json!(data));
            normalize(&mut v);
            Some(v)
        })
        .collect()
}

fn bedrock_stream() -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let events = fixture_json("bedrock/converse_stream_events.json");
    let mut out = Vec::new();
    for e in events.as_array().unwrap() {
        let name = e[0].as_str().unwrap().to_string();
        let message = Message::new(e[1].to_string().into_bytes())
            .add_header(Header::new(":event-type", HeaderValue::String(name.into())))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ));
        aws_smithy_eventstream::frame::write_message_to(&message, &mut out).unwrap();
    }
    out
}

#[test]
fn request_to_anthropic() {
    let mut warnings = Vec::new();
    let body =
        anthropic::request("claude-sonnet-4-5", &openai_request(), true, &mut warnings).unwrap();
    insta::assert_json_snapshot!(json!({"body": body, "warnings": warnings}));
}

#[test]
fn request_to_gemini() {
    let mut warnings = Vec::new();
    let body = gemini::request(&openai_request(), &mut warnings).unwrap();
    insta::assert_json_snapshot!(json!({"body": body, "warnings": warnings}));
}

#[test]
fn request_to_bedrock() {
    let mut warnings = Vec::new();
    let body = bedrock::request(
        "anthropic.claude-3-haiku-20240307-v1:0",
        &openai_request(),
        &mut warnings,
    )
    .unwrap();
    insta::assert_json_snapshot!(json!({"body": body, "warnings": warnings}));
}

#[test]
fn embeddings_request_to_gemini() {
    let req = json!({"model": "e", "input": ["a", "b"], "dimensions": 8});
    let body = gemini::embeddings_request("text-embedding-004", req.as_object().unwrap()).unwrap();
    insta::assert_json_snapshot!(body);
}

#[test]
fn embeddings_requests_to_bedrock() {
    let list = json!({"model": "e", "input": ["one", "two words", "three"], "dimensions": 512,
        "encoding_format": "base64", "user": "u-1"});
    let many: Vec<String> = (0..100).map(|i| format!("text {i}")).collect();
    let cohere =
        json!({"model": "e", "input": many, "input_type": "search_query", "truncate": "END"});
    let mut out = Map::new();
    for (name, model, req) in [
        ("titan_v2", "amazon.titan-embed-text-v2:0", &list),
        (
            "titan_v2_profile_arn",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.titan-embed-text-v2:0",
            &json!({"input": "x"}),
        ),
        (
            "titan_v1",
            "amazon.titan-embed-text-v1",
            &json!({"input": ["a", "b"]}),
        ),
        (
            "cohere_default_input_type",
            "cohere.embed-english-v3",
            &json!({"input": "hello"}),
        ),
        (
            "cohere_over_96_texts",
            "eu.cohere.embed-multilingual-v3",
            &cohere,
        ),
    ] {
        let mut warnings = Vec::new();
        let bodies =
            bedrock::embeddings::requests(model, req.as_object().unwrap(), &mut warnings).unwrap();
        out.insert(name.into(), json!({"bodies": bodies, "warnings": warnings}));
    }
    // The 100 Cohere texts go in two calls, 96 then 4, in order.
    let split = &out["cohere_over_96_texts"]["bodies"];
    assert_eq!(split[0]["texts"].as_array().unwrap().len(), 96);
    assert_eq!(
        split[1]["texts"],
        json!(["text 96", "text 97", "text 98", "text 99"])
    );
    out["cohere_over_96_texts"]["bodies"] = json!(
        split
            .as_array()
            .unwrap()
            .iter()
            .map(
                |b| json!({"input_type": b["input_type"], "truncate": b["truncate"],
            "texts": b["texts"].as_array().unwrap().len()})
            )
            .collect::<Vec<_>>()
    );
    insta::assert_json_snapshot!(Value::Object(out));
}

#[test]
fn embeddings_requests_bedrock_cannot_express_are_400s() {
    let cases = [
        (
            "amazon.titan-embed-text-v2:0",
            json!({"input": [[1, 2, 3]]}),
            "token arrays",
        ),
        (
            "amazon.titan-embed-text-v2:0",
            json!({"input": [1, 2, 3]}),
            "token arrays",
        ),
        (
            "amazon.titan-embed-text-v2:0",
            json!({"input": []}),
            "must not be empty",
        ),
        (
            "amazon.titan-embed-text-v2:0",
            json!({"input": "x", "dimensions": 300}),
            "256, 512, 1024",
        ),
        (
            "amazon.titan-embed-text-v1",
            json!({"input": "x", "dimensions": 256}),
            "1536 only",
        ),
        (
            "cohere.embed-english-v3",
            json!({"input": "x", "dimensions": 512}),
            "1024 only",
        ),
        (
            "cohere.embed-english-v3",
            json!({"input": "x", "input_type": "query"}),
            "search_document",
        ),
        (
            "amazon.titan-embed-text-v2:0",
            json!({"input": "x", "encoding_format": "int8"}),
            "'encoding_format'",
        ),
        (
            "amazon.titan-embed-image-v1",
            json!({"input": "x"}),
            "not an embedding model gatehouse can call",
        ),
        (
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3",
            json!({"input": "x"}),
            "last segment of an ARN",
        ),
    ];
    for (model, req, says) in cases {
        let err = bedrock::embeddings::requests(model, req.as_object().unwrap(), &mut Vec::new())
            .unwrap_err();
        assert_eq!(err.status(), 400, "{model} {req}");
        assert!(err.to_string().contains(says), "{model} {req}: {err}");
    }
    let many: Vec<String> = (0..2049).map(|i| i.to_string()).collect();
    let err = bedrock::embeddings::requests(
        "amazon.titan-embed-text-v2:0",
        json!({"input": many}).as_object().unwrap(),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("at most 2048"), "{err}");
}

#[test]
fn embeddings_responses_from_bedrock() {
    let reply = |path: &str, input_tokens: Option<u64>| providers::Reply {
        body: fixture(path).into(),
        input_tokens,
    };
    // Two Titan calls (the second without the header: the body's count is what counts).
    let titan = [
        reply("bedrock/titan_embed_v2.json", Some(4)),
        providers::Reply {
            body: br#"{"embedding":[0.5,-0.5],"inputTextTokenCount":2}"#[..].into(),
            input_tokens: None,
        },
    ];
    let cohere = [reply("bedrock/cohere_embed_v3.json", Some(5))];
    let by_type = providers::Reply {
        body: br#"{"id":"x","response_type":"embeddings_by_type","texts":["a"],"embeddings":{"float":[[0.5,0.5]]}}"#[..].into(),
        input_tokens: Some(1),
    };
    let bedrock = |model: &str, replies: &[providers::Reply]| {
        providers::responses(ProviderKind::Bedrock, Operation::Embeddings, model, replies).unwrap()
    };
    let mut base64 = bedrock("amazon.titan-embed-text-v2:0", &titan[..1]);
    dialect::openai::base64_embeddings(&mut base64);
    let out = json!({
        "titan_two_calls": bedrock("amazon.titan-embed-text-v2:0", &titan),
        "cohere_header_usage": bedrock("us.cohere.embed-english-v3", &cohere),
        "cohere_without_header": providers::response(ProviderKind::Bedrock, Operation::Embeddings,
            "cohere.embed-english-v3", &fixture("bedrock/cohere_embed_v3.json")).unwrap()["usage"],
        "cohere_by_type": bedrock("cohere.embed-english-v3", &[by_type])["data"],
        "titan_base64": base64["data"][0]["embedding"],
    });
    insta::assert_json_snapshot!(out);
    // The base64 form is the same floats, little-endian f32.
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, [0.0123f32, -0.5, 0.25, 0.8305]);
    for (model, body) in [
        (
            "amazon.titan-embed-text-v2:0",
            &br#"{"message":"no embedding here"}"#[..],
        ),
        (
            "cohere.embed-english-v3",
            br#"{"embeddings":[[0.1]],"texts":["a","b"]}"#,
        ),
        ("cohere.embed-english-v3", b"[1,2]"),
    ] {
        assert!(
            providers::response(ProviderKind::Bedrock, Operation::Embeddings, model, body).is_err(),
            "{model}"
        );
    }
}

#[test]
fn unsupported_inputs_are_clear_400s() {
    let mut req = openai_request();
    req.insert(
        "messages".into(),
        json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]),
    );
    for err in [
        gemini::request(&req, &mut Vec::new()).unwrap_err(),
        bedrock::request(
            "anthropic.claude-3-haiku-20240307-v1:0",
            &req,
            &mut Vec::new(),
        )
        .unwrap_err(),
    ] {
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("data: URLs only"), "{err}");
    }
    // Anthropic takes http image URLs as url sources.
    assert!(anthropic::request("m", &req, false, &mut Vec::new()).is_ok());
    req.insert("n".into(), json!(2));
    assert_eq!(
        anthropic::request("m", &req, false, &mut Vec::new())
            .unwrap_err()
            .status(),
        400
    );
}

#[test]
fn responses_to_openai() {
    let mut out = json!({
        "anthropic": providers::response(ProviderKind::Anthropic, Operation::Chat, "m", &fixture("anthropic/message.json")).unwrap(),
        "gemini": providers::response(ProviderKind::Gemini, Operation::Chat, "m", &fixture("gemini/response.json")).unwrap(),
        "bedrock": providers::response(ProviderKind::Bedrock, Operation::Chat, "anthropic.claude-3-haiku", &fixture("bedrock/converse.json")).unwrap(),
        "gemini_embeddings": providers::response(ProviderKind::Gemini, Operation::Embeddings, "text-embedding-004",
            br#"{"embeddings":[{"values":[0.5,-1.0]},{"values":[0.25,0.0]}]}"#).unwrap(),
    });
    normalize(&mut out);
    insta::assert_json_snapshot!(out);
    assert!(providers::response(ProviderKind::Anthropic, Operation::Chat, "m", b"<html>").is_err());
    assert!(providers::response(ProviderKind::Gemini, Operation::Chat, "m", b"{}").is_err());
}

#[test]
fn streams_to_openai_chunks() {
    let inputs = [
        (
            "anthropic",
            ProviderKind::Anthropic,
            fixture("anthropic/stream.sse"),
        ),
        ("gemini", ProviderKind::Gemini, fixture("gemini/stream.sse")),
        ("bedrock", ProviderKind::Bedrock, bedrock_stream()),
    ];
    let mut all = Map::new();
    for (name, kind, bytes) in inputs {
        let (whole, ok) = translate(kind, Dialect::OpenAi, &bytes, usize::MAX);
        assert!(ok, "{name}");
        // Any split of the upstream bytes gives the same events.
        for split in [1, 7, 64] {
            let (text, ok) = translate(kind, Dialect::OpenAi, &bytes, split);
            assert!(ok, "{name} split {split}");
            assert_eq!(sse_json(&text), sse_json(&whole), "{name} split {split}");
        }
        assert!(whole.ends_with("data: [DONE]\n\n"), "{name}: {whole}");
        all.insert(name.to_string(), Value::Array(sse_json(&whole)));
    }
    insta::assert_json_snapshot!(Value::Object(all));
}

#[test]
fn truncated_streams_fail() {
    for (name, kind, bytes) in [
        (
            "anthropic",
            ProviderKind::Anthropic,
            fixture("anthropic/stream.sse"),
        ),
        ("gemini", ProviderKind::Gemini, fixture("gemini/stream.sse")),
        ("bedrock", ProviderKind::Bedrock, bedrock_stream()),
    ] {
        let cut = &bytes[..bytes.len() - 10];
        let (text, ok) = translate(kind, Dialect::OpenAi, cut, usize::MAX);
        assert!(!ok, "{name} truncated stream accepted");
        assert!(!text.contains("[DONE]"), "{name}");
    }
    // A corrupted event-stream frame (CRC mismatch) is an error, not garbage passed on.
    let mut bytes = bedrock_stream();
    bytes[20] ^= 0xff;
    assert!(!translate(ProviderKind::Bedrock, Dialect::OpenAi, &bytes, usize::MAX).1);
}

#[test]
fn messages_request_to_openai() {
    let req = fixture_json("anthropic/messages_request.json");
    let (openai, warnings) = messages::to_openai(req.as_object().unwrap()).unwrap();
    insta::assert_json_snapshot!(json!({"openai": openai, "warnings": warnings}));
}

#[test]
fn openai_answers_to_messages() {
    let completion = json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Checking.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29, "prompt_tokens_details": {"cached_tokens": 5}}});
    let message = messages::response(&completion);
    let (stream, ok) = translate(
        ProviderKind::Openai,
        Dialect::Anthropic,
        &fixture("openai/stream.sse"),
        usize::MAX,
    );
    assert!(ok);
    let names: Vec<&str> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    insta::assert_json_snapshot!(
        json!({"message": message, "event_names": names, "events": sse_json(&stream)})
    );
    // An Anthropic client served by Anthropic needs no translator at all.
    let native = inbound(Dialect::Anthropic, openai_request(), true);
    assert!(providers::translate(ProviderKind::Anthropic, "m", &native).is_none());
}

#[test]
fn provider_errors_become_error_items() {
    let (text, _) = translate(
        ProviderKind::Anthropic,
        Dialect::OpenAi,
        b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        usize::MAX,
    );
    assert!(
        text.contains("\"error\"") && text.contains("Overloaded"),
        "{text}"
    );
}

#[test]
fn bedrock_keys_parse_in_both_formats() {
    assert!(bedrock::credentials("AKIDEXAMPLE:secret").is_ok());
    assert!(bedrock::credentials("AKIDEXAMPLE:secret:token").is_ok());
    assert!(bedrock::credentials(r#"{"accessKeyId":"AKID","secretAccessKey":"s"}"#).is_ok());
    let err = bedrock::credentials("just-a-key").unwrap_err();
    assert!(!err.contains("just-a-key"), "no key material in errors");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// No translator panics on arbitrary bytes, in any split, for either client dialect.
        #[test]
        fn stream_translators_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), split in 1usize..300) {
            for kind in [ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Bedrock, ProviderKind::Openai] {
                for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
                    if kind == ProviderKind::Openai && dialect == Dialect::OpenAi {
                        continue;
                    }
                    let _ = translate(kind, dialect, &bytes, split);
                }
            }
        }

        /// Well-formed SSE framing with arbitrary JSON-ish payloads never panics either.
        #[test]
        fn sse_events_with_arbitrary_payloads(payloads in proptest::collection::vec("[ -~]{0,80}", 0..20)) {
            let mut text = String::new();
            for p in &payloads {
                text.push_str("event: content_block_delta\ndata: ");
                text.push_str(p);
                text.push_str("\n\n");
            }
            for kind in [ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Openai] {
                let _ = translate(kind, Dialect::Anthropic, text.as_bytes(), 13);
            }
        }
    }
}
