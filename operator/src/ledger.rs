//! The budget ledger: the operator's leader holds every Budget's authoritative spend and hands
//! each sidecar a lease, a slice of what is left; sidecars spend within it and report.
//!
//! - [`account`]: the books and the grant policy (pure).
//! - [`book`]: the leader's books in memory, group commit and fencing.
//! - [`store`]: the records (one ConfigMap per account in the operator's namespace).
//! - [`auth`]: the sidecars' ServiceAccount tokens, checked by TokenReview.
//! - [`server`]: the sync endpoint, on every replica.
//! - [`status`]: what Budget status and events say (pure).
//! - [`reporter`]: the leader's loop writing them every second, with metrics, rollovers,
//!   reclaims and the removal of records of deleted Budgets.
//!
//! The contract with the sidecars is `gatehouse_crds::ledger`; the bounds it gives are in
//! docs/architecture.md, "Budgets across replicas".

pub mod account;
pub mod auth;
pub mod book;
pub mod metrics;
pub mod reporter;
pub mod server;
pub mod status;
pub mod store;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use gatehouse_crds::guardrails::RateLimitScope;
use gatehouse_crds::ledger::{AccountKind, RATE_LIMIT_WINDOW, SyncRequest, rate_limit};
use gatehouse_crds::render::budget_config;
use gatehouse_crds::{Budget, Route};
use kube::Client;
use kube::ResourceExt;
use kube::runtime::events::{Recorder, Reporter as EventReporter};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;

use crate::controller::Scope;
use crate::leader::Observed;
use crate::ledger::account::Policy;
use crate::ledger::auth::Authenticator;
use crate::ledger::book::{Book, Terms};
use crate::ledger::reporter::Reporter;
use crate::ledger::store::Records;
use crate::metrics::Metrics;

/// How long a stopping leader may take to write what its books hold.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The ledger's settings, from the operator's flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The grant and reclaim timing.
    pub policy: Policy,
    /// How often sidecars sync at least.
    pub sync_after_ms: u64,
    /// Namespace of the records (the operator's own).
    pub namespace: String,
}

/// What this replica does for the ledger right now.
#[derive(Debug, Clone)]
pub enum Role {
    /// Not the leader.
    Follower,
    /// Just became the leader; loading the records.
    Starting,
    /// The leader.
    Leading(Arc<Leadership>),
}

/// The leader's books and the Budgets they are for.
#[derive(Debug)]
pub struct Leadership {
    /// The books.
    pub book: Arc<Book>,
    budgets: Store<Budget>,
    routes: Store<Route>,
}

impl Leadership {
    /// What the ledger knows of each account of `req`: `None` when there is no such valid
    /// Budget in the request's namespace (in the operator's scope).
    pub fn terms(&self, req: &SyncRequest) -> Vec<Option<Terms>> {
        req.accounts
            .iter()
            .map(|a| {
                if a.kind == AccountKind::RateLimit {
                    return rate_limit_terms(&self.routes, &req.namespace, &a.name);
                }
                let budget = self
                    .budgets
                    .get(&ObjectRef::new(&a.name).within(&req.namespace))?;
                let config = budget_config(&a.name, &budget.spec).ok()?;
                Some(Terms {
                    uid: budget.uid()?,
                    limit: config.limit(),
                    period: config.period()?,
                })
            })
            .collect()
    }
}

