//! Server-sent events: the one parser behind both the relay (`body.rs`, which forwards complete
//! events as they are and only looks at their data) and the providers' stream decoders (which
//! want each event's name and data).
//!
//! An event ends at a blank line (`\n\n` or `\n\r\n`); `data:` lines are joined with `\n`;
//! comments (`:`) and unknown fields are ignored. Both callers find event boundaries with
//! [`EventEnds`] (which looks at each byte once, however the reads split) and read the data with
//! [`data`], so a stream is split the same way whichever of them reads it.

use std::borrow::Cow;

use serde_json::Value;

use crate::error::DecodeError;

/// Finds where SSE events end (a blank line: `\n\n` or `\n\r\n`) in a buffer that grows at the
/// end and is consumed from the front, looking at each byte once.
#[derive(Debug, Default, Clone)]
pub struct EventEnds {
    /// Where the search goes on: every byte before it is known not to start a terminator.
    scanned: usize,
}

impl EventEnds {
    /// The index just past the first event terminator at or after `start`, or `None` if there is
    /// none yet. Each call resumes where the last one stopped.
    pub fn next(&mut self, buf: &[u8], start: usize) -> Option<usize> {
        let mut i = self.scanned.max(start);
        while i < buf.len() {
            let Some(offset) = memchr::memchr(b'\n', &buf[i..]) else {
                break;
            };
            let nl = i + offset;
            match (buf.get(nl + 1), buf.get(nl + 2)) {
                (Some(b'\n'), _) => {
                    self.scanned = nl + 2;
                    return Some(nl + 2);
                }
                (Some(b'\r'), Some(b'\n')) => {
                    self.scanned = nl + 3;
                    return Some(nl + 3);
                }
                // The terminator may complete with the next read: look here again then.
                (None, _) | (Some(b'\r'), None) => {
                    self.scanned = nl;
                    return None;
                }
                _ => i = nl + 1,
            }
        }
        self.scanned = buf.len();
        None
    }

    /// The caller removed `n` bytes from the front of the buffer.
    pub fn consumed(&mut self, n: usize) {
        self.scanned = self.scanned.saturating_sub(n);
    }

    /// The buffer was emptied.
    pub fn reset(&mut self) {
        self.scanned = 0;
    }
}

/// The `data:` of one complete event, lines joined with `\n`; `None` for an event without data
/// (a comment or keep-alive). Borrowed in the common case of a single data line.
pub fn data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut out: Option<Cow<'_, [u8]>> = None;
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(rest) = line.strip_prefix(b"data:") else {
            continue;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        match out.as_mut() {
            None => out = Some(Cow::Borrowed(rest)),
            Some(joined) => {
                let joined = joined.to_mut();
                joined.push(b'\n');
                joined.extend_from_slice(rest);
            }
        }
    }
    out
}

/// The `event:` name of one complete event, if it has one.
fn name(event: &[u8]) -> Option<&[u8]> {
    event.split(|b| *b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let rest = line.strip_prefix(b"event:")?;
        Some(rest.strip_prefix(b" ").unwrap_or(rest))
    })
}

/// Buffers an SSE byte stream (any split) and yields its complete events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    // Where the search for the next event's end resumes: an event that never ends is scanned
    // once, not once per read.
    ends: EventEnds,
}

/// One SSE event.
#[derive(Debug, Default, PartialEq)]
pub struct SseEvent {
    /// `event:` field, if any.
    pub event: Option<String>,
    /// `data:` lines joined by `\n`.
    pub data: String,
}

impl SseParser {
    /// Add bytes and take the complete events that carry data or a name. Invalid UTF-8 is an
    /// error.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, DecodeError> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        let result = loop {
            let Some(end) = self.ends.next(&self.buf, start) else {
                break Ok(events);
            };
            let raw = &self.buf[start..end];
            start = end;
            match event(raw) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..start);
        self.ends.consumed(start);
        result
    }

    /// Whether bytes of an unfinished event remain (the stream was cut inside an event).
    pub fn has_partial(&self) -> bool {
        !self.buf.iter().all(u8::is_ascii_whitespace)
    }

    /// Bytes held of an event not complete yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// The name and data of one complete event; `None` for a comment or an empty event.
fn event(raw: &[u8]) -> Result<Option<SseEvent>, DecodeError> {
    let data = data(raw);
    let name = name(raw);
    if data.is_none() && name.is_none() {
        return Ok(None);
    }
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| DecodeError::EventNotUtf8)
    };
    Ok(Some(SseEvent {
        event: name.map(text).transpose()?,
        data: data.as_deref().map(text).transpose()?.unwrap_or_default(),
    }))
}

/// The JSON object carried by an event's data; anything else is a broken stream.
pub fn json_object(data: &str) -> Result<Value, DecodeError> {
    serde_json::from_str(data)
        .ok()
        .filter(Value::is_object)
        .ok_or(DecodeError::EventNotObject)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends_of(input: &[u8], split: usize) -> Vec<usize> {
        let mut ends = EventEnds::default();
        let mut found = Vec::new();
        let mut start = 0;
        for len in [split, input.len()] {
            while let Some(end) = ends.next(&input[..len], start) {
                found.push(end);
                start = end;
            }
        }
        found
    }

    #[test]
    fn event_ends_are_found_at_any_split() {
        let input = b"data: a\n\ndata: b\r\n\r\n: c\n\ndata: d\n\r\nrest";
        for split in 0..=input.len() {
            assert_eq!(
                ends_of(input, split),
                vec![9, 20, 25, 35],
                "split at {split}"
            );
        }
    }

    #[test]
    fn an_endless_line_is_scanned_once() {
        let mut ends = EventEnds::default();
        let mut buf = Vec::new();
        for _ in 0..1000 {
            buf.extend_from_slice(&[b'x'; 1000]);
            assert_eq!(ends.next(&buf, 0), None);
            assert_eq!(ends.scanned, buf.len());
        }
        buf.extend_from_slice(b"\n\n");
        assert_eq!(ends.next(&buf, 0), Some(buf.len()));
        ends.consumed(buf.len());
        assert_eq!(ends.scanned, 0);
    }

    #[test]
    fn data_joins_lines_and_borrows_one() {
        assert!(matches!(
            data(b"data: {\"a\":1}\n\n"),
            Some(Cow::Borrowed(b"{\"a\":1}"))
        ));
        assert_eq!(
            data(b"event: x\ndata: 1\r\ndata:2\n\n").as_deref(),
            Some(&b"1\n2"[..])
        );
        assert_eq!(data(b": keep-alive\n\n"), None);
    }

    #[test]
    fn sse_parser_handles_any_split_and_crlf() {
        let input = b"event: a\r\ndata: {\"x\":1}\r\n\r\n: comment\n\ndata: 1\ndata: 2\n\n";
        for split in 0..input.len() {
            let mut p = SseParser::default();
            let mut events = p.push(&input[..split]).unwrap();
            events.extend(p.push(&input[split..]).unwrap());
            assert_eq!(events.len(), 2, "split at {split}");
            assert_eq!(events[0].event.as_deref(), Some("a"));
            assert_eq!(events[0].data, "{\"x\":1}");
            assert_eq!(events[1].data, "1\n2");
            assert!(!p.has_partial());
        }
    }

    #[test]
    fn sse_parser_refuses_invalid_utf8() {
        let mut p = SseParser::default();
        assert!(matches!(
            p.push(b"data: \xff\n\n"),
            Err(DecodeError::EventNotUtf8)
        ));
    }
}
