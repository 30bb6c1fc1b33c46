//! The inbound Anthropic Messages API (`POST /v1/messages`): Anthropic SDK users point their base
//! URL at the sidecar. Routed by the same Routes; an Anthropic target gets the body natively, any
//! other target gets it translated to OpenAI Chat Completions first (then through that target's
//! adapter), and the answer comes back as an Anthropic message or Anthropic SSE event sequence.

mod stream;

use bytes::Bytes;
use http::StatusCode;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::error::TranslateError;
use crate::providers::chat::{content_text, new_id};

pub use stream::{StreamEncoder, error_event, inspect};

/// Anthropic request → OpenAI chat request. Returns the request and warnings.
pub fn to_openai(
    req: &Map<String, Value>,
) -> Result<(Map<String, Value>, Vec<String>), TranslateError> {
    let mut warnings = Vec::new();
    let mut messages: Vec<Value> = system_message(req)?.into_iter().collect();
    let Some(input) = req.get("messages").and_then(Value::as_array) else {
        return Err(not_an_array());
    };
    for message in input {
        translate_message(message, &mut messages, &mut warnings)?;
    }
    if messages.is_empty() {
        return Err(no_message());
    }
    let mut out = Map::new();
    out.insert(
        "model".into(),
        req.get("model").cloned().unwrap_or(json!("")),
    );
    out.insert("messages".into(), Value::Array(messages));
    parameters(req, &mut out, &mut warnings)?;
    Ok((out, warnings))
}

/// [`to_openai`] from the body's bytes straight to the OpenAI body's bytes with `model` set, one
/// message at a time: no tree of the whole request is ever built, so a body of a million messages
/// costs about its own size again, not dozens of times it (docs/architecture.md).
pub fn to_openai_body(body: &[u8], model: &str) -> Result<(Bytes, Vec<String>), TranslateError> {
    let invalid = |e: serde_json::Error| TranslateError::NotJson(e);
    let top: std::collections::BTreeMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(invalid)?;
    let mut rest = Map::new();
    let mut input: Option<&RawValue> = None;
    for (key, raw) in top {
        if key == "messages" {
            input = Some(raw);
        } else {
            rest.insert(key, serde_json::from_str(raw.get()).map_err(invalid)?);
        }
    }
    let input: Vec<&RawValue> = input
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .ok_or_else(not_an_array)?;
    let mut warnings = Vec::new();
    let mut written = Vec::with_capacity(body.len() / 2);
    let mut count = 0usize;
    let mut write = |message: &Value, out: &mut Vec<u8>| -> Result<(), TranslateError> {
        if count > 0 {
            out.push(b',');
        }
        count += 1;
        serde_json::to_writer(out, message).map_err(TranslateError::Encode)
    };
    if let Some(system) = system_message(&rest)? {
        write(&system, &mut written)?;
    }
    let mut translated = Vec::new();
    for raw in input {
        let message: Value = serde_json::from_str(raw.get()).map_err(invalid)?;
        translate_message(&message, &mut translated, &mut warnings)?;
        for message in translated.drain(..) {
            write(&message, &mut written)?;
        }
    }
    if count == 0 {
        return Err(no_message());
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    parameters(&rest, &mut out, &mut warnings)?;
    let mut encoded = serde_json::to_vec(&out).map_err(TranslateError::Encode)?;
    // `out` is an object with at least `model`: its last byte is the closing brace.
    encoded.pop();
    encoded.reserve(written.len() + 16);
    encoded.extend_from_slice(br#","messages":["#);
    encoded.extend_from_slice(&written);
    encoded.extend_from_slice(b"]}");
    Ok((Bytes::from(encoded), warnings))
}

fn not_an_array() -> TranslateError {
    TranslateError::Invalid("'messages' must be a non-empty array".to_string())
}

fn no_message() -> TranslateError {
    TranslateError::Invalid("'messages' must contain at least one message".to_string())
}

/// The OpenAI system message for Anthropic's `system`, if any.
fn system_message(req: &Map<String, Value>) -> Result<Option<Value>, TranslateError> {
    match req.get("system") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(json!({"role": "system", "content": s}))),
        Some(Value::Array(blocks)) => {
            let text = blocks_text(blocks);
            Ok((!text.is_empty()).then(|| json!({"role": "system", "content": text})))
        }
        Some(_) => Err(TranslateError::Invalid(
            "'system' must be a string or an array of text blocks".to_string(),
        )),
    }
}

