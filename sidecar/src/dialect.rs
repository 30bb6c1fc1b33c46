//! Client dialects: the APIs apps speak to the sidecar. OpenAI Chat Completions / Embeddings
//! ([`openai`]) is also the gateway's lingua franca; Anthropic Messages ([`messages`]) is
//! translated into it on the way in and back out of it on the way out, unless the target is
//! Anthropic itself; so is OpenAI Responses ([`responses`]), unless the target is OpenAI or Azure
//! OpenAI.
//!
//! Everything that depends on the client's dialect goes through [`Dialect`]'s methods: error
//! bodies and stream error events, the stream encoder, the checks the relay runs on each event,
//! the usage of a native answer. No other module matches on it.

pub mod messages;
pub mod openai;
pub mod responses;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde_json::{Map, Value};

use crate::error::{DecodeError, ProxyError, TranslateError};
use crate::providers::StreamItem;
use crate::usage::Usage;

/// Which API the client spoke, and so which shape answers and errors take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI Chat Completions / Embeddings.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// OpenAI Responses (`/v1/responses`).
    Responses,
}

/// Which operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Chat completion (OpenAI) or message (Anthropic).
    Chat,
    /// Embeddings.
    Embeddings,
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
    /// Whether the client asked for base64 embeddings.
    pub fn base64_embeddings(&self) -> bool {
        self.openai.get("encoding_format").and_then(Value::as_str) == Some("base64")
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
}

/// What the relay found in one complete event of a stream in the client's dialect.
#[derive(Debug)]
pub enum Event {
    /// Comment or empty event (keep-alive).
    Empty,
    /// The end marker of a complete answer (`[DONE]`, `message_stop`).
    Done,
    /// A data event, with what metering reads of it.
    Data(Data),
    /// An in-band error event from the upstream, relayed as-is.
    Error,
}

/// What metering reads of one data event, on the relay's one pass over it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Data {
    /// The usage it reports, if any.
    pub usage: Option<Usage>,
    /// Whether that usage is the provider's final report (OpenAI: any usage object, sent once at
    /// the end; Anthropic: `message_delta`).
    pub final_usage: bool,
    /// OpenAI: the chunk has a `usage` key (`null` included).
    pub usage_key: bool,
    /// OpenAI: the chunk's `choices` is empty (the usage-only chunk, Azure's prompt-filter chunk).
    pub no_choices: bool,
    /// Bytes of answer text it carries (content, reasoning, tool-call arguments; JSON-escaped),
    /// for an estimate of the output when the final usage never comes.
    pub text_bytes: u64,
    /// The event ends a complete answer and carries data too (Responses' `response.completed`).
    pub ends: bool,
}

/// Writes OpenAI chunks in the client's dialect.
pub trait ChunkEncoder: Send + Sync {
    /// Append the wire form of `item` to `out`.
    fn encode(&mut self, item: StreamItem, out: &mut BytesMut);
}

impl Dialect {
    /// The request in OpenAI shape, with the warnings of translating it. An Anthropic client's
    /// own tree is dropped at once: a target that speaks Anthropic gets the client's bytes, never
    /// this tree (`request::Request::outgoing`).
    pub fn inbound(
        self,
        op: Operation,
        map: Map<String, Value>,
        stream: bool,
    ) -> Result<Inbound, TranslateError> {
        let (openai, warnings) = match self {
            Self::OpenAi => (map, Vec::new()),
            Self::Anthropic => messages::to_openai(&map)?,
            Self::Responses => responses::to_chat(&map)?,
        };
        Ok(Inbound {
            dialect: self,
            op,
            openai,
            native: None,
            stream,
            warnings,
            anthropic_beta: None,
        })
    }

    /// The request's bytes in OpenAI shape (an Anthropic body translated message by message, no
    /// tree; its `model` set to `model`), with the warnings of translating it.
    pub fn openai_body(
        self,
        body: Bytes,
        model: &str,
    ) -> Result<(Bytes, Vec<String>), TranslateError> {
        match self {
            Self::OpenAi => Ok((body, Vec::new())),
            Self::Anthropic => messages::to_openai_body(&body, model),
            Self::Responses => responses::to_chat_body(&body, model),
        }
    }

    /// The body of a gateway error.
    pub fn error_body(self, e: &ProxyError) -> Bytes {
        match self {
            Self::OpenAi | Self::Responses => e.body(),
            Self::Anthropic => messages::error_body(e.status(), &e.to_string()),
        }
    }

    /// The body of a provider's refusal that was not already in this dialect's shape.
    pub fn refusal_body(self, status: StatusCode, message: &str) -> Bytes {
        match self {
            Self::OpenAi | Self::Responses => {
                crate::error::error_body(message, "invalid_request_error", "upstream_refused")
            }
            Self::Anthropic => messages::error_body(status, message),
        }
    }

    /// Whether `body` is an error body of this dialect (a native provider's refusal that passes
    /// through as it is).
    pub fn is_error_body(self, body: &Value) -> bool {
        match self {
            Self::OpenAi | Self::Responses => body.get("error").is_some_and(Value::is_object),
            Self::Anthropic => body.get("type").and_then(Value::as_str) == Some("error"),
        }
    }

    /// The SSE error event that ends a broken stream.
    pub fn error_event(self, message: &str, code: &str) -> Bytes {
        match self {
            Self::OpenAi => openai::error_event(message, code),
            Self::Anthropic => messages::error_event(message),
            Self::Responses => responses::error_event(message, code),
        }
    }

    /// The encoder of translated streams for a client of this dialect.
    /// `include_usage`: an OpenAI client's `stream_options.include_usage`.
    pub fn encoder(self, include_usage: bool) -> Box<dyn ChunkEncoder> {
        match self {
            Self::OpenAi => Box::new(openai::StreamEncoder::new(include_usage)),
            Self::Anthropic => Box::new(messages::StreamEncoder::default()),
            Self::Responses => Box::new(responses::StreamEncoder::default()),
        }
    }

    /// Check one event's data (`None`: the event has none) as the relay forwards it; with
    /// `measure`, also count its answer text (metering's estimate of a cut stream).
    pub fn inspect(self, data: Option<&[u8]>, measure: bool) -> Result<Event, DecodeError> {
        let Some(data) = data else {
            return Ok(Event::Empty);
        };
        match self {
            Self::OpenAi => openai::inspect(data, measure),
            Self::Anthropic => messages::inspect(data),
            Self::Responses => responses::inspect(data),
        }
    }

    /// The usage of an answer in this dialect's own shape (a native provider's body).
    pub fn usage(self, body: &[u8]) -> Option<Usage> {
        match self {
            Self::OpenAi => crate::usage::of_body(body),
            Self::Anthropic => crate::usage::of_anthropic_body(body),
            Self::Responses => responses::usage_of_body(body),
        }
    }

    /// An OpenAI answer (translated from a provider) in this dialect; `base64`: the client asked
    /// for base64 embeddings.
    pub fn answer(self, op: Operation, base64: bool, mut openai: Value) -> Value {
        match self {
            Self::OpenAi => {
                if op == Operation::Embeddings && base64 {
                    openai::base64_embeddings(&mut openai);
                }
                openai
            }
            Self::Anthropic => messages::response(&openai),
            Self::Responses => responses::response(&openai),
        }
    }
}
