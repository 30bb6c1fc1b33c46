//! The client's request as the gateway holds it: the body's bytes, untouched, and the few top-level
//! fields routing needs, read without building a JSON tree (docs/architecture.md, "Reading and
//! parsing the body").
//!
//! - [`Index::of`] walks the top level once: `model`, `stream`, `stream_options.include_usage`,
//!   `encoding_format` are read; `messages` is checked to be a non-empty array by its first bytes;
//!   every other value is skipped (validated, not stored). Memory: a handful of offsets.
//! - A target that speaks the client's dialect (OpenAI-wire targets for OpenAI clients, Anthropic
//!   for `/v1/messages`) gets the body back with the value of `model` spliced: one copy, no tree.
//! - A translating target gets the body translated message by message from the bytes, on the
//!   blocking pool when it is big: `/v1/messages` to OpenAI-wire targets (`dialect::messages`),
//!   chat to Anthropic, Gemini and Bedrock (`providers::chat_body`; an Anthropic client's body
//!   through OpenAI's bytes first). Neither the request nor its translation exists as a tree.
//! - Only embeddings to Gemini or Bedrock make [`Request::outgoing`] parse the whole body into the
//!   [`Inbound`] the adapters translate from.

pub mod budget;
pub mod read;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::body::StreamMeter;
use crate::dialect::{Dialect, Inbound, Operation};
use crate::error::{ProxyError, TranslateError};
use crate::providers::{self, Adapter, Outgoing, Translate};
use crate::state::Provider;

use self::budget::BodyPermit;
use self::read::Body;

/// Bodies at least this big are parsed on tokio's blocking pool, so that parsing never holds up the
/// thread serving every other request (a 32 MiB body takes tens of milliseconds to walk, its tree
/// hundreds).
pub const OFFLOAD_BYTES: usize = 256 * 1024;

/// Longest model name quoted back in an error message.
const MAX_QUOTED: usize = 200;

/// What the top level of a body says, as offsets into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// The requested model alias.
    pub alias: String,
    /// Where every top-level `model` value sits (one, unless the client repeated the key).
    model_at: Vec<Range<usize>>,
    /// `stream: true` (chat only).
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
    /// Where the value of `stream_options` sits, and the value of its `include_usage`.
    stream_options_at: Option<Range<usize>>,
    include_usage_at: Option<Range<usize>>,
    /// `encoding_format: "base64"`.
    pub base64: bool,
    /// What routing rules read (`stages::rules`): a non-empty top-level `tools`, OpenAI's
    /// `response_format` asking for JSON, where `messages` sits.
    pub features: IndexFeatures,
    /// The output limit the client set: the largest of `max_tokens`, `max_completion_tokens` and
    /// (Responses) `max_output_tokens` (non-negative integers only; anything else is the provider's to refuse). Budgets reserve
    /// for it (`stages::budget`).
    pub max_tokens: Option<u64>,
}

/// Request features the index notes on its way through the top level, for routing rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFeatures {
    /// A non-empty top-level `tools` array.
    pub tools: bool,
    /// `response_format.type` (Responses: `text.format.type`) is `json_object` or `json_schema`.
    pub json_mode: bool,
    /// Where the `messages` value (Responses: `input`) sits in the body.
    pub messages_at: Option<Range<usize>>,
}

/// Top-level keys the index reads; everything else is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Model,
    Stream,
    StreamOptions,
    Messages,
    Input,
    EncodingFormat,
    Tools,
    ResponseFormat,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    Text,
    Other,
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(match key {
            "model" => Key::Model,
            "stream" => Key::Stream,
            "stream_options" => Key::StreamOptions,
            "messages" => Key::Messages,
            "input" => Key::Input,
            "encoding_format" => Key::EncodingFormat,
            "tools" => Key::Tools,
            "response_format" => Key::ResponseFormat,
            "max_tokens" => Key::MaxTokens,
            "max_completion_tokens" => Key::MaxCompletionTokens,
            "max_output_tokens" => Key::MaxOutputTokens,
            "text" => Key::Text,
            _ => Key::Other,
        })
    }
}

