//! Prometheus metrics of the sidecar, served on the admin port.
//!
//! Label values come from the config (route, provider, model names), never from the request, so a
//! client cannot blow up cardinality by sending random model names. The spend counters add the
//! sidecar's own identity (one namespace and workload per sidecar) and the `x-gatehouse-tag`,
//! the one label a request picks, capped by `--max-tags` (`stages::identity`).
//!
//! Two families of names. The `gen_ai_*` metrics are the OpenTelemetry GenAI semantic
//! conventions' (semconv "Semantic conventions for generative AI metrics"), exposed the way the
//! OTel "Prometheus and OpenMetrics compatibility" spec maps them: dots become underscores, the
//! unit `s` becomes a `_seconds` suffix, an annotation unit such as `{token}` is dropped, and the
//! attributes (`gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `gen_ai.token.type`, `error.type`) become labels the same way. Their
//! buckets are the conventions' advisory explicit boundaries ([`TOKEN_BUCKETS`],
//! [`DURATION_BUCKETS`], [`TTFT_BUCKETS`], [`TPOT_BUCKETS`]). The sidecar is a GenAI *client*
//! of each provider (`gen_ai.client.operation.duration`: one observation per upstream attempt;
//! `gen_ai.client.token.usage`: the usage of the attempt that answered) and a GenAI *server* to
//! its app (`gen_ai.server.request.duration`, `gen_ai.server.time_to_first_token`,
//! `gen_ai.server.time_per_output_token`: measured at the gateway, as the app sees them). The
//! `gatehouse_*` metrics are the gateway's own (counters get `_total`). docs/observability.md
//! lists both and the cardinality bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::usage::Tokens;

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name, empty when no route matched.
    pub route: Arc<str>,
    /// Provider that answered, empty when none did.
    pub provider: Arc<str>,
    /// Upstream model, empty when none answered.
    pub model: Arc<str>,
    /// HTTP status sent to the client.
    pub status: u16,
}

/// Labels of one upstream attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// Provider name.
    pub provider: Arc<str>,
    /// success, connect_error, timeout, rate_limited, overloaded (529), server_error, invalid_response, too_large,
    /// auth_failed, billing_refused, client_error (the provider refused the request itself; the
    /// refusal went back to the client).
    pub outcome: &'static str,
}

/// Labels naming a route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name.
    pub route: Arc<str>,
}

/// Labels of a gateway error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error code (see `ProxyError::code`).
    pub reason: &'static str,
}

/// Labels of a config reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// success or error.
    pub result: &'static str,
}

/// Labels of how the sidecar watches its files.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileWatchLabels {
    /// inotify or poll.
    pub method: &'static str,
}

/// Labels naming a listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// proxy or admin.
    pub listener: &'static str,
}

/// Labels of a connection the sidecar closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    /// proxy or admin.
    pub listener: &'static str,
    /// header_timeout, idle_timeout, evicted (to make room at the connection cap) or shutdown.
    pub reason: &'static str,
}

/// Labels of spend: who spent (the sidecar's workload, the request's tag) on what. Values are
/// shared strings, so a label set for a lookup is built from reference counts, without
/// allocating.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpendLabels {
    /// Namespace of the workload.
    pub namespace: Arc<str>,
    /// The workload (`workload::Workload::name`).
    pub workload: Arc<str>,
    /// The request's `x-gatehouse-tag`, `other` past the cap, empty without one.
    pub tag: Arc<str>,
    /// Route name.
    pub route: Arc<str>,
    /// Provider that answered.
    pub provider: Arc<str>,
    /// Upstream model that answered.
    pub model: Arc<str>,
}

/// The spend counters: per [`SpendLabels`], the tokens by type and the USD of priced requests,
/// kept in one entry so that a request costs one lookup, exposed as two metrics
/// (`gatehouse_tokens_total{..., type}` and `gatehouse_cost_usd_total`).
#[derive(Debug, Default)]
pub struct Spend {
    /// foldhash rather than SipHash: the keys come from the config and the sidecar's identity,
    /// plus at most `--max-tags` tags, so there is no flood to resist, and hashing six strings
    /// per request is most of the lookup.
    entries: RwLock<HashMap<SpendLabels, SpendCounters, foldhash::fast::RandomState>>,
}

