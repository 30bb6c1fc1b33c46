//! Response bodies: whole, streamed event by event (with delays, a gate, or a cut), or aborted.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

use crate::behaviour::StreamGate;

/// The body type of every mock response. An error aborts the connection mid-body, which is how
/// a cut stream reaches the client.
pub(crate) type Body = BoxBody<Bytes, io::Error>;

/// A body sent in one piece, with `content-length`.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// How to pace a sequence of SSE events.
#[derive(Debug, Default)]
pub(crate) struct Pacing {
    /// Sleep before every event but the first.
    pub(crate) delay: Duration,
    /// Wait at this gate before every event from index `gate_from` on.
    pub(crate) gate: Option<StreamGate>,
    pub(crate) gate_from: usize,
    /// After the last event, abort the connection instead of ending the body.
    pub(crate) cut: bool,
}

struct EventsState {
    events: std::vec::IntoIter<Bytes>,
    index: usize,
    pacing: Pacing,
    done: bool,
}

/// A chunked body sending `events` one frame each, paced by `pacing`.
pub(crate) fn events(events: Vec<Bytes>, pacing: Pacing) -> Body {
    let state = EventsState {
        events: events.into_iter(),
        index: 0,
        pacing,
        done: false,
    };
    let frames = stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let Some(event) = st.events.next() else {
            st.done = true;
            return if st.pacing.cut {
                // Let hyper flush what was sent (it flushes when the body is pending), so the
                // client sees the head and the data before the connection dies.
                tokio::task::yield_now().await;
                Some((
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "mock cut the stream",
                    )),
                    st,
                ))
            } else {
                None
            };
        };
        if st.index > 0 && !st.pacing.delay.is_zero() {
            tokio::time::sleep(st.pacing.delay).await;
        }
        if st.index >= st.pacing.gate_from
            && let Some(gate) = &st.pacing.gate
        {
            gate.pass().await;
        }
        st.index += 1;
        Some((Ok(Frame::data(event)), st))
    });
    StreamBody::new(frames).boxed()
}

/// The first half of `bytes`, then an aborted connection.
pub(crate) fn truncated(bytes: Bytes) -> Body {
    let half = bytes.slice(..bytes.len() / 2);
    events(
        vec![half],
        Pacing {
            cut: true,
            ..Pacing::default()
        },
    )
}
