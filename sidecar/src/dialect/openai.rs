//! The OpenAI dialect (Chat Completions, Embeddings), also the gateway's lingua franca: the
//! stream encoder every translated stream uses for OpenAI clients, the relay's check of an OpenAI
//! event, the stream error event, and base64 embeddings.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{ChunkEncoder, Data, Event};
use crate::error::{DecodeError, error_body};
use crate::providers::StreamItem;
use crate::usage::Usage;

/// Check one event's data: `[DONE]`, or a JSON object (an error event when it has `error`), and
/// read what metering needs of it (usage, whether it has choices, how much text) in the same pass.
pub fn inspect(data: &[u8]) -> Result<Event, DecodeError> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "present")]
        usage: Option<Option<Usage>>,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        choices: Option<Choices>,
    }
    if data.trim_ascii() == b"[DONE]" {
        return Ok(Event::Done);
    }
    match serde_json::from_slice::<Probe>(data) {
        Ok(probe) if probe.error.is_some() => Ok(Event::Error),
        Ok(probe) => {
            let usage = probe.usage.flatten();
            let choices = probe.choices.unwrap_or_default();
            Ok(Event::Data(Data {
                usage,
                final_usage: usage.is_some(),
                usage_key: probe.usage.is_some(),
                no_choices: choices.count == 0,
                text_bytes: choices.text_bytes,
            }))
        }
        Err(_) => Err(DecodeError::EventNotObject),
    }
}

/// `Some(value)` for a key that is present, `null` included (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Bytes of a JSON string as written (escapes included), 0 for anything else.
pub(crate) fn string_bytes(raw: Option<&RawValue>) -> u64 {
    raw.map_or(0, |r| {
        let s = r.get();
        if s.starts_with('"') {
            s.len().saturating_sub(2) as u64
        } else {
            0
        }
    })
}

/// A chunk's `choices`, counted and measured as they are read, never collected.
#[derive(Debug, Default)]
struct Choices {
    count: usize,
    text_bytes: u64,
}

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Choices;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Choices, E> {
                Ok(Choices::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
                let mut out = Choices::default();
                while let Some(choice) = seq.next_element::<Choice<'de>>()? {
                    out.count += 1;
                    out.text_bytes += choice.delta.map_or(0, |d| d.text_bytes());
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refusal: Option<&'a RawValue>,
    #[serde(default)]
    tool_calls: Option<ToolCalls>,
}

impl Delta<'_> {
    fn text_bytes(&self) -> u64 {
        string_bytes(self.content)
            + string_bytes(self.reasoning_content)
            + string_bytes(self.refusal)
            + self.tool_calls.as_ref().map_or(0, |t| t.0)
    }
}

/// Bytes of the `function.arguments` of a delta's tool calls.
struct ToolCalls(u64);

impl<'de> Deserialize<'de> for ToolCalls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Call<'a> {
            #[serde(borrow, default)]
            function: Option<Function<'a>>,
        }
        #[derive(Deserialize)]
        struct Function<'a> {
            #[serde(borrow, default)]
            arguments: Option<&'a RawValue>,
            #[serde(borrow, default)]
            name: Option<&'a RawValue>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ToolCalls;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of tool calls")
            }
            fn visit_unit<E: de::Error>(self) -> Result<ToolCalls, E> {
                Ok(ToolCalls(0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ToolCalls, A::Error> {
                let mut bytes = 0;
                while let Some(call) = seq.next_element::<Call<'de>>()? {
                    if let Some(f) = call.function {
                        bytes += string_bytes(f.arguments) + string_bytes(f.name);
                    }
                }
                Ok(ToolCalls(bytes))
            }
        }
        d.deserialize_any(V)
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
