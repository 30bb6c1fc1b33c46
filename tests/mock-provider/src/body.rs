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
    /// Send only the first half of the last event (a stream truncated inside an event or frame).
    pub(crate) half_last: bool,
    /// After the last event, stay silent with the connection open (a stalled stream).
    pub(crate) stall: bool,
}

impl Pacing {
    /// Pacing for `behaviour`'s stream, whose gate holds events from index `gate_from` on and
    /// which is cut as `cut` says (see [`Fault::stream_cut`](crate::behaviour::Fault)).
    pub(crate) fn of(
        behaviour: &crate::behaviour::Behaviour,
        gate_from: usize,
        cut: Option<crate::behaviour::StreamCut>,
    ) -> Self {
        Self {
            delay: behaviour.chunk_delay,
            gate: behaviour.gate.clone(),
            gate_from,
            cut: cut.is_some_and(|c| c.abort),
            half_last: cut.is_some_and(|c| c.half_last),
            stall: cut.is_some_and(|c| c.stall),
        }
    }
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
            if st.pacing.stall {
                std::future::pending::<()>().await;
            }
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
        let event = if st.pacing.half_last && st.events.len() == 0 {
            event.slice(..event.len() / 2)
        } else {
            event
        };
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

/// One SSE event `data: JSON\n\n`.
pub(crate) fn sse_data(value: &impl serde::Serialize) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    // Serializing plain values into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// One SSE event with a name: `event: NAME\ndata: JSON\n\n`.
pub(crate) fn sse_named(event: &str, value: &impl serde::Serialize) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(event.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// A `text/event-stream` response sending `events` paced by `pacing`.
pub(crate) fn sse_response(events: Vec<Bytes>, pacing: Pacing) -> http::Response<Body> {
    let mut response = http::Response::new(self::events(events, pacing));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    response
}

/// A JSON response with `status`.
pub(crate) fn json_response(
    status: http::StatusCode,
    value: &impl serde::Serialize,
) -> http::Response<Body> {
    let mut response = http::Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A 200 JSON answer, damaged as `fault` asks (garbage: not JSON; cut: half the body, then an
/// aborted connection, or a normal end for a clean-ended truncation).
pub(crate) fn success_json(
    value: &impl serde::Serialize,
    fault: &crate::behaviour::Fault,
) -> http::Response<Body> {
    use crate::behaviour::Fault;
    let mut response = json_response(http::StatusCode::OK, &());
    let bytes = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
    *response.body_mut() = match fault {
        Fault::Garbage => full(Bytes::from_static(
            b"{\"id\": \"garbage\", \"content\": [<<not json",
        )),
        Fault::CutAfter { .. }
        | Fault::CutInside {
            clean_end: false, ..
        } => truncated(bytes),
        Fault::CutInside {
            clean_end: true, ..
        } => full(bytes.slice(..bytes.len() / 2)),
        _ => full(bytes),
    };
    response
}
