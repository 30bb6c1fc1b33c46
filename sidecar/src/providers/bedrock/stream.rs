//! Bedrock's ConverseStream (AWS event stream frames) decoded into OpenAI chunks.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use bytes::BytesMut;
use serde_json::{Value, json};

use super::{finish_reason, usage};
use crate::error::DecodeError;
use crate::providers::chat::{delta_chunk, new_id, now_secs, usage_chunk};
use crate::providers::{ChunkDecoder, StreamItem, structured};

/// ConverseStream (AWS event stream frames, CRC-checked by `aws-smithy-eventstream`; events
/// `messageStart`, `contentBlockStart`, `contentBlockDelta`, `contentBlockStop`, `messageStop`,
/// `metadata`, or an exception) → OpenAI chunks.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: BytesMut,
    frames: MessageFrameDecoder,
    id: String,
    model: String,
    created: u64,
    /// Tool index by content block index.
    tools: Vec<(u64, u64)>,
    /// The content block of the structured answer's forced tool call (its input is the text).
    format_block: Option<u64>,
    stopped: bool,
    done: bool,
}

impl StreamDecoder {
    /// A decoder for `model`.
    pub fn new(model: &str) -> Self {
        Self {
            buf: BytesMut::new(),
            frames: MessageFrameDecoder::new(),
            id: new_id("chatcmpl-"),
            model: model.to_string(),
            created: now_secs(),
            tools: Vec::new(),
            format_block: None,
            stopped: false,
            done: false,
        }
    }

    fn delta(&self, delta: Value, finish: Option<&str>) -> StreamItem {
        StreamItem::Chunk(delta_chunk(
            &self.id,
            self.created,
            &self.model,
            delta,
            finish,
        ))
    }

    fn event(&mut self, name: &str, data: &Value, out: &mut Vec<StreamItem>) {
        let index = data
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match name {
            "messageStart" => {
                out.push(self.delta(json!({"role": "assistant", "content": ""}), None));
            }
            "contentBlockStart" => {
                let tool = data.get("start").and_then(|s| s.get("toolUse"));
                if tool.and_then(|t| t.get("name")).and_then(Value::as_str)
                    == Some(structured::FORMAT_TOOL)
                {
                    self.format_block = Some(index);
                } else if let Some(tool) = tool {
                    let t = self.tools.len() as u64;
                    self.tools.push((index, t));
                    out.push(self.delta(
                        json!({"tool_calls": [{"index": t,
                            "id": tool.get("toolUseId").cloned().unwrap_or(json!("")),
                            "type": "function",
                            "function": {"name": tool.get("name").cloned().unwrap_or(json!("")), "arguments": ""}}]}),
                        None,
                    ));
                }
            }
            "contentBlockDelta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    out.push(self.delta(json!({"content": text}), None));
                } else if self.format_block == Some(index)
                    && let Some(input) = delta.pointer("/toolUse/input").and_then(Value::as_str)
                {
                    out.push(self.delta(json!({"content": input}), None));
                } else if let Some(input) = delta
                    .get("toolUse")
                    .and_then(|t| t.get("input"))
                    .and_then(Value::as_str)
                    && let Some((_, t)) = self.tools.iter().find(|(b, _)| *b == index)
                {
                    out.push(self.delta(
                        json!({"tool_calls": [{"index": t, "function": {"arguments": input}}]}),
                        None,
                    ));
                }
            }
            "messageStop" => {
                self.stopped = true;
                let reason = data.get("stopReason").and_then(Value::as_str);
                let finish = match finish_reason(reason) {
                    // Only the structured answer was "called": a plain stop.
                    "tool_calls" if self.tools.is_empty() => "stop",
                    other => other,
                };
                out.push(self.delta(json!({}), Some(finish)));
            }
            "metadata" => {
                if let Some(u) = data.get("usage") {
                    out.push(StreamItem::Chunk(usage_chunk(
                        &self.id,
                        self.created,
                        &self.model,
                        usage(u),
                    )));
                }
                if self.stopped && !self.done {
                    self.done = true;
                    out.push(StreamItem::Done);
                }
            }
            // contentBlockStop and event types added later carry nothing to translate.
            _ => {}
        }
    }
}

impl ChunkDecoder for StreamDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamItem>) -> Result<(), DecodeError> {
        self.buf.extend_from_slice(bytes);
        loop {
            let message = match self.frames.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Complete(m)) => m,
                Ok(DecodedFrame::Incomplete) => return Ok(()),
                Err(e) => return Err(DecodeError::Frame(e)),
            };
            let header = |name: &str| {
                message
                    .headers()
                    .iter()
                    .find(|h| h.name().as_str() == name)
                    .and_then(|h| h.value().as_string().ok())
                    .map(|s| s.as_str().to_string())
            };
            let payload: Value = serde_json::from_slice(message.payload())
                .ok()
                .filter(Value::is_object)
                .ok_or(DecodeError::PayloadNotObject)?;
            match header(":message-type").as_deref() {
                Some("event") | None => {
                    let name = header(":event-type").unwrap_or_default();
                    self.event(&name, &payload, out);
                }
                Some(_) => {
                    let kind = header(":exception-type")
                        .or_else(|| header(":error-code"))
                        .unwrap_or_else(|| "exception".to_string());
                    let message = payload
                        .get("message")
                        .or_else(|| payload.get("Message"))
                        .and_then(Value::as_str)
                        .unwrap_or("bedrock reported an error");
                    out.push(StreamItem::Error {
                        message: format!("{kind}: {message}"),
                    });
                }
            }
        }
    }

    fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), DecodeError> {
        if !self.buf.is_empty() {
            return Err(DecodeError::CutInFrame);
        }
        if !self.stopped {
            return Err(DecodeError::EndedEarly("before messageStop"));
        }
        if !self.done {
            self.done = true;
            out.push(StreamItem::Done);
        }
        Ok(())
    }
}
