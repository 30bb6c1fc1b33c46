//! Anthropic Messages API (`POST {endpoint}/v1/messages`, `x-api-key`, `anthropic-version`).
//!
//! OpenAI → Anthropic: system/developer messages become `system`; `tool` messages become
//! `tool_result` blocks in a user turn; assistant `tool_calls` become `tool_use` blocks; images
//! become base64 or URL image blocks; `max_tokens` is required by Anthropic and defaults to
//! [`DEFAULT_MAX_TOKENS`]. Back: content blocks, stop reasons and usage (cache reads count as
//! cached prompt tokens, cache writes as prompt tokens) become OpenAI's.

mod stream;

pub use stream::StreamDecoder;

use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde_json::{Map, Value, json};

use super::chat::{
    ToolChoice, Turns, content_text, data_url, function_tools, max_tokens, messages, now_secs,
    openai_usage, parse_arguments, role, stop_list, tool_choice, warn_unhandled,
};
use super::chat_body::{self, Translated};
use super::{Adapter, ChunkDecoder, Outgoing, failure, structured};
use crate::dialect::{Dialect, Inbound, Operation};
use crate::error::{AuthFailure, DecodeError, TranslateError};
use crate::state::{Credentials, Provider};

/// Anthropic `error.type` values of a credentials refusal.
const ANTHROPIC_AUTH_TYPES: &[&str] = &["authentication_error", "permission_error"];

/// The adapter of `anthropic` providers.
#[derive(Debug)]
pub struct Anthropic;

impl Adapter for Anthropic {
    fn native(&self) -> Option<Dialect> {
        Some(Dialect::Anthropic)
    }

    fn outgoing(
        &self,
        provider: &Provider,
        model: &str,
        inbound: &Inbound,
    ) -> Result<Outgoing, TranslateError> {
        match inbound.op {
            Operation::Chat => outgoing(provider, model, &inbound.openai, inbound.stream),
            Operation::Embeddings => Err(TranslateError::Unsupported(format!(
                "provider '{}' ({}) does not serve embeddings; route embeddings to an openai, \
                 openaiCompatible, azureOpenAI, gemini or bedrock provider",
                provider.name,
                provider.kind.as_str()
            ))),
        }
    }

    fn response(&self, _op: Operation, model: &str, body: Value) -> Result<Value, DecodeError> {
        response(&body, model)
    }

    fn outgoing_from_body(
        &self,
        provider: &Provider,
        model: &str,
        body: &[u8],
        stream: bool,
    ) -> Result<Outgoing, TranslateError> {
        outgoing_from_body(provider, model, body, stream)
    }

    fn stream_decoder(&self, model: &str) -> Box<dyn ChunkDecoder> {
        Box::new(StreamDecoder::new(model))
    }

    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn credentials(&self, key: &str) -> Credentials {
        Credentials::header("x-api-key", key.to_string())
    }

    fn extra_headers(&self, anthropic_beta: Option<&HeaderValue>, headers: &mut HeaderMap) {
        headers.insert("anthropic-version", HeaderValue::from_static(VERSION));
        // An Anthropic client's beta flags mean something only to Anthropic itself.
        if let Some(beta) = anthropic_beta {
            headers.insert("anthropic-beta", beta.clone());
        }
    }

    fn native_uri(
        &self,
        provider: &Provider,
        _model: &str,
        _op: Operation,
    ) -> Result<Uri, TranslateError> {
        messages_uri(provider)
    }