/// One Anthropic message as OpenAI messages (a user turn with tool results gives several).
fn translate_message(
    message: &Value,
    messages: &mut Vec<Value>,
    warnings: &mut Vec<String>,
) -> Result<(), TranslateError> {
    let role = message.get("role").and_then(Value::as_str).ok_or_else(|| {
        TranslateError::Invalid("every message needs a string 'role'".to_string())
    })?;
    match (role, message.get("content")) {
        ("user" | "assistant", Some(Value::String(s))) => {
            messages.push(json!({"role": role, "content": s}));
        }
        ("user", Some(Value::Array(blocks))) => user_message(blocks, messages)?,
        ("assistant", Some(Value::Array(blocks))) => {
            messages.push(assistant_message(blocks, warnings));
        }
        ("user" | "assistant", _) => {
            return Err(TranslateError::Invalid(
                "message 'content' must be a string or an array of content blocks".to_string(),
            ));
        }
        (other, _) => {
            return Err(TranslateError::Invalid(format!(
                "message role '{other}' is not valid; use user or assistant"
            )));
        }
    }
    Ok(())
}

/// Everything of the request but its messages, into `out`; warnings for what is dropped.
/// Anthropic's structured outputs (`output_config.format`, or the older `output_format`) as
/// OpenAI's `response_format` json_schema, which every adapter enforces its own way. Other
/// `output_config` members (`effort`) are dropped with a warning.
fn structured_output(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<(), TranslateError> {
    let config = req.get("output_config").filter(|c| !c.is_null());
    if let Some(config) = config {
        let Some(config) = config.as_object() else {
            return Err(TranslateError::Invalid(
                "'output_config' must be an object".to_string(),
            ));
        };
        for key in config.keys().filter(|k| k.as_str() != "format") {
            warnings.push(format!(
                "'output_config.{key}' only applies when the route's target is anthropic and was \
                 dropped"
            ));
        }
    }
    let (name, format) = match (
        config
            .and_then(|c| c.get("format"))
            .filter(|f| !f.is_null()),
        req.get("output_format").filter(|f| !f.is_null()),
    ) {
        (Some(format), _) => ("output_config.format", format),
        (None, Some(format)) => ("output_format", format),
        (None, None) => return Ok(()),
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let schema = format
                .get("schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    TranslateError::Invalid(format!("'{name}.schema' must be a JSON schema object"))
                })?;
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}),
            );
            Ok(())
        }
        other => Err(TranslateError::Invalid(format!(
            "'{name}.type' must be 'json_schema', not '{}'",
            other.unwrap_or("(missing)")
        ))),
    }
}

fn parameters(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<(), TranslateError> {
    if let Some(m) = req.get("max_tokens").filter(|v| v.is_u64()) {
        out.insert("max_tokens".into(), m.clone());
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key).filter(|v| v.is_number()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(stop) = req.get("stop_sequences").filter(|v| v.is_array()) {
        out.insert("stop".into(), stop.clone());
    }
    let stream = req.get("stream") == Some(&Value::Bool(true));
    if stream {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let mut functions = Vec::new();
        for tool in tools {
            // Server tools (web search, code execution…) have a `type` other than custom.
            if tool
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "custom")
            {
                return Err(TranslateError::Unsupported(format!(
                    "tool type '{}' is only available when the route's target is anthropic",
                    tool.get("type").and_then(Value::as_str).unwrap_or_default()
                )));
            }
            let mut f = json!({
                "name": tool.get("name").cloned().unwrap_or(json!("")),
                "parameters": tool.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
            });
            if let (Some(d), Some(obj)) = (tool.get("description"), f.as_object_mut()) {
                obj.insert("description".into(), d.clone());
            }
            functions.push(json!({"type": "function", "function": f}));
        }
        if !functions.is_empty() {
            out.insert("tools".into(), Value::Array(functions));
        }
    }
    if let Some(choice) = req.get("tool_choice").filter(|c| c.is_object()) {
        let mapped = match choice.get("type").and_then(Value::as_str) {
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(json!(""))}})
            }
            _ => json!("auto"),
        };
        out.insert("tool_choice".into(), mapped);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if let Some(user) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(user));
    }
    structured_output(req, out, warnings)?;
    for key in req.keys() {
        if !matches!(
            key.as_str(),
            "model"
                | "messages"
                | "system"
                | "max_tokens"
                | "temperature"
                | "top_p"
                | "stop_sequences"
                | "stream"
                | "tools"
                | "tool_choice"
                | "metadata"
                | "output_config"
                | "output_format"
        ) {
            warnings.push(format!(
                "'{key}' only applies when the route's target is anthropic and was dropped"
            ));
        }
    }
    Ok(())
}

