//! The semantic cache: after an exact miss, a request whose last user message means the same as
//! a cached one, in the same conversation, with the same model and parameters, is answered with
//! that one's answer, when the guards agree.
//!
//! - [`key`]: what must match exactly (hashed into a context) and the text that is embedded.
//! - [`guards`]: numbers, named entities, negations, relation order and language must match.
//! - [`index`]: the bounded approximate-nearest-neighbour index of one scope.
//! - [`Semantic`]: one index per (Route, scope), bounded by the Route's `maxEntries`. A scope's
//!   one-time partitioning runs on a blocking thread from a copy of its entries, never in an
//!   insert or a lookup and never on a runtime worker; lookups meanwhile are flat scans.
//!
//! The embedding comes from the Route's `embeddingRoute`, called through the gateway's own
//! request path (see `proxy::Embedder`); failure or timeout bypasses the cache.

pub mod guards;
pub mod index;
pub mod key;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use base64::Engine;
use gatehouse_crds::config::{CacheBackendConfig, CacheConfig, CacheScopeConfig};
use serde_json::Value;

use super::{Cache, RemoteLookup, route_of};
use crate::dialect::Operation;
use crate::proxy::Embedder;
use crate::request::Request;
use crate::stages::cache::Hit;
use crate::stages::{CacheStatus, Context};

use guards::Features;
use index::{Index, TrainJob};
pub use key::Key;

/// Candidates above the threshold checked against the guards, most similar first.
const CANDIDATES: usize = 4;

/// The semantic side of a sidecar's cache: the indexes (each entry points at an exact-cache
/// key) and the embedder.
#[derive(Debug, Default)]
pub struct Runtime {
    /// The indexes, by (Route, scope).
    pub index: Semantic<super::Key>,
    embedder: OnceLock<Arc<Embedder>>,
}

impl Runtime {
    /// Embeddings go through `embedder` (the gateway's own request path).
    pub fn bind(&self, embedder: Arc<Embedder>) {
        let _ = self.embedder.set(embedder);
    }
}

/// A request's semantic lookup, in `stages::cache::Pending`.
pub enum Pending {
    /// The embedding is being asked for; the request waits on `wait` (bounded by the Route's
    /// `semantic.timeout`), then the lookup stage reads `slot`.
    Embedding {
        /// The request's semantic key.
        key: Key,
        /// What the request waits on, taken once.
        wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        /// The unit embedding once it arrived; empty on failure or timeout.
        slot: Arc<Mutex<Option<Vec<f32>>>>,
    },
    /// Looked up; `embedding` is kept for the fill (`None`: the embedding failed, bypassed).
    Done {
        /// The request's semantic key.
        key: Key,
        /// Its unit embedding.
        embedding: Option<Vec<f32>>,
    },
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedding { .. } => f.write_str("Embedding"),
            Self::Done { embedding, .. } => f
                .debug_struct("Done")
                .field("embedded", &embedding.is_some())
                .finish(),
        }
    }
}

impl Pending {
    /// The embedding call to wait on, once.
    pub fn take_wait(&mut self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        match self {
            Self::Embedding { wait, .. } => wait.take(),
            Self::Done { .. } => None,
        }
    }
}

/// The index partition of the request's scope: the namespace, and with `scope: workload` the
/// workload (as the exact key has it).
fn scope_of(ctx: &Context, config: &CacheConfig) -> String {
    let workload = ctx.identity.workload.as_deref();
    let namespace = workload.map_or("", |w| &*w.namespace);
    match config.scope {
        CacheScopeConfig::Namespace => format!("ns/{namespace}"),
        CacheScopeConfig::Workload => {
            // Length-prefixed: no namespace and workload pair reads as another.
            let name = workload.map_or("", |w| &*w.name);
            format!("wl/{}/{namespace}/{name}", namespace.len())
        }
    }
}

impl Cache {
    /// Binds the embedder semantic lookups use.
    pub fn bind_embedder(&self, embedder: Arc<Embedder>) {
        self.semantic.bind(embedder);
    }

