//! Reading a request body: within the size limit, charged to the in-flight [`BodyBudget`] as it
//! arrives, and with a progress timeout so a client that stops sending mid-body is answered 408
//! and its connection freed instead of holding a task and budget forever.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Request;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::budget::{BodyBudget, BodyPermit};
use crate::error::ProxyError;

/// How bodies are read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted body, in bytes.
    pub max_bytes: usize,
    /// Longest wait for the next piece of the body.
    pub progress_timeout: Duration,
    /// Longest time for the whole body (and for draining a shed one).
    pub deadline: Duration,
}

/// A complete request body and its charge against the budget (held as long as the bytes live).
#[derive(Debug)]
pub struct Body {
    /// The bytes.
    pub bytes: Bytes,
    /// The charge; dropping it gives the bytes back to the budget.
    pub permit: BodyPermit,
}

/// Read the whole body of `req`.
pub async fn body(
    req: Request<Incoming>,
    limits: Limits,
    budget: &Arc<BodyBudget>,
) -> Result<Body, ProxyError> {
    let limit = limits.max_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let declared = declared.map_or(0, |len| len as usize);
    // The whole body within `deadline`: the progress timeout alone lets a client trickle a byte
    // just inside it forever while its declared length stays charged.
    let until = tokio::time::Instant::now() + limits.deadline;
    let mut permit = budget.permit();
    let mut body = req.into_body();
    // A declared length is charged before a byte is read: shedding then costs no memory.
    if !permit.grow_to(declared) {
        drop(permit);
        discard(&mut body, limits, until, 0).await;
        return Err(ProxyError::Overloaded);
    }
    let mut buf = BytesMut::with_capacity(declared);
    loop {
        let wait = limits
            .progress_timeout
            .min(until.saturating_duration_since(tokio::time::Instant::now()));
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => {
                return Err(ProxyError::BodyTimeout {
                    ms: wait.as_millis() as u64,
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ProxyError::InvalidRequest(format!(
                    "failed to read request body: {e}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = buf.len().saturating_add(data.len());
        if total > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        if !permit.grow_to(total) {
            let read = buf.len();
            drop(buf);
            drop(permit);
            discard(&mut body, limits, until, read).await;
            return Err(ProxyError::Overloaded);
        }
        buf.extend_from_slice(&data);
    }
    Ok(Body {
        bytes: buf.freeze(),
        permit,
    })
}

/// Read and drop the rest of a body that is being shed, so the 503 reaches the client: a server
/// that answers and closes while the client is still sending leaves unread bytes in the socket,
/// and the kernel then resets the connection, often before the client has read the answer. Costs
/// no memory (each piece is dropped as it arrives) and stops at the size limit, at the progress
/// timeout or when the client stops: a body that is not drained closes the connection as before.
async fn discard(
    body: &mut Incoming,
    limits: Limits,
    until: tokio::time::Instant,
    mut read: usize,
) {
    loop {
        let wait = limits
            .progress_timeout
            .min(until.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    read = read.saturating_add(data.len());
                    if read > limits.max_bytes {
                        return;
                    }
                }
            }
            Err(_) | Ok(None) | Ok(Some(Err(_))) => return,
        }
    }
}
