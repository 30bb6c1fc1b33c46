//! Bounds on what the sidecar holds of an upstream answer, so that an upstream that never ends a
//! body, a line or an event costs a bounded amount of memory and CPU:
//!
//! - a buffered answer (2xx body, a refusal relayed to the client, a 429 body read for its delay,
//!   all calls of a fanned-out attempt together) is read up to `--max-response-bytes`;
//! - an SSE event (or a Bedrock event-stream frame) is held up to `--max-event-bytes` until it is
//!   complete; before the first event arrived, that is also the most the attempt reads;
//! - the search for an event's end scans each byte once (`sse::EventEnds`): rescanning the whole
//!   buffer on every read made an endless line cost CPU quadratic in its length.
//!
//! Hitting either cap fails the attempt (the next target is tried); once a stream is committed,
//! it ends with an error event instead.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body::Body;
use http_body_util::BodyExt;

use crate::error::{AttemptError, TransportError};

/// Default `--max-response-bytes`: 256 MiB. The largest real answers are embeddings: 2048 inputs
/// of 3072 dimensions (OpenAI's limits) written as JSON floats take about 125 MB; this leaves
/// twice that.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Default `--max-event-bytes`: 64 MiB. The largest real events carry an image inline (Gemini's
/// image models stream `inlineData`: a 4K PNG is 20–30 MB, a third more as base64).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

/// The attempt error for an answer over `--max-response-bytes`.
pub fn body_too_large(limit: usize) -> AttemptError {
    AttemptError::TooLarge {
        what: "response body",
        limit,
        flag: "--max-response-bytes",
    }
}

/// The attempt error for an event over `--max-event-bytes`.
pub fn event_too_large(limit: usize) -> AttemptError {
    AttemptError::TooLarge {
        what: "event",
        limit,
        flag: "--max-event-bytes",
    }
}

/// How much of upstream answers one attempt may buffer: shared by every call of the attempt.
#[derive(Debug)]
pub struct ResponseBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ResponseBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Count `n` more bytes; `false` once the total is over the limit.
    fn take(&self, n: usize) -> bool {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        before.saturating_add(n) <= self.limit
    }

    /// Read the whole of `body` (whose response carried `headers`) within the budget. A declared
    /// `Content-Length` over what is left fails at once, before anything is read.
    pub async fn read<B>(&self, headers: &HeaderMap, body: B) -> Result<Bytes, AttemptError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let left = self.limit.saturating_sub(self.used.load(Ordering::Relaxed));
        if declared.is_some_and(|len| len > left as u64) {
            return Err(body_too_large(self.limit));
        }
        let mut body = body;
        let mut frames: Vec<Bytes> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| TransportError::Read(Box::new(e)))?;
            if let Ok(data) = frame.into_data() {
                if !self.take(data.len()) {
                    return Err(body_too_large(self.limit));
                }
                frames.push(data);
            }
        }
        // One frame (the common case for small answers) is returned as it is.
        if frames.len() <= 1 {
            return Ok(frames.pop().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
        for f in frames {
            out.extend_from_slice(&f);
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn bodies_are_read_within_the_budget_shared_by_calls() {
        let budget = ResponseBudget::new(10);
        let none = HeaderMap::new();
        let body = budget
            .read(&none, Full::new(Bytes::from_static(b"123456")))
            .await
            .unwrap();
        assert_eq!(&body[..], b"123456");
        // The second call of the same attempt has 4 bytes left.
        let frames = futures::stream::iter(
            [b"12".as_slice(), b"345".as_slice()]
                .map(|b| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(b)))),
        );
        let err = budget
            .read(&none, StreamBody::new(frames))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--max-response-bytes"), "{err}");

        // A declared length over the limit fails before reading.
        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, "11".parse().unwrap());
        let err = ResponseBudget::new(10)
            .read(&declared, Full::new(Bytes::new()))
            .await
            .unwrap_err();
        assert!(matches!(err, AttemptError::TooLarge { limit: 10, .. }));
    }
}