    /// After an exact miss: start the semantic lookup (the embedding call the request then
    /// waits on) when the Route has one and the request has a semantic key. Sets `ctx.cache`
    /// to `Miss` either way.
    pub(super) fn semantic_start(
        &self,
        ctx: &mut Context,
        config: &CacheConfig,
        request: &Request,
    ) {
        ctx.cache = CacheStatus::Miss;
        let Some(sc) = config.semantic.as_ref() else {
            return;
        };
        let started = ctx
            .cache_pending
            .as_ref()
            .is_some_and(|p| p.semantic.is_some());
        if started || request.op != Operation::Chat {
            return;
        }
        let Some(embedder) = self.semantic.embedder.get().cloned() else {
            return;
        };
        // The context also holds the headers routing rules read (they choose the targets).
        let mut scope = scope_of(ctx, config);
        for (name, value) in &ctx.rule_headers {
            scope.push('\n');
            scope.push_str(name.as_str());
            scope.push(':');
            scope.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        let Some(key) = key::of(request.body(), ctx.dialect, route_of(ctx), &scope) else {
            return;
        };
        let slot = Arc::new(Mutex::new(None));
        let result = slot.clone();
        let alias = sc.embedding_route.clone();
        let text = key.text.clone();
        let tag = ctx.identity.tag.clone();
        let timeout = Duration::from_millis(sc.timeout_ms);
        let wait = Box::pin(async move {
            let call = embedder.embed(&alias, &text, tag.as_deref());
            let embedding = match tokio::time::timeout(timeout, call).await {
                Ok(Some(body)) => parse_embedding(&body),
                Ok(None) => None,
                Err(_) => {
                    tracing::debug!(route = %alias, "embedding timed out: semantic cache bypassed");
                    None
                }
            };
            *result.lock().unwrap_or_else(PoisonError::into_inner) = embedding;
        });
        if let Some(p) = ctx.cache_pending.as_mut() {
            p.semantic = Some(Box::new(Pending::Embedding {
                key,
                wait: Some(wait),
                slot,
            }));
        }
    }

    /// Asked again once the embedding call ended: search the index. `None` when no semantic
    /// lookup was waiting (the exact lookup goes on as usual); otherwise what to answer.
    pub(super) fn semantic_resume(
        &self,
        ctx: &mut Context,
        config: &CacheConfig,
        request: &Request,
    ) -> Option<Option<Hit>> {
        let pending = ctx.cache_pending.as_mut()?;
        let Some(Pending::Embedding {
            key,
            wait: None,
            slot,
        }) = pending.semantic.as_deref()
        else {
            return None;
        };
        let embedding = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let key = key.clone();
        pending.semantic = Some(Box::new(Pending::Done {
            key: key.clone(),
            embedding: embedding.clone(),
        }));
        let Some(embedding) = embedding else {
            // The embedding failed or timed out: bypass (the exact entry is still stored).
            ctx.cache = CacheStatus::Bypass;
            return Some(None);
        };
        let Some(sc) = config.semantic.as_ref() else {
            return Some(None);
        };
        let scope = scope_of(ctx, config);
        let route = route_of(ctx).clone();
        match self
            .semantic
            .index
            .lookup(&route, &scope, &key, &embedding, sc.threshold as f32)
        {
            Lookup::Hit(exact, similarity) => {
                tracing::debug!(route = %route, similarity, "semantic cache hit");
                match config.backend {
                    CacheBackendConfig::Memory => {
                        let found = self
                            .memory
                            .get(&route, &exact, config.ttl_ms, &self.metrics);
                        Some(self.found(ctx, config, &exact, Some(found), request))
                    }
                    CacheBackendConfig::Redis => {
                        let Some(redis) = self.redis.clone() else {
                            ctx.cache = CacheStatus::Bypass;
                            return Some(None);
                        };
                        // The entry lives in Redis: fetch it like an exact lookup would.
                        let slot = Arc::new(Mutex::new(None));
                        let result = slot.clone();
                        let metrics = self.metrics.clone();
                        let wait = Box::pin(async move {
                            let found = redis.get(&exact, &metrics).await;
                            *result.lock().unwrap_or_else(PoisonError::into_inner) = found;
                        });
                        if let Some(p) = ctx.cache_pending.as_mut() {
                            p.remote = Some(RemoteLookup {
                                wait: Some(wait),
                                slot,
                            });
                        }
                        Some(None)
                    }
                }
            }
            Lookup::Guarded(why, similarity) => {
                tracing::debug!(route = %route, similarity, guard = ?why, "semantic candidate refused by a guard");
                ctx.cache = CacheStatus::Miss;
                Some(None)
            }
            Lookup::Miss => {
                ctx.cache = CacheStatus::Miss;
                Some(None)
            }
        }
    }

    /// After the exact entry under `exact` was stored: index the request's embedding.
    pub(super) fn semantic_fill(
        &self,
        ctx: &Context,
        config: &CacheConfig,
        exact: &super::Key,
        pending: Option<Box<Pending>>,
    ) {
        let (Some(sc), Some(pending)) = (config.semantic.as_ref(), pending) else {
            return;
        };
        if let Pending::Done {
            key,
            embedding: Some(embedding),
        } = *pending
        {
            let scope = scope_of(ctx, config);
            let max = usize::try_from(sc.max_entries).unwrap_or(usize::MAX);
            self.semantic
                .index
                .insert(route_of(ctx), &scope, max, &key, &embedding, exact.clone());
        }
    }
}

/// One cached prompt: its guard features and what the cache stage stored for it.
#[derive(Debug)]
struct Entry<V> {
    features: Features,
    value: V,
}

type Scoped<V> = Arc<RwLock<Index<Entry<V>>>>;

/// The indexes by (Route, scope).
type Indexes<V> = HashMap<(Arc<str>, Arc<str>), Scoped<V>>;

/// The semantic indexes of the Routes that have one, by (Route, scope).
#[derive(Debug)]
pub struct Semantic<V> {
    indexes: Mutex<Indexes<V>>,
    /// Tests: called on the training thread before it trains.
    #[cfg(test)]
    train_hook: Option<TrainHook>,
}

#[cfg(test)]
#[derive(Clone)]
struct TrainHook(Arc<dyn Fn() + Send + Sync>);

#[cfg(test)]
impl std::fmt::Debug for TrainHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrainHook")
    }
}

