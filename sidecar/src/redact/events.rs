//! Redaction of stream events in the client's dialect: the text each event carries goes through
//! its channel's hold-back ([`super::stream`]) and comes back rewritten; an event whose text moved
//! or changed is written again, every other byte of it kept.
//!
//! Channels and where they end (the rest of their text then goes out, in an event of the same
//! shape inserted before the one that ends them):
//!
//! | dialect | channel | text field | ends at |
//! | --- | --- | --- | --- |
//! | OpenAI | a choice's content, reasoning, refusal | `delta.content`, `delta.reasoning_content`, `delta.refusal` | the choice's `finish_reason`, `[DONE]` |
//! | OpenAI | a tool call's arguments | `delta.tool_calls[].function.arguments` | the same |
//! | Anthropic | a content block | `delta.text`, `delta.partial_json`, `delta.thinking` | its `content_block_stop`, `message_stop` |
//! | Responses | an output item's content part (text, refusal), reasoning text or summary part, a function call's arguments | `delta` of `response.{output_text,refusal,reasoning_text,reasoning_summary_text,function_call_arguments}.delta` | the matching `*.done`, its `content_part.done` / `output_item.done`, the end of the response |
//!
//! A Responses stream repeats each text whole (`*.done`, `content_part.done`, `output_item.done`,
//! `response.completed`): those events are rewritten whole with the same placeholders, counting
//! nothing again ([`Session::rewrite_json_repeated`]). An event inserted into a Responses stream
//! takes the `sequence_number` of the event it goes before, and every later event's number moves
//! up by one, so the numbering stays gapless.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::stream::Channel;
use super::{Escape, Session};
use crate::dialect::Dialect;
use crate::sse::{self, EventEnds};

/// Which text of an event a channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Content,
    Reasoning,
    Refusal,
    /// A tool call's arguments (JSON text), by the tool call's index.
    Arguments(u64),
    /// Anthropic `text_delta`.
    Text,
    /// Anthropic `input_json_delta` (JSON text).
    PartialJson,
    /// Anthropic `thinking_delta`.
    Thinking,
    /// Responses `output_text`, by content index.
    OutputText(u64),
    /// Responses `refusal`, by content index.
    RefusalText(u64),
    /// Responses reasoning text, by content index.
    ReasoningText(u64),
    /// Responses reasoning summary text, by summary index.
    SummaryText(u64),
}

impl Field {
    fn escape(self) -> Escape {
        match self {
            Self::Arguments(_) | Self::PartialJson => Escape::Json,
            _ => Escape::Plain,
        }
    }
}

/// The hold-back of every text channel of one stream.
#[derive(Debug, Default)]
pub struct StreamText {
    channels: Vec<(u64, Field, Channel)>,
    /// OpenAI: the raw `id`, `created` and `model` of the last chunk, for inserted chunks.
    template: Option<(String, String, String)>,
    /// Responses: the data of each channel's last delta event, the model of an inserted one.
    deltas: Vec<(u64, Field, Vec<u8>)>,
    /// Responses: events inserted so far (how far later `sequence_number`s move).
    shift: u64,
}

/// One text field of an event: where its JSON string sits in the event's data, and its channel.
struct Piece<'a> {
    raw: &'a RawValue,
    index: u64,
    field: Field,
}

impl StreamText {
    /// Rewrite a batch of complete events in `dialect`; the new batch, if anything changed.
    pub fn rewrite(
        &mut self,
        dialect: Dialect,
        session: &mut Session,
        batch: &[u8],
    ) -> Option<Bytes> {
        let mut out: Option<BytesMut> = None;
        let mut copied = 0;
        let mut ends = EventEnds::default();
        let mut start = 0;
        while let Some(end) = ends.next(batch, start) {
            let event = &batch[start..end];
            let rewritten = match dialect {
                Dialect::OpenAi => self.openai(session, event),
                Dialect::Anthropic => self.anthropic(session, event),
                Dialect::Responses => self.responses(session, event),
            };
            if let Some(new) = rewritten {
                let o = out.get_or_insert_with(|| BytesMut::with_capacity(batch.len() + 64));
                o.extend_from_slice(&batch[copied..start]);
                o.extend_from_slice(&new);
                copied = end;
            }
            start = end;
        }
        let mut o = out?;
        o.extend_from_slice(&batch[copied..]);
        Some(o.freeze())
    }

