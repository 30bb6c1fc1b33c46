//! Response bodies: a buffered body, or a server-sent-events relay that forwards upstream chunks as
//! they arrive and turns an upstream failure after the first byte into an SSE error event.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::error_body;

/// What happened to a relayed stream, reported once when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream finished with `[DONE]`.
    Complete,
    /// The upstream broke, ended early or timed out; the client got an error event.
    Broken,
    /// The client went away before the end.
    ClientGone,
}

/// Called once with how the stream ended.
pub type OnEnd = Box<dyn FnOnce(StreamEnd) + Send + Sync>;

pin_project! {
    /// Relays an upstream SSE body.
    pub struct SseRelay {
        #[pin]
        upstream: Incoming,
        first: Option<Bytes>,
        tail: Vec<u8>,
        saw_done: bool,
        finished: bool,
        #[pin]
        deadline: Sleep,
        on_end: Option<OnEnd>,
    }

    impl PinnedDrop for SseRelay {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(on_end) = this.on_end.take() {
                on_end(StreamEnd::ClientGone);
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

const DONE_MARKER: &[u8] = b"[DONE]";

impl SseRelay {
    /// Relay `upstream`, starting with the already received `first` chunk, ending with an error event
    /// if the whole stream is not done by `deadline`.
    pub fn new(upstream: Incoming, first: Bytes, deadline: Instant, on_end: OnEnd) -> Self {
        let mut relay = Self {
            upstream,
            first: None,
            tail: Vec::with_capacity(16),
            saw_done: false,
            finished: false,
            deadline: tokio::time::sleep_until(deadline),
            on_end: Some(on_end),
        };
        relay.saw_done = scan_done(&mut relay.tail, &first);
        relay.first = Some(first);
        relay
    }
}

/// Whether `[DONE]` appears in the stream so far, looking across chunk boundaries via `tail`.
fn scan_done(tail: &mut Vec<u8>, chunk: &[u8]) -> bool {
    let mut window = std::mem::take(tail);
    window.extend_from_slice(chunk);
    let found = window.windows(DONE_MARKER.len()).any(|w| w == DONE_MARKER);
    let keep = window.len().min(DONE_MARKER.len() - 1);
    tail.extend_from_slice(&window[window.len() - keep..]);
    found
}

fn error_event(message: &str, code: &str) -> Bytes {
    let body = error_body(message, "api_error", code);
    let mut event = Vec::with_capacity(body.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&body);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// End the stream with an error event: the client must never mistake a cut stream for a finished one.
fn fail(
    finished: &mut bool,
    on_end: &mut Option<OnEnd>,
    message: &str,
    code: &str,
) -> Poll<Option<Result<Frame<Bytes>, std::convert::Infallible>>> {
    *finished = true;
    if let Some(on_end) = on_end.take() {
        on_end(StreamEnd::Broken);
    }
    Poll::Ready(Some(Ok(Frame::data(error_event(message, code)))))
}

impl Body for SseRelay {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if *this.finished {
            return Poll::Ready(None);
        }
        loop {
            if this.deadline.as_mut().poll(cx).is_ready() {
                return fail(
                    this.finished,
                    this.on_end,
                    "the upstream stream did not finish within the request timeout",
                    "upstream_timeout",
                );
            }
            match ready!(this.upstream.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if !*this.saw_done && scan_done(this.tail, &data) {
                            *this.saw_done = true;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    // Trailers from upstream are not part of the SSE contract; skip them.
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    return fail(
                        this.finished,
                        this.on_end,
                        "the upstream stream broke before it completed",
                        "upstream_stream_broken",
                    );
                }
                None => {
                    if *this.saw_done {
                        *this.finished = true;
                        if let Some(on_end) = this.on_end.take() {
                            on_end(StreamEnd::Complete);
                        }
                        return Poll::Ready(None);
                    }
                    return fail(
                        this.finished,
                        this.on_end,
                        "the upstream stream ended before it completed",
                        "upstream_stream_broken",
                    );
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.first.is_none()
    }
}

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
    use super::scan_done;

    #[test]
    fn done_marker_found_across_chunk_boundaries() {
        let mut tail = Vec::new();
        assert!(!scan_done(&mut tail, b"data: {\"x\":1}\n\ndata: [DO"));
        assert!(scan_done(&mut tail, b"NE]\n\n"));
    }

    #[test]
    fn done_marker_absent() {
        let mut tail = Vec::new();
        assert!(!scan_done(&mut tail, b"data: {}\n\n"));
        assert!(!scan_done(&mut tail, b""));
    }
}