/// The counters of one spend label set.
#[derive(Debug, Default)]
struct SpendCounters {
    /// In the order of `Tokens::by_type`.
    tokens: [AtomicU64; 5],
    usd: Counter<f64, AtomicU64>,
    /// Whether any request of this label set was priced (an unpriced model has no USD series).
    priced: AtomicBool,
}

impl SpendCounters {
    fn add(&self, tokens: &Tokens, cost: Option<f64>) {
        for (counter, (_, n)) in self.tokens.iter().zip(tokens.by_type()) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        if let Some(cost) = cost.filter(|c| c.is_finite() && *c >= 0.0) {
            self.usd.inc_by(cost);
            self.priced.store(true, Ordering::Relaxed);
        }
    }
}

impl Spend {
    /// Count a request's tokens and, when it was priced, its cost. Takes a read lock only, unless
    /// the label set is new.
    pub fn add(&self, labels: &SpendLabels, tokens: &Tokens, cost: Option<f64>) {
        // A panic cannot leave the map half-updated (an insert is one call): a poisoned lock is
        // still good to use.
        if let Some(c) = self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(labels)
        {
            c.add(tokens, cost);
            return;
        }
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(labels.clone())
            .or_default()
            .add(tokens, cost);
    }

    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<
        '_,
        HashMap<SpendLabels, SpendCounters, foldhash::fast::RandomState>,
    > {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A spend label set and a token type, borrowed for encoding.
struct WithType<'a> {
    labels: &'a SpendLabels,
    r#type: &'static str,
}

impl EncodeLabelSet for WithType<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        #[derive(EncodeLabelSet)]
        struct TypeLabel {
            r#type: &'static str,
        }
        self.labels.encode(encoder)?;
        TypeLabel {
            r#type: self.r#type,
        }
        .encode(encoder)
    }
}

/// `gatehouse_tokens_total`: one series per spend label set and token type.
#[derive(Debug)]
struct TokensView(Arc<Spend>);

impl EncodeMetric for TokensView {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, c) in self.0.read().iter() {
            for (counter, (r#type, _)) in c.tokens.iter().zip(Tokens::default().by_type()) {
                let labels = WithType { labels, r#type };
                encoder
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&counter.load(Ordering::Relaxed), None)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }

    fn is_empty(&self) -> bool {
        self.0.read().is_empty()
    }
}

/// `gatehouse_cost_usd_total`: one series per spend label set that was ever priced.
#[derive(Debug)]
struct CostView(Arc<Spend>);

impl EncodeMetric for CostView {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, c) in self.0.read().iter() {
            if c.priced.load(Ordering::Relaxed) {
                encoder
                    .encode_family(labels)?
                    .encode_counter::<NoLabelSet, _, f64>(&c.usd.get(), None)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }

    fn is_empty(&self) -> bool {
        !self
            .0
            .read()
            .values()
            .any(|c| c.priced.load(Ordering::Relaxed))
    }
}

/// Labels of a budget decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// Budget name (from the config).
    pub budget: Arc<str>,
    /// ok, warn, downgraded, fail_open (served without a lease: ledger unreachable), exceeded
    /// (refused, 429), fail_closed (refused, 503).
    pub outcome: &'static str,
}

/// Labels of a sync with the budget ledger.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// ok, unreachable, unauthenticated, forbidden, unavailable, refused, invalid_response,
    /// no_url.
    pub result: &'static str,
}

/// Labels naming a provider's model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Provider name.
    pub provider: Arc<str>,
    /// Upstream model.
    pub model: Arc<str>,
}

/// Labels of values redaction found.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedactionLabels {
    /// Route name.
    pub route: Arc<str>,
    /// The detector (a built-in name or a custom detector's, from the config).
    pub detector: Arc<str>,
    /// request (the prompt) or response (the answer).
    pub direction: &'static str,
}

/// Labels of requests a rate limit refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// Route name.
    pub route: Arc<str>,
    /// The limit's name (from the config).
    pub limit: Arc<str>,
    /// requests or tokens: the allowance that ran out.
    pub unit: &'static str,
}

/// `gen_ai.client.token.usage` buckets (the conventions' advisory boundaries: powers of 4 from 1
/// to 4^13).
pub const TOKEN_BUCKETS: [f64; 14] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1_024.0,
    4_096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// `gen_ai.client.operation.duration` and `gen_ai.server.request.duration` buckets, in seconds
