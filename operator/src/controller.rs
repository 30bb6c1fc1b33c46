//! Wiring: caches and watches feeding one [`Controller`] whose unit of work is the namespace.
//!
//! Every watched object maps to the namespace it lives in. ModelProviders, Routes and Budgets are
//! cached in full (reconcile reads them from the caches); Secrets only as metadata (a change to one a
//! provider references triggers its namespace, whose reconcile then reads just that Secret); the
//! rendered ConfigMaps are watched so a hand edit or deletion is repaired at once.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use gatehouse_crds::{Budget, ModelProvider, Route};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::metrics::Metrics;
use crate::namespace::{self, Context, secret_is_referenced};
use crate::objects::{KEYS_NAME, MANAGED_BY, MANAGED_BY_LABEL, managed_selector};

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

fn namespace_of<K: Resource>(object: &K) -> Option<ObjectRef<Namespace>> {
    object.meta().namespace.as_deref().map(ObjectRef::new)
}

/// Run the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    scope: Scope,
    metrics: Arc<Metrics>,
    identity: String,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let wc = watcher::Config::default();
    let (providers, providers_writer) = reflector::store();
    let (routes, routes_writer) = reflector::store();
    let (budgets, budgets_writer) = reflector::store();
    let provider_events = watcher(scope.api::<ModelProvider>(&client), wc.clone())
        .default_backoff()
        .reflect(providers_writer)
        .touched_objects();
    let route_events = watcher(scope.api::<Route>(&client), wc.clone())
        .default_backoff()
        .reflect(routes_writer)
        .touched_objects();
    let budget_events = watcher(scope.api::<Budget>(&client), wc.clone())
        .default_backoff()
        .reflect(budgets_writer)
        .touched_objects();
    let secret_events = watcher(scope.api::<PartialObjectMeta<Secret>>(&client), wc.clone())
        .default_backoff()
        .touched_objects();
    let config_events = watcher(
        scope.api::<ConfigMap>(&client),
        wc.clone().labels(&managed_selector()),
    )
    .default_backoff()
    .touched_objects();

    let reporter = Reporter {
        controller: "gatehouse-operator".into(),
        instance: Some(identity),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        providers: providers.clone(),
        routes,
        budgets,
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
    });

    Controller::new(Api::<Namespace>::all(client), scope.namespaces())
        .watches_stream(provider_events, |o: ModelProvider| namespace_of(&o))
        .watches_stream(route_events, |o: Route| namespace_of(&o))
        .watches_stream(budget_events, |o: Budget| namespace_of(&o))
        .watches_stream(config_events, |o: ConfigMap| namespace_of(&o))
        .watches_stream(secret_events, move |s: PartialObjectMeta<Secret>| {
            let ns = s.namespace().unwrap_or_default();
            let name = s.name_any();
            let ours = name == KEYS_NAME
                && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
            (ours || secret_is_referenced(&providers, &ns, &name)).then(|| ObjectRef::new(&ns))
        })
        .graceful_shutdown_on(shutdown)
        .run(namespace::reconcile, namespace::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((ns, _)) => tracing::debug!(namespace = %ns.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile not run"),
            }
        })
        .await;
}
