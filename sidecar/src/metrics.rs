//! Prometheus metrics of the sidecar, served on the admin port.
//!
//! Label values come from the config (route, provider, model names), never from the request, so a
//! client cannot blow up cardinality by sending random model names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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

/// Labels naming a provider's model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Provider name.
    pub provider: String,
    /// Upstream model.
    pub model: String,
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
    /// Answered requests whose model has no price (their cost is `unknown`).
    pub unpriced_requests: Family<ModelLabels, Counter>,
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
        let unpriced_requests = Family::<ModelLabels, Counter>::default();
        registry.register(
            "unpriced_requests",
            "Answered requests whose model has no price in the catalog or the ModelProvider",
            unpriced_requests.clone(),
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
            unpriced_requests,
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
