//! The inbound OpenAI Responses API (`POST /v1/responses`): the default of OpenAI's newer clients
//! (both SDKs' `responses.create`, the Vercel AI SDK's `openai(model)`, LangChain's
//! `use_responses_api`). Routed by the same Routes as chat. An `openai` or `azureOpenAI` target
//! gets the body natively (only `model` rewritten) and its answer byte for byte; every other
//! target gets it translated to Chat Completions first (then through that target's adapter), and
//! the answer comes back as a Response object or the Responses event stream.
//!
//! The gateway keeps no state: what needs a stored response (`previous_response_id`,
//! `conversation`, `item_reference` input items, `background`) is refused with a 400 naming the
//! parameter when the target is not one that stores responses itself.

mod stream;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::TranslateError;
use crate::providers::chat::{content_text, new_id, now_secs};
use crate::usage::{CompletionDetails, PromptDetails, Usage};

pub use stream::{StreamEncoder, inspect};

/// The provider types that serve the Responses API natively.
pub const NATIVE_TARGETS: &str = "openai or azureOpenAI";

fn needs_native(what: &str) -> TranslateError {
    TranslateError::Unsupported(format!(
        "{what} needs a stored response, which only the provider keeps: the route's target must \
         be {NATIVE_TARGETS} (the gateway itself stores nothing); send the whole conversation in \
         'input' instead"
    ))
}

/// A Responses request → the OpenAI chat request's bytes with `model` set, and the warnings of
/// what was dropped. A request only a native target can serve is a 400.
pub fn to_chat_body(body: &[u8], model: &str) -> Result<(Bytes, Vec<String>), TranslateError> {
    let req: Map<String, Value> = serde_json::from_slice(body).map_err(TranslateError::NotJson)?;
    let (mut chat, warnings) = to_chat(&req)?;
    chat.insert("model".into(), json!(model));
    let bytes = serde_json::to_vec(&chat).map_err(TranslateError::Encode)?;
    Ok((Bytes::from(bytes), warnings))
}

/// A Responses request → an OpenAI chat request (its `model` as the client sent it).
pub fn to_chat(
    req: &Map<String, Value>,
) -> Result<(Map<String, Value>, Vec<String>), TranslateError> {
    for (key, what) in [
        ("previous_response_id", "'previous_response_id'"),
        ("conversation", "'conversation'"),
    ] {
        if req.get(key).is_some_and(|v| !v.is_null()) {
            return Err(needs_native(what));
        }
    }
    if req.get("background") == Some(&Value::Bool(true)) {
        return Err(TranslateError::Unsupported(format!(
            "'background' responses are only served when the route's target is {NATIVE_TARGETS}"
        )));
    }
    let mut warnings = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    match req.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => {
            return Err(TranslateError::Invalid(
                "'instructions' must be a string".to_string(),
            ));
        }
    }
    match req.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for item in items {
                input_item(item, &mut messages, &mut warnings)?;
            }
        }
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(TranslateError::Invalid(
                "'input' must be a string or an array of input items".to_string(),
            ));
        }
    }
    if !messages
        .iter()
        .any(|m| m.get("role").and_then(Value::as_str) != Some("system"))
    {
        return Err(TranslateError::Invalid(
            "missing required parameter: 'input'".to_string(),
        ));
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

/// One input item as chat messages: a message, a function call (joined to the assistant
/// message before it, so parallel calls stay one turn), or a function call's output.
fn input_item(
    item: &Value,
    messages: &mut Vec<Value>,
    warnings: &mut Vec<String>,
) -> Result<(), TranslateError> {
    let kind = item.get("type").and_then(Value::as_str);
    match kind {
        None | Some("message") => {
            let role = item.get("role").and_then(Value::as_str).ok_or_else(|| {
                TranslateError::Invalid("every input message needs a string 'role'".to_string())
            })?;
            let role = match role {
                "user" | "system" | "developer" | "assistant" => role,
                other => {
                    return Err(TranslateError::Invalid(format!(
                        "input message role '{other}' is not valid; use user, system, developer \
                         or assistant"
                    )));
                }
            };
            let content = message_content(role, item.get("content"))?;
            messages.push(json!({"role": role, "content": content}));
        }
        Some("function_call") => {
            let text = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or_default();
            let call = json!({
                "id": text("call_id"),
                "type": "function",
                "function": {"name": text("name"), "arguments": text("arguments")},
            });
            // Joined to the assistant turn just before it (its text, or calls made alongside).
            if let Some(last) = messages.last_mut()
                && last.get("role").and_then(Value::as_str) == Some("assistant")
                && let Some(obj) = last.as_object_mut()
            {
                match obj.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => {
                        obj.insert("tool_calls".into(), json!([call]));
                    }
                }
                return Ok(());
            }
            messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
        }
        Some("function_call_output") => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": item.get("call_id").cloned().unwrap_or(json!("")),
                "content": output,
            }));
        }
        Some("reasoning") => warnings.push(format!(
            "reasoning input items are only replayed when the route's target is {NATIVE_TARGETS} \
             and were dropped"
        )),
        Some("item_reference") => return Err(needs_native("an 'item_reference' input item")),
        Some(other) => {
            return Err(TranslateError::Unsupported(format!(
                "input item type '{other}' is only available when the route's target is \
                 {NATIVE_TARGETS}"
            )));
        }
    }
    Ok(())
}

