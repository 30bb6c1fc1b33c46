//! The OpenAI dialect (Chat Completions, Embeddings), also the gateway's lingua franca: the
//! stream encoder every translated stream uses for OpenAI clients, the relay's check of an OpenAI
//! event, the stream error event, and base64 embeddings.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde::de::Deserializer;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{ChunkEncoder, Data, Event};
use crate::error::{DecodeError, error_body};
use crate::providers::StreamItem;
use crate::usage::Usage;

/// Check one event's data: `[DONE]`, or a JSON object (an error event when it has `error`), and
/// read what metering needs of it in the same pass: its usage, whether it has choices, and (when
/// `measure`) how much answer text it carries.
pub fn inspect(data: &[u8], measure: bool) -> Result<Event, DecodeError> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(default, deserialize_with = "present")]
        usage: Option<Option<Usage>>,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
        #[serde(borrow, default)]
        choices: Option<&'a RawValue>,
    }
    if data.trim_ascii() == b"[DONE]" {
        return Ok(Event::Done);
    }
    match serde_json::from_slice::<Probe<'_>>(data) {
        Ok(probe) if probe.error.is_some() => Ok(Event::Error),
        Ok(probe) => {
            let usage = probe.usage.flatten();
            let choices = probe.choices.map_or("", |c| c.get()).as_bytes();
            Ok(Event::Data(Data {
                usage,
                final_usage: usage.is_some(),
                usage_key: probe.usage.is_some(),
                no_choices: choices
                    .strip_prefix(b"[")
                    .is_none_or(|rest| rest.trim_ascii_start().starts_with(b"]")),
                text_bytes: if measure { text_bytes(choices) } else { 0 },
                ends: false,
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

/// The keys of a chunk's choices whose string values are answer text: content, refusal,
/// reasoning (`reasoning_content`, as DeepSeek and vLLM send it) and tool-call arguments.
const TEXT_KEYS: [&str; 4] = [
    "\"content\":",
    "\"refusal\":",
    "\"reasoning_content\":",
    "\"arguments\":",
];

/// Bytes of answer text in a chunk's `choices` (raw JSON, already validated by the probe):
/// the string values of [`TEXT_KEYS`], found by a search for the quoted key (a quote inside a
/// JSON string is escaped, so a match is a key) rather than a parse, which costs about twice as
/// much per event.
fn text_bytes(choices: &[u8]) -> u64 {
    use std::sync::LazyLock;
    static FINDERS: LazyLock<[memchr::memmem::Finder<'static>; 4]> =
        LazyLock::new(|| TEXT_KEYS.map(memchr::memmem::Finder::new));
    let mut total = 0;
    for finder in FINDERS.iter() {
        let mut from = 0;
        while let Some(at) = finder.find(&choices[from..]) {
            let mut i = from + at + finder.needle().len();
            while choices.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            from = i;
            if choices.get(i) != Some(&b'"') {
                continue;
            }
            let start = i + 1;
            let mut j = start;
            // The closing quote: the first one not escaped.
            while let Some(k) = choices
                .get(j..)
                .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
            {
                if choices[j + k] == b'\\' {
                    j += k + 2;
                    continue;
                }
                total += (j + k - start) as u64;
                from = j + k + 1;
                break;
            }
            if from < start {
                break;
            }
        }
    }
    total
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

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(data: &str) -> Data {
        match inspect(data.as_bytes(), true) {
            Ok(Event::Data(d)) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inspect_measures_the_answer_text_of_every_kind() {
        let d = measured(
            r#"{"choices":[{"index":0,"delta":{"content":"he said \"hi\"","refusal":null,
                "reasoning_content":"hmm","tool_calls":[{"function":{"name":"f","arguments":"{\"a\":1}"}}]},
                "content_filter_results":{"hate":{"filtered":false}}}],"usage":null}"#,
        );
        // `he said \"hi\"` (14 as written), `hmm` (3), `{\"a\":1}` (9).
        assert_eq!(d.text_bytes, 14 + 3 + 9);
        assert!(d.usage_key && d.usage.is_none() && !d.no_choices && !d.final_usage);
        let d = measured(r#"{"choices":[ ],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#);
        assert!(d.no_choices && d.final_usage && d.usage_key);
        assert_eq!(d.text_bytes, 0);
        let d = measured(r#"{"id":"x"}"#);
        assert!(d.no_choices && !d.usage_key);
        // Without `measure`, no text is counted.
        match inspect(br#"{"choices":[{"delta":{"content":"abc"}}]}"#, false) {
            Ok(Event::Data(d)) => assert_eq!(d.text_bytes, 0),
            other => panic!("{other:?}"),
        }
    }
}
