//! The bytes path against the tree path, message by message and whole requests.

use super::*;
use serde_json::json;

#[test]
fn turns_are_written_as_serde_json_writes_them() {
    let mut writer = TurnWriter::new("content", 0);
    let mut turns = super::super::chat::Turns::default();
    let steps: Vec<Translated> = vec![
        Translated::System(json!({"text": "be brief"})),
        Translated::Turn("user", vec![json!({"text": "a"})]),
        Translated::Turn("user", vec![json!({"text": "b"}), json!({"text": "c"})]),
        Translated::Turn("assistant", vec![]),
        Translated::Skip,
        Translated::Turn("user", vec![json!({"text": "d"})]),
        Translated::Turn("assistant", vec![json!({"text": "e\"\u{1}"})]),
        Translated::System(json!({"text": "two"})),
    ];
    let mut system = Vec::new();
    for step in steps {
        match &step {
            Translated::System(b) => system.push(b.clone()),
            Translated::Turn(role, blocks) => turns.push(role, blocks.clone()),
            Translated::Skip => {}
        }
        writer.take(step).unwrap();
    }
    let tree = json!({
        "a": 1, "messages": turns.into_json("content"), "system": system, "z": [true]
    });
    let mut with_placeholders = tree.clone();
    with_placeholders["messages"] = Value::Null;
    with_placeholders["system"] = Value::Null;
    let written = writer
        .finish(&with_placeholders, "messages", "system", None)
        .unwrap();
    assert_eq!(written, serde_json::to_vec(&tree).unwrap());
}

#[test]
fn a_prefix_longer_than_the_headroom_is_still_written_in_front() {
    let mut writer = TurnWriter::new("parts", 0);
    writer
        .take(Translated::Turn("user", vec![json!({"text": "x"})]))
        .unwrap();
    writer
        .take(Translated::System(json!({"text": "s"})))
        .unwrap();
    let long = "k".repeat(HEADROOM * 2);
    let body = json!({"a": long, "contents": null, "systemInstruction": null});
    let written = writer
        .finish(&body, "contents", "systemInstruction", Some("parts"))
        .unwrap();
    let expected = json!({
        "a": long,
        "contents": [{"role": "user", "parts": [{"text": "x"}]}],
        "systemInstruction": {"parts": [{"text": "s"}]},
    });
    assert_eq!(written, serde_json::to_vec(&expected).unwrap());
}

