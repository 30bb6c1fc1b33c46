//! Response bodies: a buffered body, or a server-sent-events relay that forwards upstream chunks as
//! they arrive and turns an upstream failure after the first byte into an SSE error event.
//!
//! The relay speaks the client's dialect (OpenAI or Anthropic SSE). When the provider speaks another
//! protocol a [`Translate`] sits between the upstream bytes and the relay's buffer; everything the
//! relay checks (complete events, JSON, a proper end, the deadline) it checks on the translated
//! output, so a translated stream has the same guarantees as a pass-through one.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use serde::Deserialize;
use tokio::time::{Instant, Sleep};

use crate::error::error_body;
use crate::limits::EventEnds;
use crate::providers::{Dialect, Translate, messages};
use crate::scrub::Scrubber;
use crate::usage::Usage;

/// What happened to a relayed stream, reported once when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream finished with `[DONE]`.
    Complete,
    /// The upstream broke, ended early, sent an invalid event or timed out; the client got an
    /// error event.
    Broken,
    /// The client went away before the end.
    ClientGone,
}

/// Called once when the stream ends, with how it ended and the usage it reported.
pub type OnEnd = Box<dyn FnOnce(StreamEnd, Option<Usage>) + Send + Sync>;

/// Result of reading the first event of a stream, before it is committed to the client.
#[derive(Debug)]
pub enum FirstEvent {
    /// Not a complete event yet: read more.
    Incomplete,
    /// A valid first event.
    Valid,
    /// Not what an OpenAI stream starts with.
    Invalid(&'static str),
}

/// Finds the first event of a stream that carries data, in a buffer that grows with each read
/// (used before committing: a bad start may still fail over to another target). Comments and
/// empty events before it (keep-alives some upstreams send while the model has not produced
/// anything) are skipped: they are not a first token, so the stream is not committed on them and
/// `firstToken` keeps counting. Each byte is looked at once however the reads split.
#[derive(Debug, Default)]
pub struct FirstEventScan {
    ends: EventEnds,
    /// Where the next event not yet judged starts.
    start: usize,
}

impl FirstEventScan {
    /// Judge what `buf` (everything read so far) holds.
    pub fn check(&mut self, buf: &[u8], dialect: Dialect) -> FirstEvent {
        loop {
            let Some(end) = self.ends.next(buf, self.start) else {
                return FirstEvent::Incomplete;
            };
            match inspect(&buf[self.start..end], dialect) {
                Ok(Event::Empty) => self.start = end,
                Ok(Event::Error) => {
                    return FirstEvent::Invalid("the stream started with an error event");
                }
                Ok(_) => return FirstEvent::Valid,
                Err(reason) => return FirstEvent::Invalid(reason),
            }
        }
    }
}

/// [`FirstEventScan::check`] of a whole buffer at once.
pub fn first_event(buf: &[u8], dialect: Dialect) -> FirstEvent {
    FirstEventScan::default().check(buf, dialect)
}

enum Event {
    /// Comment or empty event (keep-alive).
    Empty,
    Done,
    Data(Option<Usage>),
    /// An in-band error event from the upstream, relayed as-is.
    Error,
}

/// Validate one complete event: its data must be `[DONE]` or a JSON object.
fn inspect(event: &[u8], dialect: Dialect) -> Result<Event, &'static str> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        usage: Option<Usage>,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
    }
    let mut data: Option<Vec<u8>> = None;
    let mut single: Option<&[u8]> = None;
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(rest) = line.strip_prefix(b"data:") else {
            continue;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        // Multi-line data is joined with newlines, as the SSE spec says; the common case is one line.
        match (single.take(), data.as_mut()) {
            (None, None) => single = Some(rest),
            (Some(first), None) => {
                let mut joined = first.to_vec();
                joined.push(b'\n');
                joined.extend_from_slice(rest);
                data = Some(joined);
            }
            (_, Some(joined)) => {
                joined.push(b'\n');
                joined.extend_from_slice(rest);
            }
        }
    }
    let payload: &[u8] = match (&data, single) {
        (Some(joined), _) => joined,
        (None, Some(one)) => one,
        (None, None) => return Ok(Event::Empty),
    };
    if dialect == Dialect::Anthropic {
        return inspect_anthropic(payload);
    }
    if payload.trim_ascii() == b"[DONE]" {
        return Ok(Event::Done);
    }
    match serde_json::from_slice::<Probe>(payload) {
        Ok(probe) if probe.error.is_some() => Ok(Event::Error),
        Ok(probe) => Ok(Event::Data(probe.usage)),
        Err(_) => Err("the upstream sent an event that is not a JSON object"),
    }
}

