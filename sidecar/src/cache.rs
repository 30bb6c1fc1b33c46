//! The response cache (`Route.spec.cache`; docs/caching.md): keys, entries, the backends, and
//! the answers a hit is rendered into. The stages that use it are in `stages::cache`.
//!
//! - [`key`]: the normalized request and its SHA-256 key (scope, route, dialect, body).
//! - [`memory`]: the in-process backend, per route bounded in bytes, least recently used first.
//! - [`redis`]: the shared backend, a small RESP client with bounded timeouts; Redis down is
//!   a bypass, never an error.
//! - [`answer`]: what an entry holds (the answer in the client's dialect, buffered shape) and
//!   how a hit is rendered: JSON, or a stream of the dialect's events.

pub mod answer;
pub mod key;
pub mod memory;
pub mod metrics;
pub mod redis;
pub mod render;
pub mod semantic;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gatehouse_crds::config::{CacheBackendConfig, CacheConfig};
use http::HeaderMap;

use crate::dialect::{Dialect, Operation};
use crate::metrics::Metrics;
use crate::request::Request;
use crate::stages::cache::Hit;
use crate::stages::{CacheStatus, Context};

pub use answer::Entry;
pub use key::Key;

/// Settings of the cache that do not come from the Routes (flags).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The Redis routes with `backend: redis` use (`--cache-redis-url`); `None`: those routes
    /// bypass the cache.
    pub redis: Option<redis::Settings>,
}

/// What the request's headers ask of the cache.
///
/// `x-gatehouse-cache: bypass` and `Cache-Control: no-cache` skip the lookup, and the fresh
/// answer replaces the stored one; `Cache-Control: no-store` skips the lookup and the fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directive {
    /// Whether a stored answer may be served.
    pub lookup: bool,
    /// Whether the answer may be stored.
    pub store: bool,
}

impl Default for Directive {
    fn default() -> Self {
        Self {
            lookup: true,
            store: true,
        }
    }
}

impl Directive {
    /// What `headers` ask.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for v in headers.get_all("x-gatehouse-cache") {
            if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"bypass") {
                d.lookup = false;
            }
        }
        for v in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for part in v.split(',') {
                let part = part.trim();
                if part.eq_ignore_ascii_case("no-cache") {
                    d.lookup = false;
                } else if part.eq_ignore_ascii_case("no-store") {
                    d.lookup = false;
                    d.store = false;
                }
            }
        }
        d
    }
}

/// A lookup on a remote backend in flight: the request waits for it (bounded by the backend's
/// timeout), then the lookup stage reads its result.
pub struct RemoteLookup {
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// What the lookup found once it finished: `Some(None)` nothing, `None` the backend failed
    /// (or has not answered yet).
    slot: Arc<Mutex<Option<Option<Entry>>>>,
}

impl std::fmt::Debug for RemoteLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteLookup")
    }
}

impl RemoteLookup {
    /// The future to wait on, once.
    pub fn take_wait(&mut self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        self.wait.take()
    }

    fn result(&self) -> Option<Option<Entry>> {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// The cache of one sidecar: its memory backend, its Redis client, its metrics. Outlives
/// config snapshots (entries survive a reload; a route's new `maxBytes` applies at its next
/// fill).
#[derive(Debug)]
pub struct Cache {
    memory: memory::Memory,
    redis: Option<Arc<redis::Redis>>,
    metrics: Arc<Metrics>,
    /// The semantic indexes and the embedder (`semantic`).
    semantic: semantic::Runtime,
}

impl Cache {
    /// A cache with `settings`, counting into `metrics`.
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            memory: memory::Memory::default(),
            redis: settings
                .redis
                .clone()
                .map(|s| Arc::new(redis::Redis::new(s))),
            metrics,
            semantic: semantic::Runtime::default(),
        }
    }

