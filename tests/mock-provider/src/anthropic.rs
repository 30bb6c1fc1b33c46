//! Anthropic's Messages API: `POST /v1/messages`, JSON and SSE, and its error bodies.
//!
//! Shapes follow the API reference and anthropic-sdk-python's types (`Message`, `Usage`,
//! `RawMessageStreamEvent`): a stream is `message_start`, then per content block
//! `content_block_start`, (`ping` after the first), `content_block_delta`s (`text_delta` or
//! `input_json_delta`), `content_block_stop`, then `message_delta` (stop reason, output tokens)
//! and `message_stop`. Errors are `{"type": "error", "error": {"type", "message"},
//! "request_id"}`. Input tokens exclude cache reads, as Anthropic reports them.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::answer::{
    Answer, Finish, Forced, Prompt, Unpaired, block_ids, next_id, text_of, unpaired, words_in,
};
use crate::behaviour::{Behaviour, Fault};
use crate::body::{self, Body, Pacing, sse_named};

/// An Anthropic error response: `status` with `{"type": "error", "error": {"type", "message"}}`.
pub(crate) fn error(
    status: u16,
    error_type: Option<&str>,
    message: Option<&str>,
    retry_after_secs: Option<u64>,
) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (d_type, d_message) = defaults(status.as_u16());
    let mut response = body::json_response(
        status,
        &json!({
            "type": "error",
            "error": {
                "type": error_type.unwrap_or(d_type),
                "message": message.unwrap_or(d_message),
            },
            "request_id": next_id("req_"),
        }),
    );
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Anthropic's error type and a message for `status`.
fn defaults(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => (
            "invalid_request_error",
            "The mock provider rejected this request.",
        ),
        401 => ("authentication_error", "invalid x-api-key"),
        402 => ("billing_error", "Your credit balance is too low."),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => ("not_found_error", "Not found"),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => (
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit.",
        ),
        529 | 503 => ("overloaded_error", "Overloaded"),
        504 => ("timeout_error", "Request timed out."),
        s if s >= 500 => ("api_error", "Internal server error"),
        _ => (
            "invalid_request_error",
            "The mock provider rejected this request.",
        ),
    }
}

fn invalid(message: &str) -> Response<Body> {
    error(400, None, Some(message), None)
}

/// Checks `x-api-key` (when the mock has a key) and `anthropic-version`, as the API does
/// before reading the body; the error response when they fail.
pub(crate) fn authenticate(
    expected_key: Option<&str>,
    headers: &http::HeaderMap,
) -> Option<Response<Body>> {
    if let Some(expected) = expected_key {
        match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            None => {
                return Some(error(401, None, Some("x-api-key header is required"), None));
            }
            Some(key) if key != expected => return Some(error(401, None, None, None)),
            Some(_) => {}
        }
    }
    if !headers.contains_key("anthropic-version") {
        return Some(invalid("anthropic-version: header is required"));
    }
    None
}

/// Reads what the mock needs from a Messages request.
fn prompt(request: &Value) -> Prompt {
    let mut prompt = Prompt {
        words: request.get("system").map(words_in).unwrap_or(0),
        max_tokens: request.get("max_tokens").and_then(Value::as_u64),
        ..Prompt::default()
    };
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        prompt.tools = tools
            .iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect();
        prompt.tool_schemas = tools
            .iter()
            .filter_map(|t| {
                let name = t.get("name").and_then(Value::as_str)?;
                Some((
                    name.to_owned(),
                    t.get("input_schema").cloned().unwrap_or_default(),
                ))
            })
            .collect();
    }
    prompt.tool_choice = match request.pointer("/tool_choice/type").and_then(Value::as_str) {
        Some("none") => Some(Forced::None),
        Some("any") => Some(Forced::Any),
        Some("tool") => request
            .pointer("/tool_choice/name")
            .and_then(Value::as_str)
            .map(|n| Forced::Named(n.to_owned())),
        _ => None,
    };
    prompt.single_call = request
        .pointer("/tool_choice/disable_parallel_tool_use")
        .and_then(Value::as_bool)
        == Some(true);
    prompt.json_schema = request
        .pointer("/output_config/format")
        .filter(|f| f.get("type").and_then(Value::as_str) == Some("json_schema"))
        .map(|f| f.get("schema").cloned().unwrap_or_default());
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for m in messages {
        prompt.words += m.get("content").map(words_in).unwrap_or(0);
    }
    if let Some(last) = messages.last()
        && last.get("role").and_then(Value::as_str) == Some("user")
    {
        let content = last.get("content").unwrap_or(&Value::Null);
        prompt.ends_with_tool_result = content.as_array().is_some_and(|blocks| {
            blocks
                .iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        });
        if !prompt.ends_with_tool_result {
            prompt.last_user_text = text_of(content);
        }
    }
    prompt
}

