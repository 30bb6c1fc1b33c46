//! Amazon Bedrock Converse API: `POST {endpoint}/model/{modelId}/converse` and
//! `/converse-stream` (AWS event stream), signed with SigV4 for service `bedrock`.
//!
//! Credentials come from the provider's key in the keys Secret, either
//! `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]` or a JSON object
//! `{"accessKeyId", "secretAccessKey", "sessionToken"?}`.
//!
//! OpenAI → Converse: system messages become `system`; content parts become `text` / `image`
//! blocks (base64 data URLs only); tool calls and results become `toolUse` / `toolResult`;
//! sampling parameters go to `inferenceConfig`; tools to `toolConfig`. Back: content blocks,
//! `stopReason` and `usage` (cache reads are cached prompt tokens, cache writes prompt tokens).
//!
//! Embeddings go through InvokeModel instead, see [`embeddings`].

pub mod embeddings;
mod sigv4;
mod stream;

pub use sigv4::{credentials, sign};
pub use stream::StreamDecoder;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri};
use serde_json::{Map, Value, json};

use super::chat::{
    ToolChoice, Turns, content_text, data_url, function_tools, max_tokens, messages, new_id,
    now_secs, openai_usage, parse_arguments, path_segment, role, stop_list, tool_choice,
    warn_unhandled,
};
use super::chat_body::{self, Translated};
use super::structured;
use super::{Adapter, ChunkDecoder, Outgoing, Reply, StreamFraming, failure};
use crate::dialect::{Inbound, Operation};
use crate::error::{AuthFailure, CredentialsError, DecodeError, TranslateError};
use crate::state::{Credentials, Provider};

/// Bedrock (AWS) error names that mean the signature or the credentials were refused, whatever
/// the status: the Bedrock API error-code guide and the AWS common errors.
const BEDROCK_AUTH_ERRORS: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationTokenException",
    "MissingAuthenticationToken",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "ExpiredToken",
    "RequestExpired",
    "NotAuthorized",
    "AccessDeniedException",
];

/// The adapter of `bedrock` providers.
#[derive(Debug)]
pub struct Bedrock;

impl Adapter for Bedrock {
    fn framing(&self) -> StreamFraming {
        StreamFraming::AwsEventStream
    }

    fn outgoing(
        &self,
        provider: &Provider,
        model: &str,
        inbound: &Inbound,
    ) -> Result<Outgoing, TranslateError> {
        match inbound.op {
            Operation::Chat => outgoing(provider, model, &inbound.openai, inbound.stream),
            Operation::Embeddings => embeddings::outgoing(provider, model, &inbound.openai),
        }
    }

    fn response(&self, op: Operation, model: &str, body: Value) -> Result<Value, DecodeError> {
        match op {
            Operation::Chat => response(&body, model),
            Operation::Embeddings => embeddings::response(model, &[(body, None)]),
        }
    }

    fn responses(
        &self,
        op: Operation,
        model: &str,
        replies: &[Reply],
    ) -> Result<Value, DecodeError> {
        match (op, replies) {
            (Operation::Embeddings, _) => {
                let answers = replies
                    .iter()
                    .map(|r| Ok((super::json_object(&r.body)?, r.input_tokens)))
                    .collect::<Result<Vec<_>, DecodeError>>()?;
                embeddings::response(model, &answers)
            }
            (Operation::Chat, [one]) => response(&super::json_object(&one.body)?, model),
            (Operation::Chat, _) => Err(DecodeError::Join {
                count: replies.len(),
                kind: self.name(),
            }),
        }
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
        "bedrock"
    }

    fn credentials(&self, key: &str) -> Credentials {
        match credentials(key) {
            Ok(c) => Credentials::Aws(c),
            Err(reason) => Credentials::Invalid(reason),
        }
    }

    fn authorize(
        &self,
        provider: &Provider,
        credentials: &Credentials,
        request: &mut http::Request<http_body_util::Full<Bytes>>,
        body: &[u8],
    ) -> Result<(), CredentialsError> {
        match credentials {
            Credentials::Aws(credentials) => sign(provider, credentials, request, body),
            Credentials::Invalid(reason) => Err(CredentialsError::Unusable(reason.clone())),
            Credentials::None | Credentials::Header(..) => Ok(()),
        }
    }

