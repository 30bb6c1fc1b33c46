//! The leader's loop over its books, every [`INTERVAL`]: each Budget's status (written only when
//! something shown changed), its Warning events (recorded in the book before they are published,
//! so none repeats), the per-Budget metrics, rollovers and reclaims of silent sidecars' leases,
//! and the removal of records whose Budget is gone. A sync reaches status within one pass.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gatehouse_crds::ledger::AccountKind;
use gatehouse_crds::render::budget_config;
use gatehouse_crds::{Budget, BudgetStatus, Route};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use crate::controller::Scope;
use crate::ledger::account::AccountBook;
use crate::ledger::book::{Book, Terms};
use crate::ledger::status::{FIELD_MANAGER, desired_status, due_events, shows};
use crate::ledger::store::{AccountKey, Records};
use crate::metrics::Metrics;

/// How often status, events, metrics, rollovers and reclaims are brought up to date.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How often (in passes) records of deleted Budgets are looked for.
const GC_EVERY: u32 = 10;
/// Status writes in flight at once.
const WRITES_IN_FLIGHT: usize = 8;

/// The status loop of one leadership term.
pub struct Reporter {
    book: Arc<Book>,
    budgets: Store<Budget>,
    routes: Store<Route>,
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    records: Records,
    scope: Scope,
    written: HashMap<AccountKey, BudgetStatus>,
    announcing: Arc<Mutex<HashSet<(AccountKey, Timestamp, u8)>>>,
    passes: u32,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").finish_non_exhaustive()
    }
}

impl Reporter {
    /// The loop for `book`, reading Budgets from `budgets`.
    pub fn new(
        book: Arc<Book>,
        caches: super::Caches,
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        records: Records,
        scope: Scope,
    ) -> Self {
        Self {
            book,
            budgets: caches.budgets,
            routes: caches.routes,
            client,
            recorder,
            metrics,
            records,
            scope,
            written: HashMap::new(),
            announcing: Arc::default(),
            passes: 0,
        }
    }