/// The raw values of the keys the index reads (last one wins, as in any JSON object parser), plus
/// every `model` position.
#[derive(Default)]
struct Found<'a> {
    model: Option<&'a RawValue>,
    model_at: Vec<&'a RawValue>,
    stream: Option<&'a RawValue>,
    stream_options: Option<&'a RawValue>,
    messages: Option<&'a RawValue>,
    input: Option<&'a RawValue>,
    encoding_format: Option<&'a RawValue>,
    tools: Option<&'a RawValue>,
    response_format: Option<&'a RawValue>,
    max_tokens: Option<&'a RawValue>,
    max_completion_tokens: Option<&'a RawValue>,
    max_output_tokens: Option<&'a RawValue>,
    text: Option<&'a RawValue>,
}

struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = Found<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found<'de>, A::Error> {
        let mut found = Found::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let slot = match key {
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                Key::Model => {
                    let raw: &RawValue = map.next_value()?;
                    found.model_at.push(raw);
                    found.model = Some(raw);
                    continue;
                }
                Key::Stream => &mut found.stream,
                Key::StreamOptions => &mut found.stream_options,
                Key::Messages => &mut found.messages,
                Key::Input => &mut found.input,
                Key::EncodingFormat => &mut found.encoding_format,
                Key::Tools => &mut found.tools,
                Key::ResponseFormat => &mut found.response_format,
                Key::MaxTokens => &mut found.max_tokens,
                Key::MaxCompletionTokens => &mut found.max_completion_tokens,
                Key::MaxOutputTokens => &mut found.max_output_tokens,
                Key::Text => &mut found.text,
            };
            *slot = Some(map.next_value()?);
        }
        Ok(found)
    }
}

fn invalid(message: &str) -> ProxyError {
    ProxyError::InvalidRequest(message.to_string())
}

impl Index {
    /// Read and check the top level of `body` for `op`; nothing below it is kept.
    pub fn of(body: &[u8], op: Operation) -> Result<Self, ProxyError> {
        Self::of_dialect(body, op, Dialect::OpenAi)
    }

