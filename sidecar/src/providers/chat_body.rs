//! An OpenAI chat body read one message at a time, and a provider's body written one turn at a
//! time: translating a request of a million messages to Anthropic, Gemini or Bedrock never holds
//! either side as a JSON tree (docs/architecture.md, "Reading and parsing the body").
//!
//! Each adapter keeps one translation per message (`translate_message`) and one for the rest of
//! the request (`parameters`); its tree function (`request`, golden-tested) and its bytes function
//! (`request_body`, used on the request path) are both made of them, so they cannot drift. The
//! bytes written are the ones `serde_json` writes for the tree: every block is serialized by
//! `serde_json`, and every object is written in the order its `Map` iterates.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::TranslateError;

/// Room left in front of the written turns for the keys of the body that sort before them, so
/// that the finished body is the buffer the turns were written to: a body of a million turns is
/// not copied to put a few bytes in front of it.
const HEADROOM: usize = 4096;

/// What one OpenAI message becomes for a provider that takes alternating turns.
#[derive(Debug)]
pub(crate) enum Translated {
    /// A block of the system prompt.
    System(Value),
    /// Blocks of a turn of this role (merged into the previous turn when it has the same role).
    Turn(&'static str, Vec<Value>),
    /// Nothing (an empty system message).
    Skip,
}

fn invalid(e: serde_json::Error) -> TranslateError {
    TranslateError::NotJson(e)
}

fn encoding(e: serde_json::Error) -> TranslateError {
    TranslateError::Encode(e)
}

/// The top level of `body` as a map without `messages` (the small part: sampling parameters,
/// tools…), and `messages` as raw JSON. Keys repeat as in any JSON parser: the last one wins.
pub(crate) fn split(body: &[u8]) -> Result<(Map<String, Value>, &RawValue), TranslateError> {
    let (rest, messages) = serde_json::from_slice::<Top<'_>>(body).map_err(invalid)?.0;
    let messages = messages.ok_or_else(|| {
        TranslateError::Invalid("missing required parameter: 'messages'".to_string())
    })?;
    Ok((rest, messages))
}

struct Top<'a>((Map<String, Value>, Option<&'a RawValue>));

impl<'de> serde::Deserialize<'de> for Top<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TopVisitor).map(Top)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = (Map<String, Value>, Option<&'de RawValue>);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rest = Map::new();
        let mut messages = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "messages" {
                messages = Some(map.next_value()?);
            } else {
                let value: Value = map.next_value()?;
                rest.insert(key, value);
            }
        }
        Ok((rest, messages))
    }
}

/// Call `f` with each element of the `messages` array in turn; only one is ever parsed at a time.
/// The first error `f` returns stops the walk and is returned.
pub(crate) fn for_each_message(
    messages: &RawValue,
    mut f: impl FnMut(Value) -> Result<(), TranslateError>,
) -> Result<(), TranslateError> {
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_str(messages.get());
    let walked = de::Deserializer::deserialize_seq(
        &mut de,
        Each {
            f: &mut f,
            failed: &mut failed,
        },
    );
    if let Some(e) = failed {
        return Err(e);
    }
    walked.map_err(|_| TranslateError::Invalid("'messages' must be an array".to_string()))
}

struct Each<'a, F> {
    f: &'a mut F,
    failed: &'a mut Option<TranslateError>,
}

impl<'de, F: FnMut(Value) -> Result<(), TranslateError>> Visitor<'de> for Each<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(message) = seq.next_element::<Value>()? {
            if let Err(e) = (self.f)(message) {
                *self.failed = Some(e);
                return Err(de::Error::custom("stopped at a message"));
            }
        }
        Ok(())
    }
}

/// The turns of a provider body written as they come, with the system prompt's blocks aside:
/// the bytes path's [`super::chat::Turns`].
#[derive(Debug)]
pub(crate) struct TurnWriter {
    /// The key of a turn's blocks (`content`, `parts`).
    key: &'static str,
    /// [`HEADROOM`] bytes, `[`, then the turns written so far; the open turn's blocks last.
    out: Vec<u8>,
    /// The open turn's role, and the bytes that close it.
    open: Option<(String, Vec<u8>)>,
    /// Whether a turn was written.
    any: bool,
    /// A turn's bytes before and after its blocks, by role (there are two or three roles).
    shapes: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// The system prompt's blocks, comma-separated.
    system: Vec<u8>,
}

