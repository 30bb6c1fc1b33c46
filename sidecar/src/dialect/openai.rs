//! The OpenAI dialect (Chat Completions, Embeddings), also the gateway's lingua franca: the
//! stream encoder every translated stream uses for OpenAI clients, the relay's check of an OpenAI
//! event, the stream error event, and base64 embeddings.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ChunkEncoder, Event};
use crate::error::{DecodeError, error_body};
use crate::providers::StreamItem;
use crate::usage::Usage;

/// Check one event's data: `[DONE]`, or a JSON object (an error event when it has `error`).
pub fn inspect(data: &[u8]) -> Result<Event, DecodeError> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        usage: Option<Usage>,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
    }
    if data.trim_ascii() == b"[DONE]" {
        return Ok(Event::Done);
    }
    match serde_json::from_slice::<Probe>(data) {
        Ok(probe) if probe.error.is_some() => Ok(Event::Error),
        Ok(probe) => Ok(Event::Data(probe.usage)),
        Err(_) => Err(DecodeError::EventNotObject),
    }
}

/// `data: {"error": {...}}`, the event that ends a broken stream.
pub fn error_event(message: &str, code: &str) -> Bytes {
    let body = error_body(message, "api_error", code);
    let mut event = Vec::with_capacity(body.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&body);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
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

/// Writes chunks as OpenAI SSE; the usage-only chunk only when the client asked for it.
#[derive(Debug)]
pub struct StreamEncoder {
    include_usage: bool,
}

impl StreamEncoder {
    /// An encoder; `include_usage` mirrors `stream_options.include_usage`.
    pub fn new(include_usage: bool) -> Self {
        Self { include_usage }
    }
}

impl ChunkEncoder for StreamEncoder {
    fn encode(&mut self, item: StreamItem, out: &mut BytesMut) {
        match item {
            StreamItem::Chunk(mut chunk) => {
                let usage_only = chunk
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty)
                    && chunk.get("usage").is_some();
                if !self.include_usage {
                    if usage_only {
                        return;
                    }
                    if let Some(obj) = chunk.as_object_mut() {
                        obj.remove("usage");
                    }
                }
                out.put_slice(b"data: ");
                out.put_slice(chunk.to_string().as_bytes());
                out.put_slice(b"\n\n");
            }
            StreamItem::Done => out.put_slice(b"data: [DONE]\n\n"),
            StreamItem::Error { message } => {
                out.put_slice(b"data: ");
                out.put_slice(&error_body(&message, "api_error", "upstream_error"));
                out.put_slice(b"\n\n");
            }
        }
    }
}