    /// [`Index::of`] for a client of `dialect`: a Responses request has `input` (or a stored
    /// conversation to continue) instead of `messages`, checked where it is translated.
    pub fn of_dialect(body: &[u8], op: Operation, dialect: Dialect) -> Result<Self, ProxyError> {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => invalid("request body must be a JSON object"),
                Err(e) => {
                    ProxyError::InvalidRequest(format!("request body is not valid JSON: {e}"))
                }
            });
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let found = de::Deserializer::deserialize_map(&mut de, TopLevel)
            .and_then(|found| de.end().map(|()| found))
            .map_err(|e| {
                ProxyError::InvalidRequest(format!("request body is not valid JSON: {e}"))
            })?;
        // Only a string is parsed: a hostile `model` of a million elements is refused, not built.
        let alias = match found
            .model
            .map(|m| (m.get().starts_with('"'), m.get()))
            .map(|(is_string, m)| is_string.then(|| serde_json::from_str::<String>(m).ok()))
        {
            Some(Some(Some(m))) if !m.is_empty() => m,
            Some(_) => return Err(invalid("'model' must be a non-empty string")),
            None => return Err(invalid("missing required parameter: 'model'")),
        };
        match op {
            Operation::Chat if dialect == Dialect::Responses => {}
            Operation::Chat => match found.messages.map(|m| m.get().trim_start()) {
                Some(m) if m.starts_with('[') => {
                    if m[1..].trim_start().starts_with(']') {
                        return Err(invalid("'messages' must contain at least one message"));
                    }
                }
                Some(_) => return Err(invalid("'messages' must be an array")),
                None => return Err(invalid("missing required parameter: 'messages'")),
            },
            Operation::Embeddings => {
                if found.input.is_none() {
                    return Err(invalid("missing required parameter: 'input'"));
                }
            }
        }
        let stream = match found.stream.map(|s| s.get().trim()) {
            None | Some("null" | "false") => false,
            Some("true") => true,
            Some(_) => return Err(invalid("'stream' must be a boolean")),
        };
        let include_usage_raw = found
            .stream_options
            .and_then(|o| serde_json::from_str::<StreamOptions<'_>>(o.get()).ok())
            .and_then(|o| o.include_usage);
        let include_usage = include_usage_raw.is_some_and(|u| u.get().trim() == "true");
        // A string of more than a few bytes cannot be "base64", however escaped.
        let base64 = found
            .encoding_format
            .filter(|f| f.get().len() <= 64)
            .and_then(|f| serde_json::from_str::<String>(f.get()).ok())
            .is_some_and(|f| f == "base64");
        let base = body.as_ptr() as usize;
        let at = |raw: &RawValue| {
            let start = (raw.get().as_ptr() as usize).wrapping_sub(base);
            let end = start.saturating_add(raw.get().len());
            (end <= body.len())
                .then_some(start..end)
                .ok_or_else(|| invalid("request body could not be indexed"))
        };
        let model_at = found
            .model_at
            .iter()
            .map(|raw| at(raw))
            .collect::<Result<_, _>>()?;
        let features = IndexFeatures {
            tools: found.tools.is_some_and(|t| {
                let t = t.get().trim_start();
                t.starts_with('[') && !t[1..].trim_start().starts_with(']')
            }),
            json_mode: match dialect {
                Dialect::Responses => found.text,
                _ => found.response_format,
            }
            .filter(|f| f.get().len() <= 64 * 1024)
            .and_then(|f| match dialect {
                Dialect::Responses => serde_json::from_str::<TextConfig<'_>>(f.get())
                    .ok()
                    .and_then(|t| t.format),
                _ => serde_json::from_str::<ResponseFormat<'_>>(f.get()).ok(),
            })
            .is_some_and(|f| matches!(f.kind, Some("json_object" | "json_schema"))),
            messages_at: match dialect {
                Dialect::Responses => found.input,
                _ => found.messages,
            }
            .and_then(|m| {
                let start = (m.get().as_ptr() as usize).wrapping_sub(base);
                let end = start.saturating_add(m.get().len());
                (end <= body.len()).then_some(start..end)
            }),
        };
        Ok(Self {
            alias,
            model_at,
            stream: op == Operation::Chat && stream,
            include_usage,
            stream_options_at: found.stream_options.map(at).transpose()?,
            include_usage_at: include_usage_raw.map(at).transpose()?,
            base64,
            features,
            max_tokens: [
                found.max_tokens,
                found.max_completion_tokens,
                found.max_output_tokens,
            ]
            .into_iter()
            .flatten()
            .filter_map(|raw| raw.get().trim().parse::<u64>().ok())
            .max(),
        })
    }

    /// `body` with every top-level `model` value replaced by `model`.
    pub fn with_model(&self, body: &[u8], model: &str) -> Result<Bytes, ProxyError> {
        self.native_body(body, model, false)
    }

    /// `body` with every top-level `model` value replaced by `model` and, with `ask_usage`,
    /// `stream_options.include_usage` set to `true` (metering asks an OpenAI provider for the
    /// usage of a stream whose client did not; the relay removes what the client did not ask
    /// for). Byte splices into one copy, no tree.
    pub fn native_body(
        &self,
        body: &[u8],
        model: &str,
        ask_usage: bool,
    ) -> Result<Bytes, ProxyError> {
        let model = serde_json::to_vec(model)
            .map_err(|e| ProxyError::InvalidRequest(format!("failed to encode request: {e}")))?;
        // (where, bytes replaced, what goes there), in body order.
        let mut edits: Vec<(Range<usize>, &[u8])> = self
            .model_at
            .iter()
            .map(|r| (r.clone(), &model[..]))
            .collect();
        if ask_usage && let Some(edit) = self.usage_edit(body) {
            edits.push(edit);
            edits.sort_by_key(|(r, _)| r.start);
        }
        let replaced: usize = edits.iter().map(|(r, _)| r.len()).sum();
        let added: usize = edits.iter().map(|(_, b)| b.len()).sum();
        let mut out = Vec::with_capacity((body.len() - replaced).saturating_add(added));
        let mut at = 0;
        for (range, bytes) in &edits {
            out.extend_from_slice(&body[at..range.start]);
            out.extend_from_slice(bytes);
            at = range.end;
        }
        out.extend_from_slice(&body[at..]);
        Ok(Bytes::from(out))
    }

    /// The splice that makes `stream_options.include_usage` true.
    fn usage_edit(&self, body: &[u8]) -> Option<(Range<usize>, &'static [u8])> {
        if let Some(r) = &self.include_usage_at {
            return Some((r.clone(), b"true"));
        }
        match &self.stream_options_at {
            // `stream_options` without `include_usage`: first member of the object.
            Some(r) if body.get(r.start) == Some(&b'{') => {
                let empty = body[r.start + 1..r.end]
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    == Some(&b'}');
                let insert = if empty {
                    &b"\"include_usage\":true"[..]
                } else {
                    &b"\"include_usage\":true,"[..]
                };
                Some((r.start + 1..r.start + 1, insert))
            }
            // `null` (or anything else, which the provider would refuse anyway).
            Some(r) => Some((r.clone(), &b"{\"include_usage\":true}"[..])),
            // No `stream_options`: first member of the body (a body has `model` and `messages`).
            None => {
                let open = body.iter().position(|b| *b == b'{')?;
                Some((
                    open + 1..open + 1,
                    &b"\"stream_options\":{\"include_usage\":true},"[..],
                ))
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct StreamOptions<'a> {
    #[serde(borrow, default)]
    include_usage: Option<&'a RawValue>,
}

/// `response_format`: only its `type` is read.
#[derive(serde::Deserialize)]
struct ResponseFormat<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a str>,
}

/// A Responses request's `text`: its `format` is the `response_format` of a chat request.
#[derive(serde::Deserialize)]
struct TextConfig<'a> {
    #[serde(borrow, default)]
    format: Option<ResponseFormat<'a>>,
}