impl TurnWriter {
    /// A writer of turns whose blocks sit under `key`; `size` is the client's body size, a good
    /// guess at the output's (untouched capacity costs no memory).
    pub(crate) fn new(key: &'static str, size: usize) -> Self {
        let mut out = Vec::with_capacity(HEADROOM.saturating_add(size).saturating_add(2));
        out.resize(HEADROOM, b' ');
        out.push(b'[');
        Self {
            key,
            out,
            open: None,
            any: false,
            shapes: Vec::new(),
            system: Vec::new(),
        }
    }

    /// Write what one message became.
    pub(crate) fn take(&mut self, translated: Translated) -> Result<(), TranslateError> {
        match translated {
            Translated::System(block) => {
                if !self.system.is_empty() {
                    self.system.push(b',');
                }
                serde_json::to_writer(&mut self.system, &block).map_err(encoding)
            }
            Translated::Turn(role, blocks) => self.push(role, &blocks),
            Translated::Skip => Ok(()),
        }
    }

    /// [`super::chat::Turns::push`], written: `blocks` join the open turn when it has `role`, else
    /// they open a new turn; no blocks, no turn.
    fn push(&mut self, role: &str, blocks: &[Value]) -> Result<(), TranslateError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let same = self.open.as_ref().is_some_and(|(open, _)| open == role);
        if !same {
            self.close();
            let (before, after) = self.shape(role)?;
            if self.any {
                self.out.push(b',');
            }
            self.any = true;
            self.out.extend_from_slice(&before);
            self.out.push(b'[');
            self.open = Some((role.to_string(), after));
        }
        for (i, block) in blocks.iter().enumerate() {
            if same || i > 0 {
                self.out.push(b',');
            }
            serde_json::to_writer(&mut self.out, block).map_err(encoding)?;
        }
        Ok(())
    }

    fn close(&mut self) {
        if let Some((_, after)) = self.open.take() {
            self.out.push(b']');
            self.out.extend_from_slice(&after);
        }
    }

    /// The bytes of a turn of `role` around its blocks, as `serde_json` writes the turn.
    fn shape(&mut self, role: &str) -> Result<(Vec<u8>, Vec<u8>), TranslateError> {
        if let Some((_, before, after)) = self.shapes.iter().find(|(r, _, _)| r == role) {
            return Ok((before.clone(), after.clone()));
        }
        let mut turn = Map::new();
        turn.insert("role".into(), Value::String(role.to_string()));
        turn.insert(self.key.into(), Value::Null);
        let (before, after) = around(&turn, self.key, &[])?;
        self.shapes
            .push((role.to_string(), before.clone(), after.clone()));
        Ok((before, after))
    }

    /// Whether any system block was written.
    pub(crate) fn has_system(&self) -> bool {
        !self.system.is_empty()
    }

    /// The finished body: `body` (an object, with placeholders at `messages_key` and, when there
    /// is a system prompt, `system_key`) written with the turns at `messages_key` and the system
    /// blocks at `system_key`, as an array or, with `system_wrap`, as `{system_wrap: [blocks]}`.
    pub(crate) fn finish(
        mut self,
        body: &Value,
        messages_key: &str,
        system_key: &str,
        system_wrap: Option<&str>,
    ) -> Result<Bytes, TranslateError> {
        let Some(body) = body.as_object() else {
            return Err(TranslateError::Internal(
                "failed to encode request: the body is not an object".to_string(),
            ));
        };
        self.close();
        self.out.push(b']');
        let mut system = Vec::with_capacity(self.system.len().saturating_add(32));
        if let Some(wrap) = system_wrap {
            system.push(b'{');
            serde_json::to_writer(&mut system, wrap).map_err(encoding)?;
            system.push(b':');
        }
        system.push(b'[');
        system.extend_from_slice(&self.system);
        system.push(b']');
        if system_wrap.is_some() {
            system.push(b'}');
        }
        let raws: &[(&str, &[u8])] = &[(system_key, &system)];
        let (before, after) = around(body, messages_key, raws)?;
        let mut out = self.out;
        if let Some(start) = HEADROOM.checked_sub(before.len()) {
            out[start..HEADROOM].copy_from_slice(&before);
            out.extend_from_slice(&after);
            return Ok(Bytes::from(out).slice(start..));
        }
        let turns = out.get(HEADROOM..).unwrap_or_default();
        let mut whole = Vec::with_capacity(before.len() + turns.len() + after.len());
        whole.extend_from_slice(&before);
        whole.extend_from_slice(turns);
        whole.extend_from_slice(&after);
        Ok(Bytes::from(whole))
    }
}