    fn channel(&mut self, index: u64, field: Field) -> &mut Channel {
        let at = match self
            .channels
            .iter()
            .position(|(i, f, _)| *i == index && *f == field)
        {
            Some(at) => at,
            None => {
                self.channels.push((index, field, Channel::default()));
                self.channels.len() - 1
            }
        };
        &mut self.channels[at].2
    }

    /// Feed each piece into its channel (flushing the channels that end with this event), and
    /// say how the data changes.
    fn feed(
        &mut self,
        session: &mut Session,
        data: &[u8],
        pieces: &[Piece<'_>],
        ending: impl Fn(u64, Field) -> bool,
    ) -> Vec<(Range<usize>, Vec<u8>)> {
        let base = data.as_ptr() as usize;
        let mut edits = Vec::new();
        for p in pieces {
            let raw = p.raw.get();
            let Ok(text) = serde_json::from_str::<Cow<'_, str>>(raw) else {
                continue;
            };
            let escape = p.field.escape();
            let ends = ending(p.index, p.field);
            let channel = self.channel(p.index, p.field);
            let mut new = Vec::with_capacity(text.len() + 16);
            channel.feed(session, text.as_bytes(), escape, &mut new);
            if ends {
                channel.flush(session, escape, &mut new);
            }
            if new == text.as_bytes() {
                continue;
            }
            let Ok(encoded) = serde_json::to_vec(&String::from_utf8_lossy(&new)) else {
                continue;
            };
            let start = (raw.as_ptr() as usize).wrapping_sub(base);
            let end = start.saturating_add(raw.len());
            if end <= data.len() {
                edits.push((start..end, encoded));
            }
        }
        edits
    }

    /// Flush the channels `which` selects that the event did not already carry text for: their
    /// rest, as events of their own (written by `write`) to insert before the event.
    fn flush_rest(
        &mut self,
        session: &mut Session,
        which: impl Fn(u64, Field) -> bool,
        write: impl Fn(&Self, u64, Field, &str, &mut Vec<u8>),
    ) -> Vec<u8> {
        let mut inserted = Vec::new();
        let mut rests = Vec::new();
        for (index, field, channel) in &mut self.channels {
            if !which(*index, *field) || channel.is_empty() {
                continue;
            }
            let mut text = Vec::new();
            channel.flush(session, field.escape(), &mut text);
            if !text.is_empty() {
                rests.push((*index, *field, text));
            }
        }
        for (index, field, text) in rests {
            write(
                self,
                index,
                field,
                &String::from_utf8_lossy(&text),
                &mut inserted,
            );
        }
        inserted
    }