/// One request of the proxy port, from its parsed top level to every attempt's upstream body.
#[derive(Debug)]
pub struct Request {
    body: Bytes,
    /// What the top level said.
    pub index: Index,
    /// The client's dialect.
    pub dialect: Dialect,
    /// The operation.
    pub op: Operation,
    /// An Anthropic client's `anthropic-beta` header, forwarded to Anthropic targets only.
    pub anthropic_beta: Option<HeaderValue>,
    /// The whole request in OpenAI shape, built the first time a translating target is attempted.
    tree: Option<Arc<Inbound>>,
    /// The body's charge against the in-flight budget; lives as long as the body does, including
    /// in a blocking-pool job that outlives the request (a job cannot be cancelled).
    permit: Arc<BodyPermit>,
    /// Whether the request is metered (`--metering`): its OpenAI streams then ask for usage.
    pub metering: bool,
}

impl Request {
    /// Index `body` (on the blocking pool when it is big).
    pub async fn parse(
        body: Body,
        op: Operation,
        dialect: Dialect,
        anthropic_beta: Option<HeaderValue>,
    ) -> Result<Self, ProxyError> {
        let Body { bytes, permit } = body;
        let permit = Arc::new(permit);
        let index = offload(bytes.len(), &permit, {
            let bytes = bytes.clone();
            move || Index::of_dialect(&bytes, op, dialect)
        })
        .await??;
        Ok(Self {
            body: bytes,
            index,
            dialect,
            op,
            anthropic_beta: anthropic_beta.filter(|_| dialect == Dialect::Anthropic),
            tree: None,
            permit,
            metering: true,
        })
    }

    /// The body as the client sent it (or as a stage rewrote it).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Replace the body (redaction rewrote string values in it): indexed again, nothing
    /// translated from the old one kept. The body's charge against the in-flight budget stays
    /// that of the client's body.
    pub fn replace_body(&mut self, body: Bytes) -> Result<(), ProxyError> {
        self.index = Index::of_dialect(&body, self.op, self.dialect)?;
        self.body = body;
        self.tree = None;
        Ok(())
    }

    /// Whether the client asked for a stream.
    pub fn stream(&self) -> bool {
        self.index.stream
    }

    /// The model alias, shortened for quoting in an error.
    pub fn alias_for_error(&self) -> String {
        quote(&self.index.alias)
    }

    /// Whether an attempt at a provider with `adapter` sends the client's bytes natively.
    pub fn is_native(&self, adapter: &dyn Adapter) -> bool {
        providers::is_native(adapter, self.dialect)
    }

    /// The stream translator for an answer from a provider with `adapter`, if it needs one.
    pub fn translator(&self, adapter: &dyn Adapter, model: &str) -> Option<Translate> {
        providers::translator(adapter, model, self.dialect, self.index.include_usage)
    }

    /// Whether the client asked for base64 embeddings.
    pub fn base64_embeddings(&self) -> bool {
        self.index.base64
    }

    /// Bytes of the client's body.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// Whether metering asks an OpenAI-wire provider for the usage of this stream: an OpenAI
    /// client's stream that did not ask for it itself (an Anthropic client's translated body
    /// always asks).
    pub fn asks_usage(&self) -> bool {
        self.metering
            && self.dialect == Dialect::OpenAi
            && self.index.stream
            && !self.index.include_usage
    }

