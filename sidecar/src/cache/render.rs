//! Between a dialect's buffered answer and its stream: a stream miss is assembled into the
//! buffered answer it stands for, and a stream hit is rendered from it as the same events a live
//! stream of that dialect has (OpenAI: a role/content chunk per choice, tool-call deltas, the
//! finish chunk, the usage chunk when `stream_options.include_usage` asked for it, `[DONE]`;
//! Anthropic: `message_start`, each content block's start, one delta and stop, `message_delta`
//! with the stop reason and usage, `message_stop`). A hit's usage carries the in-band cost field
//! at 0: it cost nothing.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};

use crate::dialect::Dialect;
use crate::stages::metering::wire::COST_FIELD;
use crate::usage::Usage;

/// The `data` payloads of the complete SSE events in `events`, with their `event:` names.
fn events(raw: &[u8]) -> Vec<(Option<&str>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut name = None;
    let mut data: Option<Vec<u8>> = None;
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if let Some(d) = data.take() {
                out.push((name, d));
            }
            name = None;
            continue;
        }
        if let Some(v) = line.strip_prefix(b"data:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            let d = data.get_or_insert_with(Vec::new);
            if !d.is_empty() {
                d.push(b'\n');
            }
            d.extend_from_slice(v);
        } else if let Some(v) = line.strip_prefix(b"event:") {
            name = std::str::from_utf8(v).ok().map(str::trim);
        }
    }
    out
}

/// A usage object without the gateway's cost field.
fn clean_usage(usage: &Value) -> Value {
    let mut usage = usage.clone();
    if let Some(m) = usage.as_object_mut() {
        m.remove(COST_FIELD);
    }
    usage
}

/// `usage` with the cost field at 0 (a hit costs nothing).
fn free_usage(usage: &Value) -> Value {
    let mut usage = clean_usage(usage);
    if let Some(m) = usage.as_object_mut() {
        m.insert(COST_FIELD.to_string(), json!(0));
    }
    usage
}

fn append(target: &mut Map<String, Value>, key: &str, piece: &str) {
    match target.get_mut(key) {
        Some(Value::String(s)) => s.push_str(piece),
        _ => {
            target.insert(key.to_string(), Value::String(piece.to_string()));
        }
    }
}

/// The buffered answer a complete stream of `dialect`'s events stands for; `None` when the
/// stream is not complete or not understood (it is then not stored). `usage` is what metering
/// read from the stream: an OpenAI client that did not ask for the usage chunk never saw it,
/// and the answer gets it back from there.
pub fn assemble(dialect: Dialect, raw: &[u8], usage: Option<&Usage>) -> Option<Bytes> {
    let body = match dialect {
        Dialect::OpenAi => {
            let mut body = assemble_openai(raw)?;
            if let (Some(m), Some(u)) = (body.as_object_mut(), usage) {
                m.entry("usage").or_insert_with(|| openai_usage(u));
            }
            body
        }
        Dialect::Anthropic => assemble_anthropic(raw)?,
        Dialect::Responses => return None,
    };
    serde_json::to_vec(&body).ok().map(Bytes::from)
}

/// `usage` in OpenAI's shape.
fn openai_usage(u: &Usage) -> Value {
    let mut v = json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    });
    if let Some(m) = v.as_object_mut() {
        if u.cached_tokens() > 0 {
            m.insert(
                "prompt_tokens_details".into(),
                json!({"cached_tokens": u.cached_tokens()}),
            );
        }
        if u.reasoning_tokens() > 0 {
            m.insert(
                "completion_tokens_details".into(),
                json!({"reasoning_tokens": u.reasoning_tokens()}),
            );
        }
    }
    v
}

/// One choice of an OpenAI stream, as its chunks arrive.
#[derive(Default)]
struct Choice {
    index: u64,
    message: Map<String, Value>,
    calls: Vec<Value>,
    finish: Option<Value>,
}

