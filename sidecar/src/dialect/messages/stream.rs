//! Anthropic Messages streams: the encoder that writes OpenAI chunks as Anthropic SSE, the check
//! the relay runs on each Anthropic event, and the error event that ends a broken stream.

use bytes::{BufMut, Bytes, BytesMut};
use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{stop_reason, usage};
use crate::dialect::openai::string_bytes;
use crate::dialect::{ChunkEncoder, Data, Event};
use crate::error::DecodeError;
use crate::providers::StreamItem;
use crate::providers::chat::new_id;
use crate::usage::Usage;

/// Anthropic events: `message_stop` ends a complete stream, `error` is an error event, usage comes in
/// `message_start.message.usage` (prompt) and `message_delta.usage` (completion).
pub fn inspect(payload: &[u8]) -> Result<Event, DecodeError> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default)]
        message: Option<MessageProbe>,
        #[serde(default)]
        usage: Option<gatehouse_crds::usage::AnthropicUsage>,
        #[serde(borrow, default)]
        delta: Option<DeltaProbe<'a>>,
    }
    #[derive(Deserialize)]
    struct MessageProbe {
        #[serde(default)]
        usage: Option<gatehouse_crds::usage::AnthropicUsage>,
    }
    #[derive(Deserialize)]
    struct DeltaProbe<'a> {
        #[serde(borrow, default)]
        text: Option<&'a RawValue>,
        #[serde(borrow, default)]
        partial_json: Option<&'a RawValue>,
        #[serde(borrow, default)]
        thinking: Option<&'a RawValue>,
    }
    let probe: Probe<'_> =
        serde_json::from_slice(payload).map_err(|_| DecodeError::EventUntyped)?;
    let usage = probe.usage.or(probe.message.and_then(|m| m.usage));
    Ok(match &*probe.kind {
        "message_stop" => Event::Done,
        "error" => Event::Error,
        kind => Event::Data(Data {
            usage: usage.map(|u| {
                // An event without `input_tokens` says nothing about the prompt: 0 here, and the
                // merge keeps the prompt an earlier event reported.
                let mut usage = Usage::from_anthropic(&u);
                if !u.reports_prompt() {
                    usage.prompt_tokens = 0;
                    usage.prompt_tokens_details = None;
                }
                usage
            }),
            final_usage: kind == "message_delta" && usage.is_some(),
            text_bytes: probe.delta.map_or(0, |d| {
                string_bytes(d.text) + string_bytes(d.partial_json) + string_bytes(d.thinking)
            }),
            ..Data::default()
        }),
    })
}

/// The SSE error event that ends a broken stream.
pub fn error_event(message: &str) -> Bytes {
    let mut out = BytesMut::new();
    write_event(
        &mut out,
        "error",
        &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
    );
    out.freeze()
}

fn write_event(out: &mut BytesMut, name: &str, data: &Value) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

/// What block is open in the Anthropic stream being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Tool(u64),
}

/// OpenAI chunks → Anthropic SSE (`message_start`, `content_block_start/delta/stop`,
/// `message_delta`, `message_stop`).
#[derive(Debug)]
pub struct StreamEncoder {
    started: bool,
    open: Open,
    next_index: u64,
    stop_reason: Option<&'static str>,
    usage: Option<Value>,
    finished: bool,
}

impl Default for StreamEncoder {
    fn default() -> Self {
        Self {
            started: false,
            open: Open::None,
            next_index: 0,
            stop_reason: None,
            usage: None,
            finished: false,
        }
    }
}

impl StreamEncoder {
    fn start(&mut self, chunk: &Value, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let id = chunk
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|id| {
                if id.starts_with("msg_") {
                    id.to_string()
                } else {
                    format!("msg_{id}")
                }
            })
            .unwrap_or_else(|| new_id("msg_"));
        write_event(
            out,
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": chunk.get("model").cloned().unwrap_or(json!("")),
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            }),
        );
    }

    fn close(&mut self, out: &mut BytesMut) {
        if self.open != Open::None {
            write_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.next_index - 1}),
            );
            self.open = Open::None;
        }
    }

    fn open(&mut self, open: Open, block: Value, out: &mut BytesMut) {
        self.close(out);
        write_event(
            out,
            "content_block_start",
            &json!({
                "type": "content_block_start",
                "index": self.next_index,
                "content_block": block,
            }),
        );
        self.next_index += 1;
        self.open = open;
    }

    fn delta(&self, delta: Value, out: &mut BytesMut) {
        write_event(
            out,
            "content_block_delta",
            &json!({
                "type": "content_block_delta",
                "index": self.next_index.saturating_sub(1),
                "delta": delta,
            }),
        );
    }

    fn chunk(&mut self, chunk: &Value, out: &mut BytesMut) {
        self.start(chunk, out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta.get("content").and_then(Value::as_str)
            && !text.is_empty()
        {
            if self.open != Open::Text {
                self.open(Open::Text, json!({"type": "text", "text": ""}), out);
            }
            self.delta(json!({"type": "text_delta", "text": text}), out);
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let f = call.get("function").unwrap_or(&Value::Null);
                if self.open != Open::Tool(index) {
                    let id = call
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| new_id("toolu_"));
                    self.open(
                        Open::Tool(index),
                        json!({"type": "tool_use", "id": id, "name": f.get("name").cloned().unwrap_or(json!("")), "input": {}}),
                        out,
                    );
                }
                if let Some(args) = f.get("arguments").and_then(Value::as_str)
                    && !args.is_empty()
                {
                    self.delta(
                        json!({"type": "input_json_delta", "partial_json": args}),
                        out,
                    );
                }
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(stop_reason(Some(finish)));
        }
    }

    fn done(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.start(&Value::Null, out);
        self.close(out);
        let u = usage(self.usage.as_ref());
        write_event(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": {
                    "output_tokens": u.get("output_tokens").cloned().unwrap_or(json!(0)),
                    "input_tokens": u.get("input_tokens").cloned().unwrap_or(json!(0)),
                    "cache_read_input_tokens": u.get("cache_read_input_tokens").cloned().unwrap_or(json!(0)),
                    "cache_creation_input_tokens": u.get("cache_creation_input_tokens").cloned().unwrap_or(json!(0)),
                },
            }),
        );
        write_event(out, "message_stop", &json!({"type": "message_stop"}));
    }
}

impl ChunkEncoder for StreamEncoder {
    fn encode(&mut self, item: StreamItem, out: &mut BytesMut) {
        match item {
            StreamItem::Chunk(chunk) => self.chunk(&chunk, out),
            StreamItem::Done => self.done(out),
            StreamItem::Error { message } => out.put_slice(&error_event(&message)),
        }
    }
}