    /// What the relay does for metering on a stream answered with `translated` (or not).
    pub fn stream_meter(&self, translated: bool) -> StreamMeter {
        StreamMeter {
            // A translated stream's encoder already writes only what the client asked for.
            strip_usage: self.asks_usage() && !translated,
            in_band_cost: self.metering
                && (self.dialect != Dialect::OpenAi || self.index.include_usage),
            measure_text: self.metering,
        }
    }

    /// The upstream request for one attempt at `provider` with upstream model `model`. A request
    /// the provider cannot express is a 400 naming the parameter.
    pub async fn outgoing(
        &mut self,
        provider: &Arc<Provider>,
        model: &str,
    ) -> Result<Outgoing, ProxyError> {
        let adapter = provider.adapter;
        if self.is_native(adapter) {
            let uri = match self.dialect {
                Dialect::Responses => adapter.responses_uri(provider).unwrap_or_else(|| {
                    Err(TranslateError::Internal(format!(
                        "failed to route request: provider '{}' has no responses URL",
                        provider.name
                    )))
                })?,
                _ => adapter.native_uri(provider, model, self.op)?,
            };
            // An OpenAI-compatible server (Ollama, TEI…) often takes text only: token ids are
            // decoded for it.
            if self.op == Operation::Embeddings
                && provider.kind == gatehouse_crds::config::ProviderKind::OpenaiCompatible
            {
                let mut map: Map<String, Value> =
                    serde_json::from_slice(&self.body).map_err(|e| {
                        ProxyError::InvalidRequest(format!("request body is not valid JSON: {e}"))
                    })?;
                if decode_token_input(&mut map)? {
                    map.insert("model".into(), Value::String(model.to_string()));
                    let body = serde_json::to_vec(&map).map_err(|e| {
                        ProxyError::Internal(format!("failed to encode request: {e}"))
                    })?;
                    return Ok(Outgoing::single(uri, Bytes::from(body), Vec::new()));
                }
            }
            return Ok(Outgoing::single(
                uri,
                self.index
                    .native_body(&self.body, model, self.asks_usage())?,
                Vec::new(),
            ));
        }
        if self.dialect != Dialect::OpenAi && adapter.native() == Some(Dialect::OpenAi) {
            return self.to_openai_chat(provider, model).await;
        }
        if self.op == Operation::Chat {
            return self.chat_to_provider(provider, model).await;
        }
        let tree = self.tree().await?;
        let size = self.body.len();
        let provider = provider.clone();
        let model = model.to_string();
        offload(size, &self.permit, move || {
            let mut out = providers::outgoing(&provider, &model, &tree)?;
            // What translating the client's dialect dropped applies to this attempt only.
            if !tree.warnings.is_empty() {
                let mut warnings = tree.warnings.clone();
                warnings.append(&mut out.warnings);
                out.warnings = warnings;
            }
            Ok(out)
        })
        .await?
    }

    /// An Anthropic or Responses client's request for an OpenAI-wire (chat) target: translated
    /// from the bytes (an Anthropic body message by message, no tree).
    async fn to_openai_chat(
        &self,
        provider: &Provider,
        model: &str,
    ) -> Result<Outgoing, ProxyError> {
        let uri = provider.adapter.native_uri(provider, model, self.op)?;
        let bytes = self.body.clone();
        let upstream_model = model.to_string();
        let dialect = self.dialect;
        let (body, mut warnings) = offload(bytes.len(), &self.permit, move || {
            dialect.openai_body(bytes, &upstream_model)
        })
        .await??;
        if self.anthropic_beta.is_some() {
            warnings.push(providers::beta_not_forwarded(provider));
        }
        Ok(Outgoing::single(uri, body, warnings))
    }

    /// A chat request for an Anthropic, Gemini or Bedrock target it is not native to: translated
    /// message by message from the bytes, no tree. An Anthropic client's body is first translated
    /// to OpenAI's (bytes to bytes, as for OpenAI-wire targets), then from OpenAI's like any other.
    async fn chat_to_provider(
        &self,
        provider: &Arc<Provider>,
        model: &str,
    ) -> Result<Outgoing, ProxyError> {
        let bytes = self.body.clone();
        let target = provider.clone();
        let model = model.to_string();
        let (dialect, stream) = (self.dialect, self.index.stream);
        let mut out = offload(bytes.len(), &self.permit, move || {
            let (openai, warnings) = dialect.openai_body(bytes, &model)?;
            let mut out = target
                .adapter
                .outgoing_from_body(&target, &model, &openai, stream)?;
            // What translating the client's dialect dropped comes first, as on the tree path.
            if !warnings.is_empty() {
                let mut all = warnings;
                all.append(&mut out.warnings);
                out.warnings = all;
            }
            Ok::<_, ProxyError>(out)
        })
        .await??;
        // Only an Anthropic client has one, and this target does not speak its dialect.
        if self.anthropic_beta.is_some() {
            out.warnings.push(providers::beta_not_forwarded(provider));
        }
        Ok(out)
    }