    fn openai(&mut self, session: &mut Session, event: &[u8]) -> Option<Vec<u8>> {
        #[derive(Deserialize)]
        struct Chunk<'a> {
            #[serde(borrow, default)]
            id: Option<&'a RawValue>,
            #[serde(borrow, default)]
            created: Option<&'a RawValue>,
            #[serde(borrow, default)]
            model: Option<&'a RawValue>,
            #[serde(borrow, default)]
            choices: Option<Vec<Choice<'a>>>,
        }
        #[derive(Deserialize)]
        struct Choice<'a> {
            #[serde(default)]
            index: u64,
            #[serde(borrow, default)]
            delta: Option<Delta<'a>>,
            #[serde(borrow, default)]
            finish_reason: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Delta<'a> {
            #[serde(borrow, default)]
            content: Option<&'a RawValue>,
            #[serde(borrow, default)]
            reasoning_content: Option<&'a RawValue>,
            #[serde(borrow, default)]
            refusal: Option<&'a RawValue>,
            #[serde(borrow, default)]
            tool_calls: Option<Vec<ToolDelta<'a>>>,
        }
        #[derive(Deserialize)]
        struct ToolDelta<'a> {
            #[serde(default)]
            index: u64,
            #[serde(borrow, default)]
            function: Option<Function<'a>>,
        }
        #[derive(Deserialize)]
        struct Function<'a> {
            #[serde(borrow, default)]
            arguments: Option<&'a RawValue>,
        }
        let data = sse::data(event)?;
        if data.trim_ascii() == b"[DONE]" {
            let inserted = self.flush_rest(session, |_, _| true, Self::openai_event);
            return (!inserted.is_empty()).then(|| [inserted, event.to_vec()].concat());
        }
        let chunk: Chunk<'_> = serde_json::from_slice(&data).ok()?;
        if let (Some(id), Some(created), Some(model)) = (chunk.id, chunk.created, chunk.model) {
            self.template = Some((
                id.get().to_string(),
                created.get().to_string(),
                model.get().to_string(),
            ));
        }
        let choices = chunk.choices.unwrap_or_default();
        let mut pieces = Vec::new();
        let mut finished: Vec<u64> = Vec::new();
        let is_string = |r: &&RawValue| r.get().starts_with('"');
        for c in &choices {
            if c.finish_reason.is_some_and(|f| f.get() != "null") {
                finished.push(c.index);
            }
            let Some(d) = &c.delta else { continue };
            for (raw, field) in [
                (d.content, Field::Content),
                (d.reasoning_content, Field::Reasoning),
                (d.refusal, Field::Refusal),
            ] {
                if let Some(raw) = raw.filter(is_string) {
                    pieces.push(Piece {
                        raw,
                        index: c.index,
                        field,
                    });
                }
            }
            for t in d.tool_calls.iter().flatten() {
                if let Some(raw) = t
                    .function
                    .as_ref()
                    .and_then(|f| f.arguments)
                    .filter(is_string)
                {
                    pieces.push(Piece {
                        raw,
                        index: c.index,
                        field: Field::Arguments(t.index),
                    });
                }
            }
        }
        if pieces.is_empty() && finished.is_empty() {
            return None;
        }
        let edits = self.feed(session, &data, &pieces, |i, _| finished.contains(&i));
        // Channels of a finished choice that this chunk carried no text for.
        let carried: Vec<(u64, Field)> = pieces.iter().map(|p| (p.index, p.field)).collect();
        let inserted = self.flush_rest(
            session,
            |i, f| finished.contains(&i) && !carried.contains(&(i, f)),
            Self::openai_event,
        );
        rebuild(event, &data, &edits, inserted)
    }

    /// An OpenAI chunk carrying `text` in channel (`index`, `field`).
    fn openai_event(&self, index: u64, field: Field, text: &str, out: &mut Vec<u8>) {
        let text = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string());
        let delta = match field {
            Field::Reasoning => format!(r#"{{"reasoning_content":{text}}}"#),
            Field::Refusal => format!(r#"{{"refusal":{text}}}"#),
            Field::Arguments(t) => {
                format!(r#"{{"tool_calls":[{{"index":{t},"function":{{"arguments":{text}}}}}]}}"#)
            }
            _ => format!(r#"{{"content":{text}}}"#),
        };
        let (id, created, model) = self
            .template
            .clone()
            .unwrap_or_else(|| ("\"\"".into(), "0".into(), "\"\"".into()));
        out.extend_from_slice(
            format!(
                "data: {{\"id\":{id},\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":{model},\"choices\":[{{\"index\":{index},\"delta\":{delta},\"finish_reason\":null}}]}}\n\n"
            )
            .as_bytes(),
        );
    }

    fn anthropic(&mut self, session: &mut Session, event: &[u8]) -> Option<Vec<u8>> {
        #[derive(Deserialize)]
        struct Event<'a> {
            #[serde(borrow, rename = "type")]
            kind: Cow<'a, str>,
            #[serde(default)]
            index: u64,
            #[serde(borrow, default)]
            delta: Option<Delta<'a>>,
            #[serde(borrow, default)]
            content_block: Option<Block<'a>>,
        }
        #[derive(Deserialize)]
        struct Delta<'a> {
            #[serde(borrow, default)]
            text: Option<&'a RawValue>,
            #[serde(borrow, default)]
            partial_json: Option<&'a RawValue>,
            #[serde(borrow, default)]
            thinking: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Block<'a> {
            #[serde(borrow, default)]
            text: Option<&'a RawValue>,
            #[serde(borrow, default)]
            thinking: Option<&'a RawValue>,
        }
        let data = sse::data(event)?;
        let e: Event<'_> = serde_json::from_slice(&data).ok()?;
        let index = e.index;
        let is_string = |r: &&RawValue| r.get().starts_with('"');
        match &*e.kind {
            "content_block_start" => {
                let b = e.content_block?;
                let mut pieces = Vec::new();
                for (raw, field) in [(b.text, Field::Text), (b.thinking, Field::Thinking)] {
                    if let Some(raw) = raw.filter(is_string) {
                        pieces.push(Piece { raw, index, field });
                    }
                }
                let edits = self.feed(session, &data, &pieces, |_, _| false);
                rebuild(event, &data, &edits, Vec::new())
            }
            "content_block_delta" => {
                let d = e.delta?;
                let mut pieces = Vec::new();
                for (raw, field) in [
                    (d.text, Field::Text),
                    (d.partial_json, Field::PartialJson),
                    (d.thinking, Field::Thinking),
                ] {
                    if let Some(raw) = raw.filter(is_string) {
                        pieces.push(Piece { raw, index, field });
                    }
                }
                let edits = self.feed(session, &data, &pieces, |_, _| false);
                rebuild(event, &data, &edits, Vec::new())
            }
            "content_block_stop" => {
                let inserted = self.flush_rest(session, |i, _| i == index, Self::anthropic_event);
                rebuild(event, &data, &[], inserted)
            }
            "message_stop" => {
                let inserted = self.flush_rest(session, |_, _| true, Self::anthropic_event);
                rebuild(event, &data, &[], inserted)
            }
            _ => None,
        }
    }

    /// An Anthropic `content_block_delta` carrying `text` in block `index`.
    fn anthropic_event(&self, index: u64, field: Field, text: &str, out: &mut Vec<u8>) {
        let text = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string());
        let delta = match field {
            Field::PartialJson => format!(r#"{{"type":"input_json_delta","partial_json":{text}}}"#),
            Field::Thinking => format!(r#"{{"type":"thinking_delta","thinking":{text}}}"#),
            _ => format!(r#"{{"type":"text_delta","text":{text}}}"#),
        };
        out.extend_from_slice(
            format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{index},\"delta\":{delta}}}\n\n"
            )
            .as_bytes(),
        );
    }

    fn responses(&mut self, session: &mut Session, event: &[u8]) -> Option<Vec<u8>> {
        #[derive(Deserialize)]
        struct Event<'a> {
            #[serde(borrow, rename = "type")]
            kind: Cow<'a, str>,
            #[serde(default)]
            output_index: u64,
            #[serde(default)]
            content_index: u64,
            #[serde(default)]
            summary_index: u64,
            #[serde(borrow, default)]
            delta: Option<&'a RawValue>,
            #[serde(borrow, default)]
            sequence_number: Option<&'a RawValue>,
        }
        let data = sse::data(event)?;
        let e: Event<'_> = serde_json::from_slice(&data).ok()?;
        let index = e.output_index;
        let kind = &*e.kind;
        let field = |suffix: &str| -> Option<Field> {
            let name = kind.strip_prefix("response.")?.strip_suffix(suffix)?;
            Some(match name {
                "output_text" => Field::OutputText(e.content_index),
                "refusal" => Field::RefusalText(e.content_index),
                "reasoning_text" => Field::ReasoningText(e.content_index),
                "reasoning_summary_text" => Field::SummaryText(e.summary_index),
                "function_call_arguments" => Field::Arguments(0),
                _ => return None,
            })
        };
        if let Some(field) = field(".delta") {
            let is_string = |r: &&RawValue| r.get().starts_with('"');
            let pieces: Vec<Piece<'_>> = e
                .delta
                .filter(is_string)
                .map(|raw| Piece { raw, index, field })
                .into_iter()
                .collect();
            let mut edits = self.feed(session, &data, &pieces, |_, _| false);
            edits.extend(self.renumbered(&data, e.sequence_number));
            match self
                .deltas
                .iter_mut()
                .find(|(i, f, _)| *i == index && *f == field)
            {
                Some((_, _, d)) => {
                    d.clear();
                    d.extend_from_slice(&data);
                }
                None => self.deltas.push((index, field, data.to_vec())),
            }
            return rebuild(event, &data, &edits, Vec::new());
        }
        // The channels that end here: their rest goes out first, in deltas of their own.
        let done = field(".done");
        let which = |i: u64, f: Field| -> bool {
            match kind {
                "response.content_part.done" => {
                    i == index
                        && matches!(f, Field::OutputText(c) | Field::RefusalText(c) | Field::ReasoningText(c) if c == e.content_index)
                }
                "response.reasoning_summary_part.done" => {
                    i == index && f == Field::SummaryText(e.summary_index)
                }
                "response.output_item.done" => i == index,
                "response.completed" | "response.incomplete" | "response.failed" | "error" => true,
                _ => done.is_some_and(|d| i == index && f == d),
            }
        };
        let seq = e.sequence_number.and_then(|r| r.get().parse::<u64>().ok());
        let inserted = self.flush_rest(session, which, |me, i, f, text, out| {
            me.responses_event(i, f, text, seq, out);
        });
        let added = count_events(&inserted);
        let mut new = session.rewrite_json_repeated(&data);
        self.shift += added;
        if self.shift > 0 {
            let current = new.as_deref().unwrap_or(&data);
            let seq_raw = sequence_raw(current);
            if let Some((range, number)) = self.renumbered(current, seq_raw) {
                let mut renumbered = current.to_vec();
                renumbered.splice(range, number);
                new = Some(renumbered);
            }
        }
        let edits: Vec<(Range<usize>, Vec<u8>)> =
            new.map(|n| (0..data.len(), n)).into_iter().collect();
        rebuild(event, &data, &edits, inserted)
    }

    /// The edit that moves `sequence_number` (`raw`, inside `data`) by the events inserted so far.
    fn renumbered(&self, data: &[u8], raw: Option<&RawValue>) -> Option<(Range<usize>, Vec<u8>)> {
        if self.shift == 0 {
            return None;
        }
        let raw = raw?;
        let n: u64 = raw.get().parse().ok()?;
        let start = (raw.get().as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
        let end = start.saturating_add(raw.get().len());
        (end <= data.len()).then(|| (start..end, (n + self.shift).to_string().into_bytes()))
    }

    /// A Responses delta event carrying `text` in channel (`index`, `field`), shaped like that
    /// channel's last delta, numbered as the event it goes before (`seq`, before the move).
    fn responses_event(
        &self,
        index: u64,
        field: Field,
        text: &str,
        seq: Option<u64>,
        out: &mut Vec<u8>,
    ) {
        let Some(mut model) = self
            .deltas
            .iter()
            .find(|(i, f, _)| *i == index && *f == field)
            .and_then(|(_, _, d)| serde_json::from_slice::<serde_json::Value>(d).ok())
        else {
            return;
        };
        let Some(obj) = model.as_object_mut() else {
            return;
        };
        // Events inserted before this one in the same batch already moved the numbers.
        let inserted_here = count_events(out);
        obj.insert("delta".into(), serde_json::Value::String(text.to_string()));
        if let Some(seq) = seq {
            obj.insert(
                "sequence_number".into(),
                (seq + self.shift + inserted_here).into(),
            );
        }
        obj.remove("obfuscation");
        let kind = obj
            .get("type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("response.output_text.delta")
            .to_string();
        let Ok(data) = serde_json::to_string(&model) else {
            return;
        };
        out.extend_from_slice(format!("event: {kind}\ndata: {data}\n\n").as_bytes());
    }
}

/// The event with `edits` applied to its data (a data line of its own; its other lines kept),
/// after the events `inserted` before it; `None` when nothing changed.
fn rebuild(
    event: &[u8],
    data: &[u8],
    edits: &[(Range<usize>, Vec<u8>)],
    inserted: Vec<u8>,
) -> Option<Vec<u8>> {
    if edits.is_empty() && inserted.is_empty() {
        return None;
    }
    let mut out = inserted;
    let mut edits: Vec<&(Range<usize>, Vec<u8>)> = edits.iter().collect();
    edits.sort_by_key(|(r, _)| r.start);
    if edits.is_empty() {
        out.extend_from_slice(event);
        return Some(out);
    }
    for line in event.split_inclusive(|b| *b == b'\n') {
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
        if bare.is_empty() || bare.starts_with(b"data:") {
            continue;
        }
        out.extend_from_slice(bare);
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    let mut at = 0;
    for (range, replacement) in edits {
        if range.start < at {
            continue;
        }
        out.extend_from_slice(&data[at..range.start]);
        out.extend_from_slice(replacement);
        at = range.end;
    }
    out.extend_from_slice(&data[at..]);
    out.extend_from_slice(b"\n\n");
    Some(out)
}

/// How many events `events` holds (inserted events, each ending in a blank line).
fn count_events(events: &[u8]) -> u64 {
    events.windows(2).filter(|w| w == b"\n\n").count() as u64
}

/// The raw `sequence_number` of a Responses event's data.
fn sequence_raw(data: &[u8]) -> Option<&RawValue> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        sequence_number: Option<&'a RawValue>,
    }
    serde_json::from_slice::<Probe<'_>>(data)
        .ok()?
        .sequence_number
}
