//! Wiring: caches and watches feeding one [`Controller`] whose unit of work is the namespace.
//!
//! Every watched object maps to the namespace it lives in. ModelProviders, Routes and Budgets are
//! cached in full (reconcile reads them from the caches); Secrets only as metadata (a change to one a
//! provider references triggers its namespace, whose reconcile then reads just that Secret); the
//! rendered ConfigMaps are watched so a hand edit or deletion is repaired at once.
//!
//! Reconnecting: each watch backs off on its own ([`Reconnect`]: 250 ms doubling to 5 s, reset by
//! the first event after a reconnect) and its errors are logged here instead of being passed to the
//! controller. Passed on, they would feed the controller's single trigger backoff as well, which
//! pauses *every* trigger stream and, fed by five watches failing together through an API server
//! restart, grows to tens of seconds (observed: the operator idle 20–60 s after the API server came
//! back).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, future};
use gatehouse_crds::contract::KEYS_NAME;
use gatehouse_crds::{Budget, ModelProvider, Route};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::metrics::Metrics;
use crate::namespace::{self, Context, config_map_is_referenced, secret_is_referenced};
use crate::objects::{MANAGED_BY, MANAGED_BY_LABEL, managed_selector};

/// Which namespaces the operator watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    Cluster,
    /// Just this one.
    Namespace(String),
}

impl Scope {
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match self {
            Self::Cluster => Api::all(client.clone()),
            Self::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }

    fn namespaces(&self) -> watcher::Config {
        match self {
            Self::Cluster => watcher::Config::default(),
            Self::Namespace(ns) => {
                watcher::Config::default().fields(&format!("metadata.name={ns}"))
            }
        }
    }
}

/// Reconnect delays for the operator's watches: exponential from [`Reconnect::FIRST`] to
/// [`Reconnect::MAX`], each delay jittered down by up to half so replicas and watches spread out.
/// Shorter than kube-runtime's default (800 ms to 30 s, reset only after 2 min): the operator is one
/// leader with six watches, and the sidecars keep serving while it catches up, so it should catch
/// up within seconds of the API server returning.
#[derive(Debug, Clone)]
pub struct Reconnect {
    next: Duration,
}

impl Reconnect {
    /// The first delay after a watch fails.
    pub const FIRST: Duration = Duration::from_millis(250);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(5);
}

impl Default for Reconnect {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for Reconnect {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let full = self.next;
        self.next = (full * 2).min(Self::MAX);
        Some(full.mul_f64(1.0 - rand::random::<f64>() / 2.0))
    }
}

impl Backoff for Reconnect {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A watch's events for the controller: errors are logged (the watch itself backs off and
/// reconnects) rather than handed to the controller's shared trigger backoff.
fn without_errors<K: Send + 'static>(
    what: &'static str,
    metrics: &Arc<Metrics>,
    events: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    let metrics = metrics.clone();
    events.filter_map(move |event| {
        future::ready(match event {
            Ok(object) => Some(Ok(object)),
            Err(e) => {
                metrics.watch_error(what);
                tracing::warn!(watch = what, error = %e, "watch failed; reconnecting");
                None
            }
        })
    })
}

fn namespace_of<K: Resource>(object: &K) -> Option<ObjectRef<Namespace>> {
    object.meta().namespace.as_deref().map(ObjectRef::new)
}