impl<V> Default for Semantic<V> {
    fn default() -> Self {
        Self {
            indexes: Mutex::new(HashMap::new()),
            #[cfg(test)]
            train_hook: None,
        }
    }
}

/// A scope's training under way off its lock. Applies its result to the index; dropped
/// without applying (its thread never ran, or it panicked), it ends the training so a later
/// insert may start another.
struct Training<V> {
    index: Scoped<V>,
    job: Option<TrainJob>,
}

impl<V> Training<V> {
    fn run(mut self) {
        if let Some(job) = self.job.take() {
            let trained = job.run();
            self.index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .apply(trained);
        }
    }
}

impl<V> Drop for Training<V> {
    fn drop(&mut self) {
        if self.job.is_some() {
            self.index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .abandon_training();
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<V> {
    /// A cached prompt close enough whose guards agree: its value and similarity.
    Hit(V, f32),
    /// Nothing above the threshold.
    Miss,
    /// Something above the threshold, refused by a guard (the most similar one's reason).
    Guarded(guards::Mismatch, f32),
}

impl<V: Clone + Send + Sync + 'static> Semantic<V> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self, route: &str, scope: &str, dim: usize, max_entries: usize) -> Option<Scoped<V>> {
        let mut map = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        let key = (Arc::<str>::from(route), Arc::<str>::from(scope));
        let idx = map
            .entry(key)
            .or_insert_with(|| Arc::new(RwLock::new(Index::new(dim, max_entries))))
            .clone();
        // An index of another dimension (the embedding route changed models): start over.
        let stale = idx.read().map(|i| i.dim() != dim).unwrap_or(true);
        if stale {
            let fresh = Arc::new(RwLock::new(Index::new(dim, max_entries)));
            map.insert(
                (Arc::<str>::from(route), Arc::<str>::from(scope)),
                fresh.clone(),
            );
            return Some(fresh);
        }
        Some(idx)
    }

    /// The best cached value for `key` (embedded as `embedding`, unit length) in `route`'s
    /// `scope` with a similarity of at least `threshold` whose guards agree.
    pub fn lookup(
        &self,
        route: &str,
        scope: &str,
        key: &Key,
        embedding: &[f32],
        threshold: f32,
    ) -> Lookup<V> {
        let Some(idx) = self.existing(route, scope) else {
            return Lookup::Miss;
        };
        let idx = idx.read().unwrap_or_else(|e| e.into_inner());
        let found = idx.search(key.context, embedding, CANDIDATES, threshold);
        if found.is_empty() {
            return Lookup::Miss;
        }
        let features = Features::of(&key.text);
        let mut refused = None;
        for f in &found {
            match features.compatible(&f.value.features) {
                Ok(()) => return Lookup::Hit(f.value.value.clone(), f.similarity),
                Err(why) => {
                    refused.get_or_insert((why, f.similarity));
                }
            }
        }
        match refused {
            Some((why, sim)) => Lookup::Guarded(why, sim),
            None => Lookup::Miss,
        }
    }

    /// Files `value` under `key` (embedded as `embedding`, unit length) in `route`'s `scope`,
    /// evicting that scope's oldest entries past `max_entries`.
    pub fn insert(
        &self,
        route: &str,
        scope: &str,
        max_entries: usize,
        key: &Key,
        embedding: &[f32],
        value: V,
    ) {
        let Some(idx) = self.index(route, scope, embedding.len(), max_entries) else {
            return;
        };
        let entry = Entry {
            features: Features::of(&key.text),
            value,
        };
        let train = {
            let mut idx = idx.write().unwrap_or_else(|e| e.into_inner());
            idx.set_max_entries(max_entries);
            idx.insert(key.context, embedding, entry);
            idx.start_training()
        };
        if train {
            self.train(idx);
        }
    }

    /// Partitions `index` (its training just started) off its lock and off the runtime's
    /// workers: the entries are copied under a read lock, trained on a blocking thread (a
    /// thread of its own outside a runtime), and the result applied under the write lock.
    fn train(&self, index: Scoped<V>) {
        let job = index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .training_job();
        let training = Training { index, job };
        #[cfg(test)]
        let hook = self.train_hook.clone();
        let work = move || {
            #[cfg(test)]
            if let Some(hook) = hook {
                (hook.0)();
            }
            training.run();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(work)),
            Err(_) => {
                let spawned = std::thread::Builder::new()
                    .name("gatehouse-semantic-train".into())
                    .spawn(work);
                if let Err(e) = spawned {
                    // The closure, and with it the training, was dropped: it ended.
                    tracing::warn!("failed to start the semantic index training: {e}");
                }
            }
        }
    }