/// The operator's caches the ledger reads: Budgets, and Routes (for cluster rate limits).
#[derive(Clone)]
pub struct Caches {
    /// Budgets in the operator's scope.
    pub budgets: Store<Budget>,
    /// Routes in the operator's scope.
    pub routes: Store<Route>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

/// What the ledger knows of rate-limit account `name` (`<route>/<limit>`) in `namespace`:
/// `None` unless that Route has a `scope: cluster` rate limit of that name with a limit > 0.
/// The account is reset when the Route is deleted and created again (its uid).
pub fn rate_limit_terms(routes: &Store<Route>, namespace: &str, name: &str) -> Option<Terms> {
    let (route_name, limit_name) = name.split_once('/')?;
    let route = routes.get(&ObjectRef::new(route_name).within(namespace))?;
    let positive = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0);
    let limit = route
        .spec
        .rate_limits
        .iter()
        .find(|l| l.name == limit_name && l.scope == RateLimitScope::Cluster)?;
    let (rpm, tpm) = (
        positive(limit.requests_per_minute),
        positive(limit.tokens_per_minute),
    );
    if rpm.is_none() && tpm.is_none() {
        return None;
    }
    Some(Terms {
        uid: route.uid()?,
        limit: rate_limit(rpm, tpm),
        period: RATE_LIMIT_WINDOW,
    })
}

/// The ledger of one operator replica.
pub struct Ledger {
    settings: Settings,
    auth: Authenticator,
    metrics: Arc<Metrics>,
    role: RwLock<Role>,
    observed: Arc<Observed>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Sets the role back to follower however leading ends (a lost Lease drops the future).
struct Demote<'a>(&'a Ledger);

impl Drop for Demote<'_> {
    fn drop(&mut self) {
        self.0.set_role(Role::Follower);
        self.0.metrics.ledger.forget_budgets();
    }
}

impl Ledger {
    /// The ledger of a replica; `observed` is what its leader election sees of the leader.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        observed: Arc<Observed>,
    ) -> Self {
        Self {
            settings,
            auth: Authenticator::new(client, metrics.clone()),
            metrics,
            role: RwLock::new(Role::Follower),
            observed,
        }
    }

    /// What this replica does for the ledger.
    pub fn role(&self) -> Role {
        self.role
            .read()
            .map(|r| r.clone())
            .unwrap_or(Role::Follower)
    }

    fn set_role(&self, role: Role) {
        if let Ok(mut r) = self.role.write() {
            *r = role;
        }
    }

    /// The leader's ledger URL, as the Lease says.
    pub fn leader_url(&self) -> Option<String> {
        self.observed.leader_url()
    }

    /// Lead the ledger for one term: load the records once the Budget cache has listed, serve
    /// syncs, and keep status up to date, until `stop` turns true (then write what is held,
    /// briefly) or a newer leader fences this one. Dropping the future ends leadership at once.
    pub async fn lead(
        &self,
        client: Client,
        caches: Caches,
        scope: Scope,
        identity: String,
        term: i64,
        mut stop: watch::Receiver<bool>,
    ) {
        let Caches { budgets, routes } = caches;
        let _demote = Demote(self);
        self.set_role(Role::Starting);
        tokio::select! {
            r = async { (budgets.wait_until_ready().await, routes.wait_until_ready().await) } => {
                if r.0.is_err() || r.1.is_err() { return }
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        let records = Records::new(client.clone(), &self.settings.namespace);
        let mut delay = Duration::from_millis(250);
        let loaded = loop {
            match records.list().await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(error = %e, "failed to load the ledger records; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        tracing::info!(records = loaded.len(), term, "leading the budget ledger");
        let book = Arc::new(Book::new(
            records.clone(),
            identity.clone(),
            term,
            self.settings.policy,
            self.settings.sync_after_ms,
            self.metrics.clone(),
            loaded,
        ));
        self.set_role(Role::Leading(Arc::new(Leadership {
            book: book.clone(),
            budgets: budgets.clone(),
            routes: routes.clone(),
        })));
        let recorder = Recorder::new(
            client.clone(),
            EventReporter {
                controller: "gatehouse-operator".into(),
                instance: Some(identity),
            },
        );
        Reporter::new(
            book.clone(),
            Caches { budgets, routes },
            client,
            recorder,
            self.metrics.clone(),
            records,
            scope,
        )
        .run(stop.clone())
        .await;
        // New syncs go elsewhere from now on; what was changed but not yet written is written.
        self.set_role(Role::Follower);
        if !book.is_fenced() {
            book.close(CLOSE_GRACE).await;
        }
        tracing::info!("stopped leading the budget ledger");
    }
}