#[test]
fn messages_are_walked_one_by_one_and_the_first_error_stops_the_walk() {
    let body = br#"{"model":"m","messages":[{"role":"user"},2,{"role":"x"}],"n":1,"messages2":0}"#;
    let (rest, messages) = split(body).unwrap();
    assert_eq!(rest.keys().collect::<Vec<_>>(), ["messages2", "model", "n"]);
    let mut seen = Vec::new();
    let err = for_each_message(messages, |m| {
        seen.push(m.clone());
        if m.is_number() {
            return Err(TranslateError::Invalid("a number".to_string()));
        }
        Ok(())
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "a number");
    assert_eq!(seen, [json!({"role": "user"}), json!(2)]);
    let (_, not_array) = split(br#"{"messages":{}}"#).unwrap();
    assert!(for_each_message(not_array, |_| Ok(())).is_err());
    assert!(split(br#"{"model":"m"}"#).is_err());
}

type Translation = Result<(Vec<u8>, Vec<String>), String>;

const KINDS: [&str; 3] = ["anthropic", "gemini", "bedrock"];

/// The tree path: the whole request parsed, translated to a tree, the tree serialized.
fn by_tree(kind: &str, body: &[u8]) -> Translation {
    let req: Map<String, Value> = serde_json::from_slice(body).unwrap();
    let stream = req.get("stream") == Some(&Value::Bool(true));
    let mut warnings = Vec::new();
    let value = match kind {
        "anthropic" => super::super::anthropic::request("up", &req, stream, &mut warnings),
        "gemini" => super::super::gemini::request(&req, &mut warnings),
        _ => super::super::bedrock::request("up", &req, &mut warnings),
    };
    value
        .map(|v| (serde_json::to_vec(&v).unwrap(), warnings))
        .map_err(|e| e.to_string())
}

/// The bytes path.
fn by_bytes(kind: &str, body: &[u8]) -> Translation {
    let stream = serde_json::from_slice::<Value>(body).unwrap()["stream"] == json!(true);
    let mut warnings = Vec::new();
    let bytes = match kind {
        "anthropic" => super::super::anthropic::request_body("up", body, stream, &mut warnings),
        "gemini" => super::super::gemini::request_body(body, &mut warnings),
        _ => super::super::bedrock::request_body("up", body, &mut warnings),
    };
    bytes
        .map(|b| (b.to_vec(), warnings))
        .map_err(|e| e.to_string())
}

fn assert_same(body: &[u8]) -> [Translation; 3] {
    KINDS.map(|kind| {
        let tree = by_tree(kind, body);
        let bytes = by_bytes(kind, body);
        assert_eq!(
            bytes.as_ref().map(|(b, w)| (String::from_utf8_lossy(b), w)),
            tree.as_ref().map(|(b, w)| (String::from_utf8_lossy(b), w)),
            "{kind}: {}",
            String::from_utf8_lossy(body)
        );
        bytes
    })
}

const PNG: &str = "data:image/png;base64,iVBORw0KGgo=";

#[test]
fn the_bytes_path_writes_what_the_tree_path_writes() {
    let conversation = json!({
        "model": "alias",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "and \"exact\""}]},
            {"role": "system", "content": ""},
            {"role": "user", "content": "hi \u{1F600} \u{0007}"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": PNG}},
                {"type": "image_url", "image_url": PNG},
            ]},
            {"role": "assistant", "content": null},
            {"role": "user", "content": "merged into the user turn above"},
            {"role": "assistant", "content": "calling", "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "get", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "put", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\":21}"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": "thanks"},
            {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
            {"role": "assistant", "tool_calls": [
                {"id": "c3", "function": {"name": "get", "arguments": {"city": "Oslo"}}},
            ]},
            {"role": "tool", "tool_call_id": "c3", "content": "plain text"},
        ],
        "max_completion_tokens": 300,
        "max_tokens": 5,
        "temperature": 1.5,
        "top_p": 0.5,
        "stop": ["END", "STOP"],
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "tools": [
            {"type": "function", "function": {"name": "get", "description": "d",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "put"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "get"}},
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        "user": "u-1",
        "logit_bias": {"1": 2},
        "unknown_param": [1, 2],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let mut bodies = vec![
        serde_json::to_vec(&conversation).unwrap(),
        // Only a system prompt: no turn at all.
        br#"{"model":"m","messages":[{"role":"system","content":"s"}]}"#.to_vec(),
        // Alternating roles, nothing merged; no system prompt; defaults everywhere.
        br#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]}"#.to_vec(),
        // Escapes in keys and values, repeated keys (the last one wins), whitespace.
        br#" { "model" : "m" , "messages" : [ {"role":"user","content":"first"} ],
            "temp\u0065rature": 0.3, "tool_choice": "required", "tool_choice": "none",
            "tools": [{"type":"function","function":{"name":"t"}}],
            "messages": [ { "role" : "us\u0065r" , "content" : "\ud83d\ude00 \/ \n" } ] } "#
            .to_vec(),
        // Every tool_choice.
        br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"t"}}],"tool_choice":"auto","response_format":{"type":"json_object"}}"#.to_vec(),
        br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"t"}}],"tool_choice":"required","n":1,"stop":"one"}"#.to_vec(),
    ];
    // Keys before the messages that do not fit the headroom (Bedrock's inferenceConfig).
    let stops: Vec<String> = (0..400).map(|i| format!("stop sequence {i:04}")).collect();
    bodies.push(
        serde_json::to_vec(&json!({
            "model": "m", "max_tokens": 9, "stop": stops,
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}],
        }))
        .unwrap(),
    );
    for body in &bodies {
        for result in assert_same(body) {
            result.unwrap();
        }
    }
}