    async fn tree(&mut self) -> Result<Arc<Inbound>, ProxyError> {
        if let Some(tree) = &self.tree {
            return Ok(tree.clone());
        }
        let bytes = self.body.clone();
        let (op, dialect, stream) = (self.op, self.dialect, self.index.stream);
        let beta = self.anthropic_beta.clone();
        let tree = offload(bytes.len(), &self.permit, move || {
            inbound(&bytes, op, dialect, stream, beta)
        })
        .await??;
        let tree = Arc::new(tree);
        self.tree = Some(tree.clone());
        Ok(tree)
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        // Freeing a tree of a million values takes as long as building it: not on the thread
        // that serves every other request.
        if let Some(tree) = self.tree.take()
            && self.body.len() >= OFFLOAD_BYTES
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn_blocking(move || drop(tree));
        }
    }
}

/// The whole request as the translating adapters read it (OpenAI shape). An Anthropic body is
/// translated and its own tree dropped at once: the native path never needs it.
fn inbound(
    body: &[u8],
    op: Operation,
    dialect: Dialect,
    stream: bool,
    anthropic_beta: Option<HeaderValue>,
) -> Result<Inbound, ProxyError> {
    let map: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ProxyError::InvalidRequest(format!("request body is not valid JSON: {e}")))?;
    let mut map = map;
    if op == Operation::Embeddings {
        // Every translating target takes text: token ids are decoded first.
        decode_token_input(&mut map)?;
    }
    let mut inbound = dialect.inbound(op, map, stream)?;
    inbound.anthropic_beta = anthropic_beta;
    Ok(inbound)
}

/// Replace token-id `input` by its text (OpenAI's embedding tokenizer); whether it had any.
fn decode_token_input(map: &mut Map<String, Value>) -> Result<bool, ProxyError> {
    match map.get_mut("input") {
        Some(input) => crate::tokens::decode_input(input).map_err(|e| {
            ProxyError::InvalidRequest(format!(
                "'input' holds token ids that cannot be decoded: {e}"
            ))
        }),
        None => Ok(false),
    }
}

/// Run `f` on the blocking pool when the body is big, inline otherwise. The job holds the body's
/// budget charge until `f` and what it captured are gone: a job cannot be cancelled, so when the
/// client leaves mid-parse the bytes stay charged for as long as the job still holds them.
async fn offload<T: Send + 'static>(
    size: usize,
    charge: &Arc<BodyPermit>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ProxyError> {
    if size < OFFLOAD_BYTES {
        return Ok(f());
    }
    let charge = charge.clone();
    tokio::task::spawn_blocking(move || {
        let out = f();
        drop(charge);
        out
    })
    .await
    .map_err(|e| ProxyError::Internal(format!("failed to parse request body: {e}")))
}