/// Anthropic events: `message_stop` ends a complete stream, `error` is an error event, usage comes in
/// `message_start.message.usage` (prompt) and `message_delta.usage` (completion).
fn inspect_anthropic(payload: &[u8]) -> Result<Event, &'static str> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        message: Option<MessageProbe>,
        #[serde(default)]
        usage: Option<gatehouse_crds::usage::AnthropicUsage>,
    }
    #[derive(Deserialize)]
    struct MessageProbe {
        #[serde(default)]
        usage: Option<gatehouse_crds::usage::AnthropicUsage>,
    }
    let probe: Probe = serde_json::from_slice(payload)
        .map_err(|_| "the upstream sent an event that is not a JSON object with a type")?;
    let usage = probe.usage.or(probe.message.and_then(|m| m.usage));
    Ok(match probe.kind.as_str() {
        "message_stop" => Event::Done,
        "error" => Event::Error,
        _ => Event::Data(usage.map(|u| {
            // An event without `input_tokens` says nothing about the prompt: 0 here, and the
            // merge keeps the prompt an earlier event reported.
            let cached = u.cached_tokens();
            Usage {
                prompt_tokens: if u.reports_prompt() {
                    u.prompt_tokens()
                } else {
                    0
                },
                completion_tokens: u.completion_tokens(),
                prompt_tokens_details: (cached > 0).then_some(crate::usage::PromptDetails {
                    cached_tokens: Some(cached),
                }),
            }
        })),
    })
}

/// Merge usage reported in pieces (Anthropic: prompt first, completion at the end).
fn merge_usage(old: Option<Usage>, new: Usage) -> Usage {
    let Some(old) = old else { return new };
    Usage {
        prompt_tokens: old.prompt_tokens.max(new.prompt_tokens),
        completion_tokens: old.completion_tokens.max(new.completion_tokens),
        prompt_tokens_details: new.prompt_tokens_details.or(old.prompt_tokens_details),
    }
}

pin_project! {
    /// Relays an upstream SSE body event by event: complete events are checked and forwarded as
    /// soon as they arrive; anything that would let a client mistake a failure for a finished
    /// answer becomes an error event.
    #[project = SseRelayProj]
    pub struct SseRelay {
        #[pin]
        upstream: Incoming,
        buf: BytesMut,
        // Where the search for the end of the event at the front of `buf` resumes.
        ends: EventEnds,
        // Most bytes held of one event not complete yet (`--max-event-bytes`).
        max_event: usize,
        // What is relayed is scrubbed of the provider's credentials, event batch by event batch.
        scrub: Scrubber,
        dialect: Dialect,
        translate: Option<Translate>,
        upstream_done: bool,
        // Scheduler passes waited for the upstream connection's next frame since the last one.
        idle_yields: u8,
        // Writes of events so far (counted up to UNBATCHED_WRITES).
        writes: u8,
        failure: Option<String>,
        saw_done: bool,
        finished: bool,
        pending_error: Option<Bytes>,
        usage: Option<Usage>,
        #[pin]
        deadline: Sleep,
        on_end: Option<OnEnd>,
    }

    impl PinnedDrop for SseRelay {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(on_end) = this.on_end.take() {
                on_end(StreamEnd::ClientGone, *this.usage);
            }
        }
    }
}