    fn key_refused(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<AuthFailure> {
        // Signing failures are named in `x-amzn-errortype`, some of them under a 400.
        let known = error_name(headers, body).and_then(|n| failure::find(n, BEDROCK_AUTH_ERRORS));
        failure::always_auth(status, known, known.is_some())
    }
}

/// The exception name Bedrock puts in `x-amzn-errortype` (`Name:namespace`), or in the body's
/// `__type` when the header is missing.
fn error_name<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Option<&'a str> {
    if let Some(v) = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
    {
        return v.split(':').next().map(str::trim);
    }
    // Without the header, a `__type` in the body may name it (`namespace#Name`); only fixed names
    // are ever returned to callers, so a borrowed slice of the body is enough.
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"__type\"")?;
    let rest = text[start + 8..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let rest = rest.strip_prefix('"')?;
    let value = &rest[..rest.find('"')?];
    value.rsplit('#').next()
}

/// OpenAI chat request → Converse / ConverseStream.
pub fn outgoing(
    provider: &Provider,
    model: &str,
    req: &Map<String, Value>,
    stream: bool,
) -> Result<Outgoing, TranslateError> {
    let mut warnings = Vec::new();
    let body = request(model, req, &mut warnings)?;
    let uri = model_uri(provider, model, chat_action(stream))?;
    let body = serde_json::to_vec(&body).map_err(TranslateError::Encode)?;
    Ok(Outgoing::single(uri, body.into(), warnings))
}

/// [`outgoing`] from the client's bytes, translated message by message.
pub(crate) fn outgoing_from_body(
    provider: &Provider,
    model: &str,
    body: &[u8],
    stream: bool,
) -> Result<Outgoing, TranslateError> {
    let mut warnings = Vec::new();
    let body = request_body(model, body, &mut warnings)?;
    Ok(Outgoing::single(
        model_uri(provider, model, chat_action(stream))?,
        body,
        warnings,
    ))
}

fn chat_action(stream: bool) -> &'static str {
    if stream {
        "converse-stream"
    } else {
        "converse"
    }
}

/// `{endpoint}/model/{modelId}/{action}`, the model id percent-encoded as one path segment (an
/// ARN's `/` included).
fn model_uri(provider: &Provider, model: &str, action: &str) -> Result<Uri, TranslateError> {
    format!("{}/model/{}/{action}", provider.base, path_segment(model))
        .parse()
        .map_err(|source| TranslateError::Url {
            what: format!("model id '{model}'"),
            source,
        })
}

/// The translation itself (pure; golden-tested).
pub fn request(
    model: &str,
    req: &Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<Value, TranslateError> {
    check(req)?;
    let mut system = Vec::new();
    let mut turns = Turns::default();
    for message in messages(req) {
        match translate_message(message)? {
            Translated::System(block) => system.push(block),
            Translated::Turn(role, blocks) => turns.push(role, blocks),
            Translated::Skip => {}
        }
    }
    let system = (!system.is_empty()).then_some(Value::Array(system));
    parameters(model, req, turns.into_json("content"), system, warnings)
}

/// [`request`] from the client's bytes to the upstream's, one message at a time (no tree of
/// either; see [`chat_body`]).
pub(crate) fn request_body(
    model: &str,
    body: &[u8],
    warnings: &mut Vec<String>,
) -> Result<bytes::Bytes, TranslateError> {
    let (req, messages) = chat_body::split(body)?;
    check(&req)?;
    let mut writer = chat_body::TurnWriter::new("content", body.len());
    chat_body::for_each_message(messages, |message| {
        writer.take(translate_message(&message)?)
    })?;
    let system = writer.has_system().then_some(Value::Null);
    let body = parameters(model, &req, Value::Null, system, warnings)?;
    writer.finish(&body, "messages", "system", None)
}

/// What is refused before any message is read.
fn check(req: &Map<String, Value>) -> Result<(), TranslateError> {
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(TranslateError::Unsupported(
            "'n' greater than 1 is not supported by bedrock".to_string(),
        ));
    }
    Ok(())
}