    /// Whether `route`'s index in `scope` is partitioned (false: it is a flat scan, or absent).
    pub fn is_partitioned(&self, route: &str, scope: &str) -> bool {
        self.existing(route, scope).is_some_and(|i| {
            i.read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_partitioned()
        })
    }

    /// Entries held for `route` in `scope`.
    pub fn len(&self, route: &str, scope: &str) -> usize {
        self.existing(route, scope)
            .map(|i| i.read().unwrap_or_else(|e| e.into_inner()).len())
            .unwrap_or(0)
    }

    /// Drops the indexes of Routes not in `keep` (a Route deleted or its semantic block removed).
    pub fn retain_routes(&self, keep: impl Fn(&str) -> bool) {
        let mut map = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(route, _), _| keep(route));
    }

    fn existing(&self, route: &str, scope: &str) -> Option<Scoped<V>> {
        let map = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(Arc::<str>::from(route), Arc::<str>::from(scope)))
            .cloned()
    }
}

/// The first embedding of an OpenAI-shaped embeddings answer (`data[0].embedding`, floats or
/// base64 little-endian f32), scaled to unit length; `None` for anything else.
pub fn parse_embedding(body: &[u8]) -> Option<Vec<f32>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("data")?.get(0)?.get("embedding")?;
    let raw: Vec<f32> = match e {
        Value::Array(xs) => xs
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<_>>()?,
        Value::String(s) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
            if bytes.len() % 4 != 0 {
                return None;
            }
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        _ => return None,
    };
    if raw.is_empty() {
        return None;
    }
    index::normalized(&raw)
}