/// The content of an input message in chat's shape: a string, or parts (text and images).
fn message_content(role: &str, content: Option<&Value>) -> Result<Value, TranslateError> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(json!(s)),
        Some(Value::Array(parts)) => parts,
        None | Some(Value::Null) => return Ok(json!("")),
        Some(_) => {
            return Err(TranslateError::Invalid(
                "input message 'content' must be a string or an array of content parts".to_string(),
            ));
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => out.push(
                json!({"type": "text", "text": part.get("text").cloned().unwrap_or(json!(""))}),
            ),
            Some("refusal") => out.push(
                json!({"type": "text", "text": part.get("refusal").cloned().unwrap_or(json!(""))}),
            ),
            Some("input_image") => {
                let Some(url) = part.get("image_url").and_then(Value::as_str) else {
                    return Err(TranslateError::Unsupported(format!(
                        "'input_image' parts by 'file_id' are only available when the route's \
                         target is {NATIVE_TARGETS}; send an 'image_url' (https or data: URL)"
                    )));
                };
                let mut image = json!({"url": url});
                if let (Some(detail), Some(obj)) = (part.get("detail"), image.as_object_mut()) {
                    obj.insert("detail".into(), detail.clone());
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            other => {
                return Err(TranslateError::Unsupported(format!(
                    "content part type '{}' is only available when the route's target is \
                     {NATIVE_TARGETS}",
                    other.unwrap_or("(missing)")
                )));
            }
        }
    }
    // Assistant turns and system prompts are text in chat.
    if role != "user" {
        return Ok(json!(content_text(Some(&Value::Array(out)))));
    }
    Ok(Value::Array(out))
}

/// Everything of the request but its input, into `out`; warnings for what is dropped.
fn parameters(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<(), TranslateError> {
    if let Some(m) = req.get("max_output_tokens").filter(|v| v.is_u64()) {
        out.insert("max_tokens".into(), m.clone());
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key).filter(|v| v.is_number()) {
            out.insert(key.into(), v.clone());
        }
    }
    if req.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), json!(true));
        // The Response that ends the stream carries the usage: always asked for.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let mut functions = Vec::with_capacity(tools.len());
        for tool in tools {
            match tool.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut f = Map::new();
                    for key in ["name", "description", "parameters", "strict"] {
                        if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                            f.insert(key.into(), v.clone());
                        }
                    }
                    functions.push(json!({"type": "function", "function": f}));
                }
                other => {
                    return Err(TranslateError::Unsupported(format!(
                        "tool type '{}' is only available when the route's target is \
                         {NATIVE_TARGETS}",
                        other.unwrap_or("(missing)")
                    )));
                }
            }
        }
        if !functions.is_empty() {
            out.insert("tools".into(), Value::Array(functions));
        }
    }
    match req.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("tool_choice".into(), json!(s));
        }
        Some(choice) => match choice.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = choice.get("name").cloned().unwrap_or(json!(""));
                out.insert(
                    "tool_choice".into(),
                    json!({"type": "function", "function": {"name": name}}),
                );
            }
            other => {
                return Err(TranslateError::Unsupported(format!(
                    "'tool_choice' of type '{}' is only available when the route's target is \
                     {NATIVE_TARGETS}",
                    other.unwrap_or("(missing)")
                )));
            }
        },
    }
    if let Some(p) = req.get("parallel_tool_calls").filter(|v| v.is_boolean()) {
        out.insert("parallel_tool_calls".into(), p.clone());
    }
    if let Some(text) = req.get("text").filter(|t| t.is_object()) {
        if let Some(format) = text.get("format").filter(|f| f.is_object()) {
            match format.get("type").and_then(Value::as_str) {
                Some("json_schema") => {
                    let mut schema = Map::new();
                    for key in ["name", "description", "schema", "strict"] {
                        if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                            schema.insert(key.into(), v.clone());
                        }
                    }
                    out.insert(
                        "response_format".into(),
                        json!({"type": "json_schema", "json_schema": schema}),
                    );
                }
                Some("json_object") => {
                    out.insert("response_format".into(), json!({"type": "json_object"}));
                }
                Some("text") | None => {}
                Some(other) => {
                    return Err(TranslateError::Unsupported(format!(
                        "'text.format' of type '{other}' is not supported"
                    )));
                }
            }
        }
        if text.get("verbosity").is_some_and(|v| !v.is_null()) {
            warnings.push(format!(
                "'text.verbosity' only applies when the route's target is {NATIVE_TARGETS} and \
                 was dropped"
            ));
        }
    }
    if let Some(effort) = req
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|e| e.is_string())
    {
        out.insert("reasoning_effort".into(), effort.clone());
    }
    if let Some(user) = req
        .get("safety_identifier")
        .or_else(|| req.get("user"))
        .filter(|u| u.is_string())
    {
        out.insert("user".into(), user.clone());
    }
    for (key, value) in req {
        let dropped = match key.as_str() {
            "model"
            | "input"
            | "instructions"
            | "max_output_tokens"
            | "temperature"
            | "top_p"
            | "stream"
            | "tools"
            | "tool_choice"
            | "parallel_tool_calls"
            | "text"
            | "reasoning"
            | "user"
            | "safety_identifier"
            | "previous_response_id"
            | "conversation"
            | "background" => false,
            // What SDKs send by default and means nothing without stored responses.
            "store" | "include" | "stream_options" | "truncation" | "metadata" => {
                !value.is_null()
                    && value != &Value::Bool(false)
                    && value.as_array().is_none_or(|a| !a.is_empty())
                    && value.as_object().is_none_or(|o| !o.is_empty())
                    && value.as_str() != Some("disabled")
            }
            _ => !value.is_null(),
        };
        if dropped {
            warnings.push(format!(
                "'{key}' only applies when the route's target is {NATIVE_TARGETS} and was dropped"
            ));
        }
    }
    Ok(())
}

