//! What an entry holds and how a hit is answered.
//!
//! An entry is the answer in the client's dialect, in its buffered shape (an OpenAI chat
//! completion or embeddings list, an Anthropic message), whatever the client asked for: a
//! buffered answer is kept as the client got it, a stream's events are assembled into it. A hit
//! is that JSON for a buffered request, or the dialect's stream events rendered from it for a
//! stream request. With it: the usage and the provider/model that answered (the saved-USD
//! counter prices them), and when it was stored (the TTL is checked against it, so a shorter
//! TTL applies to entries stored before the change).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::stages::Context;
use crate::stages::cache::Hit;
use crate::usage::Usage;

/// One stored answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The answer, JSON in the client's dialect (buffered shape).
    pub body: Bytes,
    /// Its usage: prompt, completion, cached, cache write, reasoning tokens.
    pub tokens: [u64; 5],
    /// The provider that answered.
    pub provider: Arc<str>,
    /// The upstream model that answered.
    pub model: Arc<str>,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Entry {
    /// The entry of a request that ended with a complete success: its buffered `answer` or its
    /// stream's `events`. `None` when it must not be stored (no target answered, an estimated
    /// usage, a refusal or content filter, an answer that cannot be read back).
    pub fn of_answer(
        ctx: &Context,
        answer: Option<Bytes>,
        events: Option<BytesMut>,
    ) -> Option<Self> {
        let target = ctx.answered_by.as_ref()?;
        if ctx.usage_estimated && ctx.usage.is_none_or(|u| !u.estimated) {
            return None;
        }
        let body = match (answer, events) {
            // A copy of its own: the answer may be a slice of a much larger read buffer, which
            // the entry would otherwise keep alive for its whole TTL.
            (Some(body), _) => Bytes::copy_from_slice(&body),
            (None, Some(events)) => {
                super::render::assemble(ctx.dialect, &events, ctx.usage.as_ref())?
            }
            (None, None) => return None,
        };
        if super::render::refused(ctx.dialect, &body) {
            return None;
        }
        let usage = ctx.usage.unwrap_or_default();
        Some(Self {
            body,
            tokens: [
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens(),
                usage.cache_write_tokens(),
                usage.reasoning_tokens(),
            ],
            provider: target.provider.name.clone(),
            model: target.model.clone(),
            stored_at_ms: now_ms(),
        })
    }

    /// Whether it is still served with a TTL of `ttl_ms`.
    pub fn fresh(&self, ttl_ms: u64) -> bool {
        now_ms().saturating_sub(self.stored_at_ms) < ttl_ms
    }

    /// Its usage.
    pub fn usage(&self) -> Usage {
        let [p, c, cached, write, reasoning] = self.tokens;
        Usage::new(p, c, cached, write, reasoning)
    }

    /// Bytes it takes, roughly.
    pub fn size(&self) -> usize {
        self.body.len() + self.provider.len() + self.model.len() + 64
    }

    /// The hit for the request in `ctx`: the JSON, or a stream rendered from it. `None` when
    /// the stream cannot be rendered (the request is then a miss).
    pub fn render(&self, ctx: &Context) -> Option<Hit> {
        if !ctx.stream {
            return Some(Hit {
                body: self.body.clone(),
                stream: false,
            });
        }
        let include_usage = ctx.cache_pending.as_ref().is_some_and(|p| p.include_usage);
        let body = super::render::stream(ctx.dialect, &self.body, include_usage)?;
        Some(Hit { body, stream: true })
    }
}