    fn key_refused(
        &self,
        status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Option<AuthFailure> {
        // Anthropic refuses keys with 401/403 only; the error type names which.
        let error = failure::error_object(body);
        let reason = error
            .as_ref()
            .and_then(|e| failure::known(e.get("type"), ANTHROPIC_AUTH_TYPES));
        failure::always_auth(status, reason, false)
    }

    fn billing_refused(
        &self,
        status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Option<AuthFailure> {
        let error = failure::error_object(body);
        let billing = error
            .as_ref()
            .and_then(|e| failure::known(e.get("type"), &["billing_error"]))
            .or_else(|| {
                // An empty account is refused with a plain 400 `invalid_request_error` whose
                // message names the credit balance; only that message tells it from a bad
                // request.
                let e = error.as_ref()?;
                let message = e.get("message")?.as_str()?.to_ascii_lowercase();
                (status == StatusCode::BAD_REQUEST
                    && failure::known(e.get("type"), &["invalid_request_error"]).is_some()
                    && message.contains("credit balance is too low"))
                .then_some("credit_balance_too_low")
            });
        (billing.is_some() || status == StatusCode::PAYMENT_REQUIRED).then_some(AuthFailure {
            status,
            reason: billing,
        })
    }
}

/// The `anthropic-version` header every request carries.
pub const VERSION: &str = "2023-06-01";
/// `max_tokens` sent when the client set none (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// `{endpoint}/v1/messages`.
pub(crate) fn messages_uri(provider: &Provider) -> Result<Uri, TranslateError> {
    let base = provider.base.trim_end_matches("/v1");
    format!("{base}/v1/messages")
        .parse()
        .map_err(|source| TranslateError::Url {
            what: "the provider endpoint".to_string(),
            source,
        })
}

/// OpenAI chat request → Anthropic Messages request.
pub fn outgoing(
    provider: &Provider,
    model: &str,
    req: &Map<String, Value>,
    stream: bool,
) -> Result<Outgoing, TranslateError> {
    let mut warnings = Vec::new();
    let body = request(model, req, stream, &mut warnings)?;
    let body = serde_json::to_vec(&body).map_err(TranslateError::Encode)?;
    Ok(Outgoing::single(
        messages_uri(provider)?,
        body.into(),
        warnings,
    ))
}

/// [`outgoing`] from the client's bytes, translated message by message.
pub(crate) fn outgoing_from_body(
    provider: &Provider,
    model: &str,
    body: &[u8],
    stream: bool,
) -> Result<Outgoing, TranslateError> {
    let mut warnings = Vec::new();
    let body = request_body(model, body, stream, &mut warnings)?;
    Ok(Outgoing::single(messages_uri(provider)?, body, warnings))
}

/// The translation itself (pure; golden-tested).
pub fn request(
    model: &str,
    req: &Map<String, Value>,
    stream: bool,
    warnings: &mut Vec<String>,
) -> Result<Value, TranslateError> {
    check(req)?;
    let mut system: Vec<Value> = Vec::new();
    let mut turns = Turns::default();
    for message in messages(req) {
        match translate_message(message)? {
            Translated::System(block) => system.push(block),
            Translated::Turn(role, blocks) => turns.push(role, blocks),
            Translated::Skip => {}
        }
    }
    let system = (!system.is_empty()).then_some(Value::Array(system));
    parameters(
        model,
        req,
        stream,
        turns.into_json("content"),
        system,
        warnings,
    )
}

/// [`request`] from the client's bytes to the upstream's, one message at a time (no tree of
/// either; see [`chat_body`]).
pub(crate) fn request_body(
    model: &str,
    body: &[u8],
    stream: bool,
    warnings: &mut Vec<String>,
) -> Result<bytes::Bytes, TranslateError> {
    let (req, messages) = chat_body::split(body)?;
    check(&req)?;
    let mut writer = chat_body::TurnWriter::new("content", body.len());
    chat_body::for_each_message(messages, |message| {
        writer.take(translate_message(&message)?)
    })?;
    let system = writer.has_system().then_some(Value::Null);
    let body = parameters(model, &req, stream, Value::Null, system, warnings)?;
    writer.finish(&body, "messages", "system", None)
}

/// What is refused before any message is read.
fn check(req: &Map<String, Value>) -> Result<(), TranslateError> {
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(TranslateError::Unsupported(
            "'n' greater than 1 is not supported by anthropic".to_string(),
        ));
    }
    Ok(())
}

/// One OpenAI message: a system block, or the blocks of a user or assistant turn.
fn translate_message(message: &Value) -> Result<Translated, TranslateError> {
    let (turn_role, blocks) = match role(message)? {
        "system" | "developer" => {
            let text = content_text(message.get("content"));
            if text.is_empty() {
                return Ok(Translated::Skip);
            }
            return Ok(Translated::System(json!({"type": "text", "text": text})));
        }
        "user" => ("user", user_blocks(message.get("content"))?),
        "assistant" => ("assistant", assistant_blocks(message)?),
        "tool" => {
            let id = message
                .get("tool_call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslateError::Invalid("a tool message needs 'tool_call_id'".to_string())
                })?;
            let block = json!({
                "type": "tool_result",
                "tool_use_id": id,
                "content": content_text(message.get("content")),
            });
            ("user", vec![block])
        }
        other => {
            return Err(TranslateError::Unsupported(format!(
                "message role '{other}' is not supported by anthropic"
            )));
        }
    };
    Ok(Translated::Turn(turn_role, blocks))
}