/// Responses `usage` → the gateway's usage.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct ResponsesUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl ResponsesUsage {
    /// In the gateway's shape.
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.input_tokens.unwrap_or(0),
            completion_tokens: self.output_tokens.unwrap_or(0),
            prompt_tokens_details: self.input_tokens_details.map(|d| PromptDetails {
                cached_tokens: d.cached_tokens,
                cache_write_tokens: d.cache_write_tokens,
            }),
            completion_tokens_details: self.output_tokens_details.map(|d| CompletionDetails {
                reasoning_tokens: d.reasoning_tokens,
            }),
            estimated: false,
        }
    }
}

/// The usage of a buffered Response object.
pub fn usage_of_body(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct WithUsage {
        #[serde(default)]
        usage: Option<ResponsesUsage>,
    }
    Some(
        serde_json::from_slice::<WithUsage>(body)
            .ok()?
            .usage?
            .usage(),
    )
}

/// The gateway's (OpenAI chat) usage → Responses `usage`. Cache writes travel as
/// `input_tokens_details.cache_write_tokens`, a field OpenAI does not define (SDKs keep it).
pub(super) fn usage_json(u: Option<&Value>) -> Value {
    let u = u
        .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok())
        .unwrap_or_default();
    let mut input_details = json!({"cached_tokens": u.cached_tokens()});
    if u.cache_write_tokens() > 0
        && let Some(obj) = input_details.as_object_mut()
    {
        obj.insert("cache_write_tokens".into(), json!(u.cache_write_tokens()));
    }
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": input_details,
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens()},
        "total_tokens": u.prompt_tokens.saturating_add(u.completion_tokens),
    })
}

/// A chat completion's id as the id of a Response (`resp_…`).
pub(super) fn response_id(id: Option<&str>) -> String {
    match id.filter(|id| !id.is_empty()) {
        Some(id) if id.starts_with("resp_") => id.to_string(),
        Some(id) => format!("resp_{}", id.trim_start_matches("chatcmpl-")),
        None => new_id("resp_"),
    }
}

/// `status` and `incomplete_details` for a chat `finish_reason`.
pub(super) fn status(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// The Response object around `output`.
pub(super) fn envelope(
    id: &str,
    created: u64,
    model: &Value,
    status: &str,
    incomplete: Value,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": null,
        "max_output_tokens": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": null,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "truncation": "disabled",
        "metadata": {},
        "usage": usage,
    })
}

/// An assistant message output item.
pub(super) fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

