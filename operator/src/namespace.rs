//! Reconciling one namespace: its ModelProviders, Routes and Budgets plus the Secrets they
//! reference become the rendered config ConfigMap, the keys Secret, the sidecars' RBAC and the
//! status of every resource.
//!
//! The unit of work is the namespace, not the resource, because `render` needs all of a
//! namespace's resources at once (aliases are unique per namespace, Routes resolve Providers).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_crds::contract::{CONFIG_NAME, KEYS_NAME, SIDECAR_RBAC_NAME};
use gatehouse_crds::{Budget, Inputs, ModelProvider, Route, SecretData, render};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::time::timeout;

use crate::error::Error;
use crate::metrics::{ErrorLabels, Metrics, ReconcileLabels};
use crate::objects;
use crate::status;

/// How often a namespace is reconciled without any event, to repair drift nobody announced
/// (e.g. a hand-edited Role, which is not watched).
pub const RESYNC: Duration = Duration::from_secs(300);

/// How long a reconcile waits for the caches' first list before giving up and requeueing.
const CACHE_WAIT: Duration = Duration::from_secs(2);

/// Everything a reconcile reads and writes with.
#[derive(Clone)]
pub struct Context {
    /// API client.
    pub client: Client,
    /// Cache of every ModelProvider.
    pub providers: Store<ModelProvider>,
    /// Cache of every Route.
    pub routes: Store<Route>,
    /// Cache of every Budget.
    pub budgets: Store<Budget>,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

fn in_namespace<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>, ns: &str) -> Vec<K> {
    let mut items: Vec<K> = store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns))
        .map(|o| K::clone(o))
        .collect();
    items.sort_by_key(|o| o.meta().name.clone());
    items
}

fn owner<K: Resource<DynamicType = ()>>(object: &K) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: object.meta().name.clone()?,
        uid: object.meta().uid.clone()?,
        ..OwnerReference::default()
    })
}

/// Reconcile one namespace. Called by the controller; counts and times itself.
pub async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&namespace.name_any(), &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    let label = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&ReconcileLabels { result: label })
        .inc();
    result
}

