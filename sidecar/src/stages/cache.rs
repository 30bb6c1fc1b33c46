//! The response cache on the request path (`Route.spec.cache`, docs/caching.md), as two stages:
//!
//! - [`Lookup`], after request redaction (keys are made of the prompt as it leaves the cluster)
//!   and before the budget reserve (a hit spends nothing): it reads the bypass headers, decides
//!   whether the request may be cached at all, computes its key and answers a hit. The exact
//!   lookup comes first; a semantic index (`cache::semantic`, when the Route has `semantic`)
//!   is tried after an exact miss.
//! - [`Fill`], after metering (the entry carries the usage and the model that answered, for the
//!   saved-USD counter of later hits): it keeps the answer the client got (buffered body, or the
//!   stream's events) and, when the request ended with a complete success, stores it: exact
//!   entry first, then the semantic index.
//!
//! Both share what they know about one request through `ctx.cache_pending` ([`Pending`]).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};

use super::{CacheStatus, Context, End, Flow, Hooks, Stage};
use crate::cache::{Cache, Directive, Key};
use crate::error::ProxyError;
use crate::request::Request;

/// An answer from the cache, in the client's dialect: JSON, or for a stream request the whole
/// stream's events.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The body.
    pub body: Bytes,
    /// Whether `body` is an SSE stream.
    pub stream: bool,
}

/// What the cache stages know about one request.
#[derive(Debug, Default)]
pub struct Pending {
    /// What the request's headers asked for.
    pub directive: Directive,
    /// The exact key, once the request was found cacheable.
    pub key: Option<Key>,
    /// A lookup in flight on a remote backend; its result is read when the stage is asked
    /// again.
    pub remote: Option<crate::cache::RemoteLookup>,
    /// Whether the answer may be stored when the request ends well.
    pub fill: bool,
    /// Whether an OpenAI stream asked for its usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The buffered answer, as the client got it.
    pub answer: Option<Bytes>,
    /// The stream's events, as the client got them (dropped when they outgrow the route's
    /// `maxBytes`).
    pub events: Option<BytesMut>,
    /// The semantic lookup after an exact miss (`cache::semantic`), when the route has one.
    pub semantic: Option<Box<crate::cache::semantic::Pending>>,
}

/// Looks requests up in the cache.
#[derive(Debug)]
pub struct Lookup {
    cache: Arc<Cache>,
}

impl Lookup {
    /// The lookup of `cache`.
    pub fn new(cache: Arc<Cache>) -> Self {
        Self { cache }
    }
}

impl Stage for Lookup {
    fn name(&self) -> &'static str {
        "cache_lookup"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            head: true,
            request: true,
            ..Hooks::default()
        }
    }

    fn on_head(&self, ctx: &mut Context, headers: &HeaderMap) -> Result<(), ProxyError> {
        let directive = Directive::of(headers);
        if directive != Directive::default() {
            ctx.cache_pending = Some(Box::new(Pending {
                directive,
                ..Pending::default()
            }));
        }
        Ok(())
    }

    fn on_request(&self, ctx: &mut Context, request: &mut Request) -> Result<Flow, ProxyError> {
        Ok(match self.cache.lookup(ctx, request) {
            Some(hit) => Flow::Cached(hit),
            None => match ctx.cache_pending.as_mut().and_then(|p| {
                let remote = p.remote.as_mut().and_then(|r| r.take_wait());
                remote.or_else(|| p.semantic.as_mut().and_then(|s| s.take_wait()))
            }) {
                // A remote lookup or an embedding to wait for; asked again once it is done.
                Some(wait) => Flow::Wait(wait),
                None => Flow::Continue,
            },
        })
    }
}

/// Stores complete successful answers.
#[derive(Debug)]
pub struct Fill {
    cache: Arc<Cache>,
}

impl Fill {
    /// The fill of `cache`.
    pub fn new(cache: Arc<Cache>) -> Self {
        Self { cache }
    }
}

impl Stage for Fill {
    fn name(&self) -> &'static str {
        "cache_fill"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            answer: true,
            events: true,
            end: true,
            ..Hooks::default()
        }
    }

    fn on_answer(&self, ctx: &mut Context, body: &mut Bytes) {
        if let Some(p) = ctx.cache_pending.as_mut().filter(|p| p.fill) {
            p.answer = Some(body.clone());
        }
    }

    fn on_events(&self, ctx: &mut Context, events: &mut Bytes) {
        let max = self.cache.max_entry_bytes(ctx);
        let Some(p) = ctx.cache_pending.as_mut().filter(|p| p.fill) else {
            return;
        };
        let buf = p.events.get_or_insert_with(BytesMut::new);
        if buf.len() + events.len() > max {
            // Too big to keep: the stream is relayed, never stored.
            p.fill = false;
            p.events = None;
            return;
        }
        buf.extend_from_slice(events);
    }

    fn on_end(&self, ctx: &mut Context, end: End) {
        let complete = match end {
            End::Answered => !ctx.streaming && ctx.status == Some(StatusCode::OK),
            End::StreamComplete => true,
            End::StreamBroken | End::ClientGone => false,
        };
        // Only a complete success is stored (`Cache::fill` checks the rest: that the request
        // was cacheable and not a hit, that the answer is not a refusal).
        if complete && ctx.cache != CacheStatus::Hit {
            self.cache.fill(ctx);
        }
    }
}
