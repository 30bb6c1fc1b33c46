//! Anthropic's SSE stream (`message_start`, `content_block_*`, `message_delta`, `message_stop`,
//! `ping`, `error`) decoded into OpenAI chunks.

use serde_json::{Value, json};

use super::{finish_reason, usage};
use crate::error::DecodeError;
use crate::providers::chat::{delta_chunk, now_secs, usage_chunk};
use crate::providers::{ChunkDecoder, StreamItem, structured};
use crate::sse::SseParser;

/// Anthropic SSE (`message_start`, `content_block_*`, `message_delta`, `message_stop`, `ping`,
/// `error`) → OpenAI chunks.
#[derive(Debug)]
pub struct StreamDecoder {
    sse: SseParser,
    id: String,
    model: String,
    created: u64,
    /// Tool index by content block index.
    tools: Vec<(u64, u64)>,
    /// The content block of the structured answer's forced tool call (its input is the text).
    format_block: Option<u64>,
    usage: Value,
    done: bool,
}

impl StreamDecoder {
    /// A decoder; `model` until `message_start` names it.
    pub fn new(model: &str) -> Self {
        Self {
            sse: SseParser::default(),
            id: String::new(),
            model: model.to_string(),
            created: now_secs(),
            tools: Vec::new(),
            format_block: None,
            usage: json!({}),
            done: false,
        }
    }

    fn tool_index(&self, block: u64) -> Option<u64> {
        self.tools
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| *t)
    }

    fn event(&mut self, data: &Value, out: &mut Vec<StreamItem>) {
        let kind = data.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    self.id = id.to_string();
                }
                if let Some(m) = message.get("model").and_then(Value::as_str) {
                    self.model = m.to_string();
                }
                if let Some(u) = message.get("usage") {
                    merge(&mut self.usage, u);
                }
                out.push(StreamItem::Chunk(
                    self.delta(json!({"role": "assistant", "content": ""}), None),
                ));
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                if block.get("type").and_then(Value::as_str) == Some("tool_use")
                    && block.get("name").and_then(Value::as_str) == Some(structured::FORMAT_TOOL)
                {
                    self.format_block = Some(index);
                } else if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let tool = self.tools.len() as u64;
                    self.tools.push((index, tool));
                    out.push(StreamItem::Chunk(self.delta(
                        json!({"tool_calls": [{
                            "index": tool,
                            "id": block.get("id").cloned().unwrap_or(json!("")),
                            "type": "function",
                            "function": {"name": block.get("name").cloned().unwrap_or(json!("")), "arguments": ""},
                        }]}),
                        None,
                    )));
                } else if let Some(text) = block.get("text").and_then(Value::as_str)
                    && !text.is_empty()
                {
                    out.push(StreamItem::Chunk(
                        self.delta(json!({"content": text}), None),
                    ));
                }
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.get("text").cloned().unwrap_or(json!(""));
                        out.push(StreamItem::Chunk(
                            self.delta(json!({"content": text}), None),
                        ));
                    }
                    Some("input_json_delta") if self.format_block == Some(index) => {
                        let partial = delta.get("partial_json").cloned().unwrap_or(json!(""));
                        out.push(StreamItem::Chunk(
                            self.delta(json!({"content": partial}), None),
                        ));
                    }
                    Some("input_json_delta") => {
                        if let Some(tool) = self.tool_index(index) {
                            let partial = delta.get("partial_json").cloned().unwrap_or(json!(""));
                            out.push(StreamItem::Chunk(self.delta(
                                json!({"tool_calls": [{"index": tool, "function": {"arguments": partial}}]}),
                                None,
                            )));
                        }
                    }
                    // thinking_delta, signature_delta, citations_delta: no OpenAI equivalent.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = data.get("usage") {
                    merge(&mut self.usage, u);
                }
                let stop = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                if stop.is_some() {
                    let finish = match finish_reason(stop) {
                        // Only the structured answer was "called": a plain stop.
                        "tool_calls" if self.tools.is_empty() => "stop",
                        other => other,
                    };
                    out.push(StreamItem::Chunk(self.delta(json!({}), Some(finish))));
                }
            }
            "message_stop" => {
                out.push(StreamItem::Chunk(usage_chunk(
                    &self.id,
                    self.created,
                    &self.model,
                    usage(&self.usage),
                )));
                out.push(StreamItem::Done);
                self.done = true;
            }
            "error" => {
                let message = data
                    .get("error")
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("anthropic reported an error")
                    .to_string();
                out.push(StreamItem::Error { message });
            }
            // ping, content_block_stop and event types added later carry nothing to translate.
            _ => {}
        }
    }

    fn delta(&self, delta: Value, finish: Option<&str>) -> Value {
        delta_chunk(&self.id, self.created, &self.model, delta, finish)
    }
}

/// Copy the non-null numbers of `from` into `into` (usage arrives in message_start and message_delta).
fn merge(into: &mut Value, from: &Value) {
    if let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in from {
            if v.is_number() {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

impl ChunkDecoder for StreamDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamItem>) -> Result<(), DecodeError> {
        for event in self.sse.push(bytes)? {
            if event.data.trim().is_empty() {
                continue;
            }
            let data = crate::sse::json_object(&event.data)?;
            self.event(&data, out);
        }
        Ok(())
    }

    fn buffered(&self) -> usize {
        self.sse.buffered()
    }

    fn finish(&mut self, _out: &mut Vec<StreamItem>) -> Result<(), DecodeError> {
        if !self.done {
            return Err(DecodeError::EndedEarly("before message_stop"));
        }
        Ok(())
    }
}