/// Requeue a failed namespace soon; the error has been logged and counted.
pub fn error_policy(namespace: Arc<Namespace>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = %namespace.name_any(), error = %error, "reconcile failed");
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            reason: error.metric_label(),
        })
        .inc();
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile_inner(ns: &str, ctx: &Context) -> Result<Action, Error> {
    // Reconciling on a cache that has not listed yet would delete everything it cannot see. The
    // wait is bounded: the stores fill only while the controller polls their watchers, which it
    // stops doing on shutdown while it waits for this reconcile, so an unbounded wait could
    // deadlock a shutdown that comes before the first lists.
    let ready = |r: Result<Result<(), _>, _>, what| match r {
        Ok(Ok(())) => Ok(()),
        _ => Err(Error::CacheNotReady(what)),
    };
    ready(
        timeout(CACHE_WAIT, ctx.providers.wait_until_ready()).await,
        "modelprovider",
    )?;
    ready(
        timeout(CACHE_WAIT, ctx.routes.wait_until_ready()).await,
        "route",
    )?;
    ready(
        timeout(CACHE_WAIT, ctx.budgets.wait_until_ready()).await,
        "budget",
    )?;
    let providers = in_namespace(&ctx.providers, ns);
    let routes = in_namespace(&ctx.routes, ns);
    let budgets = in_namespace(&ctx.budgets, ns);
    let client = ctx.client.clone();
    let m = &ctx.metrics;

    if providers.is_empty() && routes.is_empty() && budgets.is_empty() {
        // The last resource went: the rendered objects go too. (The garbage collector would also
        // remove them through their ownerReferences; deleting here does not depend on it.)
        objects::delete(
            &Api::<ConfigMap>::namespaced(client.clone(), ns),
            CONFIG_NAME,
            m,
        )
        .await?;
        objects::delete(&Api::<Secret>::namespaced(client.clone(), ns), KEYS_NAME, m).await?;
        objects::delete(
            &Api::<RoleBinding>::namespaced(client.clone(), ns),
            SIDECAR_RBAC_NAME,
            m,
        )
        .await?;
        objects::delete(&Api::<Role>::namespaced(client, ns), SIDECAR_RBAC_NAME, m).await?;
        return Ok(Action::await_change());
    }

    let secrets = read_secrets(&client, ns, &providers).await?;
    let rendered = render(&Inputs {
        namespace: ns,
        providers: &providers,
        routes: &routes,
        budgets: &budgets,
        secrets: &secrets,
    });

    // Owned by every Gatehouse resource of the namespace: the garbage collector removes the
    // rendered objects only once the last of them is gone, which is exactly when they are stale.
    let owners: Vec<OwnerReference> = providers
        .iter()
        .filter_map(owner)
        .chain(routes.iter().filter_map(owner))
        .chain(budgets.iter().filter_map(owner))
        .collect();

    // Order matters to a sidecar watching these objects: its Role and RoleBinding first (it needs
    // them to read anything), then the keys (a config naming a new key should find it mounted),
    // then the config itself. Whoever sees the config can rely on the rest being in place.
    objects::apply(
        &Api::<Role>::namespaced(client.clone(), ns),
        objects::sidecar_role(ns, &owners),
        m,
    )
    .await?;
    objects::apply(
        &Api::<RoleBinding>::namespaced(client.clone(), ns),
        objects::sidecar_role_binding(ns, &owners),
        m,
    )
    .await?;
    objects::apply(
        &Api::<Secret>::namespaced(client.clone(), ns),
        objects::keys_secret(ns, &rendered.keys, &owners),
        m,
    )
    .await?;
    objects::apply(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        objects::config_map(&rendered.config, &owners)?,
        m,
    )
    .await?;

    let provider_api = Api::<ModelProvider>::namespaced(client.clone(), ns);
    for p in &providers {
        status::update(&provider_api, p, &rendered, &ctx.recorder, m).await?;
    }
    let route_api = Api::<Route>::namespaced(client.clone(), ns);
    for r in &routes {
        status::update(&route_api, r, &rendered, &ctx.recorder, m).await?;
    }
    let budget_api = Api::<Budget>::namespaced(client, ns);
    for b in &budgets {
        status::update(&budget_api, b, &rendered, &ctx.recorder, m).await?;
    }
    Ok(Action::requeue(RESYNC))
}

/// The Secrets the providers reference, read fresh (the operator caches only Secret metadata, so a
/// cluster's worth of Secret data never sits in its memory).
async fn read_secrets(
    client: &Client,
    ns: &str,
    providers: &[ModelProvider],
) -> Result<SecretData, Error> {
    let names: BTreeSet<&str> = providers
        .iter()
        .flat_map(|p| p.spec.secret_names())
        .collect();
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let mut out = SecretData::new();
    for name in names {
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| Error::kube(format!("get secret {ns}/{name}"), e))?;
        if let Some(secret) = secret {
            out.insert(name, gatehouse_crds::keys::secret_data(secret));
        }
    }
    // CA bundles from ConfigMaps (spec.tls.caBundle.configMapRef) travel with the keys.
    let names: BTreeSet<&str> = providers
        .iter()
        .flat_map(|p| p.spec.config_map_names())
        .collect();
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    for name in names {
        let config_map = api
            .get_opt(name)
            .await
            .map_err(|e| Error::kube(format!("get configmap {ns}/{name}"), e))?;
        if let Some(config_map) = config_map {
            out.insert_config_map(config_map);
        }
    }
    Ok(out)
}

/// Whether a Secret named `name` in `ns` is referenced by a ModelProvider in the cache.
pub fn secret_is_referenced(providers: &Store<ModelProvider>, ns: &str, name: &str) -> bool {
    providers
        .state()
        .iter()
        .any(|p| p.meta().namespace.as_deref() == Some(ns) && p.spec.secret_names().contains(&name))
}

/// Whether a ConfigMap named `name` in `ns` is referenced by a ModelProvider in the cache (a CA
/// bundle).
pub fn config_map_is_referenced(providers: &Store<ModelProvider>, ns: &str, name: &str) -> bool {
    providers.state().iter().any(|p| {
        p.meta().namespace.as_deref() == Some(ns) && p.spec.config_map_names().contains(&name)
    })
}