/// One OpenAI message: a system block, or the blocks of a user or assistant turn.
fn translate_message(message: &Value) -> Result<Translated, TranslateError> {
    let (turn, blocks) = match role(message)? {
        "system" | "developer" => {
            let text = content_text(message.get("content"));
            if text.is_empty() {
                return Ok(Translated::Skip);
            }
            return Ok(Translated::System(json!({"text": text})));
        }
        "user" => ("user", user_blocks(message.get("content"))?),
        "assistant" => {
            let mut blocks = Vec::new();
            let text = content_text(message.get("content"));
            if !text.is_empty() {
                blocks.push(json!({"text": text}));
            }
            for call in message
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = call.get("function").unwrap_or(&Value::Null);
                blocks.push(json!({"toolUse": {
                    "toolUseId": call.get("id").and_then(Value::as_str).unwrap_or_default(),
                    "name": f.get("name").and_then(Value::as_str).unwrap_or_default(),
                    "input": parse_arguments(f.get("arguments"))?,
                }}));
            }
            ("assistant", blocks)
        }
        "tool" => {
            let id = message
                .get("tool_call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslateError::Invalid("a tool message needs 'tool_call_id'".to_string())
                })?;
            let text = content_text(message.get("content"));
            (
                "user",
                vec![json!({"toolResult": {"toolUseId": id, "content": [{"text": text}]}})],
            )
        }
        other => {
            return Err(TranslateError::Unsupported(format!(
                "message role '{other}' is not supported by bedrock"
            )));
        }
    };
    Ok(Translated::Turn(turn, blocks))
}

/// The body around the translated messages (`messages` and, when given, `system` are put in as
/// they are: placeholders on the bytes path).
fn parameters(
    model: &str,
    req: &Map<String, Value>,
    messages: Value,
    system: Option<Value>,
    warnings: &mut Vec<String>,
) -> Result<Value, TranslateError> {
    let mut body = Map::new();
    body.insert("messages".into(), messages);
    if let Some(system) = system {
        body.insert("system".into(), system);
    }
    let mut config = Map::new();
    if let Some(m) = max_tokens(req) {
        config.insert("maxTokens".into(), json!(m));
    }
    if let Some(t) = req.get("temperature").filter(|v| v.is_number()) {
        config.insert("temperature".into(), t.clone());
    }
    if let Some(p) = req.get("top_p").filter(|v| v.is_number()) {
        config.insert("topP".into(), p.clone());
    }
    if let Some(stop) = stop_list(req.get("stop"))? {
        config.insert("stopSequences".into(), Value::Array(stop));
    }
    if !config.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(config));
    }
    let choice = tool_choice(req)?;
    let format = structured::requested(req)?;
    // Converse's own structured outputs where the model has them; else a forced tool call.
    // A schema Claude's structured outputs cannot take goes the forced tool's way too.
    let native_format = format
        .as_ref()
        .filter(|_| structured::native(model))
        .and_then(|f| {
            Some((
                structured::for_claude(f.schema.as_ref()?)?,
                f.name.as_deref(),
            ))
        });
    let forced = format.is_some() && native_format.is_none();
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
        let specs: Vec<Value> = tools
            .into_iter()
            .map(|(name, description, parameters)| {
                let mut spec = json!({"name": name, "inputSchema": {"json": parameters}});
                if let (Some(d), Some(obj)) = (description, spec.as_object_mut()) {
                    obj.insert("description".into(), json!(d));
                }
                json!({"toolSpec": spec})
            })
            .collect();
        let mut tool_config = json!({"tools": specs});
        let mapped = match (forced, choice) {
            (_, Some(ToolChoice::Named(name))) => Some(json!({"tool": {"name": name}})),
            (true, _) if own_tools == 0 => Some(json!({"tool": {"name": structured::FORMAT_TOOL}})),
            (true, _) | (false, Some(ToolChoice::Required)) => Some(json!({"any": {}})),
            (false, Some(ToolChoice::Auto)) => Some(json!({"auto": {}})),
            _ => None,
        };
        if let (Some(c), Some(obj)) = (mapped, tool_config.as_object_mut()) {
            obj.insert("toolChoice".into(), c);
        }
        body.insert("toolConfig".into(), tool_config);
    }
    if let Some((schema, name)) = native_format {
        // Converse takes the schema as a JSON string.
        body.insert(
            "outputConfig".into(),
            json!({"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
                "schema": schema.to_string(),
                "name": name.unwrap_or("response"),
            }}}}),
        );
    }
    warn_unhandled(req, &["n", "response_format"], "bedrock", warnings);
    Ok(Value::Object(body))
}

