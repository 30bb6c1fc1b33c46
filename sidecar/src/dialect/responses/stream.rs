//! Responses API streams: the encoder that writes OpenAI chat chunks as Responses events
//! (`response.created` … `response.completed`, each with its `sequence_number`), and the check the
//! relay runs on each Responses event (native or translated).

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{
    ResponsesUsage, envelope, error_event, function_call_item, message_item, output_text,
    reasoning_item, response_id, status, usage_json, write_event,
};
use crate::dialect::openai::string_bytes;
use crate::dialect::{ChunkEncoder, Data, Event};
use crate::error::DecodeError;
use crate::providers::StreamItem;
use crate::providers::chat::{new_id, now_secs};

/// Responses events: `response.completed` and `response.incomplete` end a complete stream and
/// carry the usage (in their `response`); `error` and `response.failed` are error events; the
/// text of every `*.delta` event is counted for the estimate of a cut stream.
pub fn inspect(payload: &[u8]) -> Result<Event, DecodeError> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default)]
        response: Option<ResponseProbe>,
        #[serde(borrow, default)]
        delta: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct ResponseProbe {
        #[serde(default)]
        usage: Option<ResponsesUsage>,
    }
    let probe: Probe<'_> =
        serde_json::from_slice(payload).map_err(|_| DecodeError::EventUntyped)?;
    Ok(match &*probe.kind {
        "error" | "response.failed" => Event::Error,
        kind => {
            let ends = matches!(kind, "response.completed" | "response.incomplete");
            let usage = probe
                .response
                .and_then(|r| r.usage)
                .filter(|_| ends)
                .map(|u| u.usage());
            Event::Data(Data {
                final_usage: usage.is_some(),
                usage,
                ends,
                text_bytes: string_bytes(probe.delta),
                ..Data::default()
            })
        }
    })
}

#[derive(Debug)]
enum Kind {
    Message,
    Reasoning,
    Call { call_id: String, name: String },
}

/// One output item of the Response being written.
#[derive(Debug)]
struct Item {
    id: String,
    kind: Kind,
    /// Text, reasoning text or arguments so far.
    text: String,
    done: bool,
}

/// OpenAI chunks → Responses events.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    seq: u64,
    started: bool,
    finished: bool,
    id: String,
    created: u64,
    model: Value,
    items: Vec<Item>,
    /// The open message or reasoning item (closed when anything else starts).
    open: Option<usize>,
    /// Chat tool-call index → item; calls stay open until the end (parallel calls may
    /// interleave their arguments).
    calls: Vec<(u64, usize)>,
    finish: Option<String>,
    usage: Option<Value>,
}

impl StreamEncoder {
    fn emit(&mut self, out: &mut BytesMut, kind: &str, mut data: Value) {
        if let Some(obj) = data.as_object_mut() {
            obj.insert("type".into(), json!(kind));
            obj.insert("sequence_number".into(), json!(self.seq));
        }
        self.seq += 1;
        write_event(out, kind, &data);
    }

    fn response(&self, status: &str, incomplete: Value, usage: Value) -> Value {
        let output = self.items.iter().map(Item::finished).collect();
        envelope(
            &self.id,
            self.created,
            &self.model,
            status,
            incomplete,
            output,
            usage,
        )
    }

    fn start(&mut self, chunk: &Value, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = response_id(chunk.get("id").and_then(Value::as_str));
        self.created = chunk
            .get("created")
            .and_then(Value::as_u64)
            .unwrap_or_else(now_secs);
        self.model = chunk.get("model").cloned().unwrap_or(json!(""));
        let response = self.response("in_progress", Value::Null, Value::Null);
        self.emit(out, "response.created", json!({"response": response}));
        let response = self.response("in_progress", Value::Null, Value::Null);
        self.emit(out, "response.in_progress", json!({"response": response}));
    }

