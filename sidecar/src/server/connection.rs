//! What one accepted connection is doing, and the deadline that follows from it.
//!
//! hyper 1.x has a header read timeout for HTTP/1 but no idle timeout, and since hyper 1.6 its
//! header timer also runs while a keep-alive connection waits for its next request, so the two
//! cannot differ. Both are kept here instead: the socket wrapper ([`Watched`]) sees bytes arrive,
//! the service sees a request start ([`Connection::begin_request`]) and the response body's drop
//! sees it end ([`Tracked`]). From that the connection is in one of three phases:
//!
//! - *headers*: accepted, or bytes of a new HTTP/1 request have arrived, and no request has been
//!   handed to the service yet. Ends within the header read timeout or the connection is dropped
//!   (a slowloris client never completes its headers).
//! - *busy*: at least one request is being served. No connection deadline: a request's own time
//!   is bounded by its body progress and upstream timeouts.
//! - *idle*: no request in flight and no new bytes (an HTTP/2 connection stays idle while the
//!   client pings). Closed gracefully after the idle timeout, or earlier to make room at the cap.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The HTTP/2 connection preface starts with this; an HTTP/1 request never does.
const H2_PREFACE_START: &[u8] = b"PRI ";

/// The timeouts a listener applies to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept, or from the first byte of a new HTTP/1 request, to its complete headers.
    pub header_read: Duration,
    /// How long a connection with no request in flight stays open.
    pub idle: Duration,
}

/// Where a connection is, for its deadline and for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a request's headers since then.
    Headers(Instant),
    /// Serving this many requests (HTTP/2 streams count one each).
    Busy(u32),
    /// Nothing in flight since then.
    Idle(Instant),
}

/// Why a connection's deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The request headers took too long.
    HeaderRead,
    /// Nothing was in flight for the idle timeout.
    Idle,
}

#[derive(Debug)]
struct Activity {
    phase: Phase,
    /// Set once the first bytes show the HTTP/2 preface: bytes then never start a headers phase
    /// (pings and window updates arrive on idle connections).
    h2: bool,
    seen_bytes: bool,
}

/// One connection's shared state: read by its driver, the registry, the socket wrapper and the
/// service.
#[derive(Debug)]
pub struct Connection {
    activity: Mutex<Activity>,
    /// Wakes the driver when the deadline may have moved earlier or eviction was asked for.
    wake: Notify,
    /// Wakes the accept loop when this connection went idle (it may now be evicted).
    room: Arc<Notify>,
    evict: AtomicBool,
}

impl Connection {
    /// A connection accepted now.
    pub fn new(room: Arc<Notify>) -> Self {
        Self {
            activity: Mutex::new(Activity {
                phase: Phase::Headers(Instant::now()),
                h2: false,
                seen_bytes: false,
            }),
            wake: Notify::new(),
            room,
            evict: AtomicBool::new(false),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Activity) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update; the phase is still usable.
        let mut guard = self
            .activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.with(|a| a.phase)
    }

    /// Whether the connection speaks HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.with(|a| a.h2)
    }

    /// When the phase's deadline passes, if it has one.
    pub fn deadline(&self, timeouts: &Timeouts) -> Option<(Instant, Expired)> {
        match self.phase() {
            Phase::Headers(since) => Some((since + timeouts.header_read, Expired::HeaderRead)),
            Phase::Idle(since) => Some((since + timeouts.idle, Expired::Idle)),
            Phase::Busy(_) => None,
        }
    }

    /// Bytes arrived from the client.
    fn on_bytes(&self, first: &[u8]) {
        let earlier = self.with(|a| {
            if !a.seen_bytes {
                a.seen_bytes = true;
                if first.starts_with(H2_PREFACE_START) {
                    a.h2 = true;
                    // An HTTP/2 connection without a stream is idle, whatever frames arrive.
                    if let Phase::Headers(since) = a.phase {
                        a.phase = Phase::Idle(since);
                    }
                    return false;
                }
            }
            match a.phase {
                Phase::Idle(_) if !a.h2 => {
                    a.phase = Phase::Headers(Instant::now());
                    true
                }
                _ => false,
            }
        });
        if earlier {
            self.wake.notify_one();
        }
    }

    /// The service was handed a request; the returned guard ends it when dropped.
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.with(|a| {
            a.phase = match a.phase {
                Phase::Busy(n) => Phase::Busy(n.saturating_add(1)),
                Phase::Headers(_) | Phase::Idle(_) => Phase::Busy(1),
            }
        });
        RequestGuard(self.clone())
    }

    fn end_request(&self) {
        let idle = self.with(|a| match a.phase {
            Phase::Busy(n) if n > 1 => {
                a.phase = Phase::Busy(n - 1);
                false
            }
            _ => {
                a.phase = Phase::Idle(Instant::now());
                true
            }
        });
        if idle {
            self.wake.notify_one();
            self.room.notify_one();
        }
    }

    /// Ask the driver to close this connection to make room. Returns false if it was asked before.
    pub fn request_eviction(&self) -> bool {
        let first = !self.evict.swap(true, Ordering::AcqRel);
        if first {
            self.wake.notify_one();
        }
        first
    }

    /// Whether eviction was asked for.
    pub fn evicting(&self) -> bool {
        self.evict.load(Ordering::Acquire)
    }

    /// Wait until the deadline may have changed or eviction was asked for.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }
}

