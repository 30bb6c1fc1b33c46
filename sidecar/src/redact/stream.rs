//! The stream hold-back: the text of an answer arrives in pieces (one per event), and a value may
//! be split across them (`bob@exa` + `mple.com`, `[EMAIL` + `_1]`). Each text channel (a
//! choice's content, a tool call's arguments, an Anthropic content block) keeps back the tail of
//! its text that could still be the start of a match, and sends the rest at once:
//!
//! - every event is forwarded when it arrives; only text moves, from an event into the next one
//!   of its channel;
//! - what is kept is the shortest tail that the automaton says could still grow into a match
//!   (a trailing word could be an email's local part, trailing digits a card number's start),
//!   so in prose it is the last word: text reaches the client at most one event late;
//! - at most [`MAX_HOLD`] bytes are kept; past that the oldest go out (a value that long still
//!   being written is masked as far as it got, and what continues it is dropped);
//! - at the end of the channel (the choice's finish, the block's stop, the stream's end) the rest
//!   goes out.

use super::{Direction, Escape, Found, Session};

/// Most bytes of text a channel keeps back. An RSA-4096 private key in PEM is about 3.3 KB; JWTs
/// and emails are far shorter.
pub const MAX_HOLD: usize = 8 * 1024;

/// Most bytes of a value forced out while still going on that are remembered to recognize what
/// continues it.
const MAX_CARRY: usize = 64 * 1024;

/// One text channel's hold-back.
#[derive(Debug, Default)]
pub struct Channel {
    /// Text received, not sent yet.
    pending: Vec<u8>,
    /// A value masked while it may still have been going on: what continues it is dropped.
    carry: Option<Vec<u8>>,
}

impl Channel {
    /// Whether nothing is kept back.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// `text` arrived: what can go now is appended to `out`, rewritten.
    pub fn feed(&mut self, session: &mut Session, text: &[u8], escape: Escape, out: &mut Vec<u8>) {
        let text = self.drop_carried(session, text);
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(text);
        let engine = session.engine().clone();
        let mut found: Vec<Found> = Vec::new();
        engine.scan(&buf, |f| found.push(f));
        let settled = engine.settled(&buf, 0);
        let mut cut = earliest_viable(&engine, &buf, settled);
        if let Some(last) = found.last()
            && last.range.end == buf.len()
        {
            cut = cut.min(last.range.start);
        }
        cut = extend_over(&engine, &buf, &found, cut, false);
        let mut carry = None;
        if buf.len() - cut > MAX_HOLD {
            cut = snap(&buf, buf.len() - MAX_HOLD);
            cut = extend_over(&engine, &buf, &found, cut, true);
            if let Some(f) = found
                .iter()
                .find(|f| f.range.end == buf.len() && f.range.start < cut)
            {
                carry = Some(buf[f.range.clone()].to_vec());
            }
        }
        let emitted: Vec<Found> = found.into_iter().filter(|f| f.range.end <= cut).collect();
        session.apply(&buf[..cut], &emitted, Direction::Response, escape, out);
        self.pending = buf.split_off(cut);
        if carry.is_some() {
            self.carry = carry;
        }
    }

    /// The channel ended: everything kept goes to `out`, rewritten.
    pub fn flush(&mut self, session: &mut Session, escape: Escape, out: &mut Vec<u8>) {
        let buf = std::mem::take(&mut self.pending);
        self.carry = None;
        session.rewrite(&buf, Direction::Response, escape, out);
    }

    /// Drop what still continues a value masked before it ended.
    fn drop_carried<'t>(&mut self, session: &Session, text: &'t [u8]) -> &'t [u8] {
        let Some(mut carry) = self.carry.take() else {
            return text;
        };
        let before = carry.len();
        carry.extend_from_slice(text);
        match session.engine().dead_at(&carry, 0) {
            // The value ended before this text, or within it.
            Some(at) if at <= before => text,
            Some(at) => &text[at - before..],
            None => {
                if carry.len() <= MAX_CARRY {
                    self.carry = Some(carry);
                }
                &text[text.len()..]
            }
        }
    }
}

/// The earliest position at or after `from` where a text that could still become a match starts
/// (`buf.len()` when none). Only word starts and punctuation are tried: a match never starts
/// inside a word (every pattern that starts with a word character starts with `\b`, or, for an
/// email's local part, takes the whole word).
fn earliest_viable(engine: &super::Engine, buf: &[u8], from: usize) -> usize {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    (from..buf.len())
        .find(|&p| {
            let starts = p == from || !word(buf[p]) || !word(buf[p - 1]);
            starts && (buf[p] & 0xC0) != 0x80 && engine.viable(buf, p)
        })
        .unwrap_or(buf.len())
}

/// Move `cut` past every finding that straddles it (a finding goes out whole or not at all);
/// after a move, what follows may again be the start of something. `forced`: the cut is forced
/// by the size bound, findings touching the end go out too.
fn extend_over(
    engine: &super::Engine,
    buf: &[u8],
    found: &[Found],
    mut cut: usize,
    forced: bool,
) -> usize {
    loop {
        let straddling = found
            .iter()
            .find(|f| f.range.start < cut && f.range.end > cut);
        match straddling {
            Some(f) => {
                cut = f.range.end;
                if !forced {
                    cut = earliest_viable(engine, buf, cut).max(cut);
                    if let Some(last) = found.last()
                        && last.range.end == buf.len()
                        && last.range.start >= f.range.end
                    {
                        cut = cut.min(last.range.start);
                    }
                }
            }
            None => return cut,
        }
    }
}

/// `at`, moved back to the start of the UTF-8 character it falls in.
fn snap(buf: &[u8], mut at: usize) -> usize {
    while at > 0 && at < buf.len() && (buf[at] & 0xC0) == 0x80 {
        at -= 1;
    }
    at
}