/// The body around the translated messages (`messages` and, when given, `system` are put in as
/// they are: placeholders on the bytes path).
fn parameters(
    model: &str,
    req: &Map<String, Value>,
    stream: bool,
    messages: Value,
    system: Option<Value>,
    warnings: &mut Vec<String>,
) -> Result<Value, TranslateError> {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), messages);
    if let Some(system) = system {
        body.insert("system".into(), system);
    }
    body.insert(
        "max_tokens".into(),
        json!(max_tokens(req).unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if let Some(t) = req.get("temperature").and_then(Value::as_f64) {
        if t > 1.0 {
            warnings.push("'temperature' above 1 was lowered to anthropic's maximum of 1".into());
        }
        body.insert("temperature".into(), json!(t.min(1.0)));
    }
    if let Some(p) = req.get("top_p").filter(|v| v.is_number()) {
        body.insert("top_p".into(), p.clone());
    }
    if let Some(stop) = stop_list(req.get("stop"))? {
        body.insert("stop_sequences".into(), Value::Array(stop));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    let choice = tool_choice(req)?;
    let format = structured::requested(req)?;
    // The provider's own structured outputs where the model has them and the schema is one they
    // take; else a forced tool call.
    let native_schema = format
        .as_ref()
        .and_then(|f| f.schema.as_ref())
        .filter(|_| structured::native(model))
        .and_then(structured::for_claude);
    let forced = format.is_some() && native_schema.is_none();
    let mut tools = if choice == Some(ToolChoice::None) {
        Vec::new()
    } else {
        function_tools(req)?
    };
    let own_tools = tools.len();
    if let (true, Some(format)) = (forced, &format) {
        let (name, description, schema) = structured::tool(format);
        tools.push((name.to_string(), Some(description), schema));
    }
    if !tools.is_empty() {
        let tools: Vec<Value> = tools
            .into_iter()
            .map(|(name, description, parameters)| {
                let mut t = json!({"name": name, "input_schema": parameters});
                if let (Some(d), Some(obj)) = (description, t.as_object_mut()) {
                    obj.insert("description".into(), json!(d));
                }
                t
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        let mut choice = match (forced, choice) {
            (_, Some(ToolChoice::Named(name))) => json!({"type": "tool", "name": name}),
            (true, _) if own_tools == 0 => {
                json!({"type": "tool", "name": structured::FORMAT_TOOL})
            }
            // The app's tools or the answer: some tool must be called.
            (true, _) | (false, Some(ToolChoice::Required)) => json!({"type": "any"}),
            _ => json!({"type": "auto"}),
        };
        if req.get("parallel_tool_calls") == Some(&Value::Bool(false))
            && let Some(obj) = choice.as_object_mut()
        {
            obj.insert("disable_parallel_tool_use".into(), json!(true));
        }
        body.insert("tool_choice".into(), choice);
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(schema) = native_schema {
        body.insert(
            "output_config".into(),
            json!({"format": {"type": "json_schema", "schema": schema}}),
        );
    }
    warn_unhandled(
        req,
        &["n", "user", "parallel_tool_calls", "response_format"],
        "anthropic",
        warnings,
    );
    Ok(Value::Object(body))
}

fn user_blocks(content: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    match content {
        Some(Value::String(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(parts)) => parts.iter().map(part_block).collect(),
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(_) => Err(TranslateError::Invalid(
            "message 'content' must be a string or an array of parts".to_string(),
        )),
    }
}

fn part_block(part: &Value) -> Result<Value, TranslateError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            Ok(json!({"type": "text", "text": part.get("text").cloned().unwrap_or(json!(""))}))
        }
        Some("image_url") => {
            let url = part
                .get("image_url")
                .and_then(|i| i.get("url").or(Some(i)))
                .and_then(Value::as_str)
                .ok_or_else(|| TranslateError::Invalid("image_url part needs 'url'".to_string()))?;
            if let Some((media_type, data)) = data_url(url) {
                Ok(
                    json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
                )
            } else if url.starts_with("https://") || url.starts_with("http://") {
                Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
            } else {
                Err(TranslateError::Invalid(
                    "image urls must be http(s) or base64 data: URLs".to_string(),
                ))
            }
        }
        other => Err(TranslateError::Invalid(format!(
            "content part type '{}' is not supported by anthropic",
            other.unwrap_or("(missing)")
        ))),
    }
}

fn assistant_blocks(message: &Value) -> Result<Vec<Value>, TranslateError> {
    let mut blocks = Vec::new();
    let text = content_text(message.get("content"));
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let f = call.get("function").unwrap_or(&Value::Null);
            blocks.push(json!({
                "type": "tool_use",
                "id": call.get("id").and_then(Value::as_str).unwrap_or_default(),
                "name": f.get("name").and_then(Value::as_str).unwrap_or_default(),
                "input": parse_arguments(f.get("arguments"))?,
            }));
        }
    }
    Ok(blocks)
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Anthropic `usage` → OpenAI `usage` (cache reads and writes are prompt tokens; reads are cached,
/// writes `cache_write_tokens`; thinking is inside `output_tokens`, not reported apart).
pub fn usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    let u = gatehouse_crds::usage::AnthropicUsage {
        input_tokens: n("input_tokens"),
        output_tokens: n("output_tokens"),
        cache_creation_input_tokens: n("cache_creation_input_tokens"),
        cache_read_input_tokens: n("cache_read_input_tokens"),
    };
    openai_usage(
        u.prompt_tokens(),
        u.completion_tokens(),
        u.cached_tokens(),
        u.cache_creation_input_tokens.unwrap_or(0),
        0,
    )
}

/// Anthropic message → OpenAI chat completion.
pub fn response(value: &Value, model: &str) -> Result<Value, DecodeError> {
    let content = value
        .get("content")
        .and_then(Value::as_array)
        .ok_or(DecodeError::Shape(
            "anthropic response has no 'content' array",
        ))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use")
                if block.get("name").and_then(Value::as_str) == Some(structured::FORMAT_TOOL) =>
            {
                text.push_str(&block.get("input").map(Value::to_string).unwrap_or_default());
            }
            Some("tool_use") => tool_calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(json!("")),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or(json!("")),
                    "arguments": block.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })),
            _ => {}
        }
    }
    let tool_calls_empty = tool_calls.is_empty();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }});
    if !tool_calls.is_empty()
        && let Some(obj) = message.as_object_mut()
    {
        obj.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    Ok(json!({
        "id": value.get("id").cloned().unwrap_or(json!("")),
        "object": "chat.completion",
        "created": now_secs(),
        "model": value.get("model").and_then(Value::as_str).unwrap_or(model),
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": match finish_reason(value.get("stop_reason").and_then(Value::as_str)) {
                // Only the structured answer was "called": a plain stop.
                "tool_calls" if tool_calls_empty => "stop",
                other => other,
            },
            "logprobs": null,
        }],
        "usage": usage(value.get("usage").unwrap_or(&Value::Null)),
    }))
}