fn blocks_text(blocks: &[Value]) -> String {
    blocks
        .iter()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A user turn: `tool_result` blocks become `tool` messages (first, as OpenAI wants them right
/// after the assistant's calls), the rest one user message.
fn user_message(blocks: &[Value], messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let mut parts = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(
                json!({"type": "text", "text": block.get("text").cloned().unwrap_or(json!(""))}),
            ),
            Some("image") => {
                let source = block.get("source").unwrap_or(&Value::Null);
                let url = match source.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        source
                            .get("media_type")
                            .and_then(Value::as_str)
                            .unwrap_or("image/png"),
                        source.get("data").and_then(Value::as_str).unwrap_or("")
                    ),
                    Some("url") => source
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    _ => {
                        return Err(TranslateError::Invalid(
                            "image source must be base64 or url".to_string(),
                        ));
                    }
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_result") => {
                let content = match block.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(b)) => blocks_text(b),
                    _ => String::new(),
                };
                let content = if block.get("is_error") == Some(&Value::Bool(true)) {
                    format!("error: {content}")
                } else {
                    content
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id").cloned().unwrap_or(json!("")),
                    "content": content,
                }));
            }
            other => {
                return Err(TranslateError::Invalid(format!(
                    "content block type '{}' is only available when the route's target is anthropic",
                    other.unwrap_or("(missing)")
                )));
            }
        }
    }
    if !parts.is_empty() {
        let only_text = parts.len() == 1 && parts[0].get("type") == Some(&json!("text"));
        let content = if only_text {
            parts[0].get("text").cloned().unwrap_or(json!(""))
        } else {
            Value::Array(parts)
        };
        messages.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

fn assistant_message(blocks: &[Value], warnings: &mut Vec<String>) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(json!("")),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or(json!("")),
                    "arguments": block.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })),
            Some(other) => warnings.push(format!(
                "assistant '{other}' blocks only apply when the route's target is anthropic and were dropped"
            )),
            None => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty()
        && let Some(obj) = message.as_object_mut()
    {
        obj.insert("tool_calls".into(), Value::Array(calls));
    }
    message
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI `usage` → Anthropic `usage` (cached prompt tokens are cache reads, the gateway's
/// `cache_write_tokens` cache writes; both are outside `input_tokens`, as Anthropic counts them).
pub(super) fn usage(u: Option<&Value>) -> Value {
    let t = u
        .and_then(|u| serde_json::from_value::<crate::usage::Usage>(u.clone()).ok())
        .unwrap_or_default()
        .tokens();
    json!({
        "input_tokens": t.input,
        "output_tokens": t.output.saturating_add(t.reasoning),
        "cache_creation_input_tokens": t.cache_write,
        "cache_read_input_tokens": t.cached_read,
    })
}

/// OpenAI chat completion → Anthropic message.
pub fn response(openai: &Value) -> Value {
    let choice = openai
        .get("choices")
        .and_then(|c| c.get(0))
        .unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    let text = content_text(message.get("content"));
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let f = call.get("function").unwrap_or(&Value::Null);
            let input = f
                .get("arguments")
                .and_then(Value::as_str)
                .and_then(|a| serde_json::from_str::<Value>(a).ok())
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            content.push(json!({
                "type": "tool_use",
                "id": call.get("id").cloned().unwrap_or(json!("")),
                "name": f.get("name").cloned().unwrap_or(json!("")),
                "input": input,
            }));
        }
    }
    let id = openai
        .get("id")
        .and_then(Value::as_str)
        .map(|id| {
            if id.starts_with("msg_") {
                id.to_string()
            } else {
                format!("msg_{id}")
            }
        })
        .unwrap_or_else(|| new_id("msg_"));
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": openai.get("model").cloned().unwrap_or(json!("")),
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": usage(openai.get("usage")),
    })
}