    /// The route's cache settings, when the request's route has a cache.
    fn config(ctx: &Context) -> Option<&CacheConfig> {
        ctx.route.as_deref().and_then(|r| r.config.cache.as_ref())
    }

    /// Largest entry a route keeps: its whole `maxBytes`.
    pub fn max_entry_bytes(&self, ctx: &Context) -> usize {
        Self::config(ctx).map_or(0, |c| usize::try_from(c.max_bytes).unwrap_or(usize::MAX))
    }

    /// Look the request up: a hit to answer, or `None` (miss, bypass, or a remote lookup left
    /// in `ctx.cache_pending.remote` to wait for). Sets `ctx.cache`.
    pub fn lookup(&self, ctx: &mut Context, request: &Request) -> Option<Hit> {
        let config = Self::config(ctx)?.clone();
        // Asked again after the embedding call of a semantic lookup.
        if let Some(answer) = self.semantic_resume(ctx, &config, request) {
            return answer;
        }
        let pending = ctx.cache_pending.get_or_insert_with(Box::default);
        if let Some(key) = pending.key.clone() {
            // Asked again after a remote lookup.
            let found = pending.remote.take().and_then(|r| r.result());
            return self.found(ctx, &config, &key, found, request);
        }
        if !cacheable(ctx, request, &config) {
            ctx.cache = CacheStatus::Bypass;
            return None;
        }
        let Some(key) = key::Key::of(ctx, request, &config) else {
            ctx.cache = CacheStatus::Bypass;
            return None;
        };
        let directive = ctx
            .cache_pending
            .as_ref()
            .map_or(Directive::default(), |p| p.directive);
        let pending = ctx.cache_pending.get_or_insert_with(Box::default);
        pending.key = Some(key.clone());
        pending.fill = directive.store;
        pending.include_usage = request.index.include_usage;
        if !directive.lookup {
            ctx.cache = CacheStatus::Bypass;
            return None;
        }
        match config.backend {
            CacheBackendConfig::Memory => {
                let found = self
                    .memory
                    .get(route_of(ctx), &key, config.ttl_ms, &self.metrics);
                self.found(ctx, &config, &key, Some(found), request)
            }
            CacheBackendConfig::Redis => {
                let Some(redis) = self.redis.clone() else {
                    // No Redis configured for this sidecar: bypass, never fail.
                    ctx.cache = CacheStatus::Bypass;
                    return None;
                };
                let slot = Arc::new(Mutex::new(None));
                let result = slot.clone();
                let metrics = self.metrics.clone();
                let wait = Box::pin(async move {
                    let found = redis.get(&key, &metrics).await;
                    *result.lock().unwrap_or_else(PoisonError::into_inner) = found;
                });
                if let Some(p) = ctx.cache_pending.as_mut() {
                    p.remote = Some(RemoteLookup {
                        wait: Some(wait),
                        slot,
                    });
                }
                None
            }
        }
    }

    /// What a finished lookup found: `None` means the backend could not answer (bypass).
    fn found(
        &self,
        ctx: &mut Context,
        config: &CacheConfig,
        _key: &Key,
        found: Option<Option<Entry>>,
        request: &Request,
    ) -> Option<Hit> {
        match found {
            None => {
                // The backend failed or timed out: neither served nor stored.
                ctx.cache = CacheStatus::Bypass;
                if let Some(p) = ctx.cache_pending.as_mut() {
                    p.fill = false;
                }
                None
            }
            Some(None) => {
                // An exact miss: the semantic lookup, when the route has one (a miss either way
                // until the embedding is in).
                self.semantic_start(ctx, config, request);
                None
            }
            Some(Some(entry)) if entry.fresh(config.ttl_ms) => {
                // A stream that cannot be rendered from the entry is a miss (and refills it).
                let hit = entry.render(ctx);
                if hit.is_none() {
                    ctx.cache = CacheStatus::Miss;
                    return None;
                }
                ctx.cache = CacheStatus::Hit;
                if let Some(p) = ctx.cache_pending.as_mut() {
                    p.fill = false;
                }
                ctx.cost_usd = Some(0.0);
                self.count_saved(ctx, &entry);
                hit
            }
            Some(Some(_)) => {
                // Expired: as a miss.
                self.semantic_start(ctx, config, request);
                None
            }
        }
    }