impl std::fmt::Debug for SseRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseRelay")
            .field("saw_done", &self.saw_done)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl SseRelay {
    /// Relay `upstream`, starting with the bytes already read (`first`), ending with an error event
    /// if the whole stream is not done by `deadline`.
    /// `first` is already in the client's dialect (translated when `translate` is set).
    /// An event over `guard.max_event_bytes` ends the stream with an error event; every event
    /// relayed goes through `guard.scrub`.
    pub fn new(
        upstream: Incoming,
        first: Bytes,
        deadline: Instant,
        on_end: OnEnd,
        dialect: Dialect,
        translate: Option<Translate>,
        guard: RelayGuard,
    ) -> Self {
        Self {
            upstream,
            buf: BytesMut::from(&first[..]),
            ends: EventEnds::default(),
            max_event: guard.max_event_bytes,
            scrub: guard.scrub,
            dialect,
            translate,
            upstream_done: false,
            idle_yields: 0,
            writes: 0,
            failure: None,
            saw_done: false,
            finished: false,
            pending_error: None,
            usage: None,
            deadline: tokio::time::sleep_until(deadline),
            on_end: Some(on_end),
        }
    }
}

/// What bounds and cleans a relayed stream.
#[derive(Debug, Clone)]
pub struct RelayGuard {
    /// Most bytes held of one event not complete yet.
    pub max_event_bytes: usize,
    /// The scrubber of the attempt that answered.
    pub scrub: Scrubber,
}

fn error_event(message: &str, code: &str, dialect: Dialect) -> Bytes {
    if dialect == Dialect::Anthropic {
        return messages::error_event(message);
    }
    let body = error_body(message, "api_error", code);
    let mut event = Vec::with_capacity(body.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&body);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

impl SseRelayProj<'_> {
    /// Take the complete, valid events from the buffer. On an invalid one, stop there and queue
    /// the error event that ends the stream.
    fn take_events(&mut self) -> Option<Bytes> {
        let mut valid = 0;
        while let Some(end) = self.ends.next(self.buf, valid) {
            match inspect(&self.buf[valid..end], *self.dialect) {
                Ok(Event::Done) => *self.saw_done = true,
                Ok(Event::Data(Some(usage))) => *self.usage = Some(merge_usage(*self.usage, usage)),
                Ok(Event::Data(None) | Event::Empty) => {}
                Ok(Event::Error) => {
                    // Relay the upstream's own error event and end there.
                    valid = end;
                    self.end(StreamEnd::Broken, None);
                    break;
                }
                Err(reason) => {
                    self.end(StreamEnd::Broken, Some((reason, "upstream_invalid_event")));
                    break;
                }
            }
            valid = end;
        }
        let events = (valid > 0).then(|| self.scrub.scrub_bytes(self.buf.split_to(valid).freeze()));
        self.ends.consumed(valid);
        if events.is_some() && *self.writes < UNBATCHED_WRITES {
            *self.writes += 1;
        }
        if *self.finished {
            // Whatever follows an invalid or error event is never relayed.
            self.buf.clear();
            self.ends.reset();
        }
        events
    }

    /// After a read: if the event being received (or the frame a translator holds) has grown
    /// past `--max-event-bytes`, relay the complete events before it and end with an error event.
    fn check_event_size(&mut self) -> Option<Bytes> {
        let held = self.translate.as_ref().map_or(0, Translate::pending);
        if self.buf.len() <= *self.max_event && held <= *self.max_event {
            return None;
        }
        let events = self.take_events();
        let held = self.translate.as_ref().map_or(0, Translate::pending);
        if !*self.finished && (self.buf.len() > *self.max_event || held > *self.max_event) {
            let message = crate::limits::event_too_large(*self.max_event).to_string();
            self.buf.clear();
            self.ends.reset();
            self.end(
                StreamEnd::Broken,
                Some((&message, "upstream_event_too_large")),
            );
        }
        events
    }

    fn end(&mut self, end: StreamEnd, error: Option<(&str, &str)>) {
        *self.finished = true;
        if let Some((message, code)) = error {
            let message = self.scrub.scrub_str(message);
            *self.pending_error = Some(error_event(&message, code, *self.dialect));
        }
        // A translated stream's usage comes from the provider's own report, even when the client
        // did not ask to see it.
        if let Some(u) = self.translate.as_ref().and_then(Translate::usage) {
            *self.usage = Some(u);
        }
        if let Some(on_end) = self.on_end.take() {
            on_end(end, *self.usage);
        }
    }
}

