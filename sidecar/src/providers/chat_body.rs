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
mod tests;
