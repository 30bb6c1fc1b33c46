//! The ledger's metrics: syncs, commits, TokenReviews, reclaims, and every Budget's spend,
//! limit and sidecars (exported by the leader only, which holds the books).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use gatehouse_crds::ledger::{Limit, NANOS_PER_USD};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ledger::account::View;

/// Labels with a bounded result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The result.
    pub result: &'static str,
}

/// Labels of a per-Budget metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// The Budget's namespace.
    pub namespace: String,
    /// The Budget's name.
    pub budget: String,
}

/// Labels of the per-Budget sidecar count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SidecarLabels {
    /// The Budget's namespace.
    pub namespace: String,
    /// The Budget's name.
    pub budget: String,
    /// `active` (reported within the lease time) or `degraded` (served without a lease).
    pub state: &'static str,
}

type GaugeF = Gauge<f64, AtomicU64>;

/// The ledger's metrics.
#[derive(Debug)]
pub struct LedgerMetrics {
    /// Sync calls by result: ok, unauthenticated, forbidden, invalid_request, not_leader,
    /// unavailable, not_found.
    pub syncs: Family<ResultLabels, Counter>,
    /// Time to answer a sync (persistence included).
    pub sync_duration: Histogram,
    /// Record writes by result: ok, conflict, error.
    pub commits: Family<ResultLabels, Counter>,
    /// Time of one record write.
    pub commit_duration: Histogram,
    /// Token checks by result: accepted, rejected, error (TokenReview calls) and cached.
    pub token_reviews: Family<ResultLabels, Counter>,
    /// Leases of silent sidecars reclaimed.
    pub reclaims: Counter,
    /// Reports for periods the ledger no longer keeps (not counted).
    pub stale_reports: Counter,
    spent_usd: Family<BudgetLabels, GaugeF>,
    spent_tokens: Family<BudgetLabels, Gauge>,
    limit_usd: Family<BudgetLabels, GaugeF>,
    limit_tokens: Family<BudgetLabels, Gauge>,
    leased_usd: Family<BudgetLabels, GaugeF>,
    sidecars: Family<SidecarLabels, Gauge>,
    budgets: Mutex<HashSet<(String, String)>>,
}

impl LedgerMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            syncs: Family::default(),
            sync_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            commits: Family::default(),
            commit_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            token_reviews: Family::default(),
            reclaims: Counter::default(),
            stale_reports: Counter::default(),
            spent_usd: Family::default(),
            spent_tokens: Family::default(),
            limit_usd: Family::default(),
            limit_tokens: Family::default(),
            leased_usd: Family::default(),
            sidecars: Family::default(),
            budgets: Mutex::default(),
        };
        registry.register(
            "ledger_syncs",
            "Ledger sync calls by result",
            m.syncs.clone(),
        );
        registry.register(
            "ledger_sync_duration_seconds",
            "Time to answer a ledger sync, persistence included",
            m.sync_duration.clone(),
        );
        registry.register(
            "ledger_commits",
            "Ledger record writes by result (ok, conflict, error)",
            m.commits.clone(),
        );
        registry.register(
            "ledger_commit_duration_seconds",
            "Time of one ledger record write",
            m.commit_duration.clone(),
        );
        registry.register(
            "ledger_token_reviews",
            "Sidecar token checks by result (accepted, rejected, error, cached)",
            m.token_reviews.clone(),
        );
        registry.register(
            "ledger_reclaims",
            "Leases of silent sidecars reclaimed",
            m.reclaims.clone(),
        );
        registry.register(
            "ledger_stale_reports",
            "Reports for a period the ledger no longer keeps, not counted",
            m.stale_reports.clone(),
        );
        registry.register(
            "budget_spent_usd",
            "Spent in the Budget's current period, in USD",
            m.spent_usd.clone(),
        );
        registry.register(
            "budget_spent_tokens",
            "Tokens spent in the Budget's current period",
            m.spent_tokens.clone(),
        );
        registry.register(
            "budget_limit_usd",
            "The Budget's limit in USD (Budgets that limit USD)",
            m.limit_usd.clone(),
        );
        registry.register(
            "budget_limit_tokens",
            "The Budget's limit in tokens (Budgets that limit tokens)",
            m.limit_tokens.clone(),
        );
        registry.register(
            "budget_leased_usd",
            "Granted to sidecars and not yet spent in the Budget's current period, in USD",
            m.leased_usd.clone(),
        );
        registry.register(
            "budget_sidecars",
            "Sidecars of the Budget: active (reported within the lease time) and degraded \
             (served without a lease, ledger unreachable)",
            m.sidecars.clone(),
        );
        m
    }

    /// Count a sync by result.
    pub fn sync(&self, result: &'static str) {
        self.syncs.get_or_create(&ResultLabels { result }).inc();
    }

    /// Count a record write by result.
    pub fn commit(&self, result: &'static str) {
        self.commits.get_or_create(&ResultLabels { result }).inc();
    }

    /// Count a token check by result.
    pub fn token_review(&self, result: &'static str) {
        self.token_reviews
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Set a Budget's gauges from a view of its book.
    pub fn budget(&self, namespace: &str, budget: &str, limit: Limit, view: &View) {
        let labels = BudgetLabels {
            namespace: namespace.to_string(),
            budget: budget.to_string(),
        };
        let usd = |n: u64| n as f64 / NANOS_PER_USD;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.spent_usd
            .get_or_create(&labels)
            .set(usd(view.spent.nano_usd));
        self.spent_tokens
            .get_or_create(&labels)
            .set(gauge(view.spent.tokens));
        self.leased_usd
            .get_or_create(&labels)
            .set(usd(view.committed.saturating_sub(view.spent).nano_usd));
        match limit.nano_usd {
            Some(l) => {
                self.limit_usd.get_or_create(&labels).set(usd(l));
            }
            None => {
                self.limit_usd.remove(&labels);
            }
        }
        match limit.tokens {
            Some(l) => {
                self.limit_tokens.get_or_create(&labels).set(gauge(l));
            }
            None => {
                self.limit_tokens.remove(&labels);
            }
        }
        for (state, n) in [("active", view.active), ("degraded", view.degraded.len())] {
            self.sidecars
                .get_or_create(&SidecarLabels {
                    namespace: namespace.to_string(),
                    budget: budget.to_string(),
                    state,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Ok(mut b) = self.budgets.lock() {
            b.insert((namespace.to_string(), budget.to_string()));
        }
    }

    fn remove(&self, namespace: &str, budget: &str) {
        let labels = BudgetLabels {
            namespace: namespace.to_string(),
            budget: budget.to_string(),
        };
        self.spent_usd.remove(&labels);
        self.spent_tokens.remove(&labels);
        self.limit_usd.remove(&labels);
        self.limit_tokens.remove(&labels);
        self.leased_usd.remove(&labels);
        for state in ["active", "degraded"] {
            self.sidecars.remove(&SidecarLabels {
                namespace: namespace.to_string(),
                budget: budget.to_string(),
                state,
            });
        }
    }

    /// Drop the gauges of Budgets not in `seen` (deleted).
    pub fn retain_budgets(&self, seen: &HashSet<(String, String)>) {
        let Ok(mut budgets) = self.budgets.lock() else {
            return;
        };
        let gone: Vec<(String, String)> = budgets.difference(seen).cloned().collect();
        for (ns, name) in gone {
            self.remove(&ns, &name);
            budgets.remove(&(ns, name));
        }
    }

    /// Drop every Budget's gauges (leadership ended: another replica exports them).
    pub fn forget_budgets(&self) {
        self.retain_budgets(&HashSet::new());
    }
}