impl Body for SseRelay {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        loop {
            if *this.finished {
                return Poll::Ready(this.pending_error.take().map(|e| Ok(Frame::data(e))));
            }
            if *this.upstream_done {
                if let Some(events) = this.take_events() {
                    return Poll::Ready(Some(Ok(Frame::data(events))));
                }
                if *this.finished {
                    continue;
                }
                this.buf.clear();
                if let Some(reason) = this.failure.take() {
                    this.end(StreamEnd::Broken, Some((&reason, "upstream_invalid_event")));
                } else if *this.saw_done {
                    this.end(StreamEnd::Complete, None);
                } else {
                    this.end(
                        StreamEnd::Broken,
                        Some((
                            "the upstream stream ended before it completed",
                            "upstream_stream_broken",
                        )),
                    );
                }
                continue;
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                let events = this.take_events();
                if !*this.finished {
                    this.end(
                        StreamEnd::Broken,
                        Some((
                            "the upstream stream did not finish within the request timeout",
                            "upstream_timeout",
                        )),
                    );
                }
                if let Some(events) = events {
                    return Poll::Ready(Some(Ok(Frame::data(events))));
                }
                continue;
            }
            // Drain every frame the upstream already has before answering: events that arrived
            // together leave together, in one write, instead of one syscall per event. The
            // upstream connection runs in a task of its own and hands its body over one frame at
            // a time, so "nothing more yet" may only mean that task has not run since the last
            // frame: while frames keep coming, give it a couple of scheduler passes before
            // writing. Nothing waits long for data that is not there yet.
            match this.upstream.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    // Wait for more only after the first writes (what a user feels is the time to
                    // the first token: those go out at once) and while frames keep coming.
                    if *this.writes >= UNBATCHED_WRITES
                        && !this.buf.is_empty()
                        && *this.idle_yields < IDLE_YIELDS
                    {
                        *this.idle_yields += 1;
                        // A deferred wake (tokio's yield): the upstream connection's task runs
                        // before this one does again. A plain self-wake would run this task first.
                        let yielding = std::pin::pin!(tokio::task::yield_now());
                        if yielding.poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                    if let Some(events) = this.take_events() {
                        return Poll::Ready(Some(Ok(Frame::data(events))));
                    }
                    if *this.finished {
                        continue;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    *this.idle_yields = 0;
                    // Trailers are not part of the SSE contract; only data is kept.
                    if let Ok(data) = frame.into_data() {
                        match this.translate.as_mut() {
                            None => this.buf.extend_from_slice(&data),
                            Some(t) => {
                                if let Err(reason) = t.feed(&data, this.buf) {
                                    // Relay what was translated before the garbage, then fail.
                                    *this.failure = Some(reason);
                                    *this.upstream_done = true;
                                }
                            }
                        }
                    }
                    if let Some(events) = this.check_event_size() {
                        return Poll::Ready(Some(Ok(Frame::data(events))));
                    }
                    if *this.finished {
                        continue;
                    }
                    if this.buf.len() >= COALESCE_LIMIT
                        && let Some(events) = this.take_events()
                    {
                        return Poll::Ready(Some(Ok(Frame::data(events))));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    let events = this.take_events();
                    if !*this.finished {
                        this.end(
                            StreamEnd::Broken,
                            Some((
                                "the upstream stream broke before it completed",
                                "upstream_stream_broken",
                            )),
                        );
                    }
                    if let Some(events) = events {
                        return Poll::Ready(Some(Ok(Frame::data(events))));
                    }
                }
                Poll::Ready(None) => {
                    if let Some(t) = this.translate.as_mut()
                        && let Err(reason) = t.finish(this.buf)
                    {
                        *this.failure = Some(reason);
                    }
                    *this.upstream_done = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.pending_error.is_none() && self.buf.is_empty()
    }
}

/// Forward buffered events once this much is waiting, even if the upstream has more ready.
const COALESCE_LIMIT: usize = 64 * 1024;

/// How many scheduler passes the relay waits for the upstream connection's task to hand over its
/// next frame before writing what it has: the task needs two (measured), and a stream whose events
/// really are spaced out pays only these passes, microseconds, per write.
const IDLE_YIELDS: u8 = 2;

/// The first writes of a stream are never held back for batching: a stream usually starts with a
/// role (or message-start) event and then the first text, and the time to that text is what a
/// user waits for.
const UNBATCHED_WRITES: u8 = 2;

/// The body of every response the proxy sends.
#[derive(Debug)]
pub enum ProxyBody {
    /// A complete body.
    Full(Option<Bytes>),
    /// A relayed event stream.
    Stream(Pin<Box<SseRelay>>),
}

impl ProxyBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream(relay) => relay.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Stream(relay) => relay.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}

/// Shortest deadline helper: `now + ms`.
pub fn deadline_in(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_event_scan_judges_growing_buffers_at_any_split() {
        let input = b": keep-alive\r\n\r\ndata: {\"id\":1}\n\n";
        for split in 0..input.len() {
            let mut scan = FirstEventScan::default();
            let first = scan.check(&input[..split], Dialect::OpenAi);
            assert!(matches!(first, FirstEvent::Incomplete), "split at {split}");
            let whole = scan.check(input, Dialect::OpenAi);
            assert!(matches!(whole, FirstEvent::Valid), "split at {split}");
        }
    }

    #[test]
    fn first_event_skips_keep_alive_comments() {
        assert!(matches!(
            first_event(b": keep-alive\n\n: still working\n\n", Dialect::OpenAi),
            FirstEvent::Incomplete
        ));
        assert!(matches!(
            first_event(b": keep-alive\n\ndata: {\"id\":1}\n\n", Dialect::OpenAi),
            FirstEvent::Valid
        ));
        assert!(matches!(
            first_event(b": keep-alive\n\ndata: <html>\n\n", Dialect::OpenAi),
            FirstEvent::Invalid(_)
        ));
    }

    #[test]
    fn first_event_judges_only_a_complete_event() {
        assert!(matches!(
            first_event(b"data: {\"id\":", Dialect::OpenAi),
            FirstEvent::Incomplete
        ));
        assert!(matches!(
            first_event(b"data: {\"id\":1}\n\ndata: garbage", Dialect::OpenAi),
            FirstEvent::Valid
        ));
        assert!(matches!(
            first_event(b"data: <html>\n\n", Dialect::OpenAi),
            FirstEvent::Invalid(_)
        ));
        assert!(matches!(
            first_event(
                b"data: {\"error\":{\"message\":\"x\"}}\n\n",
                Dialect::OpenAi
            ),
            FirstEvent::Invalid(_)
        ));
    }

    #[test]
    fn inspect_reads_usage_done_and_multiline_data() {
        assert!(matches!(
            inspect(b"data: [DONE]\n\n", Dialect::OpenAi),
            Ok(Event::Done)
        ));
        match inspect(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
            Dialect::OpenAi,
        ) {
            Ok(Event::Data(Some(u))) => assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 4)),
            _ => panic!("usage not read"),
        }
        assert!(matches!(
            inspect(b"data: {\"a\":\ndata: 1}\n\n", Dialect::OpenAi),
            Ok(Event::Data(None))
        ));
        assert!(inspect(b"data: {\"a\":\n\n", Dialect::OpenAi).is_err());
    }
}