/// `s`, cut to [`MAX_QUOTED`] characters.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED) {
        Some((at, _)) => format!("{}… ({} bytes)", &s[..at], s.len()),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn index_reports_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not valid JSON"),
            ("[1]", "must be a JSON object"),
            ("{\"model\":\"m\"} x", "not valid JSON"),
            (r#"{"messages":[{"role":"user","content":"x"}]}"#, "'model'"),
            (r#"{"model":7,"messages":[]}"#, "'model' must be"),
            (r#"{"model":"","messages":[1]}"#, "'model' must be"),
            (r#"{"model":"m"}"#, "'messages'"),
            (r#"{"model":"m","messages":[]}"#, "at least one"),
            (r#"{"model":"m","messages":[ ] }"#, "at least one"),
            (r#"{"model":"m","messages":{}}"#, "must be an array"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "'stream'",
            ),
        ];
        for (body, expected) in cases {
            let err = Index::of(body.as_bytes(), Operation::Chat).unwrap_err();
            assert!(err.to_string().contains(expected), "{body}: {err}");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
        assert!(Index::of(br#"{"model":"m"}"#, Operation::Embeddings).is_err());
        assert!(Index::of(br#"{"model":"m","input":"x"}"#, Operation::Embeddings).is_ok());
    }

    #[test]
    fn usage_is_asked_for_by_splicing_the_body() {
        let cases = [
            (
                r#"{"model":"a","messages":[1],"stream":true}"#,
                r#"{"stream_options":{"include_usage":true},"model":"up","messages":[1],"stream":true}"#,
            ),
            (
                r#"{"model":"a","stream_options":{ },"messages":[1]}"#,
                r#"{"model":"up","stream_options":{"include_usage":true },"messages":[1]}"#,
            ),
            (
                r#"{"model":"a","stream_options":{"x":1},"messages":[1]}"#,
                r#"{"model":"up","stream_options":{"include_usage":true,"x":1},"messages":[1]}"#,
            ),
            (
                r#"{"stream_options":{"include_usage": false},"model":"a","messages":[1]}"#,
                r#"{"stream_options":{"include_usage": true},"model":"up","messages":[1]}"#,
            ),
            (
                r#"{"model":"a","stream_options":null,"messages":[1]}"#,
                r#"{"model":"up","stream_options":{"include_usage":true},"messages":[1]}"#,
            ),
        ];
        for (body, want) in cases {
            let index = Index::of(body.as_bytes(), Operation::Chat).unwrap();
            let out = index.native_body(body.as_bytes(), "up", true).unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
            let unchanged = index.native_body(body.as_bytes(), "up", false).unwrap();
            assert_eq!(
                unchanged,
                index.with_model(body.as_bytes(), "up").unwrap(),
                "{body}"
            );
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true, "{body}");
        }
    }

    #[test]
    fn index_reads_routing_fields_and_splices_model() {
        let body = br#" { "x": {"model": "inner"}, "model" : "a\u0062", "stream":true,
            "stream_options": {"include_usage": true, "other": [1]},
            "messages": [{"role":"user","content":"hi"}], "encoding_format": "base64",
            "model": "alias" } "#;
        let index = Index::of(body, Operation::Chat).unwrap();
        assert_eq!(
            index.alias, "alias",
            "the last model wins, as in any parser"
        );
        assert!(index.stream && index.include_usage && index.base64);
        assert_eq!(index.max_tokens, None);
        let limits = |body: &str| {
            Index::of(body.as_bytes(), Operation::Chat)
                .unwrap()
                .max_tokens
        };
        assert_eq!(
            limits(r#"{"model":"m","messages":[1],"max_tokens":64}"#),
            Some(64)
        );
        assert_eq!(
            limits(r#"{"model":"m","messages":[1],"max_tokens":64,"max_completion_tokens":100}"#),
            Some(100)
        );
        assert_eq!(
            limits(r#"{"model":"m","messages":[1],"max_tokens":"64"}"#),
            None
        );
        assert_eq!(
            limits(r#"{"model":"m","messages":[1],"max_tokens":-1}"#),
            None
        );
        // A Responses request's limit is `max_output_tokens`.
        let responses = Index::of_dialect(
            br#"{"model":"m","input":"hi","max_output_tokens":77}"#,
            Operation::Chat,
            Dialect::Responses,
        )
        .unwrap();
        assert_eq!(responses.max_tokens, Some(77));
        // Its images sit in `input`, its JSON mode in `text.format`.
        let rbody = br#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"https://x"}]}],"text":{"format":{"type":"json_schema","name":"n","schema":{}}}}"#;
        let responses = Index::of_dialect(rbody, Operation::Chat, Dialect::Responses).unwrap();
        let at = responses.features.messages_at.clone().unwrap();
        assert!(rbody[at].starts_with(b"[{\"role\""));
        assert!(responses.features.json_mode);
        let out = index.with_model(body, "up\"stream").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "up\"stream");
        assert_eq!(v["x"]["model"], "inner", "only the top level is rewritten");
        assert_eq!(v["messages"][0]["content"], "hi");
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(text.matches("up\\\"stream").count(), 2);
        let embeddings = Index::of(
            br#"{"model":"m","input":"x","stream":true}"#,
            Operation::Embeddings,
        )
        .unwrap();
        assert!(!embeddings.stream, "stream is a chat parameter");
    }

    #[test]
    fn quote_cuts_long_names() {
        assert_eq!(quote("short"), "short");
        let long = "x".repeat(10_000);
        let q = quote(&long);
        assert!(q.len() < 300 && q.ends_with("(10000 bytes)"), "{q}");
    }
}
