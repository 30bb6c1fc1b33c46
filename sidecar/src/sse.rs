//! Server-sent events: the one parser behind both the relay (`body.rs`, which forwards complete
//! events as they are and only looks at their data) and the providers' stream decoders (which
//! want each event's name and data).
//!
//! An event ends at a blank line (`\n\n` or `\n\r\n`); `data:` lines are joined with `\n`;
//! comments (`:`) and unknown fields are ignored. Both callers find event boundaries with
//! [`event_end`] and read the data with [`data`], so a stream is split the same way whichever of
//! them reads it.

use std::borrow::Cow;

use serde_json::Value;

use crate::error::DecodeError;

/// Index just past the first event's terminating blank line, if `buf` holds a complete event.
pub fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
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
        while let Some(len) = event_end(&self.buf[start..]) {
            let raw = &self.buf[start..start + len];
            start += len;
            let data = data(raw);
            let name = name(raw);
            if data.is_none() && name.is_none() {
                continue;
            }
            let text = |b: &[u8]| {
                std::str::from_utf8(b)
                    .map(str::to_string)
                    .map_err(|_| DecodeError::EventNotUtf8)
            };
            events.push(SseEvent {
                event: name.map(text).transpose()?,
                data: data.as_deref().map(text).transpose()?.unwrap_or_default(),
            });
        }
        self.buf.drain(..start);
        Ok(events)
    }

    /// Whether bytes of an unfinished event remain (the stream was cut inside an event).
    pub fn has_partial(&self) -> bool {
        !self.buf.iter().all(u8::is_ascii_whitespace)
    }
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

    #[test]
    fn event_end_finds_lf_and_crlf_terminators() {
        assert_eq!(event_end(b"data: {}\n\nrest"), Some(10));
        assert_eq!(event_end(b"data: {}\r\n\r\n"), Some(12));
        assert_eq!(event_end(b"data: {}\n"), None);
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