/// Budget events that matter to the reconcile: a new Budget, a spec change (a new generation)
/// or a deletion. The ledger writes Budget status every second under load; those writes must
/// not each start a namespace reconcile.
fn budget_spec_changes(
    events: impl Stream<Item = Result<watcher::Event<Budget>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<Budget, watcher::Error>> + Send + 'static {
    let mut generations: std::collections::HashMap<String, Option<i64>> = Default::default();
    events.filter_map(move |event| {
        let key = |b: &Budget| b.uid().unwrap_or_else(|| b.name_any());
        future::ready(match event {
            Ok(watcher::Event::Apply(b) | watcher::Event::InitApply(b)) => {
                let generation = b.metadata.generation;
                (generations.insert(key(&b), generation) != Some(generation)).then_some(Ok(b))
            }
            Ok(watcher::Event::Delete(b)) => {
                generations.remove(&key(&b));
                Some(Ok(b))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        })
    })
}

/// Run the controller until `shutdown` resolves. Calls `synced` once every cache (ModelProviders,
/// Routes, Budgets and the controller's Namespaces) has completed its first list. `lead` is
/// given the Budget cache and runs beside the controller (the budget ledger); it must end on
/// its own once shutdown begins, and is awaited.
pub async fn run<L: Future<Output = ()>>(
    client: Client,
    scope: Scope,
    metrics: Arc<Metrics>,
    identity: String,
    synced: impl FnOnce(),
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    lead: impl FnOnce(reflector::Store<Budget>, reflector::Store<Route>) -> L,
) {
    let wc = watcher::Config::default();
    let (providers, providers_writer) = reflector::store();
    let (routes, routes_writer) = reflector::store();
    let (budgets, budgets_writer) = reflector::store();
    let provider_events = watcher(scope.api::<ModelProvider>(&client), wc.clone())
        .backoff(Reconnect::default())
        .reflect(providers_writer)
        .touched_objects();
    let route_events = watcher(scope.api::<Route>(&client), wc.clone())
        .backoff(Reconnect::default())
        .reflect(routes_writer)
        .touched_objects();
    let budget_events = budget_spec_changes(
        watcher(scope.api::<Budget>(&client), wc.clone())
            .backoff(Reconnect::default())
            .reflect(budgets_writer),
    );
    let secret_events = watcher(scope.api::<PartialObjectMeta<Secret>>(&client), wc.clone())
        .backoff(Reconnect::default())
        .touched_objects();
    let config_events = watcher(
        scope.api::<ConfigMap>(&client),
        wc.clone().labels(&managed_selector()),
    )
    .backoff(Reconnect::default())
    .touched_objects();
    // Any ConfigMap, as metadata only: one a ModelProvider takes its CA bundle from triggers its
    // namespace (the operator's own config ConfigMaps are watched above).
    let bundle_events = watcher(
        scope.api::<PartialObjectMeta<ConfigMap>>(&client),
        wc.clone(),
    )
    .backoff(Reconnect::default())
    .touched_objects();
    let provider_events = without_errors("modelproviders", &metrics, provider_events);
    let bundle_events = without_errors("configmaps", &metrics, bundle_events);
    let route_events = without_errors("routes", &metrics, route_events);
    let budget_events = without_errors("budgets", &metrics, budget_events);
    let secret_events = without_errors("secrets", &metrics, secret_events);
    let config_events = without_errors("configmaps", &metrics, config_events);

    let reporter = Reporter {
        controller: "gatehouse-operator".into(),
        instance: Some(identity),
    };
    let stores = (providers.clone(), routes.clone(), budgets.clone());
    let ledger = lead(budgets.clone(), routes.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        providers: providers.clone(),
        routes,
        budgets,
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
    });

    // The namespace watch is the controller's own; `trigger_backoff` is its only backoff, and
    // the only errors reaching it are its own.
    let controller = Controller::new(Api::<Namespace>::all(client), scope.namespaces());
    let namespaces = controller.store();
    // The stores fill only while the controller below polls their watches, so this waits beside
    // it rather than before it. A store whose writer is gone never becomes ready; neither does
    // the replica.
    let sync = async move {
        let (providers, routes, budgets) = stores;
        let lists = tokio::join!(
            providers.wait_until_ready(),
            routes.wait_until_ready(),
            budgets.wait_until_ready(),
            namespaces.wait_until_ready(),
        );
        if let (Ok(()), Ok(()), Ok(()), Ok(())) = lists {
            tracing::info!("caches synced");
            synced();
        }
        future::pending::<()>().await;
    };
    let controller = controller
        .trigger_backoff(Reconnect::default())
        .watches_stream(provider_events, |o: ModelProvider| namespace_of(&o))
        .watches_stream(route_events, |o: Route| namespace_of(&o))
        .watches_stream(budget_events, |o: Budget| namespace_of(&o))
        .watches_stream(config_events, |o: ConfigMap| namespace_of(&o))
        .watches_stream(bundle_events, {
            let providers = providers.clone();
            move |c: PartialObjectMeta<ConfigMap>| {
                let ns = c.namespace().unwrap_or_default();
                config_map_is_referenced(&providers, &ns, &c.name_any())
                    .then(|| ObjectRef::new(&ns))
            }
        })
        .watches_stream(secret_events, move |s: PartialObjectMeta<Secret>| {
            let ns = s.namespace().unwrap_or_default();
            let name = s.name_any();
            let ours = name == KEYS_NAME
                && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
            (ours || secret_is_referenced(&providers, &ns, &name)).then(|| ObjectRef::new(&ns))
        })
        .graceful_shutdown_on(shutdown)
        .run(namespace::reconcile, namespace::error_policy, ctx)
        .for_each(|result| {
            match result {
                Ok((ns, _)) => tracing::debug!(namespace = %ns.name, "reconciled"),
                // The other watches' errors never get here (`without_errors`).
                Err(controller::Error::QueueError(e)) => {
                    metrics.watch_error("namespaces");
                    tracing::warn!(watch = "namespaces", error = %e, "watch failed; reconnecting");
                }
                Err(e) => tracing::debug!(error = %e, "reconcile not run"),
            }
            future::ready(())
        });
    let reconciling = async {
        tokio::select! {
            () = controller => {}
            () = sync => {}
        }
    };
    tokio::join!(reconciling, ledger);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_doubles_to_the_cap_with_downward_jitter_and_resets() {
        let mut backoff = Reconnect::default();
        let mut full = Reconnect::FIRST;
        for _ in 0..10 {
            let d = backoff.next().unwrap_or_default();
            assert!(
                d <= full && d >= full / 2,
                "{d:?} outside [{:?}, {full:?}]",
                full / 2
            );
            full = (full * 2).min(Reconnect::MAX);
        }
        assert_eq!(full, Reconnect::MAX, "ten failures reach the cap");
        backoff.reset();
        let d = backoff.next().unwrap_or_default();
        assert!(d <= Reconnect::FIRST, "reset starts over: {d:?}");
    }
}