fn assemble_openai(raw: &[u8]) -> Option<Value> {
    let mut head: Option<Map<String, Value>> = None;
    let mut choices: Vec<Choice> = Vec::new();
    let mut usage = None;
    let mut done = false;
    for (_, data) in events(raw) {
        if data == b"[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_slice(&data).ok()?;
        if head.is_none() {
            let mut h = Map::new();
            for k in [
                "id",
                "created",
                "model",
                "system_fingerprint",
                "service_tier",
            ] {
                if let Some(v) = chunk.get(k) {
                    h.insert(k.to_string(), v.clone());
                }
            }
            head = Some(h);
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            usage = Some(clean_usage(u));
        }
        for c in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let at = match choices.iter().position(|x| x.index == index) {
                Some(at) => at,
                None => {
                    choices.push(Choice {
                        index,
                        ..Choice::default()
                    });
                    choices.len() - 1
                }
            };
            let Choice {
                message,
                calls,
                finish,
                ..
            } = &mut choices[at];
            let delta = c.get("delta").unwrap_or(&Value::Null);
            if let Some(role) = delta.get("role").and_then(Value::as_str) {
                message.insert("role".into(), json!(role));
            }
            for key in ["content", "refusal", "reasoning_content"] {
                if let Some(piece) = delta.get(key).and_then(Value::as_str) {
                    append(message, key, piece);
                }
            }
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i =
                    usize::try_from(call.get("index").and_then(Value::as_u64).unwrap_or(0)).ok()?;
                if i > 1024 {
                    return None;
                }
                while calls.len() <= i {
                    calls.push(
                        json!({"type": "function", "function": {"name": "", "arguments": ""}}),
                    );
                }
                let slot = calls[i].as_object_mut()?;
                if let Some(id) = call.get("id") {
                    slot.insert("id".into(), id.clone());
                }
                if let Some(f) = call.get("function") {
                    let sf = slot.get_mut("function")?.as_object_mut()?;
                    for k in ["name", "arguments"] {
                        if let Some(piece) = f.get(k).and_then(Value::as_str) {
                            append(sf, k, piece);
                        }
                    }
                }
            }
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                *finish = Some(f.clone());
            }
        }
    }
    // Complete: `[DONE]` arrived and every choice finished.
    if !done || choices.is_empty() || choices.iter().any(|c| c.finish.is_none()) {
        return None;
    }
    let mut body = head?;
    body.insert("object".into(), json!("chat.completion"));
    choices.sort_by_key(|c| c.index);
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|Choice { index, mut message, calls, finish }| {
            message.entry("role").or_insert(json!("assistant"));
            message.entry("content").or_insert(Value::Null);
            if !calls.is_empty() {
                message.insert("tool_calls".into(), Value::Array(calls));
            }
            json!({"index": index, "message": message, "logprobs": null, "finish_reason": finish})
        })
        .collect();
    body.insert("choices".into(), Value::Array(choices));
    if let Some(u) = usage {
        body.insert("usage".into(), u);
    }
    Some(Value::Object(body))
}