/// The ids of the blocks of `kind` (`tool_use`: `id`, `tool_result`: `tool_use_id`) in a
/// message.
fn ids_of(message: &Value, kind: &str, key: &str) -> Vec<String> {
    block_ids(message, |b| {
        (b.get("type").and_then(Value::as_str) == Some(kind))
            .then(|| b.get(key).and_then(Value::as_str).map(str::to_owned))
            .flatten()
    })
}

/// Anthropic's refusal of tool calls and results that do not pair up.
fn unpaired_tools(messages: &[Value]) -> Option<String> {
    let found = unpaired(
        messages,
        |m| ids_of(m, "tool_use", "id"),
        |m| ids_of(m, "tool_result", "tool_use_id"),
    )?;
    Some(match found {
        Unpaired::Unanswered { index, ids } => format!(
            "messages.{index}: `tool_use` ids were found without `tool_result` blocks \
             immediately after: {}. Each `tool_use` block must have a corresponding \
             `tool_result` block in the next message.",
            ids.join(", ")
        ),
        Unpaired::Unexpected { index, ids } => format!(
            "messages.{index}: unexpected `tool_use_id` found in `tool_result` blocks: {}. \
             Each `tool_result` block must have a corresponding `tool_use` block in the \
             previous message.",
            ids.join(", ")
        ),
    })
}

/// What Claude's structured outputs refuse in a schema (Anthropic's "JSON Schema limitations"):
/// numeric constraints, string lengths, array bounds other than `minItems` 0 or 1, and objects
/// that do not set `additionalProperties: false`. The refusal's text, without its path prefix.
pub(crate) fn unsupported_schema(schema: &Value) -> Option<String> {
    let refused = |kind: &str, key: &str| {
        Some(format!(
            "For '{kind}' type, property '{key}' is not supported"
        ))
    };
    match schema {
        Value::Array(items) => items.iter().find_map(unsupported_schema),
        Value::Object(map) => {
            let kinds: Vec<&str> = match map.get("type") {
                Some(Value::String(t)) => vec![t.as_str()],
                Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            for kind in &kinds {
                let keys: &[&str] = match *kind {
                    "integer" | "number" => &[
                        "minimum",
                        "maximum",
                        "exclusiveMinimum",
                        "exclusiveMaximum",
                        "multipleOf",
                    ],
                    "string" => &["minLength", "maxLength"],
                    "array" => &["maxItems", "uniqueItems"],
                    _ => &[],
                };
                if let Some(key) = keys.iter().find(|k| map.contains_key(**k)) {
                    return refused(kind, key);
                }
                if *kind == "array"
                    && map
                        .get("minItems")
                        .is_some_and(|m| !matches!(m.as_u64(), Some(0 | 1)))
                {
                    return Some(
                        "For 'array' type, 'minItems' values other than 0 or 1 are not supported"
                            .to_owned(),
                    );
                }
                if *kind == "object" && map.get("additionalProperties") != Some(&Value::Bool(false))
                {
                    return Some(
                        "For 'object' type, 'additionalProperties' must be explicitly set to false"
                            .to_owned(),
                    );
                }
            }
            map.values().find_map(unsupported_schema)
        }
        _ => None,
    }
}

/// Whether `model` takes `output_config.format` (Claude Opus 4.1, Sonnet/Opus/Haiku 4.5 and
/// later; Bedrock model ids included).
pub(crate) fn structured_outputs(model: &str) -> bool {
    let Some(at) = model.find("claude-") else {
        return false;
    };
    let mut parts = model[at + "claude-".len()..].split(['-', '.', '@', ':']);
    let (Some(family), Some(major), minor) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if !matches!(family, "opus" | "sonnet" | "haiku") {
        return false;
    }
    let major: u32 = major.parse().unwrap_or(0);
    // A date (20250514) is not a minor version.
    let minor: u32 = minor
        .filter(|m| m.len() <= 2)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    major > 4 || (major == 4 && (minor >= 5 || (family == "opus" && minor >= 1)))
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens"}`, the words of the system prompt, the
/// messages and the tool definitions.
fn count_tokens(body: &[u8]) -> Response<Body> {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return invalid("Input should be a valid dictionary or object"),
    };
    if request.get("model").and_then(Value::as_str).is_none() {
        return invalid("model: Field required");
    }
    if request.get("messages").and_then(Value::as_array).is_none() {
        return invalid("messages: Field required");
    }
    let prompt = prompt(&request);
    body::json_response(StatusCode::OK, &json!({"input_tokens": prompt.words}))
}

fn stop_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolUse => "tool_use",
    }
}