/// (10 ms doubling to 81.92 s).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// `gen_ai.server.time_to_first_token` buckets, in seconds.
pub const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// `gen_ai.server.time_per_output_token` buckets, in seconds.
pub const TPOT_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// Attributes of the GenAI duration metrics (`gen_ai_server_*`, `gen_ai_client_operation_*`),
/// plus the Route and the ModelProvider's name (several ModelProviders may share one
/// `gen_ai.provider.name`). Every value comes from the config or a fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiLabels {
    /// `gen_ai.operation.name`: chat or embeddings.
    pub gen_ai_operation_name: &'static str,
    /// `gen_ai.provider.name` (`genai::provider_name`), empty when no provider answered.
    pub gen_ai_provider_name: &'static str,
    /// `gen_ai.request.model`: server metrics, the Route (the alias the app asked for); client
    /// metrics, the upstream model asked of the provider.
    pub gen_ai_request_model: Arc<str>,
    /// `gen_ai.response.model`: the upstream model that answered, empty when none did.
    pub gen_ai_response_model: Arc<str>,
    /// `error.type`: empty on success, else the gateway's error code (server) or the attempt's
    /// outcome (client).
    pub error_type: &'static str,
    /// Route name.
    pub route: Arc<str>,
    /// ModelProvider name, empty when none answered.
    pub provider: Arc<str>,
}

/// Attributes of `gen_ai_client_token_usage`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenUsageLabels {
    /// `gen_ai.operation.name`.
    pub gen_ai_operation_name: &'static str,
    /// `gen_ai.provider.name`.
    pub gen_ai_provider_name: &'static str,
    /// `gen_ai.request.model`: the upstream model asked of the provider.
    pub gen_ai_request_model: Arc<str>,
    /// `gen_ai.response.model`: the upstream model that answered.
    pub gen_ai_response_model: Arc<str>,
    /// Route name.
    pub route: Arc<str>,
    /// ModelProvider name.
    pub provider: Arc<str>,
}

/// Per-request series kept in one map entry per label set, so a request costs one lookup
/// (foldhash, read lock) for all of them, like [`Spend`]; exposed as one metric per part by views.
/// An entry is shared ([`Series::handle`]) so that a Route's [`RouteHandles`] can keep it.
#[derive(Debug)]
pub struct Series<K, V> {
    entries: RwLock<HashMap<K, Arc<V>, foldhash::fast::RandomState>>,
    make: fn() -> V,
}

impl<K: Clone + Eq + std::hash::Hash, V> Series<K, V> {
    fn new(make: fn() -> V) -> Self {
        Self {
            entries: RwLock::default(),
            make,
        }
    }

    /// Run `f` on the entry of `key`, created when new. Takes a read lock only, unless the label
    /// set is new.
    pub fn with<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> R {
        // An insert is one call: a poisoned lock is still good to use.
        if let Some(v) = self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return f(v);
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let v = entries
            .entry(key.clone())
            .or_insert_with(|| Arc::new((self.make)()));
        f(v)
    }

