//! Prometheus metrics of the sidecar, served on the admin port.
//!
//! Label values come from the config (route, provider, model names), never from the request, so a
//! client cannot blow up cardinality by sending random model names. The spend counters add the
//! sidecar's own identity (one namespace and workload per sidecar) and the `x-gatehouse-tag`,
//! the one label a request picks, capped by `--max-tags` (`stages::identity`).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name, empty when no route matched.
    pub route: String,
    /// Provider that answered, empty when none did.
    pub provider: String,
    /// Upstream model, empty when none answered.
    pub model: String,
    /// HTTP status sent to the client.
    pub status: u16,
}

/// Labels of one upstream attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// Provider name.
    pub provider: String,
    /// success, connect_error, timeout, rate_limited, server_error, invalid_response, too_large,
    /// auth_failed, billing_refused, client_error (the provider refused the request itself; the
    /// refusal went back to the client).
    pub outcome: &'static str,
}

/// Labels naming a route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name.
    pub route: String,
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

/// The tokens of one spend label set, one counter per billing type (`usage::Tokens`), exposed
/// as one series per type (label `type`); one label-set lookup counts all five.
#[derive(Debug, Default, Clone)]
pub struct TokenCounts {
    /// Prompt tokens billed at the input rate.
    pub input: Counter,
    /// Prompt tokens read from the provider's cache.
    pub cached_read: Counter,
    /// Prompt tokens written to the provider's cache.
    pub cache_write: Counter,
    /// Completion tokens other than reasoning.
    pub output: Counter,
    /// Reasoning tokens.
    pub reasoning: Counter,
}

impl TokenCounts {
    /// Add a request's tokens.
    pub fn add(&self, t: &crate::usage::Tokens) {
        for (counter, n) in [
            (&self.input, t.input),
            (&self.cached_read, t.cached_read),
            (&self.cache_write, t.cache_write),
            (&self.output, t.output),
            (&self.reasoning, t.reasoning),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }
}

#[derive(Debug, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

impl TypedMetric for TokenCounts {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for TokenCounts {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (r#type, counter) in [
            ("input", &self.input),
            ("cached_read", &self.cached_read),
            ("cache_write", &self.cache_write),
            ("output", &self.output),
            ("reasoning", &self.reasoning),
        ] {
            encoder
                .encode_family(&TypeLabel { r#type })?
                .encode_counter::<NoLabelSet, _, u64>(&counter.get(), None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
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
    /// Open client connections per listener.
    pub connections: Family<ListenerLabels, Gauge>,
    /// Client connections the sidecar closed, by reason.
    pub connections_closed: Family<ClosedLabels, Counter>,
    /// Failed accepts per listener (mostly: out of file descriptors).
    pub accept_errors: Family<ListenerLabels, Counter>,
    /// Tokens by type, per spend label set.
    pub tokens: Family<SpendLabels, TokenCounts>,
    /// USD spent (priced requests only), per spend label set.
    pub cost_usd: Family<SpendLabels, Counter<f64, AtomicU64>>,
    /// Requests whose new `x-gatehouse-tag` was counted as `other` (the `--max-tags` cap).
    pub tags_overflowed: Counter,
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
        let tokens = Family::<SpendLabels, TokenCounts>::default();
        registry.register(
            "tokens",
            "Tokens by type (input, cached_read, cache_write, output, reasoning), by workload, tag, route, provider and model",
            tokens.clone(),
        );
        let cost_usd = Family::<SpendLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "cost_usd",
            "USD spent on priced requests, by workload, tag, route, provider and model",
            cost_usd.clone(),
        );
        let tags_overflowed = Counter::default();
        registry.register(
            "tags_overflowed",
            "Requests whose x-gatehouse-tag was counted as 'other' (past --max-tags)",
            tags_overflowed.clone(),
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
            connections,
            connections_closed,
            accept_errors,
            tokens,
            cost_usd,
            tags_overflowed,
            registry,
        }
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
