//! Provider adapters: how a request in the gateway's lingua franca (an OpenAI Chat Completions or
//! Embeddings body) becomes each provider's native request, and how the native answer (JSON or a
//! stream) comes back as OpenAI JSON and OpenAI chunks.
//!
//! `openai`, `openaiCompatible` and `azureOpenAI` speak OpenAI's wire format and are passed through
//! (only `model` rewritten); `anthropic`, `gemini` and `bedrock` are translated. The inbound
//! Anthropic Messages API (`POST /v1/messages`) is the other direction, in [`messages`].
//!
//! Streams are translated event by event by a [`Translate`]: a provider [`ChunkDecoder`] turns the
//! upstream bytes into OpenAI chunks, an encoder writes them in the client's dialect (OpenAI SSE or
//! Anthropic SSE). The relay in `body.rs` validates what comes out exactly as it validates a
//! pass-through stream, so the guarantees (no silent truncation, error event on garbage) hold for
//! every provider.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub(crate) mod chat_body;
pub mod failure;
pub mod gemini;
pub mod messages;
pub mod openai;

use bytes::{Bytes, BytesMut};
use gatehouse_crds::config::ProviderKind;
use http::Uri;
use serde_json::{Map, Value, json};

use crate::error::ProxyError;
use crate::state::Provider;
use crate::usage::Usage;

/// Which API the client spoke, and so which shape answers and errors take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI Chat Completions / Embeddings.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// Which operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Chat completion (OpenAI) or message (Anthropic).
    Chat,
    /// Embeddings.
    Embeddings,
}

/// How a provider frames its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFraming {
    /// `text/event-stream`.
    Sse,
    /// AWS event stream (`application/vnd.amazon.eventstream`), binary frames with CRCs.
    AwsEventStream,
}

/// One upstream request, ready to be authorized and sent.
#[derive(Debug)]
pub struct Outgoing {
    /// Full URL.
    pub uri: Uri,
    /// JSON body.
    pub body: Bytes,
    /// Bodies of further calls to `uri` in the same attempt, for a provider that takes fewer
    /// inputs per call than the client sent (Bedrock embeddings). Empty for everything else.
    pub more: Vec<Bytes>,
    /// Parameters dropped on the way, for the `x-gatehouse-warning` header.
    pub warnings: Vec<String>,
}

/// What the request looks like before it meets a provider.
#[derive(Debug)]
pub struct Inbound {
    /// The client's dialect.
    pub dialect: Dialect,
    /// The operation.
    pub op: Operation,
    /// The request in OpenAI shape (for Anthropic clients: translated).
    pub openai: Map<String, Value>,
    /// The client's original Anthropic body, sent natively to Anthropic targets.
    pub native: Option<Map<String, Value>>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Warnings from translating the inbound request.
    pub warnings: Vec<String>,
    /// An Anthropic client's `anthropic-beta` header, forwarded to Anthropic targets only.
    pub anthropic_beta: Option<http::HeaderValue>,
}

impl Inbound {
    /// The `anthropic-beta` header to send to a provider of `kind`: only an Anthropic client's,
    /// only to Anthropic.
    pub fn beta_for(&self, kind: ProviderKind) -> Option<&http::HeaderValue> {
        (self.dialect == Dialect::Anthropic && kind == ProviderKind::Anthropic)
            .then_some(self.anthropic_beta.as_ref())
            .flatten()
    }

    /// Whether the client wants the usage chunk at the end of an OpenAI stream.
    pub fn include_usage(&self) -> bool {
        self.dialect == Dialect::OpenAi
            && self
                .openai
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
    }

    /// Whether an attempt at `kind` sends the client's bytes natively (no translation either way).
    pub fn is_native(&self, kind: ProviderKind) -> bool {
        match self.dialect {
            Dialect::OpenAi => is_openai_wire(kind),
            Dialect::Anthropic => kind == ProviderKind::Anthropic,
        }
    }
}

/// Whether the provider speaks OpenAI's wire format.
pub fn is_openai_wire(kind: ProviderKind) -> bool {
    matches!(
        kind,
        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::AzureOpenAI
    )
}