    /// What a hit saved: the stored usage at the current price of the model that answered it.
    fn count_saved(&self, ctx: &Context, entry: &Entry) {
        let Some(snapshot) = ctx.snapshot.as_deref() else {
            return;
        };
        let Some(pricing) = snapshot
            .providers
            .get(&*entry.provider)
            .and_then(|p| p.models.get(&*entry.model))
        else {
            return;
        };
        let saved = entry.usage().cost(pricing);
        self.metrics.cache.count_saved(route_of(ctx), saved);
    }

    /// Store the answer of a request that ended with a complete success, if it may be stored.
    pub fn fill(&self, ctx: &mut Context) {
        let Some(config) = Self::config(ctx).cloned() else {
            return;
        };
        // A downgraded answer came from another Route's (cheaper) targets: not the answer this
        // Route gives.
        if ctx.downgraded_to.is_some() {
            return;
        }
        let Some(pending) = ctx.cache_pending.as_mut().filter(|p| p.fill) else {
            return;
        };
        let semantic = pending.semantic.take();
        let (Some(key), answer, events) = (
            pending.key.clone(),
            pending.answer.take(),
            pending.events.take(),
        ) else {
            return;
        };
        let Some(entry) = Entry::of_answer(ctx, answer, events) else {
            return;
        };
        match config.backend {
            CacheBackendConfig::Memory => {
                self.memory.put(
                    route_of(ctx),
                    key.clone(),
                    entry,
                    config.max_bytes,
                    &self.metrics,
                );
            }
            CacheBackendConfig::Redis => {
                if let Some(redis) = self.redis.clone() {
                    let metrics = self.metrics.clone();
                    let ttl = Duration::from_millis(config.ttl_ms);
                    let key = key.clone();
                    tokio::spawn(async move { redis.put(&key, &entry, ttl, &metrics).await });
                }
            }
        }
        // The semantic index points at the exact entry (after an exact miss, with its embedding).
        self.semantic_fill(ctx, &config, &key, semantic);
    }
}

/// The route of a request (its name is the memory backend's partition).
fn route_of(ctx: &Context) -> &Arc<str> {
    static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    ctx.route
        .as_deref()
        .map_or_else(|| NONE.get_or_init(|| Arc::from("")), |r| &r.name)
}

/// Whether a request may be answered from (and stored in) the cache at all.
///
/// - Chat in the OpenAI and Anthropic dialects, and embeddings; not Responses (`/v1/responses`
///   carries server-side state such as `previous_response_id`).
/// - Deterministic: `temperature` set to 0 and `n` at most 1 (embeddings always are), unless
///   the route allows non-deterministic requests. An unset temperature is the provider's default,
///   1 for OpenAI and Anthropic, so it bypasses.
/// - Not on a route whose redaction restores values (`maskAndRestore`): the answer holds the
///   caller's own values, and placeholders make different prompts look alike.
fn cacheable(ctx: &Context, request: &Request, config: &CacheConfig) -> bool {
    let dialect_ok = matches!(
        (request.op, ctx.dialect),
        (Operation::Chat, Dialect::OpenAi | Dialect::Anthropic)
            | (Operation::Embeddings, Dialect::OpenAi)
    );
    if !dialect_ok {
        return false;
    }
    if ctx
        .route
        .as_deref()
        .and_then(|r| r.config.redact.as_ref())
        .is_some_and(|r| r.action == gatehouse_crds::config::RedactActionConfig::MaskAndRestore)
    {
        return false;
    }
    request.op == Operation::Embeddings
        || config.allow_non_deterministic
        || key::deterministic(request.body())
}