    /// Run a pass every [`INTERVAL`] until `stop` turns true or the book is fenced.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
                () = self.book.fenced() => break,
            }
            self.pass(Timestamp::now()).await;
        }
        self.metrics.ledger.forget_budgets();
    }

    fn in_scope(&self, namespace: &str) -> bool {
        match &self.scope {
            Scope::Cluster => true,
            Scope::Namespace(ns) => ns == namespace,
        }
    }

    /// Bring every Budget's status, events and metrics up to date.
    pub async fn pass(&mut self, now: Timestamp) {
        let now_time = Time(now);
        let policy = *self.book.policy();
        let mut writes = Vec::new();
        let mut seen = HashSet::new();
        for budget in self.budgets.state() {
            let (Some(ns), name) = (budget.namespace(), budget.name_any()) else {
                continue;
            };
            let Ok(config) = budget_config(&name, &budget.spec) else {
                // Invalid: the reconcile says why in Ready; there is nothing to meter.
                continue;
            };
            let Some(period) = config.period() else {
                continue;
            };
            let key = AccountKey::budget(&ns, &name);
            let uid = budget.uid().unwrap_or_default();
            let terms = Terms {
                uid: uid.clone(),
                limit: config.limit(),
                period,
            };
            let view = match self.book.slot(&key) {
                Some(slot) => {
                    let mut state = slot.lock();
                    if state.record.uid != uid {
                        AccountBook::new(period, now).view(now, period, &policy)
                    } else {
                        let mut changed = false;
                        if slot.is_claimed() {
                            changed |= state.record.book.roll(period, now);
                            let reclaimed = state.record.book.reclaim(now, &policy);
                            if reclaimed > 0 {
                                self.metrics.ledger.reclaims.inc_by(reclaimed as u64);
                                changed = true;
                            }
                        }
                        if changed {
                            slot.changed(&mut state);
                        }
                        state.record.book.view(now, period, &policy)
                    }
                }
                None => self
                    .book
                    .listed(&key, &uid)
                    .unwrap_or_else(|| AccountBook::new(period, now))
                    .view(now, period, &policy),
            };
            self.metrics
                .ledger
                .budget(&ns, &name, config.limit(), &view);
            seen.insert((ns.clone(), name.clone()));

            let live = budget.status.as_ref();
            let live_conditions = live.map(|s| s.conditions.as_slice()).unwrap_or_default();
            let desired = desired_status(
                &view,
                &config,
                budget.meta().generation,
                live_conditions,
                &now_time,
            );
            if self.written.get(&key) != Some(&desired) && !shows(live, &desired) {
                writes.push((key.clone(), ns.clone(), name.clone(), desired));
            }

            let due = due_events(&view, &config);
            if !due.is_empty() {
                self.announce(key, terms, view.period_start, due, &budget, now);
            }
        }
        self.metrics.ledger.retain_budgets(&seen);

        let client = self.client.clone();
        let metrics = self.metrics.clone();
        let results: Vec<(AccountKey, BudgetStatus, bool)> = futures::stream::iter(writes)
            .map(|(key, ns, name, desired)| {
                let api = Api::<Budget>::namespaced(client.clone(), &ns);
                let metrics = metrics.clone();
                async move {
                    let patch = json!({
                        "apiVersion": Budget::api_version(&()),
                        "kind": Budget::kind(&()),
                        "status": desired,
                    });
                    let ok = match api
                        .patch_status(
                            &name,
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(&patch),
                        )
                        .await
                    {
                        Ok(_) => {
                            metrics.write("budgetstatus", "apply");
                            true
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 => false,
                        Err(e) => {
                            tracing::warn!(budget = %format!("{ns}/{name}"), error = %e, "failed to write budget status");
                            false
                        }
                    };
                    (key, desired, ok)
                }
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        for (key, desired, ok) in results {
            if ok {
                self.written.insert(key, desired);
            }
        }

        self.passes += 1;
        if self.passes.is_multiple_of(GC_EVERY) {
            self.collect_garbage().await;
        }
    }

    /// Record the due events in the book, and once that is persisted publish them (in the
    /// background: a slow API server must not hold up status).
    fn announce(
        &self,
        key: AccountKey,
        terms: Terms,
        period_start: Timestamp,
        due: Vec<(u8, Event)>,
        budget: &Budget,
        now: Timestamp,
    ) {
        let fresh: Vec<(u8, Event)> = {
            let Ok(mut announcing) = self.announcing.lock() else {
                return;
            };
            due.into_iter()
                .filter(|(t, _)| announcing.insert((key.clone(), period_start, *t)))
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        let book = self.book.clone();
        let recorder = self.recorder.clone();
        let metrics = self.metrics.clone();
        let announcing = self.announcing.clone();
        let reference = budget.object_ref(&());
        tokio::spawn(async move {
            let slot = book.slot_for(&key, &terms, now);
            let mut publish = Vec::new();
            let persisted = async {
                slot.claimed().await?;
                let version = {
                    let mut state = slot.lock();
                    let same_budget = state.record.uid == terms.uid;
                    let current = &mut state.record.book.current;
                    if !same_budget || current.start != period_start {
                        // The period (or the Budget) moved on meanwhile.
                        None
                    } else {
                        for (t, event) in &fresh {
                            if !current.notified.contains(t) {
                                current.notified.push(*t);
                                publish.push(event);
                            }
                        }
                        current.notified.sort_unstable();
                        (!publish.is_empty()).then(|| slot.changed(&mut state))
                    }
                };
                match version {
                    Some(v) => slot.persisted(v).await,
                    None => Ok(()),
                }
            }
            .await;
            match persisted {
                Ok(()) => {
                    for event in &publish {
                        match recorder.publish(event, &reference).await {
                            Ok(()) => metrics.write("event", "create"),
                            Err(e) => {
                                tracing::warn!(account = %key, error = %e, "failed to publish budget event");
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(account = %key, error = %e, "failed to record budget events; retrying");
                }
            }
            if let Ok(mut a) = announcing.lock() {
                for (t, _) in &fresh {
                    a.remove(&(key.clone(), period_start, *t));
                }
            }
        });
    }

    /// Delete the records (and drop the slots) of Budgets that no longer exist.
    async fn collect_garbage(&mut self) {
        let exists = |key: &AccountKey| match key.kind {
            AccountKind::Budget => self
                .budgets
                .get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace))
                .is_some(),
            AccountKind::RateLimit => {
                super::rate_limit_terms(&self.routes, &key.namespace, &key.name).is_some()
            }
        };
        let mut gone = Vec::new();
        for slot in self.book.slots() {
            let key = slot.key().clone();
            if self.in_scope(&key.namespace) && !exists(&key) {
                gone.push(key);
            }
        }
        for key in gone {
            if let Some(slot) = self.book.drop_slot(&key) {
                if let Some(rv) = slot.resource_version()
                    && let Err(e) = self.records.delete(&key.object_name(), &rv).await
                {
                    tracing::warn!(account = %key, error = %e, "failed to delete the ledger record");
                }
                self.written.remove(&key);
                tracing::info!(account = %key, "account gone: its ledger record is removed");
            }
        }
        for (name, rv, key) in self.book.listed_records() {
            let Some(key) = key else { continue };
            if self.in_scope(&key.namespace) && !exists(&key) {
                if let Err(e) = self.records.delete(&name, &rv).await {
                    tracing::warn!(account = %key, error = %e, "failed to delete the ledger record");
                } else {
                    self.book.forget_listed(&name);
                }
            }
        }
    }
}
