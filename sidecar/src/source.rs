//! Where the config comes from. Standalone mode reads the manifests a user would `kubectl apply`;
//! kube mode watches the rendered config object and the mounted keys directory.

pub mod files;
pub mod keys;
pub mod kube;
pub mod manifests;

use std::sync::Arc;

use gatehouse_crds::Rendered;

use crate::metrics::{Metrics, ReloadLabels};
use crate::state::{Snapshot, Store};

/// Apply a freshly rendered config: build a snapshot and swap it in, or keep the last good one.
/// Returns whether the new config was applied.
pub fn apply(store: &Store, metrics: &Metrics, rendered: Rendered, origin: &str) -> bool {
    for problem in &rendered.problems {
        tracing::warn!(
            kind = ?problem.kind,
            name = %problem.name,
            reason = %problem.reason,
            message = %problem.message,
            "configuration problem"
        );
    }
    match Snapshot::build_with(rendered.config, &rendered.keys, store.egress()) {
        Ok(snapshot) => {
            tracing::info!(
                origin,
                routes = snapshot.config.routes.len(),
                providers = snapshot.config.providers.len(),
                "configuration applied"
            );
            store.store(snapshot);
            metrics
                .reloads
                .get_or_create(&ReloadLabels { result: "success" })
                .inc();
            true
        }
        Err(e) => {
            reject(metrics, origin, &e.to_string());
            false
        }
    }
}

/// Record a config that could not be used; the last good one stays in force.
pub fn reject(metrics: &Metrics, origin: &str, reason: &str) {
    tracing::error!(origin, error = %reason, "configuration rejected, keeping the last good one");
    metrics
        .reloads
        .get_or_create(&ReloadLabels { result: "error" })
        .inc();
}

/// Shared handles a source needs.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Where snapshots go.
    pub store: Arc<Store>,
    /// Reload counters.
    pub metrics: Arc<Metrics>,
}