/// Build the upstream request for one attempt at `provider` with upstream model `model`.
/// A request the provider cannot express is a 400 naming the parameter.
pub fn outgoing(
    provider: &Provider,
    model: &str,
    inbound: &Inbound,
) -> Result<Outgoing, ProxyError> {
    let mut out = outgoing_body(provider, model, inbound)?;
    if inbound.anthropic_beta.is_some() && inbound.beta_for(provider.kind).is_none() {
        out.warnings.push(beta_not_forwarded(provider));
    }
    Ok(out)
}

/// The warning for an Anthropic client's `anthropic-beta` header that `provider` does not get.
pub fn beta_not_forwarded(provider: &Provider) -> String {
    format!(
        "anthropic-beta not forwarded: provider '{}' is {}, not anthropic",
        provider.name,
        provider.kind.as_str()
    )
}

fn outgoing_body(
    provider: &Provider,
    model: &str,
    inbound: &Inbound,
) -> Result<Outgoing, ProxyError> {
    if inbound.dialect == Dialect::Anthropic && provider.kind == ProviderKind::Anthropic {
        return anthropic::native(provider, model, inbound);
    }
    let req = &inbound.openai;
    match (provider.kind, inbound.op) {
        (ProviderKind::Openai | ProviderKind::OpenaiCompatible, op) => {
            openai::outgoing(provider, model, req, op, inbound.dialect)
        }
        (ProviderKind::AzureOpenAI, op) => azure::outgoing(provider, model, req, op, inbound),
        (ProviderKind::Anthropic, Operation::Chat) => {
            anthropic::outgoing(provider, model, req, inbound.stream)
        }
        (ProviderKind::Gemini, Operation::Chat) => {
            gemini::outgoing(provider, model, req, inbound.stream)
        }
        (ProviderKind::Gemini, Operation::Embeddings) => gemini::embeddings(provider, model, req),
        (ProviderKind::Bedrock, Operation::Chat) => {
            bedrock::outgoing(provider, model, req, inbound.stream)
        }
        (ProviderKind::Bedrock, Operation::Embeddings) => {
            bedrock::embeddings::outgoing(provider, model, req)
        }
        (ProviderKind::Anthropic, Operation::Embeddings) => {
            Err(ProxyError::InvalidRequest(format!(
                "provider '{}' ({}) does not serve embeddings; route embeddings to an openai, \
                 openaiCompatible, azureOpenAI, gemini or bedrock provider",
                provider.name,
                provider.kind.as_str()
            )))
        }
    }
}

/// Translate a 2xx non-stream body into OpenAI JSON (chat completion or embeddings list).
/// `Err` means the provider answered something that is not its documented shape.
pub fn response(
    kind: ProviderKind,
    op: Operation,
    model: &str,
    body: &[u8],
) -> Result<Value, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| "response body is not valid JSON".to_string())?;
    if !value.is_object() {
        return Err("response body is not a JSON object".to_string());
    }
    match (kind, op) {
        (k, _) if is_openai_wire(k) => Ok(value),
        (ProviderKind::Anthropic, _) => anthropic::response(&value, model),
        (ProviderKind::Gemini, Operation::Chat) => gemini::response(&value, model),
        (ProviderKind::Gemini, Operation::Embeddings) => gemini::embeddings_response(&value, model),
        (ProviderKind::Bedrock, Operation::Embeddings) => {
            bedrock::embeddings::response(model, &[(value, None)])
        }
        (ProviderKind::Bedrock, Operation::Chat) => bedrock::response(&value, model),
        _ => Ok(value),
    }
}

/// One 2xx answer to one upstream call.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The body.
    pub body: Bytes,
    /// The `x-amzn-bedrock-input-token-count` response header: InvokeModel answers (Bedrock
    /// embeddings) may carry their usage only there.
    pub input_tokens: Option<u64>,
}

