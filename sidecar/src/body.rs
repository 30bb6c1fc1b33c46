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
use tokio::time::{Instant, Sleep};

use crate::dialect::{Data, Dialect, Event};
use crate::error::DecodeError;
use crate::providers::Translate;
use crate::routing::health::TargetHandle;
use crate::scrub::Scrubber;
use crate::sse::{self, EventEnds};
use crate::stages::metering::wire;
use crate::stages::{End, Exchange};
use crate::usage::{Measured, Usage};

/// Result of reading the first event of a stream, before it is committed to the client.
#[derive(Debug)]
pub enum FirstEvent {
    /// Not a complete event yet: read more.
    Incomplete,
    /// A valid first event.
    Valid,
    /// Not what a stream of the client's dialect starts with.
    Invalid(DecodeError),
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
            match dialect.inspect(sse::data(&buf[self.start..end]).as_deref(), false) {
                Ok(Event::Empty) => self.start = end,
                Ok(Event::Error) => return FirstEvent::Invalid(DecodeError::ErrorFirst),
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
        failure: Option<DecodeError>,
        saw_done: bool,
        finished: bool,
        pending_error: Option<Bytes>,
        usage: Option<Usage>,
        // What metering measured of the stream so far.
        measured: Measured,
        meter: StreamMeter,
        #[pin]
        deadline: Sleep,
        // `timeouts.idle`: the timer, the limit and when the upstream last sent anything. The
        // timer is moved on only when it fires, not on every frame.
        idle: Option<(Pin<Box<Sleep>>, Duration, Instant)>,
        // The target that answered, told when its stream stalls or breaks.
        health: Option<TargetHandle>,
        // The request's stages; taken when the stream ends, so its end hook runs once.
        exchange: Option<Exchange>,
    }