/// `map` as `serde_json` writes it, cut where the value of `at` goes: the bytes before it and the
/// bytes after it. The values of the keys in `raws` are written as the raw JSON given there.
fn around(
    map: &Map<String, Value>,
    at: &str,
    raws: &[(&str, &[u8])],
) -> Result<(Vec<u8>, Vec<u8>), TranslateError> {
    let mut before = vec![b'{'];
    let mut after = Vec::new();
    let mut found = false;
    for (i, (key, value)) in map.iter().enumerate() {
        let out = if found { &mut after } else { &mut before };
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, key).map_err(encoding)?;
        out.push(b':');
        if key == at {
            found = true;
        } else if let Some((_, raw)) = raws.iter().find(|(k, _)| k == key) {
            out.extend_from_slice(raw);
        } else {
            serde_json::to_writer(&mut *out, value).map_err(encoding)?;
        }
    }
    after.push(b'}');
    if !found {
        return Err(TranslateError::Internal(format!(
            "failed to encode request: no '{at}' in the body"
        )));
    }
    Ok((before, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn turns_are_written_as_serde_json_writes_them() {
        let mut writer = TurnWriter::new("content", 0);
        let mut turns = super::super::chat::Turns::default();
        let steps: Vec<Translated> = vec![
            Translated::System(json!({"text": "be brief"})),
            Translated::Turn("user", vec![json!({"text": "a"})]),
            Translated::Turn("user", vec![json!({"text": "b"}), json!({"text": "c"})]),
            Translated::Turn("assistant", vec![]),
            Translated::Skip,
            Translated::Turn("user", vec![json!({"text": "d"})]),
            Translated::Turn("assistant", vec![json!({"text": "e\"\u{1}"})]),
            Translated::System(json!({"text": "two"})),
        ];
        let mut system = Vec::new();
        for step in steps {
            match &step {
                Translated::System(b) => system.push(b.clone()),
                Translated::Turn(role, blocks) => turns.push(role, blocks.clone()),
                Translated::Skip => {}
            }
            writer.take(step).unwrap();
        }
        let tree = json!({
            "a": 1, "messages": turns.into_json("content"), "system": system, "z": [true]
        });
        let mut with_placeholders = tree.clone();
        with_placeholders["messages"] = Value::Null;
        with_placeholders["system"] = Value::Null;
        let written = writer
            .finish(&with_placeholders, "messages", "system", None)
            .unwrap();
        assert_eq!(written, serde_json::to_vec(&tree).unwrap());
    }

    #[test]
    fn a_prefix_longer_than_the_headroom_is_still_written_in_front() {
        let mut writer = TurnWriter::new("parts", 0);
        writer
            .take(Translated::Turn("user", vec![json!({"text": "x"})]))
            .unwrap();
        writer
            .take(Translated::System(json!({"text": "s"})))
            .unwrap();
        let long = "k".repeat(HEADROOM * 2);
        let body = json!({"a": long, "contents": null, "systemInstruction": null});
        let written = writer
            .finish(&body, "contents", "systemInstruction", Some("parts"))
            .unwrap();
        let expected = json!({
            "a": long,
            "contents": [{"role": "user", "parts": [{"text": "x"}]}],
            "systemInstruction": {"parts": [{"text": "s"}]},
        });
        assert_eq!(written, serde_json::to_vec(&expected).unwrap());
    }

    #[test]
    fn messages_are_walked_one_by_one_and_the_first_error_stops_the_walk() {
        let body =
            br#"{"model":"m","messages":[{"role":"user"},2,{"role":"x"}],"n":1,"messages2":0}"#;
        let (rest, messages) = split(body).unwrap();
        assert_eq!(rest.keys().collect::<Vec<_>>(), ["messages2", "model", "n"]);
        let mut seen = Vec::new();
        let err = for_each_message(messages, |m| {
            seen.push(m.clone());
            if m.is_number() {
                return Err(TranslateError::Invalid("a number".to_string()));
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "a number");
        assert_eq!(seen, [json!({"role": "user"}), json!(2)]);
        let (_, not_array) = split(br#"{"messages":{}}"#).unwrap();
        assert!(for_each_message(not_array, |_| Ok(())).is_err());
        assert!(split(br#"{"model":"m"}"#).is_err());
    }

    type Translation = Result<(Vec<u8>, Vec<String>), String>;

    const KINDS: [&str; 3] = ["anthropic", "gemini", "bedrock"];

    /// The tree path: the whole request parsed, translated to a tree, the tree serialized.
    fn by_tree(kind: &str, body: &[u8]) -> Translation {
        let req: Map<String, Value> = serde_json::from_slice(body).unwrap();
        let stream = req.get("stream") == Some(&Value::Bool(true));
        let mut warnings = Vec::new();
        let value = match kind {
            "anthropic" => super::super::anthropic::request("up", &req, stream, &mut warnings),
            "gemini" => super::super::gemini::request(&req, &mut warnings),
            _ => super::super::bedrock::request(&req, &mut warnings),
        };
        value
            .map(|v| (serde_json::to_vec(&v).unwrap(), warnings))
            .map_err(|e| e.to_string())
    }

    /// The bytes path.
    fn by_bytes(kind: &str, body: &[u8]) -> Translation {
        let stream = serde_json::from_slice::<Value>(body).unwrap()["stream"] == json!(true);
        let mut warnings = Vec::new();
        let bytes = match kind {
            "anthropic" => super::super::anthropic::request_body("up", body, stream, &mut warnings),
            "gemini" => super::super::gemini::request_body(body, &mut warnings),
            _ => super::super::bedrock::request_body(body, &mut warnings),
        };
        bytes
            .map(|b| (b.to_vec(), warnings))
            .map_err(|e| e.to_string())
    }

    fn assert_same(body: &[u8]) -> [Translation; 3] {
        KINDS.map(|kind| {
            let tree = by_tree(kind, body);
            let bytes = by_bytes(kind, body);
            assert_eq!(
                bytes.as_ref().map(|(b, w)| (String::from_utf8_lossy(b), w)),
                tree.as_ref().map(|(b, w)| (String::from_utf8_lossy(b), w)),
                "{kind}: {}",
                String::from_utf8_lossy(body)
            );
            bytes
        })
    }

    const PNG: &str = "data:image/png;base64,iVBORw0KGgo=";

    #[test]
    fn the_bytes_path_writes_what_the_tree_path_writes() {
        let conversation = json!({
            "model": "alias",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "and \"exact\""}]},
                {"role": "system", "content": ""},
                {"role": "user", "content": "hi \u{1F600} \u{0007}"},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "image_url", "image_url": PNG},
                ]},
                {"role": "assistant", "content": null},
                {"role": "user", "content": "merged into the user turn above"},
                {"role": "assistant", "content": "calling", "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "get", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "put", "arguments": ""}},
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\":21}"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "ok"}]},
                {"role": "user", "content": "thanks"},
                {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
                {"role": "assistant", "tool_calls": [
                    {"id": "c3", "function": {"name": "get", "arguments": {"city": "Oslo"}}},
                ]},
                {"role": "tool", "tool_call_id": "c3", "content": "plain text"},
            ],
            "max_completion_tokens": 300,
            "max_tokens": 5,
            "temperature": 1.5,
            "top_p": 0.5,
            "stop": ["END", "STOP"],
            "seed": 7,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "tools": [
                {"type": "function", "function": {"name": "get", "description": "d",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "put"}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "get"}},
            "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
            "user": "u-1",
            "logit_bias": {"1": 2},
            "unknown_param": [1, 2],
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let mut bodies = vec![
            serde_json::to_vec(&conversation).unwrap(),
            // Only a system prompt: no turn at all.
            br#"{"model":"m","messages":[{"role":"system","content":"s"}]}"#.to_vec(),
            // Alternating roles, nothing merged; no system prompt; defaults everywhere.
            br#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]}"#.to_vec(),
            // Escapes in keys and values, repeated keys (the last one wins), whitespace.
            br#" { "model" : "m" , "messages" : [ {"role":"user","content":"first"} ],
                "temp\u0065rature": 0.3, "tool_choice": "required", "tool_choice": "none",
                "tools": [{"type":"function","function":{"name":"t"}}],
                "messages": [ { "role" : "us\u0065r" , "content" : "\ud83d\ude00 \/ \n" } ] } "#
                .to_vec(),
            // Every tool_choice.
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"t"}}],"tool_choice":"auto","response_format":{"type":"json_object"}}"#.to_vec(),
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"t"}}],"tool_choice":"required","n":1,"stop":"one"}"#.to_vec(),
        ];
        // Keys before the messages that do not fit the headroom (Bedrock's inferenceConfig).
        let stops: Vec<String> = (0..400).map(|i| format!("stop sequence {i:04}")).collect();
        bodies.push(
            serde_json::to_vec(&json!({
                "model": "m", "max_tokens": 9, "stop": stops,
                "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}],
            }))
            .unwrap(),
        );
        for body in &bodies {
            for result in assert_same(body) {
                result.unwrap();
            }
        }
    }

    #[test]
    fn the_bytes_path_refuses_what_the_tree_path_refuses_with_the_same_error() {
        let message_errors = [
            r#"[{"content":"no role"}]"#,
            r#"[{"role":"user","content":"x"},{"role":"critic","content":"x"}]"#,
            r#"[{"role":"tool","content":"no id"}]"#,
            r#"[{"role":"tool","tool_call_id":"nobody","content":"x"}]"#,
            r#"[{"role":"user","content":7}]"#,
            r#"[{"role":"user","content":[{"type":"audio"}]}]"#,
            r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]"#,
            r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x"}}]}]"#,
            r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/tiff;base64,AA=="}}]}]"#,
            r#"[{"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"[1]"}}]}]"#,
            r#"[7]"#,
        ];
        let parameter_errors = [
            r#""n":3"#,
            r#""stop":7"#,
            r#""tools":{}"#,
            r#""tools":[{"type":"retrieval"}]"#,
            r#""tools":[{"type":"function","function":{"name":"t"}}],"tool_choice":"sometimes""#,
            r#""n":2,"stop":7"#,
        ];
        let mut refused = 0;
        for messages in message_errors {
            for parameters in parameter_errors.iter().chain(&[r#""top_p":1"#]) {
                let body = format!(r#"{{"model":"m","messages":{messages},{parameters}}}"#);
                refused += assert_same(body.as_bytes())
                    .iter()
                    .filter(|r| r.is_err())
                    .count();
            }
        }
        for parameters in parameter_errors {
            let body = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],{parameters}}}"#
            );
            refused += assert_same(body.as_bytes())
                .iter()
                .filter(|r| r.is_err())
                .count();
        }
        // Every case is refused by at least one provider (and the same way by both paths).
        assert!(
            refused >= message_errors.len() * 7 + parameter_errors.len(),
            "{refused}"
        );
    }

    /// An Anthropic client's request on the tree path (the whole body translated to an OpenAI
    /// tree, then by the adapter) and on the bytes path (`to_openai_body`, then the adapter's
    /// bytes path): the same body, the same warnings in the same order, the same refusals.
    #[test]
    fn an_anthropic_client_is_translated_the_same_through_openai_bytes() {
        use crate::dialect::messages;
        let bodies = [
            json!({
                "model": "alias", "max_tokens": 100, "stream": true,
                "system": [{"type": "text", "text": "be brief"}],
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "see"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "calling"},
                        {"type": "tool_use", "id": "t1", "name": "get", "input": {"city": "Paris"}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "21C"},
                        {"type": "text", "text": "and now?"},
                    ]},
                ],
                "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "temperature": 0.5, "top_k": 3, "metadata": {"user_id": "u"},
                "stop_sequences": ["END"],
            }),
            json!({"model": "m", "max_tokens": 5, "system": "s",
                   "messages": [{"role": "user", "content": "x"}]}),
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "data": "d"}}]}]}),
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            let bytes = serde_json::to_vec(&body).unwrap();
            for kind in KINDS {
                let tree = messages::to_openai(body.as_object().unwrap())
                    .map_err(|e| e.to_string())
                    .and_then(|(openai, mut warnings)| {
                        let (out, mut more) = by_tree(kind, &serde_json::to_vec(&openai).unwrap())?;
                        warnings.append(&mut more);
                        Ok((out, warnings))
                    });
                let written = messages::to_openai_body(&bytes, "up")
                    .map_err(|e| e.to_string())
                    .and_then(|(openai, mut warnings)| {
                        let (out, mut more) = by_bytes(kind, &openai)?;
                        warnings.append(&mut more);
                        Ok((out, warnings))
                    });
                assert_eq!(
                    written
                        .as_ref()
                        .map(|(b, w)| (String::from_utf8_lossy(b), w)),
                    tree.as_ref().map(|(b, w)| (String::from_utf8_lossy(b), w)),
                    "{kind}: {body}"
                );
                // The first two are served, the last two refused.
                assert_eq!(written.is_ok(), i < 2, "{kind}: {body}: {written:?}");
            }
        }
    }
}