/// A request in flight on a connection; dropping it (with the response body, or with the handler
/// when the client goes away first) ends the request.
#[derive(Debug)]
pub struct RequestGuard(Arc<Connection>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// The accepted socket, reporting arriving bytes to its [`Connection`].
#[derive(Debug)]
pub struct Watched {
    stream: TcpStream,
    conn: Arc<Connection>,
}

impl Watched {
    /// Watch `stream` for `conn`.
    pub fn new(stream: TcpStream, conn: Arc<Connection>) -> Self {
        Self { stream, conn }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.on_bytes(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

pin_project! {
    /// A response body that holds its request's [`RequestGuard`] until hyper has sent it (or
    /// dropped it because the client left).
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        guard: RequestGuard,
    }
}

impl<B> std::fmt::Debug for Tracked<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").finish_non_exhaustive()
    }
}

impl<B> Tracked<B> {
    /// `inner`, ending the request when dropped.
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        Self { inner, guard }
    }
}

impl<B: Body> Body for Tracked<B>
where
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(120),
    };

    fn conn() -> Arc<Connection> {
        Arc::new(Connection::new(Arc::new(Notify::new())))
    }

    #[tokio::test]
    async fn an_http1_connection_moves_through_its_phases() {
        let c = conn();
        let Phase::Headers(accepted) = c.phase() else {
            panic!("a new connection waits for headers")
        };
        assert_eq!(
            c.deadline(&T),
            Some((accepted + T.header_read, Expired::HeaderRead))
        );
        c.on_bytes(b"POST /v1/chat");
        assert_eq!(c.phase(), Phase::Headers(accepted));
        let guard = c.begin_request();
        assert_eq!(c.phase(), Phase::Busy(1));
        assert_eq!(c.deadline(&T), None);
        drop(guard);
        let Phase::Idle(idle_since) = c.phase() else {
            panic!("no request in flight is idle")
        };
        assert!(idle_since >= accepted);
        assert_eq!(c.deadline(&T), Some((idle_since + T.idle, Expired::Idle)));
        // The next request's first bytes start its header clock.
        c.on_bytes(b"GET");
        let Phase::Headers(started) = c.phase() else {
            panic!("bytes on an idle HTTP/1 connection start a request")
        };
        assert!(started >= idle_since);
        assert_eq!(
            c.deadline(&T),
            Some((started + T.header_read, Expired::HeaderRead))
        );
        // More bytes of the same headers do not restart it (a slowloris trickle).
        c.on_bytes(b" /v1/models");
        assert_eq!(c.phase(), Phase::Headers(started));
    }

    #[tokio::test]
    async fn an_http2_connection_is_idle_between_streams_whatever_arrives() {
        let c = conn();
        let Phase::Headers(accepted) = c.phase() else {
            panic!("a new connection waits for headers")
        };
        c.on_bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(c.is_h2());
        assert_eq!(c.phase(), Phase::Idle(accepted));
        let a = c.begin_request();
        let b = c.begin_request();
        assert_eq!(c.phase(), Phase::Busy(2));
        drop(a);
        assert_eq!(c.phase(), Phase::Busy(1));
        drop(b);
        let idle = c.phase();
        assert!(matches!(idle, Phase::Idle(_)));
        // A PING frame on an idle connection keeps it idle, and its clock running.
        c.on_bytes(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        assert_eq!(c.phase(), idle);
    }

    #[tokio::test]
    async fn eviction_is_asked_once() {
        let c = conn();
        assert!(!c.evicting());
        assert!(c.request_eviction());
        assert!(!c.request_eviction());
        assert!(c.evicting());
    }
}