/// The body of the embeddings request for `text` on the embedding Route `alias`.
pub fn embedding_request(alias: &str, text: &str) -> Vec<u8> {
    serde_json::json!({"model": alias, "input": text})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Dialect;

    fn key(text: &str, ctx: u64) -> Key {
        Key {
            context: ctx,
            text: text.to_string(),
        }
    }

    #[test]
    fn hit_miss_and_guarded() {
        let s: Semantic<u32> = Semantic::new();
        let e = |x: f32| index::normalized(&[1.0, x, 0.0, 0.0]).unwrap();
        s.insert("r", "ns", 10, &key("convert 30 USD to EUR", 1), &e(0.0), 1);
        // Close and compatible: a hit.
        assert!(matches!(
            s.lookup(
                "r",
                "ns",
                &key("please convert 30 USD to EUR", 1),
                &e(0.05),
                0.9
            ),
            Lookup::Hit(1, _)
        ));
        // Close but another number: guarded.
        assert!(matches!(
            s.lookup("r", "ns", &key("convert 40 USD to EUR", 1), &e(0.05), 0.9),
            Lookup::Guarded(guards::Mismatch::Numbers, _)
        ));
        // Far: a miss. Another scope, route or context: a miss.
        assert_eq!(
            s.lookup("r", "ns", &key("x", 1), &e(5.0), 0.9),
            Lookup::Miss
        );
        assert_eq!(
            s.lookup("r", "other", &key("convert 30 USD to EUR", 1), &e(0.0), 0.9),
            Lookup::Miss
        );
        assert_eq!(
            s.lookup("r2", "ns", &key("convert 30 USD to EUR", 1), &e(0.0), 0.9),
            Lookup::Miss
        );
        assert_eq!(
            s.lookup("r", "ns", &key("convert 30 USD to EUR", 2), &e(0.0), 0.9),
            Lookup::Miss
        );
    }

    #[test]
    fn a_guarded_best_candidate_falls_back_to_a_compatible_one() {
        let s: Semantic<u32> = Semantic::new();
        let e = |x: f32| index::normalized(&[1.0, x]).unwrap();
        s.insert("r", "ns", 10, &key("what is 2 plus 3", 0), &e(0.0), 23);
        s.insert("r", "ns", 10, &key("what is 2 plus 4", 0), &e(0.1), 24);
        assert!(matches!(
            s.lookup("r", "ns", &key("what's 2 plus 4", 0), &e(0.0), 0.9),
            Lookup::Hit(24, _)
        ));
    }

    #[test]
    fn bounded_per_scope_and_a_new_dimension_starts_over() {
        let s: Semantic<u32> = Semantic::new();
        for i in 0..30u32 {
            let v = index::normalized(&[1.0, i as f32]).unwrap();
            s.insert("r", "a", 10, &key("q", 0), &v, i);
        }
        s.insert("r", "b", 10, &key("q", 0), &[1.0, 0.0], 0);
        assert_eq!(s.len("r", "a"), 10);
        assert_eq!(s.len("r", "b"), 1);
        // A smaller maxEntries applies at the next insert.
        s.insert("r", "b", 1, &key("q", 0), &[0.0, 1.0], 1);
        assert_eq!(s.len("r", "b"), 1);
        s.insert("r", "a", 10, &key("q", 0), &[1.0, 0.0, 0.0], 0);
        assert_eq!(s.len("r", "a"), 1);
        s.retain_routes(|r| r != "r");
        assert_eq!(s.len("r", "b"), 0);
    }

    #[test]
    fn scopes_separate_namespaces_and_with_scope_workload_workloads() {
        use crate::workload::Workload;
        let config = |scope| CacheConfig {
            ttl_ms: 1,
            scope,
            max_bytes: 1,
            allow_non_deterministic: false,
            backend: CacheBackendConfig::Memory,
            semantic: None,
        };
        let ctx = |ns: &str, wl: &str| {
            let mut c = Context::new(Dialect::OpenAi);
            c.identity.workload = Some(Arc::new(Workload {
                namespace: ns.into(),
                name: wl.into(),
                ..Workload::default()
            }));
            c
        };
        let ns = config(CacheScopeConfig::Namespace);
        let wl = config(CacheScopeConfig::Workload);
        assert_eq!(scope_of(&ctx("a", "x"), &ns), scope_of(&ctx("a", "y"), &ns));
        assert_ne!(scope_of(&ctx("a", "x"), &ns), scope_of(&ctx("b", "x"), &ns));
        assert_ne!(scope_of(&ctx("a", "x"), &wl), scope_of(&ctx("a", "y"), &wl));
        assert_ne!(scope_of(&ctx("a", "x"), &wl), scope_of(&ctx("b", "x"), &wl));
        // A workload named like a namespace never meets it.
        assert_ne!(
            scope_of(&ctx("a", "b/c"), &wl),
            scope_of(&ctx("a/b", "c"), &wl)
        );
        // An index of one scope is never searched for another.
        let s: Semantic<u32> = Semantic::new();
        let k = key("what is rust", 0);
        s.insert("r", &scope_of(&ctx("a", "x"), &ns), 10, &k, &[1.0, 0.0], 1);
        let other = scope_of(&ctx("b", "x"), &ns);
        assert_eq!(s.lookup("r", &other, &k, &[1.0, 0.0], 0.5), Lookup::Miss);
    }

    /// A deterministic pseudo-random unit vector.
    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        index::normalized(&v).unwrap()
    }

    #[test]
    fn lookups_and_inserts_go_on_while_a_scope_trains_off_the_runtime() {
        use std::sync::mpsc;
        use std::thread::ThreadId;
        let wait = Duration::from_secs(60);
        let (started_tx, started_rx) = mpsc::channel::<ThreadId>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, release_rx) = (Mutex::new(started_tx), Mutex::new(release_rx));
        // The training announces its thread, then is held until the test releases it.
        let s: Semantic<u64> = Semantic {
            train_hook: Some(TrainHook(Arc::new(move || {
                let _ = started_tx.lock().unwrap().send(std::thread::current().id());
                let _ = release_rx.lock().unwrap().recv_timeout(wait);
            }))),
            ..Semantic::default()
        };
        let (dim, max) = (16, 2100);
        let at = Index::<()>::new(dim, max).train_at().unwrap() as u64;
        let k = key("how do I configure retries", 0);
        // The value found for entry `i`'s own vector.
        let hit = |i: u64| match s.lookup("r", "ns", &k, &unit(i, dim), 0.999) {
            Lookup::Hit(v, _) => Some(v),
            _ => None,
        };
        // One worker thread: the test's. Training on it would hold it until released, which
        // only happens after the lookups below.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let worker = std::thread::current().id();
        runtime.block_on(async {
            for i in 0..at {
                s.insert("r", "ns", max, &k, &unit(i, dim), i);
            }
            let trainer = started_rx
                .recv_timeout(wait)
                .expect("the training started off the inserting task");
            assert_ne!(trainer, worker, "the training ran on the runtime's worker");
            // Held mid-training: lookups are answered (flat scans), inserts go on.
            assert!(!s.is_partitioned("r", "ns"));
            for i in (0..at).step_by(97) {
                assert_eq!(hit(i), Some(i), "entry {i}");
            }
            for i in at..at + 100 {
                s.insert("r", "ns", max, &k, &unit(i, dim), i);
            }
            assert_eq!(hit(at + 50), Some(at + 50));
            assert!(!s.is_partitioned("r", "ns"));
        });
        release_tx.send(()).unwrap();
        let started = std::time::Instant::now();
        while !s.is_partitioned("r", "ns") {
            assert!(started.elapsed() < wait, "the training was never applied");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Exactly one training: no second one started while the first was held.
        assert!(started_rx.try_recv().is_err());
        // After: entries from before and during the training are found, evicted ones are not.
        assert_eq!(s.len("r", "ns"), max);
        for i in (0..at + 100).step_by(7).chain([at + 99]) {
            let held = i >= at + 100 - max as u64;
            assert_eq!(hit(i), held.then_some(i), "entry {i}");
        }
    }

    #[test]
    fn parses_float_and_base64_embeddings() {
        let f = br#"{"data":[{"embedding":[3.0,4.0]}]}"#;
        assert_eq!(parse_embedding(f).unwrap(), vec![0.6, 0.8]);
        let raw: Vec<u8> = [3.0f32, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let body = format!(r#"{{"data":[{{"embedding":"{b64}"}}]}}"#);
        assert_eq!(parse_embedding(body.as_bytes()).unwrap(), vec![0.6, 0.8]);
        for bad in [
            &b"{}"[..],
            b"nope",
            br#"{"data":[]}"#,
            br#"{"data":[{"embedding":[]}]}"#,
            br#"{"data":[{"embedding":[0,0]}]}"#,
            br#"{"data":[{"embedding":"***"}]}"#,
            br#"{"data":[{"embedding":["a"]}]}"#,
        ] {
            assert!(parse_embedding(bad).is_none());
        }
        let req = embedding_request("embed", "hi \"x\"");
        let v: Value = serde_json::from_slice(&req).unwrap();
        assert_eq!(v["input"], "hi \"x\"");
        let _ = Dialect::OpenAi;
    }
}