#[test]
fn the_bytes_path_refuses_what_the_tree_path_refuses_with_the_same_error() {
    let message_errors = [
        r#"[{"content":"no role"}]"#,
        r#"[{"role":"user","content":"x"},{"role":"critic","content":"x"}]"#,
        r#"[{"role":"tool","content":"no id"}]"#,
        r#"[{"role":"tool","tool_call_id":"nobody","content":"x"}]"#,
        r#"[{"role":"user","content":7}]"#,
        r#"[{"role":"user","content":[{"type":"audio"}]}]"#,
        r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]"#,
        r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x"}}]}]"#,
        r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/tiff;base64,AA=="}}]}]"#,
        r#"[{"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"[1]"}}]}]"#,
        r#"[7]"#,
    ];
    let parameter_errors = [
        r#""n":3"#,
        r#""stop":7"#,
        r#""tools":{}"#,
        r#""tools":[{"type":"retrieval"}]"#,
        r#""tools":[{"type":"function","function":{"name":"t"}}],"tool_choice":"sometimes""#,
        r#""n":2,"stop":7"#,
    ];
    let mut refused = 0;
    for messages in message_errors {
        for parameters in parameter_errors.iter().chain(&[r#""top_p":1"#]) {
            let body = format!(r#"{{"model":"m","messages":{messages},{parameters}}}"#);
            refused += assert_same(body.as_bytes())
                .iter()
                .filter(|r| r.is_err())
                .count();
        }
    }
    for parameters in parameter_errors {
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],{parameters}}}"#);
        refused += assert_same(body.as_bytes())
            .iter()
            .filter(|r| r.is_err())
            .count();
    }
    // Every case is refused by at least one provider (and the same way by both paths).
    assert!(
        refused >= message_errors.len() * 7 + parameter_errors.len(),
        "{refused}"
    );
}

/// An Anthropic client's request on the tree path (the whole body translated to an OpenAI
/// tree, then by the adapter) and on the bytes path (`to_openai_body`, then the adapter's
/// bytes path): the same body, the same warnings in the same order, the same refusals.
#[test]
fn an_anthropic_client_is_translated_the_same_through_openai_bytes() {
    use crate::dialect::messages;
    let bodies = [
        json!({
            "model": "alias", "max_tokens": 100, "stream": true,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [
                    {"type": "text", "text": "see"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "t1", "name": "get", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "21C"},
                    {"type": "text", "text": "and now?"},
                ]},
            ],
            "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "temperature": 0.5, "top_k": 3, "metadata": {"user_id": "u"},
            "stop_sequences": ["END"],
        }),
        json!({"model": "m", "max_tokens": 5, "system": "s",
               "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "data": "d"}}]}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
               "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        let bytes = serde_json::to_vec(&body).unwrap();
        for kind in KINDS {
            let tree = messages::to_openai(body.as_object().unwrap())
                .map_err(|e| e.to_string())
                .and_then(|(openai, mut warnings)| {
                    let (out, mut more) = by_tree(kind, &serde_json::to_vec(&openai).unwrap())?;
                    warnings.append(&mut more);
                    Ok((out, warnings))
                });
            let written = messages::to_openai_body(&bytes, "up")
                .map_err(|e| e.to_string())
                .and_then(|(openai, mut warnings)| {
                    let (out, mut more) = by_bytes(kind, &openai)?;
                    warnings.append(&mut more);
                    Ok((out, warnings))
                });
            assert_eq!(
                written
                    .as_ref()
                    .map(|(b, w)| (String::from_utf8_lossy(b), w)),
                tree.as_ref().map(|(b, w)| (String::from_utf8_lossy(b), w)),
                "{kind}: {body}"
            );
            // The first two are served, the last two refused.
            assert_eq!(written.is_ok(), i < 2, "{kind}: {body}: {written:?}");
        }
    }
}
