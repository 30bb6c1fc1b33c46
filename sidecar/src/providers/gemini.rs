//! Google Gemini API: `POST {endpoint}/v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse` and `:batchEmbedContents`, key in `x-goog-api-key`.
//!
//! OpenAI → Gemini: system messages become `systemInstruction`; `assistant` is role `model`;
//! tool calls become `functionCall` parts and tool results `functionResponse` parts (named after
//! the call they answer); sampling parameters go to `generationConfig`; `response_format` json
//! becomes `responseMimeType` (+ `responseJsonSchema`). Back: parts, `finishReason` and
//! `usageMetadata` (cached content tokens are cached prompt tokens, thoughts are completion tokens).

mod embeddings;
mod failure;
mod stream;

pub use embeddings::{embeddings, embeddings_request, embeddings_response};
pub use stream::StreamDecoder;

use std::collections::HashMap;
use std::time::Duration;

use http::{HeaderMap, StatusCode, Uri};
use serde_json::{Map, Value, json};

use super::chat::{
    ToolChoice, Turns, data_url, function_tools, max_tokens, messages, new_id, now_secs,
    openai_usage, path_segment, role, stop_list, tool_choice, warn_unhandled,
};
use super::chat_body::{self, Translated};
use super::{Adapter, ChunkDecoder, Outgoing};
use crate::dialect::{Inbound, Operation};
use crate::error::{AuthFailure, DecodeError, TranslateError};
use crate::state::{Credentials, Provider};

/// The adapter of `gemini` providers (and, through [`super::vertex`], of `vertexAI` ones).
#[derive(Debug)]
pub struct Gemini;

impl Adapter for Gemini {
    fn outgoing(
        &self,
        provider: &Provider,
        model: &str,
        inbound: &Inbound,
    ) -> Result<Outgoing, TranslateError> {
        match inbound.op {
            Operation::Chat => outgoing(provider, model, &inbound.openai, inbound.stream),
            Operation::Embeddings => embeddings(provider, model, &inbound.openai),
        }
    }