    /// The entry of `key`, created when new, to keep.
    pub fn handle(&self, key: &K) -> Arc<V> {
        if let Some(v) = self.read().get(key) {
            return v.clone();
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries
            .entry(key.clone())
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }

    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<K, Arc<V>, foldhash::fast::RandomState>> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The server-side GenAI histograms of one label set.
#[derive(Debug)]
pub struct ServerSeries {
    /// `gen_ai.server.request.duration`.
    pub duration: Histogram,
    /// `gen_ai.server.time_to_first_token`; exposed once observed.
    pub ttft: Histogram,
    /// `gen_ai.server.time_per_output_token`; exposed once observed.
    pub tpot: Histogram,
    ttft_seen: AtomicBool,
    tpot_seen: AtomicBool,
}

impl ServerSeries {
    fn new() -> Self {
        Self {
            duration: Histogram::new(DURATION_BUCKETS),
            ttft: Histogram::new(TTFT_BUCKETS),
            tpot: Histogram::new(TPOT_BUCKETS),
            ttft_seen: AtomicBool::new(false),
            tpot_seen: AtomicBool::new(false),
        }
    }

    /// Observe a time to first token.
    pub fn observe_ttft(&self, secs: f64) {
        self.ttft.observe(secs);
        self.ttft_seen.store(true, Ordering::Relaxed);
    }

    /// Observe a time per output token.
    pub fn observe_tpot(&self, secs: f64) {
        self.tpot.observe(secs);
        self.tpot_seen.store(true, Ordering::Relaxed);
    }
}

/// `gen_ai.client.token.usage` of one label set, by `gen_ai.token.type`: input (cache reads and
/// writes included) and output (reasoning included).
#[derive(Debug)]
pub struct TokenSeries {
    /// Input tokens.
    pub input: Histogram,
    /// Output tokens.
    pub output: Histogram,
}

impl TokenSeries {
    fn new() -> Self {
        Self {
            input: Histogram::new(TOKEN_BUCKETS),
            output: Histogram::new(TOKEN_BUCKETS),
        }
    }
}

/// Which histogram of a [`ServerSeries`] a view exposes.
#[derive(Debug, Clone, Copy)]
enum ServerPart {
    Duration,
    Ttft,
    Tpot,
}

/// One `gen_ai_server_*` metric, read from the shared entries at scrape time.
#[derive(Debug)]
struct ServerView(Arc<Series<GenAiLabels, ServerSeries>>, ServerPart);

impl EncodeMetric for ServerView {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, s) in self.0.read().iter() {
            let h = match self.1 {
                ServerPart::Duration => &s.duration,
                ServerPart::Ttft if s.ttft_seen.load(Ordering::Relaxed) => &s.ttft,
                ServerPart::Tpot if s.tpot_seen.load(Ordering::Relaxed) => &s.tpot,
                ServerPart::Ttft | ServerPart::Tpot => continue,
            };
            h.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// `gen_ai_client_operation_duration_seconds`.
#[derive(Debug)]
struct HistogramView(Arc<Series<GenAiLabels, Histogram>>);

impl EncodeMetric for HistogramView {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in self.0.read().iter() {
            h.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A token-usage label set and its `gen_ai_token_type`, borrowed for encoding.
struct WithTokenType<'a> {
    labels: &'a TokenUsageLabels,
    gen_ai_token_type: &'static str,
}

impl EncodeLabelSet for WithTokenType<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        #[derive(EncodeLabelSet)]
        struct TypeLabel {
            gen_ai_token_type: &'static str,
        }
        self.labels.encode(encoder)?;
        TypeLabel {
            gen_ai_token_type: self.gen_ai_token_type,
        }
        .encode(encoder)
    }
}

/// `gen_ai_client_token_usage`: two series per label set.
#[derive(Debug)]
struct TokenUsageView(Arc<Series<TokenUsageLabels, TokenSeries>>);

impl EncodeMetric for TokenUsageView {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, t) in self.0.read().iter() {
            for (gen_ai_token_type, h) in [("input", &t.input), ("output", &t.output)] {
                let labels = WithTokenType {
                    labels,
                    gen_ai_token_type,
                };
                h.encode(encoder.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Labels of cache lookups.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// Route name.
    pub route: Arc<str>,
    /// hit, miss or bypass (no cache on the route, or the request may not be cached).
    pub result: &'static str,
}

/// Labels of a rate-limit decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitDecisionLabels {
    /// Route name.
    pub route: Arc<str>,
    /// The limit's name (from the config).
    pub limit: Arc<str>,
    /// allowed or refused.
    pub result: &'static str,
}

/// Labels of a failover: the attempt moved to another target.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    /// Route name.
    pub route: Arc<str>,
    /// The ModelProvider the failed attempt went to.
    pub from_provider: Arc<str>,
    /// The ModelProvider tried next.
    pub to_provider: Arc<str>,
}

/// Handles to the series that a Route's plain requests touch, resolved once per Route of a
/// snapshot, so that recording one takes no label lookup ([`crate::stages::telemetry`]). A plain
/// request is answered 200 by one of the Route's own targets at its first attempt; any other
/// takes the labelled path.
#[derive(Debug)]
pub struct RouteHandles {
    /// [`Metrics::id`] of the metrics these series belong to.
    pub owner: u64,
    /// `gatehouse_request_duration_seconds{route}`.
    pub duration: Histogram,
    /// `gatehouse_cache_requests_total{route,result}`, one per result, made when first seen.
    pub cache: [std::sync::OnceLock<Counter>; 3],
    /// By target index, then operation (chat, embeddings), made when first seen.
    pub targets: Box<[[std::sync::OnceLock<TargetHandles>; 2]]>,
}

/// The series of a plain request to one target of a Route, for one operation.
#[derive(Debug)]
pub struct TargetHandles {
    /// `gatehouse_requests_total{route,provider,model,status="200"}`.
    pub requests: Counter,
    /// `gatehouse_upstream_attempts_total{provider,outcome="success"}`.
    pub attempts: Counter,
    /// The GenAI server series (no `error_type`).
    pub server: Arc<ServerSeries>,
    /// `gen_ai.client.operation.duration` of the successful attempt.
    pub client: Arc<Histogram>,
    /// `gen_ai.client.token.usage`.
    pub tokens: Arc<TokenSeries>,
}

/// All metrics, registered once.
#[derive(Debug)]
pub struct Metrics {
    /// Whether the telemetry stage records per-request metrics (`--metrics`); off, the other
    /// metrics are still served, the request path records none of the per-request ones.
    pub recording: bool,
    /// Unique in the process: which [`RouteHandles`] are this one's.
    pub id: u64,
    /// `gen_ai.server.request.duration` (arrival to the last byte; the whole stream for a
    /// stream), `gen_ai.server.time_to_first_token` (arrival to the first event relayed) and
    /// `gen_ai.server.time_per_output_token` (after the first event, per further output token),
    /// one entry per label set.
    pub genai_server: Arc<Series<GenAiLabels, ServerSeries>>,
    /// `gen_ai.client.operation.duration`: one per upstream attempt.
    pub genai_client_duration: Arc<Series<GenAiLabels, Histogram>>,
    /// `gen_ai.client.token.usage`: the answering attempt's usage, input and output.
    pub genai_tokens: Arc<Series<TokenUsageLabels, TokenSeries>>,
    /// Cache lookups by route and result.
    pub cache_requests: Family<CacheLabels, Counter>,
    /// Moves from a failed attempt to another target.
    pub failovers: Family<FailoverLabels, Counter>,
    /// Rate-limit decisions per applied limit.
    pub rate_limit_decisions: Family<RateLimitDecisionLabels, Counter>,
    genai_registry: Registry,
    /// Finished requests.
    pub requests: Family<RequestLabels, Counter>,
    /// Request duration from first byte received to response complete (headers for streams).
    pub request_duration: Family<RouteLabels, Histogram>,
    /// Time spent in the gateway itself, upstream wait excluded.
    pub overhead: Histogram,
    /// Upstream attempts by outcome.
    pub attempts: Family<AttemptLabels, Counter>,
    /// Errors answered by the gateway.
    pub errors: Family<ErrorLabels, Counter>,
    /// Streams whose upstream broke after the first byte reached the client.
    pub streams_broken: Family<RouteLabels, Counter>,
    /// Requests whose client went away before the answer was complete (during the attempts or
    /// in the middle of a stream).
    pub client_disconnects: Family<RouteLabels, Counter>,
    /// Config reloads.
    pub reloads: Family<ReloadLabels, Counter>,
    /// 1 for how the sidecar notices changes to its files (inotify, or poll when inotify cannot
    /// be used), 0 for the other.
    pub file_watch: Family<FileWatchLabels, Gauge>,
    /// Open client connections per listener.
    pub connections: Family<ListenerLabels, Gauge>,
    /// Client connections the sidecar closed, by reason.
    pub connections_closed: Family<ClosedLabels, Counter>,
    /// Failed accepts per listener (mostly: out of file descriptors).
    pub accept_errors: Family<ListenerLabels, Counter>,
    /// Tokens by type and USD, per spend label set.
    pub spend: Arc<Spend>,
    /// Requests whose new `x-gatehouse-tag` was counted as `other` (the `--max-tags` cap).
    pub tags_overflowed: Counter,
    /// Answered requests whose model has no price (their cost is `unknown`).
    pub unpriced_requests: Family<ModelLabels, Counter>,
    /// Budget decisions, per covering Budget.
    pub budget_decisions: Family<BudgetLabels, Counter>,
    /// Syncs with the budget ledger (cluster mode).
    pub ledger_syncs: Family<SyncLabels, Counter>,
    /// Values redaction found, by route, detector and direction.
    pub redactions: Family<RedactionLabels, Counter>,
    /// The response cache's own metrics (`gatehouse_cache_*`).
    pub cache: crate::cache::metrics::CacheMetrics,
    /// Requests refused by a rate limit.
    pub rate_limited: Family<RateLimitLabels, Counter>,
    /// Audit lines dropped because the writer could not keep up.
    pub audit_dropped: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register all metrics.
    pub fn new() -> Self {
        // The GenAI conventions' names carry no prefix of ours.
        let mut genai_registry = Registry::default();
        let genai_server = Arc::new(Series::new(ServerSeries::new));
        genai_registry.register_with_unit(
            "gen_ai_server_request_duration",
            "GenAI server request duration: arrival at the gateway to the last byte of the answer",
            Unit::Seconds,
            ServerView(genai_server.clone(), ServerPart::Duration),
        );
        genai_registry.register_with_unit(
            "gen_ai_server_time_to_first_token",
            "Time from arrival to the first stream event relayed to the app",
            Unit::Seconds,
            ServerView(genai_server.clone(), ServerPart::Ttft),
        );
        genai_registry.register_with_unit(
            "gen_ai_server_time_per_output_token",
            "Time per output token after the first, of complete streams",
            Unit::Seconds,
            ServerView(genai_server.clone(), ServerPart::Tpot),
        );
        let genai_client_duration: Arc<Series<GenAiLabels, Histogram>> =
            Arc::new(Series::new(|| Histogram::new(DURATION_BUCKETS)));
        genai_registry.register_with_unit(
            "gen_ai_client_operation_duration",
            "GenAI operation duration of each upstream attempt",
            Unit::Seconds,
            HistogramView(genai_client_duration.clone()),
        );
        let genai_tokens = Arc::new(Series::new(TokenSeries::new));
        genai_registry.register(
            "gen_ai_client_token_usage",
            "Tokens used by the attempt that answered, by token type",
            TokenUsageView(genai_tokens.clone()),
        );
        let mut registry = Registry::with_prefix("gatehouse");
        let cache_requests = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_requests",
            "Requests by cache result (hit, miss, bypass), per route",
            cache_requests.clone(),
        );
        let failovers = Family::<FailoverLabels, Counter>::default();
        registry.register(
            "failovers",
            "Moves from a failed upstream attempt to another target, per route",
            failovers.clone(),
        );
        let rate_limit_decisions = Family::<RateLimitDecisionLabels, Counter>::default();
        registry.register(
            "rate_limit_decisions",
            "Rate-limit decisions (allowed, refused) per route and applied limit",
            rate_limit_decisions.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered", requests.clone());
        let request_duration =
            Family::<RouteLabels, Histogram>::new_with_constructor(duration_histogram);
        registry.register(
            "request_duration_seconds",
            "Time to answer a request (to the response headers for streams)",
            request_duration.clone(),
        );
        let overhead = Histogram::new(exponential_buckets(0.000_01, 2.0, 18));
        registry.register(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself, upstream wait excluded",
            overhead.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Upstream attempts by outcome",
            attempts.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("errors", "Errors answered by the gateway", errors.clone());
        let streams_broken = Family::<RouteLabels, Counter>::default();
        registry.register(
            "streams_broken",
            "Streams cut upstream after the first byte reached the client",
            streams_broken.clone(),
        );
        let client_disconnects = Family::<RouteLabels, Counter>::default();
        registry.register(
            "client_disconnects",
            "Requests whose client went away before the answer was complete",
            client_disconnects.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register("config_reloads", "Config reloads", reloads.clone());
        let file_watch = Family::<FileWatchLabels, Gauge>::default();
        registry.register(
            "config_file_watch",
            "How changes to the keys directory or manifests are noticed: 1 for the method in use",
            file_watch.clone(),
        );
        let connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Client connections the sidecar closed (timeouts, eviction at the cap, shutdown)",
            connections_closed.clone(),
        );
        let accept_errors = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "accept_errors",
            "Failed accepts of client connections",
            accept_errors.clone(),
        );
        let spend = Arc::new(Spend::default());
        registry.register(
            "tokens",
            "Tokens by type (input, cached_read, cache_write, output, reasoning), by workload, tag, route, provider and model",
            TokensView(spend.clone()),
        );
        registry.register(
            "cost_usd",
            "USD spent on priced requests, by workload, tag, route, provider and model",
            CostView(spend.clone()),
        );
        let tags_overflowed = Counter::default();
        registry.register(
            "tags_overflowed",
            "Requests whose x-gatehouse-tag was counted as 'other' (past --max-tags)",
            tags_overflowed.clone(),
        );
        let unpriced_requests = Family::<ModelLabels, Counter>::default();
        registry.register(
            "unpriced_requests",
            "Answered requests whose model has no price in the catalog or the ModelProvider",
            unpriced_requests.clone(),
        );
        let budget_decisions = Family::<BudgetLabels, Counter>::default();
        registry.register(
            "budget_decisions",
            "Requests covered by each budget, by what the budget made of them",
            budget_decisions.clone(),
        );
        let ledger_syncs = Family::<SyncLabels, Counter>::default();
        registry.register(
            "ledger_syncs",
            "Syncs with the budget ledger, by result",
            ledger_syncs.clone(),
        );
        let redactions = Family::<RedactionLabels, Counter>::default();
        registry.register(
            "redactions",
            "Sensitive values redaction found (masked, refused or restored), by route, detector and direction",
            redactions.clone(),
        );
        let cache = crate::cache::metrics::CacheMetrics::register(&mut registry);
        let rate_limited = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by route, limit and the unit that ran out",
            rate_limited.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_lines_dropped",
            "Audit lines dropped because the audit writer could not keep up",
            audit_dropped.clone(),
        );
        Self {
            recording: true,
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(1);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
            genai_server,
            genai_client_duration,
            genai_tokens,
            cache_requests,
            failovers,
            rate_limit_decisions,
            genai_registry,
            requests,
            request_duration,
            overhead,
            attempts,
            errors,
            streams_broken,
            client_disconnects,
            reloads,
            file_watch,
            connections,
            connections_closed,
            accept_errors,
            spend,
            tags_overflowed,
            unpriced_requests,
            budget_decisions,
            ledger_syncs,
            redactions,
            cache,
            rate_limited,
            audit_dropped,
            registry,
        }
    }

    /// Add metrics read at scrape time from elsewhere (the targets' health).
    pub fn register_collector(
        &mut self,
        collector: Box<dyn prometheus_client::collector::Collector>,
    ) {
        self.registry.register_collector(collector);
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.genai_registry);
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_eof(&mut out);
        out
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_counters_are_exposed_with_their_labels() {
        let m = Metrics::new();
        let labels = SpendLabels {
            namespace: Arc::from("shop"),
            workload: Arc::from("checkout"),
            tag: Arc::from("summary"),
            route: Arc::from("chat"),
            provider: Arc::from("oai"),
            model: Arc::from("gpt-4o-mini"),
        };
        let tokens = Tokens {
            input: 10,
            cached_read: 2,
            cache_write: 0,
            output: 5,
            reasoning: 1,
        };
        assert!(
            !m.encode().contains("gatehouse_tokens"),
            "no series, no metric"
        );
        m.spend.add(&labels, &tokens, Some(0.125));
        m.spend.add(&labels, &tokens, Some(0.125));
        // An unpriced model: tokens, no USD series.
        let unpriced = SpendLabels {
            model: Arc::from("free"),
            ..labels.clone()
        };
        m.spend.add(&unpriced, &tokens, None);
        let text = m.encode();
        let who = r#"namespace="shop",workload="checkout",tag="summary",route="chat",provider="oai",model="gpt-4o-mini""#;
        for (ty, n) in [
            ("input", 20),
            ("cached_read", 4),
            ("cache_write", 0),
            ("output", 10),
            ("reasoning", 2),
        ] {
            let line = format!("gatehouse_tokens_total{{{who},type=\"{ty}\"}} {n}");
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(text.contains("# TYPE gatehouse_tokens counter"), "{text}");
        let line = format!("gatehouse_cost_usd_total{{{who}}} 0.25");
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        assert!(text.contains(r#"model="free",type="input"} 10"#), "{text}");
        assert!(!text.contains(r#"gatehouse_cost_usd_total{namespace="shop",workload="checkout",tag="summary",route="chat",provider="oai",model="free""#), "{text}");
    }
}
