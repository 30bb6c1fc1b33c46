//! The cache's own metrics (hits, misses and bypasses per route are counted with the request,
//! from `ctx.cache`): what hits saved, what the memory backend holds, backend errors.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels naming a route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name.
    pub route: Arc<str>,
}

/// Labels of what one backend holds for one route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// Route name.
    pub route: Arc<str>,
    /// memory.
    pub backend: &'static str,
}

/// Labels of a backend error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// redis.
    pub backend: &'static str,
    /// get or set.
    pub op: &'static str,
    /// timeout, connect, auth, protocol, down (skipped while Redis is marked down).
    pub reason: &'static str,
}

/// The cache's metrics.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    /// USD hits saved: the stored usage at the current price of the model that answered.
    pub saved_usd: Family<RouteLabels, Counter<f64, AtomicU64>>,
    /// Entries held.
    pub entries: Family<StoreLabels, Gauge>,
    /// Bytes held (bodies plus bookkeeping).
    pub bytes: Family<StoreLabels, Gauge>,
    /// Backend calls that failed; the request bypassed the cache.
    pub errors: Family<ErrorLabels, Counter>,
}

impl CacheMetrics {
    /// The metrics, registered into `registry` (prefix `gatehouse_cache_`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("cache");
        r.register(
            "saved_usd",
            "USD cache hits saved: the stored usage priced at the current price of the model that answered it",
            m.saved_usd.clone(),
        );
        r.register(
            "entries",
            "Entries the cache holds, by route and backend",
            m.entries.clone(),
        );
        r.register(
            "bytes",
            "Bytes the cache holds, by route and backend",
            m.bytes.clone(),
        );
        r.register(
            "backend_errors",
            "Cache backend calls that failed (the request bypassed the cache), by backend, operation and reason",
            m.errors.clone(),
        );
        m
    }

    /// A hit on `route` saved `usd`.
    pub fn count_saved(&self, route: &Arc<str>, usd: f64) {
        if usd.is_finite() && usd > 0.0 {
            self.saved_usd
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                })
                .inc_by(usd);
        }
    }

    /// What `backend` holds for `route` now.
    pub fn set_size(&self, route: &Arc<str>, backend: &'static str, entries: usize, bytes: usize) {
        let labels = StoreLabels {
            route: route.clone(),
            backend,
        };
        self.entries
            .get_or_create(&labels)
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.bytes
            .get_or_create(&labels)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A backend call failed.
    pub fn count_error(&self, backend: &'static str, op: &'static str, reason: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                backend,
                op,
                reason,
            })
            .inc();
    }
}