/// An `output_text` content part.
pub(super) fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// A `function_call` output item.
pub(super) fn function_call_item(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

/// A `reasoning` output item with its text.
pub(super) fn reasoning_item(id: &str, text: Option<&str>) -> Value {
    let content = text.map_or_else(Vec::new, |t| {
        vec![json!({"type": "reasoning_text", "text": t})]
    });
    json!({"type": "reasoning", "id": id, "summary": [], "content": content})
}

/// An OpenAI chat completion → a Response object.
pub fn response(openai: &Value) -> Value {
    let choice = openai
        .get("choices")
        .and_then(|c| c.get(0))
        .unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut output = Vec::new();
    if let Some(reasoning) = message
        .get("reasoning_content")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        output.push(reasoning_item(&new_id("rs_"), Some(reasoning)));
    }
    let text = content_text(message.get("content"));
    let refusal = message
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty());
    let calls = message.get("tool_calls").and_then(Value::as_array);
    if !text.is_empty() || refusal.is_some() || calls.is_none_or(Vec::is_empty) {
        let mut content = Vec::new();
        if let Some(refusal) = refusal {
            content.push(json!({"type": "refusal", "refusal": refusal}));
        }
        if !text.is_empty() || refusal.is_none() {
            content.push(output_text(&text));
        }
        output.push(message_item(&new_id("msg_"), "completed", content));
    }
    for call in calls.into_iter().flatten() {
        let f = call.get("function").unwrap_or(&Value::Null);
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
        output.push(function_call_item(
            &new_id("fc_"),
            &s(call.get("id")),
            &s(f.get("name")),
            &s(f.get("arguments")),
            "completed",
        ));
    }
    let (status, incomplete) = status(choice.get("finish_reason").and_then(Value::as_str));
    envelope(
        &response_id(openai.get("id").and_then(Value::as_str)),
        openai
            .get("created")
            .and_then(Value::as_u64)
            .unwrap_or_else(now_secs),
        openai.get("model").unwrap_or(&json!("")),
        status,
        incomplete,
        output,
        usage_json(openai.get("usage")),
    )
}

/// `event: error` with Responses' error event, plus an OpenAI `error` object so that clients
/// which raise on an `error` member (the OpenAI SDKs) raise here too: a cut stream never looks
/// like a finished answer.
pub fn error_event(message: &str, code: &str) -> Bytes {
    let mut out = BytesMut::new();
    write_event(
        &mut out,
        "error",
        &json!({
            "type": "error",
            "code": code,
            "message": message,
            "param": null,
            "sequence_number": 0,
            "error": {"type": "api_error", "code": code, "message": message, "param": null},
        }),
    );
    out.freeze()
}

pub(super) fn write_event(out: &mut BytesMut, name: &str, data: &Value) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<(Map<String, Value>, Vec<String>), TranslateError> {
        to_chat(body.as_object().unwrap())
    }

    #[test]
    fn a_responses_request_becomes_a_chat_request() {
        let (out, warnings) = chat(json!({
            "model": "m",
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": [
                    {"type": "input_text", "text": "weather?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}
                ]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "checking"}]},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"l\":1}"},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"l\":2}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]}
            ],
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "w"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}},
            "max_output_tokens": 50,
            "stream": true,
            "store": false,
            "reasoning": {"effort": "low"},
            "service_tier": "auto"
        }))
        .unwrap();
        let messages = out["messages"].as_array().unwrap();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(messages[1]["content"][1]["image_url"]["detail"], "low");
        assert_eq!(messages[2]["content"], "checking");
        assert_eq!(messages[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
        );
        assert_eq!(messages[4]["content"], "rain");
        assert_eq!(out["tools"][0]["function"]["strict"], true);
        assert_eq!(out["tool_choice"]["function"]["name"], "w");
        assert_eq!(out["response_format"]["json_schema"]["name"], "out");
        assert_eq!(out["max_tokens"], 50);
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["reasoning_effort"], "low");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("reasoning input items"));
        assert!(warnings[1].contains("'service_tier'"));
    }

    #[test]
    fn what_needs_a_stored_response_is_a_400_naming_it() {
        for (body, says) in [
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
                "'previous_response_id'",
            ),
            (
                json!({"model": "m", "input": "x", "conversation": "c"}),
                "'conversation'",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "item_reference",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "'web_search'",
            ),
            (json!({"model": "m"}), "'input'"),
        ] {
            let e = chat(body).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_chat_completion_becomes_a_response() {
        let r = response(&json!({
            "id": "chatcmpl-9", "created": 7, "model": "up",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "ok",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]
            }}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                      "prompt_tokens_details": {"cached_tokens": 4}}
        }));
        assert_eq!(r["id"], "resp_9");
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"][0]["content"][0]["text"], "ok");
        assert_eq!(r["output"][1]["type"], "function_call");
        assert_eq!(r["output"][1]["call_id"], "call_1");
        assert_eq!(r["usage"]["input_tokens"], 10);
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 4);
        assert_eq!(r["usage"]["total_tokens"], 15);
        let u = usage_of_body(r.to_string().as_bytes()).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens()),
            (10, 5, 4)
        );
        let cut = response(
            &json!({"choices": [{"finish_reason": "length", "message": {"content": "ab"}}]}),
        );
        assert_eq!(cut["status"], "incomplete");
        assert_eq!(cut["incomplete_details"]["reason"], "max_output_tokens");
    }
}