    /// Close the open message or reasoning item.
    fn close_open(&mut self, out: &mut BytesMut) {
        let Some(at) = self.open.take() else { return };
        let (id, text) = (self.items[at].id.clone(), self.items[at].text.clone());
        let index = at as u64;
        match self.items[at].kind {
            Kind::Message => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "text": text, "logprobs": []}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "part": output_text(&text)}),
                );
            }
            Kind::Reasoning => self.emit(
                out,
                "response.reasoning_text.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
            ),
            Kind::Call { .. } => {}
        }
        self.finish_item(at, out);
    }

    fn finish_item(&mut self, at: usize, out: &mut BytesMut) {
        self.items[at].done = true;
        let item = self.items[at].finished();
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": at, "item": item}),
        );
    }

    /// Open a new item (closing the open message or reasoning first); its index.
    fn open_item(&mut self, kind: Kind, out: &mut BytesMut) -> usize {
        self.close_open(out);
        let prefix = match kind {
            Kind::Message => "msg_",
            Kind::Reasoning => "rs_",
            Kind::Call { .. } => "fc_",
        };
        let item = Item {
            id: new_id(prefix),
            kind,
            text: String::new(),
            done: false,
        };
        let at = self.items.len();
        let added = item.in_progress();
        let id = item.id.clone();
        self.items.push(item);
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": at, "item": added}),
        );
        if matches!(self.items[at].kind, Kind::Message) {
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": at, "content_index": 0,
                       "part": output_text("")}),
            );
        }
        at
    }

    fn text(&mut self, text: &str, reasoning: bool, out: &mut BytesMut) {
        let open_kind = self.open.map(|at| &self.items[at].kind);
        let at = match (open_kind, reasoning) {
            (Some(Kind::Message), false) | (Some(Kind::Reasoning), true) => self.open,
            _ => None,
        };
        let at = at.unwrap_or_else(|| {
            let kind = if reasoning {
                Kind::Reasoning
            } else {
                Kind::Message
            };
            let at = self.open_item(kind, out);
            self.open = Some(at);
            at
        });
        self.items[at].text.push_str(text);
        let id = self.items[at].id.clone();
        let (kind, extra) = if reasoning {
            ("response.reasoning_text.delta", Value::Null)
        } else {
            ("response.output_text.delta", json!([]))
        };
        let mut data =
            json!({"item_id": id, "output_index": at, "content_index": 0, "delta": text});
        if let (false, Some(obj)) = (extra.is_null(), data.as_object_mut()) {
            obj.insert("logprobs".into(), extra);
        }
        self.emit(out, kind, data);
    }

    fn tool_call(&mut self, call: &Value, out: &mut BytesMut) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = call.get("function").unwrap_or(&Value::Null);
        let at = match self.calls.iter().find(|(i, _)| *i == index) {
            Some((_, at)) => *at,
            None => {
                let call_id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| new_id("call_"));
                let name = f
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let at = self.open_item(Kind::Call { call_id, name }, out);
                self.calls.push((index, at));
                at
            }
        };
        if let Some(args) = f
            .get("arguments")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            self.items[at].text.push_str(args);
            let id = self.items[at].id.clone();
            self.emit(
                out,
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": at, "delta": args}),
            );
        }
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
        for (key, reasoning) in [("reasoning_content", true), ("content", false)] {
            if let Some(text) = delta
                .get(key)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                self.text(text, reasoning, out);
            }
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.tool_call(call, out);
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(finish.to_string());
        }
    }

    fn done(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.start(&Value::Null, out);
        self.close_open(out);
        for (_, at) in std::mem::take(&mut self.calls) {
            let (id, args) = (self.items[at].id.clone(), self.items[at].text.clone());
            let name = match &self.items[at].kind {
                Kind::Call { name, .. } => name.clone(),
                _ => String::new(),
            };
            self.emit(
                out,
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": at, "arguments": args, "name": name}),
            );
            self.finish_item(at, out);
        }
        let (status, incomplete) = status(self.finish.as_deref());
        let usage = usage_json(self.usage.as_ref());
        let response = self.response(status, incomplete, usage);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, kind, json!({"response": response}));
    }
}