/// Anthropic's error `type` for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// `{"type":"error","error":{"type","message"}}`.
pub fn error_body(status: StatusCode, message: &str) -> Bytes {
    Bytes::from(
        json!({"type": "error", "error": {"type": error_type(status), "message": message}})
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_translation_says_what_the_tree_translation_says() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/anthropic/messages_request.json"
        );
        let mut bodies = vec![std::fs::read(path).unwrap()];
        bodies.push(
            br#"{"model":"a","system":[{"type":"text","text":"s"}],"stream":true,"thinking":{},
               "messages":[{"role":"user","content":[{"type":"text","text":"t"},
               {"type":"tool_result","tool_use_id":"x","content":"r"}]},
               {"role":"assistant","content":[{"type":"thinking","thinking":"."}]}]}"#
                .to_vec(),
        );
        for body in bodies {
            let req: Map<String, Value> = serde_json::from_slice(&body).unwrap();
            let (mut tree, tree_warnings) = to_openai(&req).unwrap();
            tree.insert("model".into(), json!("upstream"));
            let (bytes, warnings) = to_openai_body(&body, "upstream").unwrap();
            let bytes: Map<String, Value> = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(bytes, tree);
            assert_eq!(warnings, tree_warnings);
        }
        for (body, expected) in [
            (&br#"{"model":"a","messages":[]}"#[..], "at least one"),
            (br#"{"model":"a","messages":{}}"#, "non-empty array"),
            (br#"{"model":"a","system":7,"messages":[]}"#, "'system'"),
            (br#"{"model":"a","messages":[{"role":"x","content":"y"}]}"#, "role 'x'"),
            (
                br#"{"model":"a","messages":[{"role":"user","content":"y"}],"tools":[{"type":"web_search_20250305"}]}"#,
                "only available when the route's target is anthropic",
            ),
        ] {
            let err = to_openai_body(body, "m").unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn structured_outputs_become_response_format() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let expected =
            json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}});
        for (req, warned) in [
            (
                json!({"output_config": {"format": {"type": "json_schema", "schema": schema}}}),
                false,
            ),
            (
                json!({"output_config": {"effort": "low", "format": {"type": "json_schema", "schema": schema}}}),
                true,
            ),
            (
                json!({"output_format": {"type": "json_schema", "schema": schema}}),
                false,
            ),
        ] {
            let mut req = req.as_object().cloned().unwrap();
            req.insert("model".into(), json!("a"));
            req.insert(
                "messages".into(),
                json!([{"role": "user", "content": "hi"}]),
            );
            let (out, warnings) = to_openai(&req).unwrap();
            assert_eq!(out["response_format"], expected);
            assert_eq!(
                warnings
                    .iter()
                    .any(|w| w.contains("'output_config.effort'")),
                warned,
                "{warnings:?}"
            );
            assert!(!warnings.iter().any(|w| w.contains("'output_config' only")));
        }
        let bad: Map<String, Value> = serde_json::from_value(json!({"model": "a",
            "messages": [{"role": "user", "content": "hi"}],
            "output_config": {"format": {"type": "yaml"}}}))
        .unwrap();
        let err = to_openai(&bad).unwrap_err().to_string();
        assert!(err.contains("'output_config.format.type'"), "{err}");
    }
}
