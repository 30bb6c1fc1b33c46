//! OpenAI and OpenAI-compatible servers (vLLM, Ollama, llama.cpp, TGI): the body passes through with
//! only `model` rewritten. Also the OpenAI stream codec used when a client of another dialect is
//! served by an OpenAI-wire provider, and the encoder every translated stream uses for OpenAI clients.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

use super::{ChunkDecoder, ChunkEncoder, Dialect, Operation, Outgoing, SseParser, StreamItem};
use crate::error::{ProxyError, error_body};
use crate::state::Provider;

/// The request for an OpenAI-wire provider: the client's body, `model` rewritten.
pub fn outgoing(
    provider: &Provider,
    model: &str,
    req: &Map<String, Value>,
    op: Operation,
    _dialect: Dialect,
) -> Result<Outgoing, ProxyError> {
    let uri = match op {
        Operation::Chat => provider.chat_url.clone(),
        Operation::Embeddings => provider.embeddings_url.clone(),
    };
    Ok(Outgoing {
        uri,
        body: encode_with_model(req, model)?,
        more: Vec::new(),
        warnings: Vec::new(),
    })
}

/// `req` as JSON with `model` set to `model`.
pub(crate) fn encode_with_model(
    req: &Map<String, Value>,
    model: &str,
) -> Result<Bytes, ProxyError> {
    use serde::ser::{SerializeMap, Serializer};
    // Written entry by entry rather than from a modified clone: a big request is not copied as a
    // tree. `model` keeps its sorted place, as if it had been inserted.
    let encode = || -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut out);
        let mut map = ser.serialize_map(None)?;
        let mut model_written = false;
        for (key, value) in req {
            if !model_written && key.as_str() >= "model" {
                map.serialize_entry("model", model)?;
                model_written = true;
            }
            if key != "model" {
                map.serialize_entry(key, value)?;
            }
        }
        if !model_written {
            map.serialize_entry("model", model)?;
        }
        map.end()?;
        Ok(out)
    };
    encode()
        .map(Bytes::from)
        .map_err(|e| ProxyError::InvalidRequest(format!("failed to encode request: {e}")))
}

/// Parses an OpenAI SSE stream into chunks.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    sse: SseParser,
}

impl ChunkDecoder for StreamDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamItem>) -> Result<(), String> {
        for event in self.sse.push(bytes)? {
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                out.push(StreamItem::Done);
                continue;
            }
            let value = super::event_object(data)?;
            if let Some(error) = value.get("error") {
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the upstream reported an error")
                    .to_string();
                out.push(StreamItem::Error { message });
                continue;
            }
            if carries_nothing(&value) {
                continue;
            }
            out.push(StreamItem::Chunk(value));
        }
        Ok(())
    }

    fn buffered(&self) -> usize {
        self.sse.buffered()
    }

    fn finish(&mut self, _out: &mut Vec<StreamItem>) -> Result<(), String> {
        if self.sse.has_partial() {
            return Err("the upstream stream ended inside an event".to_string());
        }
        Ok(())
    }
}

/// A chunk with no choices and no usage, like the prompt-filter chunk Azure opens its streams with.
fn carries_nothing(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && chunk.get("usage").is_none_or(Value::is_null)
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