impl Item {
    fn in_progress(&self) -> Value {
        match &self.kind {
            Kind::Message => message_item(&self.id, "in_progress", Vec::new()),
            Kind::Reasoning => reasoning_item(&self.id, None),
            Kind::Call { call_id, name } => {
                function_call_item(&self.id, call_id, name, "", "in_progress")
            }
        }
    }

    fn finished(&self) -> Value {
        let status = if self.done {
            "completed"
        } else {
            "in_progress"
        };
        match &self.kind {
            Kind::Message => message_item(&self.id, status, vec![output_text(&self.text)]),
            Kind::Reasoning => reasoning_item(&self.id, Some(&self.text)),
            Kind::Call { call_id, name } => {
                function_call_item(&self.id, call_id, name, &self.text, status)
            }
        }
    }
}

impl ChunkEncoder for StreamEncoder {
    fn encode(&mut self, item: StreamItem, out: &mut BytesMut) {
        match item {
            StreamItem::Chunk(chunk) => self.chunk(&chunk, out),
            StreamItem::Done => self.done(out),
            StreamItem::Error { message } => {
                out.put_slice(&error_event(&message, "upstream_error"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(items: Vec<StreamItem>) -> Vec<(String, Value)> {
        let mut enc = StreamEncoder::default();
        let mut out = BytesMut::new();
        for item in items {
            enc.encode(item, &mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(name.strip_prefix("event: ").unwrap(), data["type"]);
                (data["type"].as_str().unwrap().to_string(), data)
            })
            .collect()
    }

    fn chunk(delta: Value, finish: Option<&str>) -> StreamItem {
        StreamItem::Chunk(json!({"id": "chatcmpl-1", "model": "m", "created": 1,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
    }

    #[test]
    fn text_then_parallel_calls_make_a_complete_event_sequence() {
        let evs = events(vec![
            chunk(json!({"role": "assistant", "content": "He"}), None),
            chunk(json!({"content": "llo"}), None),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "a", "arguments": "{\"x\""}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "c1", "function": {"name": "b", "arguments": "{}"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
                Some("tool_calls"),
            ),
            StreamItem::Chunk(
                json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
            ),
            StreamItem::Done,
        ]);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (_, e)) in evs.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64);
        }
        let done = &evs.last().unwrap().1["response"];
        assert_eq!(done["id"], "resp_1");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["arguments"], "{\"x\":1}");
        assert_eq!(done["output"][1]["call_id"], "c0");
        assert_eq!(done["output"][2]["name"], "b");
        assert_eq!(done["usage"]["total_tokens"], 7);
        // The relay reads the end and the usage back from the last event.
        let last = serde_json::to_vec(&evs.last().unwrap().1).unwrap();
        match inspect(&last).unwrap() {
            Event::Data(d) => {
                assert!(d.ends && d.final_usage);
                assert_eq!(d.usage.unwrap().completion_tokens, 4);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cut_answer_is_incomplete_and_errors_are_error_events() {
        let evs = events(vec![
            chunk(json!({"content": "ab"}), Some("length")),
            StreamItem::Done,
        ]);
        let (name, last) = evs.last().unwrap();
        assert_eq!(name, "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        let evs = events(vec![StreamItem::Error {
            message: "boom".into(),
        }]);
        assert_eq!(evs[0].0, "error");
        assert!(matches!(
            inspect(serde_json::to_vec(&evs[0].1).unwrap().as_slice()),
            Ok(Event::Error)
        ));
        assert!(matches!(
            inspect(br#"{"type":"response.failed"}"#),
            Ok(Event::Error)
        ));
        match inspect(br#"{"type":"response.output_text.delta","delta":"abcd"}"#) {
            Ok(Event::Data(d)) => assert_eq!((d.text_bytes, d.ends), (4, false)),
            other => panic!("{other:?}"),
        }
    }
}