fn user_blocks(content: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    match content {
        Some(Value::String(s)) => Ok(vec![json!({"text": s})]),
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"text": part.get("text").cloned().unwrap_or(json!(""))})),
                Some("image_url") => {
                    let url = part
                        .get("image_url")
                        .and_then(|i| i.get("url").or(Some(i)))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let Some((media, data)) = data_url(url) else {
                        return Err(TranslateError::Unsupported(
                            "bedrock takes images as base64 data: URLs only (http image URLs are not fetched)"
                                .to_string(),
                        ));
                    };
                    let format = media.strip_prefix("image/").unwrap_or(media);
                    let format = if format == "jpg" { "jpeg" } else { format };
                    if !matches!(format, "png" | "jpeg" | "gif" | "webp") {
                        return Err(TranslateError::Unsupported(format!(
                            "bedrock takes png, jpeg, gif or webp images, not {media}"
                        )));
                    }
                    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
                }
                other => Err(TranslateError::Invalid(format!(
                    "content part type '{}' is not supported by bedrock",
                    other.unwrap_or("(missing)")
                ))),
            })
            .collect(),
        Some(_) => Err(TranslateError::Invalid(
            "message 'content' must be a string or an array of parts".to_string(),
        )),
    }
}

/// Converse `stopReason` → OpenAI `finish_reason`.
pub fn finish_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("guardrail_intervened" | "content_filtered") => "content_filter",
        _ => "stop",
    }
}

/// Converse `usage` → OpenAI usage. `inputTokens` excludes the cache reads
/// (`cacheReadInputTokens`) and writes (`cacheWriteInputTokens`), as Anthropic's `input_tokens`
/// does; `totalTokens` is the sum of all four.
pub fn usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cacheReadInputTokens");
    let written = n("cacheWriteInputTokens");
    openai_usage(
        n("inputTokens")
            .saturating_add(cached)
            .saturating_add(written),
        n("outputTokens"),
        cached,
        written,
        0,
    )
}

/// Converse response → OpenAI chat completion.
pub fn response(value: &Value, model: &str) -> Result<Value, DecodeError> {
    let content = value
        .get("output")
        .and_then(|o| o.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .ok_or(DecodeError::Shape(
            "bedrock response has no output.message.content",
        ))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in content {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(tool) = block.get("toolUse")
            && tool.get("name").and_then(Value::as_str) == Some(structured::FORMAT_TOOL)
        {
            text.push_str(&tool.get("input").map(Value::to_string).unwrap_or_default());
        } else if let Some(tool) = block.get("toolUse") {
            calls.push(json!({
                "id": tool.get("toolUseId").cloned().unwrap_or(json!("")),
                "type": "function",
                "function": {
                    "name": tool.get("name").cloned().unwrap_or(json!("")),
                    "arguments": tool.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            }));
        }
    }
    let calls_empty = calls.is_empty();
    let mut message = json!({"role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty()
        && let Some(obj) = message.as_object_mut()
    {
        obj.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(json!({
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": [{"index": 0, "message": message,
            "finish_reason": match finish_reason(value.get("stopReason").and_then(Value::as_str)) {
                // Only the structured answer was "called": a plain stop.
                "tool_calls" if calls_empty => "stop",
                other => other,
            },
            "logprobs": null}],
        "usage": usage(value.get("usage").unwrap_or(&Value::Null)),
    }))
}
