//! What every translating adapter shares: reading an OpenAI chat request (messages, tools, stop,
//! parameters to warn about) and writing OpenAI chat chunks and usage.

use serde_json::{Map, Value, json};

use crate::error::TranslateError;

/// Conversation turns for providers that want alternating roles (Anthropic, Gemini, Bedrock).
#[derive(Debug, Default)]
pub struct Turns(Vec<(String, Vec<Value>)>);

impl Turns {
    /// Append `blocks` as a turn of `role`, merging into the previous turn when it has the same
    /// role (the results of parallel tool calls end up in one user turn); empty turns are dropped.
    pub fn push(&mut self, role: &str, blocks: Vec<Value>) {
        if blocks.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some((last, existing)) if last == role => existing.extend(blocks),
            _ => self.0.push((role.to_string(), blocks)),
        }
    }

    /// `[{"role": …, <key>: [blocks]}, …]`.
    pub fn into_json(self, key: &str) -> Value {
        Value::Array(
            self.0
                .into_iter()
                .map(|(role, blocks)| {
                    let mut turn = Map::new();
                    turn.insert("role".into(), Value::String(role));
                    turn.insert(key.into(), Value::Array(blocks));
                    Value::Object(turn)
                })
                .collect(),
        )
    }
}

/// A new chunk skeleton, as every translated chunk carries it.
pub(crate) fn chunk(id: &str, created: u64, model: &str, choices: Value) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    })
}

/// A one-choice chunk with `delta` and `finish_reason`.
pub(crate) fn delta_chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    finish_reason: Option<&str>,
) -> Value {
    chunk(
        id,
        created,
        model,
        json!([{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}]),
    )
}

/// The final usage-only chunk.
pub(crate) fn usage_chunk(id: &str, created: u64, model: &str, usage: Value) -> Value {
    let mut c = chunk(id, created, model, json!([]));
    if let Some(obj) = c.as_object_mut() {
        obj.insert("usage".to_string(), usage);
    }
    c
}

/// OpenAI `usage` from prompt (cached reads and cache writes included), completion (reasoning
/// included), cached-read, cache-write and reasoning counts. OpenAI's own breakdowns are
/// `prompt_tokens_details.cached_tokens` and `completion_tokens_details.reasoning_tokens`; cache
/// writes, which OpenAI does not report, go in `prompt_tokens_details.cache_write_tokens` (the
/// official SDKs keep unknown fields), so metering and an Anthropic client still see them.
pub(crate) fn openai_usage(
    prompt: u64,
    completion: u64,
    cached: u64,
    cache_write: u64,
    reasoning: u64,
) -> Value {
    let mut usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": cached},
    });
    if let Some(obj) = usage.as_object_mut() {
        if cache_write > 0
            && let Some(details) = obj
                .get_mut("prompt_tokens_details")
                .and_then(Value::as_object_mut)
        {
            details.insert("cache_write_tokens".to_string(), json!(cache_write));
        }
        if reasoning > 0 {
            obj.insert(
                "completion_tokens_details".to_string(),
                json!({"reasoning_tokens": reasoning}),
            );
        }
    }
    usage
}

/// Percent-encode one URL path segment (model ids like `anthropic.claude-3:0` or `a/b`).
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Seconds since the epoch, for `created`.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh id with `prefix`.
pub(crate) fn new_id(prefix: &str) -> String {
    use rand::Rng;
    format!("{prefix}{:024x}", rand::rng().random::<u128>() >> 32)
}

/// Text of an OpenAI `content` (string or parts), images and other parts ignored.
pub(crate) fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A `data:` URL split into media type and base64 data.
pub(crate) fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media, data))
}

/// `stop` as a list of strings.
pub(crate) fn stop_list(stop: Option<&Value>) -> Result<Option<Vec<Value>>, TranslateError> {
    match stop {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![Value::String(s.clone())])),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(Some(a.clone())),
        Some(_) => Err(TranslateError::Invalid(
            "'stop' must be a string or an array of strings".to_string(),
        )),
    }
}

/// OpenAI `max_completion_tokens` or `max_tokens`.
pub(crate) fn max_tokens(req: &Map<String, Value>) -> Option<u64> {
    req.get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| req.get("max_tokens").and_then(Value::as_u64))
}

/// Parameters every translating adapter reads itself; anything else not in an adapter's own list
/// is dropped with a warning.
pub(crate) const COMMON_PARAMS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
];

/// Warn about every parameter of `req` not in `COMMON_PARAMS` or `handled`.
pub(crate) fn warn_unhandled(
    req: &Map<String, Value>,
    handled: &[&str],
    provider: &str,
    warnings: &mut Vec<String>,
) {
    for (key, value) in req {
        if value.is_null()
            || COMMON_PARAMS.contains(&key.as_str())
            || handled.contains(&key.as_str())
        {
            continue;
        }
        warnings.push(format!(
            "'{key}' is not supported by {provider} and was dropped"
        ));
    }
}

/// Parse a tool call's `arguments` string into the JSON object providers want.
pub(crate) fn parse_arguments(arguments: Option<&Value>) -> Result<Value, TranslateError> {
    match arguments {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(json!({})),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                TranslateError::Invalid(
                    "tool call 'arguments' must be a JSON object encoded as a string".to_string(),
                )
            }),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(TranslateError::Invalid(
            "tool call 'arguments' must be a string".to_string(),
        )),
    }
}

/// `tools` entries of type function: (name, description, parameters).
pub(crate) fn function_tools(
    req: &Map<String, Value>,
) -> Result<Vec<(String, Option<String>, Value)>, TranslateError> {
    let Some(tools) = req.get("tools").filter(|t| !t.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(tools) = tools.as_array() else {
        return Err(TranslateError::Invalid(
            "'tools' must be an array".to_string(),
        ));
    };
    tools
        .iter()
        .map(|t| {
            if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
                return Err(TranslateError::Invalid(
                    "only tools of type 'function' can be translated".to_string(),
                ));
            }
            let f = t.get("function").ok_or_else(|| {
                TranslateError::Invalid("a tool is missing 'function'".to_string())
            })?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    TranslateError::Invalid("a tool function is missing 'name'".to_string())
                })?;
            let description = f
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string);
            let parameters = f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            Ok((name.to_string(), description, parameters))
        })
        .collect()
}

/// OpenAI `tool_choice`, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

pub(crate) fn tool_choice(req: &Map<String, Value>) -> Result<Option<ToolChoice>, TranslateError> {
    match req.get("tool_choice") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "none" => Ok(Some(ToolChoice::None)),
            "required" => Ok(Some(ToolChoice::Required)),
            other => Err(TranslateError::Invalid(format!(
                "unknown 'tool_choice' value '{other}'"
            ))),
        },
        Some(v) => v
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|n| Some(ToolChoice::Named(n.to_string())))
            .ok_or_else(|| {
                TranslateError::Invalid(
                    "'tool_choice' must be auto, none, required or {\"type\":\"function\",\"function\":{\"name\":...}}"
                        .to_string(),
                )
            }),
    }
}

/// The messages array (validated non-empty by the proxy).
pub(crate) fn messages(req: &Map<String, Value>) -> &[Value] {
    req.get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Role of a message.
pub(crate) fn role(message: &Value) -> Result<&str, TranslateError> {
    message
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::Invalid("every message needs a string 'role'".to_string()))
}