fn assemble_anthropic(raw: &[u8]) -> Option<Value> {
    let mut message: Option<Map<String, Value>> = None;
    let mut blocks: Vec<Map<String, Value>> = Vec::new();
    let mut partial: Vec<String> = Vec::new();
    let mut stopped = false;
    for (_, data) in events(raw) {
        let event: Value = serde_json::from_slice(&data).ok()?;
        match event.get("type").and_then(Value::as_str)? {
            "message_start" => message = Some(event.get("message")?.as_object()?.clone()),
            "content_block_start" => {
                let i = usize::try_from(event.get("index")?.as_u64()?).ok()?;
                if i != blocks.len() {
                    return None;
                }
                blocks.push(event.get("content_block")?.as_object()?.clone());
                partial.push(String::new());
            }
            "content_block_delta" => {
                let i = usize::try_from(event.get("index")?.as_u64()?).ok()?;
                let block = blocks.get_mut(i)?;
                let delta = event.get("delta")?;
                let piece = |k: &str| delta.get(k).and_then(Value::as_str);
                match delta.get("type").and_then(Value::as_str)? {
                    "text_delta" => append(block, "text", piece("text")?),
                    "thinking_delta" => append(block, "thinking", piece("thinking")?),
                    "signature_delta" => append(block, "signature", piece("signature")?),
                    "input_json_delta" => partial.get_mut(i)?.push_str(piece("partial_json")?),
                    // Citations and anything newer: not understood, not stored.
                    _ => return None,
                }
            }
            "content_block_stop" => {
                let i = usize::try_from(event.get("index")?.as_u64()?).ok()?;
                let json = partial.get(i)?;
                if !json.is_empty() {
                    let input: Value = serde_json::from_str(json).ok()?;
                    blocks.get_mut(i)?.insert("input".into(), input);
                }
            }
            "message_delta" => {
                let m = message.as_mut()?;
                if let Some(d) = event.get("delta").and_then(Value::as_object) {
                    for (k, v) in d {
                        m.insert(k.clone(), v.clone());
                    }
                }
                if let Some(u) = event.get("usage").and_then(Value::as_object) {
                    let mu = m
                        .entry("usage")
                        .or_insert_with(|| json!({}))
                        .as_object_mut()?;
                    for (k, v) in u {
                        if k != COST_FIELD && !v.is_null() {
                            mu.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            "message_stop" => stopped = true,
            _ => {}
        }
    }
    let mut m = message.filter(|_| stopped)?;
    m.get("stop_reason").filter(|r| !r.is_null())?;
    m.insert(
        "content".into(),
        Value::Array(blocks.into_iter().map(Value::Object).collect()),
    );
    if let Some(u) = m.get("usage").map(clean_usage) {
        m.insert("usage".into(), u);
    }
    Some(Value::Object(m))
}

fn write_data(out: &mut BytesMut, data: &Value) {
    out.put_slice(b"data: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

fn write_event(out: &mut BytesMut, name: &str, data: &Value) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\n");
    write_data(out, data);
}

/// The events of a stream answering with `body` (the dialect's buffered answer); `None` when
/// it cannot be rendered (the request is then a miss).
pub fn stream(dialect: Dialect, body: &[u8], include_usage: bool) -> Option<Bytes> {
    let body: Value = serde_json::from_slice(body).ok()?;
    let mut out = BytesMut::with_capacity(256 + 2 * body.to_string().len());
    match dialect {
        Dialect::OpenAi => stream_openai(&body, include_usage, &mut out)?,
        Dialect::Anthropic => stream_anthropic(&body, &mut out)?,
        Dialect::Responses => return None,
    }
    Some(out.freeze())
}

fn stream_openai(body: &Value, include_usage: bool, out: &mut BytesMut) -> Option<()> {
    let mut head = Map::new();
    for k in [
        "id",
        "created",
        "model",
        "system_fingerprint",
        "service_tier",
    ] {
        if let Some(v) = body.get(k) {
            head.insert(k.to_string(), v.clone());
        }
    }
    head.insert("object".into(), json!("chat.completion.chunk"));
    let chunk = |choices: Value| {
        let mut c = head.clone();
        c.insert("choices".into(), choices);
        Value::Object(c)
    };
    let choices = body.get("choices")?.as_array()?;
    for c in choices {
        let index = c.get("index").cloned().unwrap_or(json!(0));
        let message = c.get("message")?.as_object()?;
        let mut delta = Map::new();
        delta.insert(
            "role".into(),
            message.get("role").cloned().unwrap_or(json!("assistant")),
        );
        for key in ["content", "refusal", "reasoning_content"] {
            if let Some(v) = message.get(key).filter(|v| v.is_string()) {
                delta.insert(key.to_string(), v.clone());
            }
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    if let Some(m) = call.as_object_mut() {
                        m.insert("index".into(), json!(i));
                    }
                    call
                })
                .collect();
            delta.insert("tool_calls".into(), Value::Array(calls));
        }
        write_data(
            out,
            &chunk(
                json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}]),
            ),
        );
        write_data(
            out,
            &chunk(json!([{"index": index, "delta": {}, "logprobs": null,
                           "finish_reason": c.get("finish_reason").cloned().unwrap_or(json!("stop"))}])),
        );
    }
    if include_usage {
        let usage = body.get("usage").map_or_else(|| json!({}), free_usage);
        let mut last = chunk(json!([]));
        if let Some(m) = last.as_object_mut() {
            m.insert("usage".into(), usage);
        }
        write_data(out, &last);
    }
    out.put_slice(b"data: [DONE]\n\n");
    Some(())
}