    impl PinnedDrop for SseRelay {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Dropped before its end: the client went away mid-stream.
            if let Some(mut exchange) = this.exchange.take() {
                let usage = this.translate.as_ref().and_then(Translate::usage);
                record(&mut exchange, usage, *this.usage, *this.measured);
                exchange.end(End::ClientGone);
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
    /// `first` is already in the client's dialect (translated when `translate` is set). The
    /// relay owns the request's `exchange` from here on and ends it when the stream ends.
    /// An event over `guard.max_event_bytes` ends the stream with an error event; every event
    /// relayed goes through `guard.scrub`.
    pub fn new(
        upstream: Incoming,
        first: Bytes,
        deadline: Instant,
        exchange: Exchange,
        translate: Option<Translate>,
        guard: RelayGuard,
    ) -> Self {
        let dialect = exchange.ctx.dialect;
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
            measured: Measured::default(),
            meter: guard.meter,
            deadline: tokio::time::sleep_until(deadline),
            idle: guard
                .idle
                .map(|d| (Box::pin(tokio::time::sleep(d)), d, Instant::now())),
            health: guard.health,
            exchange: Some(exchange),
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
    /// Longest silence of the upstream (`timeouts.idle`); `None`: only the deadline bounds it.
    pub idle: Option<Duration>,
    /// The target that answered, told when its stream stalls or breaks.
    pub health: Option<TargetHandle>,
    /// What the relay does for metering.
    pub meter: StreamMeter,
}

/// What the relay does for metering, besides reading each event's usage and text.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamMeter {
    /// The gateway asked the provider for usage the client did not ask for: remove the usage-only
    /// chunk and every chunk's `usage` member before the client sees them.
    pub strip_usage: bool,
    /// Write the cost into the usage of the final usage event ([`wire::COST_FIELD`]).
    pub in_band_cost: bool,
    /// Count the answer text relayed, for the estimate of a stream that ends without its usage.
    pub measure_text: bool,
}

/// Hand what the relay measured to the exchange as the stream ends: a translated stream's usage
/// comes from the provider's own report (`translated`), even when the client did not ask to see
/// it.
fn record(
    exchange: &mut Exchange,
    translated: Option<Usage>,
    relayed: Option<Usage>,
    mut measured: Measured,
) {
    if translated.is_some() {
        measured.final_usage = true;
    }
    measured.request_bytes = exchange.ctx.measured.request_bytes;
    exchange.ctx.measured = measured;
    exchange.ctx.usage = translated.or(relayed);
}

/// How one event changes on its way to the client.
enum Edit {
    /// Not at all.
    Keep,
    /// Left out (the usage-only chunk the client did not ask for).
    Drop,
    /// These bytes of it removed.
    Cut(std::ops::Range<usize>),
    /// The cost field written at this offset (with a comma after it when the object has more).
    Cost(usize, bool, Option<f64>),
}

impl SseRelayProj<'_> {
    /// Take the complete, valid events from the buffer. On an invalid one, stop there and queue
    /// the error event that ends the stream. Metering reads each event's usage and text on the
    /// way, and edits the events it must (`StreamMeter`): the batch is then copied around them.
    fn take_events(&mut self) -> Option<Bytes> {
        let mut valid = 0;
        // Events edited so far, and where the unedited rest starts.
        let mut edited: Option<BytesMut> = None;
        let mut copied = 0;
        while let Some(end) = self.ends.next(self.buf, valid) {
            let edit = match self.dialect.inspect(
                sse::data(&self.buf[valid..end]).as_deref(),
                self.meter.measure_text,
            ) {
                Ok(Event::Done) => {
                    *self.saw_done = true;
                    Edit::Keep
                }
                Ok(Event::Data(data)) => {
                    *self.saw_done |= data.ends;
                    self.meter_event(&data, valid..end)
                }
                Ok(Event::Empty) => Edit::Keep,
                Ok(Event::Error) => {
                    // Relay the upstream's own error event and end there.
                    if let Some(h) = self.health.as_ref() {
                        h.broke();
                    }
                    valid = end;
                    self.end(End::StreamBroken, None);
                    break;
                }
                Err(reason) => {
                    let reason = reason.to_string();
                    self.end(End::StreamBroken, Some((&reason, "upstream_invalid_event")));
                    break;
                }
            };
            if !matches!(edit, Edit::Keep) {
                let out = edited.get_or_insert_with(|| BytesMut::with_capacity(self.buf.len()));
                out.extend_from_slice(&self.buf[copied..valid]);
                let event = &self.buf[valid..end];
                match edit {
                    Edit::Keep | Edit::Drop => {}
                    Edit::Cut(cut) => {
                        out.extend_from_slice(&event[..cut.start]);
                        out.extend_from_slice(&event[cut.end..]);
                    }
                    Edit::Cost(at, comma, cost) => {
                        let mut field = Vec::with_capacity(40);
                        field.push(b'"');
                        field.extend_from_slice(wire::COST_FIELD.as_bytes());
                        field.extend_from_slice(b"\":");
                        wire::write_cost(&mut field, cost);
                        if comma {
                            field.push(b',');
                        }
                        out.extend_from_slice(&event[..at]);
                        out.extend_from_slice(&field);
                        out.extend_from_slice(&event[at..]);
                    }
                }
                copied = end;
            }
            valid = end;
        }
        let taken = (valid > 0).then(|| self.buf.split_to(valid).freeze());
        self.ends.consumed(valid);
        let taken = match (edited, taken) {
            (Some(mut out), Some(taken)) => {
                out.extend_from_slice(&taken[copied..]);
                // Every event of the batch may have been dropped.
                (!out.is_empty()).then(|| out.freeze())
            }
            (_, taken) => taken,
        };
        let mut events = taken.map(|t| self.scrub.scrub_bytes(t));
        // Time to first token: when the first event batch leaves for the client.
        if events.is_some()
            && let Some(exchange) = self.exchange.as_mut()
            && exchange.ctx.first_event.is_none()
        {
            exchange.ctx.first_event = Some(exchange.ctx.start.elapsed());
        }
        if let (Some(events), Some(exchange)) = (events.as_mut(), self.exchange.as_mut())
            && exchange.wants_events()
        {
            exchange.events(events);
        }
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

    /// Read what metering needs of one data event (at `at` in the buffer) and say how it changes.
    fn meter_event(&mut self, data: &Data, at: std::ops::Range<usize>) -> Edit {
        self.measured.text_bytes += data.text_bytes;
        if let Some(usage) = data.usage {
            *self.usage = Some(Usage::merge(*self.usage, usage));
            self.measured.final_usage |= data.final_usage;
        }
        let event = &self.buf[at];
        if self.meter.strip_usage && data.usage_key {
            if data.no_choices && data.usage.is_some() {
                return Edit::Drop;
            }
            return wire::without(event, "usage").map_or(Edit::Keep, Edit::Cut);
        }
        if self.meter.in_band_cost && data.final_usage {
            // A translated stream's own report is the exact one (an Anthropic client's events
            // cannot carry reasoning tokens).
            let usage = self
                .translate
                .as_ref()
                .and_then(Translate::usage)
                .or(*self.usage)
                .unwrap_or_default();
            let cost = self
                .exchange
                .as_ref()
                .and_then(|x| crate::stages::metering::cost_of(&x.ctx, &usage));
            if let Some((offset, comma)) = wire::cost_at(event, "usage") {
                return Edit::Cost(offset, comma, cost);
            }
        }
        Edit::Keep
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
                End::StreamBroken,
                Some((&message, "upstream_event_too_large")),
            );
        }
        events
    }