/// [`response`] for the answers of every call of an attempt ([`Outgoing::more`]), joined in order.
pub fn responses(
    kind: ProviderKind,
    op: Operation,
    model: &str,
    replies: &[Reply],
) -> Result<Value, String> {
    match (kind, op, replies) {
        (ProviderKind::Bedrock, Operation::Embeddings, _) => {
            let answers = replies
                .iter()
                .map(|r| {
                    let value: Value = serde_json::from_slice(&r.body)
                        .map_err(|_| "response body is not valid JSON".to_string())?;
                    if !value.is_object() {
                        return Err("response body is not a JSON object".to_string());
                    }
                    Ok((value, r.input_tokens))
                })
                .collect::<Result<Vec<_>, String>>()?;
            bedrock::embeddings::response(model, &answers)
        }
        (_, _, [one]) => response(kind, op, model, &one.body),
        _ => Err(format!(
            "{} answers to one {} request cannot be joined",
            replies.len(),
            kind.as_str()
        )),
    }
}

/// Re-encode float embeddings as base64 little-endian f32, as OpenAI does for
/// `encoding_format: base64` (the OpenAI SDKs ask for it by default).
pub fn base64_embeddings(response: &mut Value) {
    use base64::Engine;
    for item in response
        .get_mut("data")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(values) = item.get("embedding").and_then(Value::as_array) {
            let mut bytes = Vec::with_capacity(values.len() * 4);
            for v in values {
                bytes.extend_from_slice(&(v.as_f64().unwrap_or(0.0) as f32).to_le_bytes());
            }
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            if let Some(obj) = item.as_object_mut() {
                obj.insert("embedding".into(), json!(encoded));
            }
        }
    }
}

/// The stream framing `kind` answers with.
pub fn framing(kind: ProviderKind) -> StreamFraming {
    match kind {
        ProviderKind::Bedrock => StreamFraming::AwsEventStream,
        _ => StreamFraming::Sse,
    }
}

/// The translator for a stream from `kind` to a client speaking `inbound.dialect`, or `None` when
/// the stream passes through untouched.
pub fn translate(kind: ProviderKind, model: &str, inbound: &Inbound) -> Option<Translate> {
    translator(
        kind,
        model,
        inbound.dialect,
        inbound.is_native(kind),
        inbound.include_usage(),
    )
}

/// [`translate`] from what it reads of the request: the client's dialect, whether the attempt
/// is native, and whether an OpenAI client asked for the usage chunk.
pub fn translator(
    kind: ProviderKind,
    model: &str,
    dialect: Dialect,
    native: bool,
    include_usage: bool,
) -> Option<Translate> {
    // Azure's streams are OpenAI's plus a leading prompt-filter chunk with no choices, which
    // clients that read `choices[0]` trip over: they go through the OpenAI decoder, which drops it.
    if native && kind != ProviderKind::AzureOpenAI {
        return None;
    }
    let decoder: Box<dyn ChunkDecoder> = match kind {
        ProviderKind::Anthropic => Box::new(anthropic::StreamDecoder::new(model)),
        ProviderKind::Gemini => Box::new(gemini::StreamDecoder::new(model)),
        ProviderKind::Bedrock => Box::new(bedrock::StreamDecoder::new(model)),
        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::AzureOpenAI => {
            Box::new(openai::StreamDecoder::default())
        }
    };
    let encoder: Box<dyn ChunkEncoder> = match dialect {
        Dialect::OpenAi => Box::new(openai::StreamEncoder::new(
            dialect == Dialect::OpenAi && include_usage,
        )),
        Dialect::Anthropic => Box::new(messages::StreamEncoder::default()),
    };
    Some(Translate::new(decoder, encoder))
}

/// One item of a translated stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// An OpenAI `chat.completion.chunk` object.
    Chunk(Value),
    /// The provider signalled a complete answer.
    Done,
    /// The provider sent an in-band error.
    Error {
        /// Message (never key material: providers' stream errors carry none).
        message: String,
    },
}

/// Turns a provider's stream bytes into OpenAI chunks.
pub trait ChunkDecoder: Send + Sync {
    /// Consume `bytes` (any split), pushing complete items.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamItem>) -> Result<(), String>;
    /// The upstream ended; `Err` when it ended inside a frame.
    fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), String>;
    /// Bytes held of an event or frame not complete yet (checked against `--max-event-bytes`).
    fn buffered(&self) -> usize;
}