fn usage(answer: &Answer<'_>, output_tokens: u64) -> Value {
    json!({
        "input_tokens": answer.input_tokens - answer.cached_tokens - answer.cache_write_tokens,
        "cache_creation_input_tokens": answer.cache_write_tokens,
        "cache_read_input_tokens": answer.cached_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

/// `POST /v1/messages` (other methods and paths under it: 404).
pub(crate) fn handle(
    method: &Method,
    path: &str,
    body: &[u8],
    behaviour: &Behaviour,
) -> Response<Body> {
    if method == Method::POST && path == "/v1/messages/count_tokens" {
        return count_tokens(body);
    }
    if method != Method::POST || path != "/v1/messages" {
        return error(
            404,
            None,
            Some(&format!("Not found: {method} {path}")),
            None,
        );
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return invalid("Input should be a valid dictionary or object"),
        Err(e) => return invalid(&format!("There was an error parsing the body: {e}")),
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return invalid("model: Field required");
    };
    let Some(messages) = request.get("messages") else {
        return invalid("messages: Field required");
    };
    if request.get("max_tokens").and_then(Value::as_u64).is_none() {
        return invalid("max_tokens: Field required");
    }
    let Some(messages) = messages.as_array().filter(|m| !m.is_empty()) else {
        return invalid("messages: at least one message is required");
    };
    if let Some(message) = unpaired_tools(messages) {
        return invalid(&message);
    }
    if let Fault::StreamError { status, .. } = behaviour.fault
        && request.get("stream").and_then(Value::as_bool) != Some(true)
    {
        return error(status, None, None, None);
    }
    // Structured outputs exist for the newer models only; the API refuses them elsewhere.
    if request.pointer("/output_config/format").is_some() && !structured_outputs(model) {
        return invalid(&format!(
            "output_config.format: structured outputs are not supported for model '{model}'"
        ));
    }
    if let Some(problem) = request
        .pointer("/output_config/format/schema")
        .and_then(unsupported_schema)
    {
        return invalid(&format!("output_config.format.schema: {problem}"));
    }

    let prompt = prompt(&request);
    let answer = Answer::plan(behaviour, model, &prompt, "toolu_");
    let id = next_id("msg_");
    let mut response = if request.get("stream").and_then(Value::as_bool) == Some(true) {
        stream(&id, model, &answer, behaviour)
    } else {
        let content: Value = if answer.tool_calls.is_empty() {
            json!([{"type": "text", "text": answer.text()}])
        } else {
            answer
                .tool_calls
                .iter()
                .map(|call| {
                    json!({"type": "tool_use", "id": call.id, "name": call.name,
                           "input": call.arguments})
                })
                .collect()
        };
        body::success_json(
            &json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason(answer.finish),
                "stop_sequence": null,
                "usage": usage(&answer, answer.output_tokens),
            }),
            &behaviour.fault,
        )
    };
    if let Ok(v) = HeaderValue::from_str(&next_id("req_")) {
        response.headers_mut().insert("request-id", v);
    }
    response
}

fn stream(id: &str, model: &str, answer: &Answer<'_>, behaviour: &Behaviour) -> Response<Body> {
    let mut events: Vec<Bytes> = Vec::with_capacity(answer.words.len() + 8);
    events.push(sse_named(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage(answer, 1),
        }}),
    ));
    let delta = |index: usize, delta: Value| {
        sse_named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    };
    let block_stop = |index: usize| {
        sse_named(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        )
    };
    let block_start = |index: usize, block: Value| {
        sse_named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        )
    };
    let tool_block = |call: &crate::answer::PlannedCall| json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}});
    // The content chunks after the first block's start: one delta each; a later call's first
    // chunk also closes the block before it and opens its own.
    let (first_block, deltas): (Value, Vec<Bytes>) = match answer.tool_calls.as_slice() {
        [] => (
            json!({"type": "text", "text": ""}),
            (0..answer.words.len())
                .map(|i| {
                    delta(
                        0,
                        json!({"type": "text_delta", "text": answer.chunk_text(i)}),
                    )
                })
                .collect(),
        ),
        calls => (
            tool_block(&calls[0]),
            calls
                .iter()
                .enumerate()
                .flat_map(|(index, call)| {
                    call.pieces.iter().enumerate().map(move |(j, piece)| {
                        let d = delta(
                            index,
                            json!({"type": "input_json_delta", "partial_json": piece}),
                        );
                        if index > 0 && j == 0 {
                            let mut joined = block_stop(index - 1).to_vec();
                            joined.extend_from_slice(&block_start(index, tool_block(call)));
                            joined.extend_from_slice(&d);
                            Bytes::from(joined)
                        } else {
                            d
                        }
                    })
                })
                .collect(),
        ),
    };
    let last_block = answer.tool_calls.len().saturating_sub(1);
    events.push(block_start(0, first_block));
    events.push(sse_named("ping", &json!({"type": "ping"})));
    let gate_from = events.len() + 1;

    let cut = behaviour.fault.stream_cut(deltas.len());
    let (limit, error_status) = match (cut, &behaviour.fault) {
        (Some(cut), _) => (cut.chunks, None),
        (None, &Fault::StreamError { chunks, status }) => (chunks.min(deltas.len()), Some(status)),
        (None, _) => (deltas.len(), None),
    };
    if behaviour.fault == Fault::Garbage {
        events.push(Bytes::from_static(
            b"event: content_block_delta\ndata: {\"type\": \"content_block_delta\", <<not json\n\n",
        ));
    } else {
        events.extend(deltas.into_iter().take(limit));
        if let Some(status) = error_status {
            let (error_type, message) = defaults(status);
            events.push(sse_named(
                "error",
                &json!({"type": "error", "error": {"type": error_type, "message": message}}),
            ));
        } else if cut.is_none() {
            events.push(block_stop(last_block));
            events.push(sse_named(
                "message_delta",
                &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(answer.finish), "stop_sequence": null},
                    // The API repeats the prompt's counts here (cumulative usage).
                    "usage": usage(answer, answer.output_tokens)}),
            ));
            events.push(sse_named("message_stop", &json!({"type": "message_stop"})));
        }
    }
    body::sse_response(events, Pacing::of(behaviour, gate_from, cut))
}
