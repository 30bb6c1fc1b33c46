//! Prometheus metrics of the sidecar, served on the admin port.
//!
//! Label values come from the config (route, provider, model names), never from the request, so a
//! client cannot blow up cardinality by sending random model names. The spend counters add the
//! sidecar's own identity (one namespace and workload per sidecar) and the `x-gatehouse-tag`,
//! the one label a request picks, capped by `--max-tags` (`stages::identity`).

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
use prometheus_client::registry::Registry;

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

/// All metrics, registered once.
#[derive(Debug)]
pub struct Metrics {
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
        let mut registry = Registry::with_prefix("gatehouse");
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
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
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