/// Writes OpenAI chunks in the client's dialect.
pub trait ChunkEncoder: Send + Sync {
    /// Append the wire form of `item` to `out`.
    fn encode(&mut self, item: StreamItem, out: &mut BytesMut);
}

/// A provider decoder plus a client encoder, with the usage seen on the way.
pub struct Translate {
    decoder: Box<dyn ChunkDecoder>,
    encoder: Box<dyn ChunkEncoder>,
    items: Vec<StreamItem>,
    usage: Option<Usage>,
}

impl std::fmt::Debug for Translate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translate")
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

impl Translate {
    /// Combine a decoder and an encoder.
    pub fn new(decoder: Box<dyn ChunkDecoder>, encoder: Box<dyn ChunkEncoder>) -> Self {
        Self {
            decoder,
            encoder,
            items: Vec::new(),
            usage: None,
        }
    }

    /// Translate `bytes`, appending client-dialect events to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), String> {
        let result = self.decoder.feed(bytes, &mut self.items);
        self.flush(out);
        result
    }

    /// The upstream ended.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), String> {
        let result = self.decoder.finish(&mut self.items);
        self.flush(out);
        result
    }

    /// Bytes the decoder holds of an upstream event not complete yet.
    pub fn pending(&self) -> usize {
        self.decoder.buffered()
    }

    /// The usage the provider reported, whether or not the client asked to see it.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn flush(&mut self, out: &mut BytesMut) {
        for item in self.items.drain(..) {
            if let StreamItem::Chunk(chunk) = &item
                && let Some(u) = chunk.get("usage").filter(|u| u.is_object())
                && let Ok(u) = serde_json::from_value::<Usage>(u.clone())
            {
                self.usage = Some(u);
            }
            self.encoder.encode(item, out);
        }
    }
}

/// The JSON object carried by an event's data; anything else is a broken stream.
pub fn event_object(data: &str) -> Result<Value, String> {
    serde_json::from_str(data)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| "the upstream sent an event that is not a JSON object".to_string())
}

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

/// Splits an SSE byte stream into complete events (`event:` name and joined `data:`).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    // Where the search for the next event's end resumes: an event that never ends is scanned
    // once, not once per read.
    ends: crate::limits::EventEnds,
}

/// One SSE event.
#[derive(Debug, Default, PartialEq)]
pub struct SseEvent {
    /// `event:` field, if any.
    pub event: Option<String>,
    /// `data:` lines joined by `\n`.
    pub data: String,
}

impl SseParser {
    /// Add bytes and take the complete events. Invalid UTF-8 is an error.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        let result = loop {
            let Some(next) = self.ends.next(&self.buf, start) else {
                break Ok(events);
            };
            // The content ends before the terminator (`\n\n` or `\n\r\n`).
            let end = if self.buf[next - 2] == b'\r' {
                next - 3
            } else {
                next - 2
            };
            let raw = &self.buf[start..end];
            start = next;
            let Ok(text) = std::str::from_utf8(raw) else {
                break Err("the upstream sent an event that is not UTF-8".to_string());
            };
            if let Some(event) = parse_event(text) {
                events.push(event);
            }
        };
        self.buf.drain(..start);
        self.ends.consumed(start);
        result
    }

    /// Whether bytes of an unfinished event remain (the stream was cut inside an event).
    pub fn has_partial(&self) -> bool {
        !self.buf.iter().all(u8::is_ascii_whitespace)
    }

    /// Bytes held of an event not complete yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// The fields of one event's text; `None` for a comment or an empty event.
