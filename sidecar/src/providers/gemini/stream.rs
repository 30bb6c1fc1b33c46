//! Gemini's SSE stream (one `GenerateContentResponse` per event) decoded into OpenAI chunks.

use serde_json::{Value, json};

use super::{candidate_parts, finish_reason, usage};
use crate::error::DecodeError;
use crate::providers::chat::{delta_chunk, new_id, now_secs, usage_chunk};
use crate::providers::{ChunkDecoder, StreamItem};
use crate::sse::SseParser;

/// Gemini SSE (one `GenerateContentResponse` per event, no end marker: the stream is complete
/// when a candidate carried a `finishReason` and the connection closed) → OpenAI chunks.
#[derive(Debug)]
pub struct StreamDecoder {
    sse: SseParser,
    id: String,
    model: String,
    created: u64,
    started: bool,
    tools: u64,
    finished: bool,
    usage: Option<Value>,
}

impl StreamDecoder {
    /// A decoder for `model`.
    pub fn new(model: &str) -> Self {
        Self {
            sse: SseParser::default(),
            id: new_id("chatcmpl-"),
            model: model.to_string(),
            created: now_secs(),
            started: false,
            tools: 0,
            finished: false,
            usage: None,
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

    fn event(&mut self, value: &Value, out: &mut Vec<StreamItem>) {
        if let Some(error) = value.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("gemini reported an error")
                .to_string();
            out.push(StreamItem::Error { message });
            return;
        }
        if !self.started {
            self.started = true;
            if let Some(id) = value.get("responseId").and_then(Value::as_str) {
                self.id = id.to_string();
            }
            out.push(self.delta(json!({"role": "assistant", "content": ""}), None));
        }
        if let Some(meta) = value.get("usageMetadata") {
            self.usage = Some(usage(meta));
        }
        let (text, calls, finish) = candidate_parts(value);
        if !text.is_empty() {
            out.push(self.delta(json!({"content": text}), None));
        }
        let had_calls = self.tools > 0 || !calls.is_empty();
        for (name, args) in calls {
            let index = self.tools;
            self.tools += 1;
            out.push(self.delta(
                json!({"tool_calls": [{"index": index, "id": format!("call_{index}_{}", new_id("")),
                    "type": "function", "function": {"name": name, "arguments": args.to_string()}}]}),
                None,
            ));
        }
        if let Some(finish) = finish
            && !self.finished
        {
            self.finished = true;
            out.push(self.delta(json!({}), Some(finish_reason(finish, had_calls))));
        }
    }
}

impl ChunkDecoder for StreamDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamItem>) -> Result<(), DecodeError> {
        for event in self.sse.push(bytes)? {
            if event.data.trim().is_empty() {
                continue;
            }
            let value = crate::sse::json_object(&event.data)?;
            self.event(&value, out);
        }
        Ok(())
    }

    fn buffered(&self) -> usize {
        self.sse.buffered()
    }

    fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), DecodeError> {
        if self.sse.has_partial() {
            return Err(DecodeError::CutInEvent);
        }
        if !self.finished {
            return Err(DecodeError::EndedEarly("without a finishReason"));
        }
        if let Some(u) = self.usage.take() {
            out.push(StreamItem::Chunk(usage_chunk(
                &self.id,
                self.created,
                &self.model,
                u,
            )));
        }
        out.push(StreamItem::Done);
        Ok(())
    }
}