    fn response(&self, op: Operation, model: &str, body: Value) -> Result<Value, DecodeError> {
        match op {
            Operation::Chat => response(&body, model),
            Operation::Embeddings => embeddings_response(&body, model),
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
        "gemini"
    }

    fn credentials(&self, key: &str) -> Credentials {
        Credentials::header("x-goog-api-key", key.to_string())
    }

    fn key_refused(
        &self,
        status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Option<AuthFailure> {
        // A key refusal may come as 400 INVALID_ARGUMENT with an ErrorInfo reason; a 401/403
        // without one is named by its status.
        let error = super::failure::error_object(body);
        let info = error.as_ref().and_then(|e| {
            failure::known_detail(e, "ErrorInfo", "reason", failure::GEMINI_KEY_REASONS)
        });
        let named = info.or_else(|| {
            error
                .as_ref()
                .and_then(|e| super::failure::known(e.get("status"), failure::GEMINI_AUTH_STATUSES))
        });
        super::failure::always_auth(status, named, info.is_some())
    }

    fn delay_in_body(&self) -> bool {
        true
    }

    fn rate_limit_delay(&self, _headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
        failure::retry_delay(body)
    }
}

/// The model's URL for `method`: the Gemini API's, or Vertex AI's
/// (`{base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}`)
/// for a vertexAI provider.
pub(super) fn uri(provider: &Provider, model: &str, method: &str) -> Result<Uri, TranslateError> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    match &provider.vertex {
        None => format!(
            "{}/v1beta/models/{}:{method}",
            provider.base,
            path_segment(model)
        ),
        Some(v) => format!(
            "{}/v1/projects/{}/locations/{}/publishers/google/models/{}:{method}",
            provider.base,
            path_segment(&v.project),
            path_segment(&v.location),
            path_segment(model)
        ),
    }
    .parse()
    .map_err(|source| TranslateError::Url {
        what: format!("model '{model}'"),
        source,
    })
}

pub(crate) fn encode(body: &Value) -> Result<bytes::Bytes, TranslateError> {
    serde_json::to_vec(body)
        .map(bytes::Bytes::from)
        .map_err(TranslateError::Encode)
}

/// OpenAI chat request → Gemini `generateContent` / `streamGenerateContent`.
pub fn outgoing(
    provider: &Provider,
    model: &str,
    req: &Map<String, Value>,
    stream: bool,
) -> Result<Outgoing, TranslateError> {
    let mut warnings = Vec::new();
    let body = request(req, &mut warnings)?;
    Ok(Outgoing::single(
        uri(provider, model, chat_method(stream))?,
        encode(&body)?,
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
    let body = request_body(body, &mut warnings)?;
    Ok(Outgoing::single(
        uri(provider, model, chat_method(stream))?,
        body,
        warnings,
    ))
}

fn chat_method(stream: bool) -> &'static str {
    if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    }
}

/// The translation itself (pure; golden-tested).
pub fn request(
    req: &Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<Value, TranslateError> {
    let mut system = Vec::new();
    let mut contents = Turns::default();
    let mut calls = CallNames::default();
    for message in messages(req) {
        match translate_message(message, &mut calls)? {
            Translated::System(part) => system.push(part),
            Translated::Turn(role, parts) => contents.push(role, parts),
            Translated::Skip => {}
        }
    }
    let system = (!system.is_empty()).then(|| json!({"parts": system}));
    parameters(req, contents.into_json("parts"), system, warnings)
}

/// [`request`] from the client's bytes to the upstream's, one message at a time (no tree of
/// either; see [`chat_body`]).
pub(crate) fn request_body(
    body: &[u8],
    warnings: &mut Vec<String>,
) -> Result<bytes::Bytes, TranslateError> {
    let (req, messages) = chat_body::split(body)?;
    let mut writer = chat_body::TurnWriter::new("parts", body.len());
    let mut calls = CallNames::default();
    chat_body::for_each_message(messages, |message| {
        writer.take(translate_message(&message, &mut calls)?)
    })?;
    let system = writer.has_system().then_some(Value::Null);
    let body = parameters(&req, Value::Null, system, warnings)?;
    writer.finish(&body, "contents", "systemInstruction", Some("parts"))
}

/// Gemini answers a call by function name, OpenAI by call id: the name of every call id seen so
/// far (the first call of an id names it).
#[derive(Debug, Default)]
struct CallNames(HashMap<String, String>);

/// One OpenAI message: a system part, or the parts of a user or model turn.
fn translate_message(message: &Value, calls: &mut CallNames) -> Result<Translated, TranslateError> {
    let (turn, parts) = match role(message)? {
        "system" | "developer" => {
            let text = super::chat::content_text(message.get("content"));
            if text.is_empty() {
                return Ok(Translated::Skip);
            }
            return Ok(Translated::System(json!({"text": text})));
        }
        "user" => ("user", user_parts(message.get("content"))?),
        "assistant" => {
            let mut parts = Vec::new();
            let text = super::chat::content_text(message.get("content"));
            if !text.is_empty() {
                parts.push(json!({"text": text}));
            }
            for call in message
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = call.get("function").unwrap_or(&Value::Null);
                let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
                if let Some(id) = call.get("id").and_then(Value::as_str) {
                    calls
                        .0
                        .entry(id.to_string())
                        .or_insert_with(|| name.to_string());
                }
                parts.push(json!({"functionCall": {
                    "name": name,
                    "args": super::chat::parse_arguments(f.get("arguments"))?,
                }}));
            }
            ("model", parts)
        }
        "tool" => {
            let id = message
                .get("tool_call_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let name = calls.0.get(id).cloned().ok_or_else(|| {
                TranslateError::Invalid(format!(
                    "tool message '{id}' answers no earlier assistant tool call"
                ))
            })?;
            let text = super::chat::content_text(message.get("content"));
            let response = serde_json::from_str::<Value>(&text)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({"content": text}));
            (
                "user",
                vec![json!({"functionResponse": {"name": name, "response": response}})],
            )
        }
        other => {
            return Err(TranslateError::Unsupported(format!(
                "message role '{other}' is not supported by gemini"
            )));
        }
    };
    Ok(Translated::Turn(turn, parts))
}