    fn end(&mut self, end: End, error: Option<(&str, &str)>) {
        *self.finished = true;
        if let Some((message, code)) = error {
            let message = self.scrub.scrub_str(message);
            *self.pending_error = Some(self.dialect.error_event(&message, code));
        }
        if let Some(mut exchange) = self.exchange.take() {
            let translated = self.translate.as_ref().and_then(Translate::usage);
            record(&mut exchange, translated, *self.usage, *self.measured);
            exchange.end(end);
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
                if !*this.saw_done
                    && let Some(h) = this.health.as_ref()
                {
                    // Garbage, or an end without the end marker: the target broke the stream.
                    h.broke();
                }
                if let Some(reason) = this.failure.take() {
                    let reason = reason.to_string();
                    this.end(End::StreamBroken, Some((&reason, "upstream_invalid_event")));
                } else if *this.saw_done {
                    if let Some(h) = this.health.as_ref() {
                        h.completed();
                    }
                    this.end(End::StreamComplete, None);
                } else {
                    this.end(
                        End::StreamBroken,
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
                        End::StreamBroken,
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
            if let Some((timer, limit, last)) = this.idle.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                let silent_until = *last + *limit;
                if Instant::now() < silent_until {
                    // Something arrived since the timer was set: wait out the rest.
                    timer.as_mut().reset(silent_until);
                    continue;
                }
                let message = format!(
                    "the upstream stream stalled: nothing for {} ms (timeouts.idle)",
                    limit.as_millis()
                );
                let events = this.take_events();
                if !*this.finished {
                    if let Some(h) = this.health.as_ref() {
                        h.stalled();
                    }
                    this.end(End::StreamBroken, Some((&message, "upstream_idle_timeout")));
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
                    if let Some((_, _, last)) = this.idle.as_mut() {
                        *last = Instant::now();
                    }
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
                    if let Some(h) = this.health.as_ref() {
                        h.broke();
                    }
                    let events = this.take_events();
                    if !*this.finished {
                        this.end(
                            End::StreamBroken,
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
        let inspect = |event: &[u8]| Dialect::OpenAi.inspect(sse::data(event).as_deref(), true);
        assert!(matches!(inspect(b"data: [DONE]\n\n"), Ok(Event::Done)));
        match inspect(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
        ) {
            Ok(Event::Data(Data { usage: Some(u), .. })) => {
                assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 4))
            }
            _ => panic!("usage not read"),
        }
        assert!(matches!(
            inspect(b"data: {\"a\":\ndata: 1}\n\n"),
            Ok(Event::Data(Data { usage: None, .. }))
        ));
        assert!(inspect(b"data: {\"a\":\n\n").is_err());
    }
}
