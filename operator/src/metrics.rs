//! Prometheus metrics of the operator, served on the admin port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of a reconcile error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::Error::metric_label`].
    pub reason: &'static str,
}

/// Labels of one write to the API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Kind written: configmap, secret, role, rolebinding, status, event.
    pub kind: &'static str,
    /// `apply` or `delete`.
    pub op: &'static str,
}

/// Labels of a failed watch request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// The watched resource (plural), e.g. `routes`.
    pub watch: &'static str,
}

/// All metrics, registered once.
#[derive(Debug)]
pub struct Metrics {
    /// Finished namespace reconciles.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Failed reconciles by cause.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration.
    pub reconcile_duration: Histogram,
    /// Writes sent to the API server (skipped no-op writes are not counted).
    pub writes: Family<WriteLabels, Counter>,
    /// Writes skipped because the live object already had the desired content.
    pub writes_skipped: Counter,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Failed watch requests (each is retried with backoff).
    pub watch_errors: Family<WatchLabels, Counter>,
    /// The budget ledger's metrics.
    pub ledger: crate::ledger::metrics::LedgerMetrics,
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
        let mut registry = Registry::with_prefix("gatehouse_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register("reconciles", "Namespace reconciles", reconciles.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles by cause",
            errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one namespace",
            reconcile_duration.clone(),
        );
        let writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "api_writes",
            "Writes sent to the Kubernetes API by kind and operation",
            writes.clone(),
        );
        let writes_skipped = Counter::default();
        registry.register(
            "api_writes_skipped",
            "Writes skipped because the live object already matched",
            writes_skipped.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let watch_errors = Family::<WatchLabels, Counter>::default();
        registry.register(
            "watch_errors",
            "Failed watch or list requests by watched resource (retried with backoff)",
            watch_errors.clone(),
        );
        let ledger = crate::ledger::metrics::LedgerMetrics::register(&mut registry);
        Self {
            reconciles,
            errors,
            reconcile_duration,
            writes,
            writes_skipped,
            leader,
            watch_errors,
            ledger,
            registry,
        }
    }

    /// Count one write.
    pub fn write(&self, kind: &'static str, op: &'static str) {
        self.writes.get_or_create(&WriteLabels { kind, op }).inc();
    }

    /// Count one failed watch or list request of `watch`.
    pub fn watch_error(&self, watch: &'static str) {
        self.watch_errors
            .get_or_create(&WatchLabels { watch })
            .inc();
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