/// The body around the translated messages (`contents` and, when given, `systemInstruction` are
/// put in as they are: placeholders on the bytes path).
fn parameters(
    req: &Map<String, Value>,
    contents: Value,
    system: Option<Value>,
    warnings: &mut Vec<String>,
) -> Result<Value, TranslateError> {
    let mut body = Map::new();
    body.insert("contents".into(), contents);
    if let Some(system) = system {
        body.insert("systemInstruction".into(), system);
    }
    let mut config = Map::new();
    if let Some(m) = max_tokens(req) {
        config.insert("maxOutputTokens".into(), json!(m));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("n", "candidateCount"),
    ] {
        if let Some(v) = req.get(from).filter(|v| v.is_number()) {
            config.insert(to.into(), v.clone());
        }
    }
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(TranslateError::Unsupported(
            "'n' greater than 1 is not supported through gatehouse for gemini".to_string(),
        ));
    }
    if let Some(stop) = stop_list(req.get("stop"))? {
        config.insert("stopSequences".into(), Value::Array(stop));
    }
    if let Some(format) = req.get("response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if let Some(schema) = format.get("json_schema").and_then(|s| s.get("schema")) {
                    config.insert("responseJsonSchema".into(), schema.clone());
                }
            }
            _ => {}
        }
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    let tools = function_tools(req)?;
    if !tools.is_empty() {
        let declarations: Vec<Value> = tools
            .into_iter()
            .map(|(name, description, parameters)| {
                let mut d = json!({"name": name, "parametersJsonSchema": parameters});
                if let (Some(desc), Some(obj)) = (description, d.as_object_mut()) {
                    obj.insert("description".into(), json!(desc));
                }
                d
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
        let config = match tool_choice(req)? {
            None | Some(ToolChoice::Auto) => None,
            Some(ToolChoice::None) => Some(json!({"mode": "NONE"})),
            Some(ToolChoice::Required) => Some(json!({"mode": "ANY"})),
            Some(ToolChoice::Named(name)) => {
                Some(json!({"mode": "ANY", "allowedFunctionNames": [name]}))
            }
        };
        if let Some(config) = config {
            body.insert(
                "toolConfig".into(),
                json!({"functionCallingConfig": config}),
            );
        }
    }
    warn_unhandled(
        req,
        &[
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "n",
            "response_format",
        ],
        "gemini",
        warnings,
    );
    Ok(Value::Object(body))
}

fn user_parts(content: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
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
                    match data_url(url) {
                        Some((mime, data)) => {
                            Ok(json!({"inlineData": {"mimeType": mime, "data": data}}))
                        }
                        None => Err(TranslateError::Unsupported(
                            "gemini takes images as base64 data: URLs only (http image URLs are not fetched)"
                                .to_string(),
                        )),
                    }
                }
                other => Err(TranslateError::Invalid(format!(
                    "content part type '{}' is not supported by gemini",
                    other.unwrap_or("(missing)")
                ))),
            })
            .collect(),
        Some(_) => Err(TranslateError::Invalid(
            "message 'content' must be a string or an array of parts".to_string(),
        )),
    }
}

/// Gemini `finishReason` → OpenAI `finish_reason`.
pub fn finish_reason(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
}

/// `usageMetadata` → OpenAI usage. Gemini counts apart what OpenAI counts together:
/// `totalTokenCount` is the sum of `promptTokenCount` (cached content included),
/// `toolUsePromptTokenCount`, `candidatesTokenCount` and `thoughtsTokenCount`, and thoughts are
/// billed as output. So the prompt is prompt plus tool-use prompt, the completion candidates plus
/// thoughts, of which the thoughts are reasoning.
pub fn usage(meta: &Value) -> Value {
    let n = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    let thoughts = n("thoughtsTokenCount");
    openai_usage(
        n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount")),
        n("candidatesTokenCount").saturating_add(thoughts),
        n("cachedContentTokenCount"),
        0,
        thoughts,
    )
}

/// Text and function calls of the first candidate.
fn candidate_parts(value: &Value) -> (String, Vec<(String, Value)>, Option<&str>) {
    let candidate = value.get("candidates").and_then(|c| c.get(0));
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in candidate
        .and_then(|c| c.get("content"))
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if part.get("thought") == Some(&Value::Bool(true)) {
            continue;
        }
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(call) = part.get("functionCall") {
            calls.push((
                call.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                call.get("args").cloned().unwrap_or_else(|| json!({})),
            ));
        }
    }
    let finish = candidate
        .and_then(|c| c.get("finishReason"))
        .and_then(Value::as_str)
        .or_else(|| {
            value
                .get("promptFeedback")
                .and_then(|f| f.get("blockReason"))
                .map(|_| "SAFETY")
        });
    (text, calls, finish)
}

/// Gemini `GenerateContentResponse` → OpenAI chat completion.
pub fn response(value: &Value, model: &str) -> Result<Value, DecodeError> {
    if value.get("candidates").is_none() && value.get("promptFeedback").is_none() {
        return Err(DecodeError::Shape(
            "gemini response has neither 'candidates' nor 'promptFeedback'",
        ));
    }
    let (text, calls, finish) = candidate_parts(value);
    let tool_calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| {
            json!({"id": format!("call_{i}_{}", new_id("")), "type": "function",
                   "function": {"name": name, "arguments": args.to_string()}})
        })
        .collect();
    let mut message = json!({"role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }});
    if !tool_calls.is_empty()
        && let Some(obj) = message.as_object_mut()
    {
        obj.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    Ok(json!({
        "id": value.get("responseId").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| new_id("chatcmpl-")),
        "object": "chat.completion",
        "created": now_secs(),
        "model": value.get("modelVersion").and_then(Value::as_str).unwrap_or(model),
        "choices": [{"index": 0, "message": message,
            "finish_reason": finish_reason(finish.unwrap_or("STOP"), !calls.is_empty()),
            "logprobs": null}],
        "usage": usage(value.get("usageMetadata").unwrap_or(&Value::Null)),
    }))
}