fn parse_event(text: &str) -> Option<SseEvent> {
    let mut event = SseEvent::default();
    let mut has_data = false;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event.event = Some(value.to_string()),
            "data" => {
                if has_data {
                    event.data.push('\n');
                }
                event.data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    (has_data || event.event.is_some()).then_some(event)
}

/// The message a provider put in its error body, whatever its shape (OpenAI, Anthropic and Gemini
/// `error.message`, Bedrock `message`), cut to a sane length.
pub fn error_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value
        .get("error")
        .and_then(|e| e.get("message").or(Some(e)))
        .and_then(Value::as_str)
        .or_else(|| value.get("message").and_then(Value::as_str))
        .or_else(|| value.get("Message").and_then(Value::as_str))?;
    Some(message.chars().take(2_000).collect())
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

/// OpenAI `usage` from prompt (cached included), completion and cached counts.
pub(crate) fn openai_usage(prompt: u64, completion: u64, cached: Option<u64>) -> Value {
    let mut usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    if let (Some(cached), Some(obj)) = (cached, usage.as_object_mut()) {
        obj.insert(
            "prompt_tokens_details".to_string(),
            json!({"cached_tokens": cached}),
        );
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
pub(crate) fn stop_list(stop: Option<&Value>) -> Result<Option<Vec<Value>>, ProxyError> {
    match stop {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![Value::String(s.clone())])),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(Some(a.clone())),
        Some(_) => Err(ProxyError::InvalidRequest(
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
pub(crate) fn parse_arguments(arguments: Option<&Value>) -> Result<Value, ProxyError> {
    match arguments {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(json!({})),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                ProxyError::InvalidRequest(
                    "tool call 'arguments' must be a JSON object encoded as a string".to_string(),
                )
            }),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(ProxyError::InvalidRequest(
            "tool call 'arguments' must be a string".to_string(),
        )),
    }
}

/// `tools` entries of type function: (name, description, parameters).
pub(crate) fn function_tools(
    req: &Map<String, Value>,
) -> Result<Vec<(String, Option<String>, Value)>, ProxyError> {
    let Some(tools) = req.get("tools").filter(|t| !t.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(tools) = tools.as_array() else {
        return Err(ProxyError::InvalidRequest(
            "'tools' must be an array".to_string(),
        ));
    };
    tools
        .iter()
        .map(|t| {
            if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
                return Err(ProxyError::InvalidRequest(
                    "only tools of type 'function' can be translated".to_string(),
                ));
            }
            let f = t.get("function").ok_or_else(|| {
                ProxyError::InvalidRequest("a tool is missing 'function'".to_string())
            })?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    ProxyError::InvalidRequest("a tool function is missing 'name'".to_string())
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

pub(crate) fn tool_choice(req: &Map<String, Value>) -> Result<Option<ToolChoice>, ProxyError> {
    match req.get("tool_choice") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "none" => Ok(Some(ToolChoice::None)),
            "required" => Ok(Some(ToolChoice::Required)),
            other => Err(ProxyError::InvalidRequest(format!(
                "unknown 'tool_choice' value '{other}'"
            ))),
        },
        Some(v) => v
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|n| Some(ToolChoice::Named(n.to_string())))
            .ok_or_else(|| {
                ProxyError::InvalidRequest(
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
pub(crate) fn role(message: &Value) -> Result<&str, ProxyError> {
    message.get("role").and_then(Value::as_str).ok_or_else(|| {
        ProxyError::InvalidRequest("every message needs a string 'role'".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_any_split_and_crlf() {
        let input = b"event: a\r\ndata: {\"x\":1}\r\n\r\n: comment\n\ndata: 1\ndata: 2\n\n";
        for split in 0..input.len() {
            let mut p = SseParser::default();
            let mut events = p.push(&input[..split]).unwrap();
            events.extend(p.push(&input[split..]).unwrap());
            assert_eq!(events.len(), 2, "split at {split}");
            assert_eq!(events[0].event.as_deref(), Some("a"));
            assert_eq!(events[0].data, "{\"x\":1}");
            assert_eq!(events[1].data, "1\n2");
            assert!(!p.has_partial());
        }
    }

    #[test]
    fn error_message_reads_every_provider_shape() {
        assert_eq!(
            error_message(br#"{"error":{"message":"bad","type":"x"}}"#).as_deref(),
            Some("bad")
        );
        assert_eq!(
            error_message(
                br#"{"type":"error","error":{"type":"invalid_request_error","message":"m"}}"#
            )
            .as_deref(),
            Some("m")
        );
        assert_eq!(error_message(br#"{"message":"b"}"#).as_deref(), Some("b"));
        assert_eq!(error_message(b"<html>"), None);
    }
}