fn stream_anthropic(body: &Value, out: &mut BytesMut) -> Option<()> {
    let message = body.as_object()?;
    let usage = message.get("usage").map(clean_usage).unwrap_or(json!({}));
    let mut start = message.clone();
    start.insert("content".into(), json!([]));
    start.insert("stop_reason".into(), Value::Null);
    start.insert("stop_sequence".into(), Value::Null);
    let mut start_usage = usage.clone();
    if let Some(u) = start_usage.as_object_mut() {
        // A live stream reports the output at its end.
        u.insert("output_tokens".into(), json!(0));
    }
    start.insert("usage".into(), start_usage);
    write_event(
        out,
        "message_start",
        &json!({"type": "message_start", "message": start}),
    );
    for (index, block) in message.get("content")?.as_array()?.iter().enumerate() {
        let kind = block.get("type")?.as_str()?;
        let (empty, deltas) = match kind {
            "text" => (
                json!({"type": "text", "text": ""}),
                vec![json!({"type": "text_delta", "text": block.get("text")?})],
            ),
            "tool_use" | "server_tool_use" => {
                let mut empty = block.as_object()?.clone();
                empty.insert("input".into(), json!({}));
                let input = block.get("input").cloned().unwrap_or(json!({}));
                (
                    Value::Object(empty),
                    vec![json!({"type": "input_json_delta", "partial_json": input.to_string()})],
                )
            }
            "thinking" => {
                let mut deltas =
                    vec![json!({"type": "thinking_delta", "thinking": block.get("thinking")?})];
                if let Some(sig) = block.get("signature") {
                    deltas.push(json!({"type": "signature_delta", "signature": sig}));
                }
                (json!({"type": "thinking", "thinking": ""}), deltas)
            }
            // A block a live stream sends whole (redacted thinking and the like).
            _ => (block.clone(), Vec::new()),
        };
        write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": empty}),
        );
        for delta in deltas {
            write_event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            );
        }
        write_event(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }
    write_event(
        out,
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {
                "stop_reason": message.get("stop_reason").cloned().unwrap_or(json!("end_turn")),
                "stop_sequence": message.get("stop_sequence").cloned().unwrap_or(Value::Null),
            },
            "usage": free_usage(&usage),
        }),
    );
    write_event(out, "message_stop", &json!({"type": "message_stop"}));
    Some(())
}

/// Whether `body` is a refusal, filtered, or not an answer at all (never stored).
pub fn refused(dialect: Dialect, body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return true;
    };
    match dialect {
        Dialect::OpenAi => {
            if v.get("object").and_then(Value::as_str) == Some("list") {
                // Embeddings.
                return v.get("data").and_then(Value::as_array).is_none();
            }
            let Some(choices) = v.get("choices").and_then(Value::as_array) else {
                return true;
            };
            choices.is_empty()
                || choices.iter().any(|c| {
                    c.get("finish_reason").and_then(Value::as_str) == Some("content_filter")
                        || c.get("message")
                            .and_then(|m| m.get("refusal"))
                            .is_some_and(|r| r.as_str().is_some_and(|r| !r.is_empty()))
                })
        }
        Dialect::Anthropic => {
            v.get("type").and_then(Value::as_str) != Some("message")
                || v.get("stop_reason").and_then(Value::as_str) == Some("refusal")
        }
        Dialect::Responses => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_openai_stream_assembles_and_renders_back() {
        let raw = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5,\"gatehouse_cost_usd\":0.1}}\n\n",
            "data: [DONE]\n\n",
        );
        let body = assemble(Dialect::OpenAi, raw.as_bytes(), None).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["completion_tokens"], 2);
        assert!(v["usage"].get(COST_FIELD).is_none());
        assert!(!refused(Dialect::OpenAi, &body));

        let s = stream(Dialect::OpenAi, &body, true).unwrap();
        let again = assemble(Dialect::OpenAi, &s, None).unwrap();
        assert_eq!(again, body);
        assert!(String::from_utf8_lossy(&s).contains("\"gatehouse_cost_usd\":0"));
        let without = stream(Dialect::OpenAi, &body, false).unwrap();
        assert!(!String::from_utf8_lossy(&without).contains("usage"));

        // Cut before its end: not stored.
        let cut = &raw[..raw.find("data: [DONE]").unwrap()];
        assert!(assemble(Dialect::OpenAi, cut.as_bytes(), None).is_none());
    }

    #[test]
    fn an_anthropic_stream_assembles_and_renders_back() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "text", "text": "Hi"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 5, "output_tokens": 7},
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let s = stream(Dialect::Anthropic, &bytes, false).unwrap();
        let text = String::from_utf8_lossy(&s);
        assert!(text.starts_with("event: message_start\n"));
        assert!(text.contains("\"gatehouse_cost_usd\":0"));
        let again: Value =
            serde_json::from_slice(&assemble(Dialect::Anthropic, &s, None).unwrap()).unwrap();
        assert_eq!(again, body);
        assert!(refused(
            Dialect::Anthropic,
            br#"{"type":"message","stop_reason":"refusal","content":[]}"#
        ));
    }
}
