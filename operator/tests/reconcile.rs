//! The operator in-process against a real kube-apiserver: resources in, rendered ConfigMap, keys
//! Secret, sidecar RBAC, status and Events out; no writes when nothing changed; cleanup when the
//! last resource goes. One operator per test, scoped to the test's namespace.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use gatehouse_crds::config::SidecarConfig;
use gatehouse_crds::contract::{CONFIG_KEY, CONFIG_NAME, KEYS_NAME, SIDECAR_RBAC_NAME};
use gatehouse_crds::{ModelProvider, Route};
use gatehouse_e2e::ControlPlane;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

fn control_plane() -> Result<&'static ControlPlane> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let cp = ControlPlane::shared()?;
    INSTALLED
        .get_or_init(|| {
            let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
            cp.kubectl_ok(["apply", "-f", &crds.to_string_lossy()])
                .and_then(|_| {
                    cp.kubectl_ok([
                        "wait",
                        "--for=condition=Established",
                        "--timeout=60s",
                        "crd/modelproviders.gatehouse.dev",
                        "crd/routes.gatehouse.dev",
                        "crd/budgets.gatehouse.dev",
                    ])
                })
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow!("failed to install CRDs: {e}"))?;
    Ok(cp)
}

async fn start_operator(
    client: Client,
    ns: &str,
    identity: &str,
) -> Result<gatehouse_operator::Running> {
    let args = gatehouse_operator::Args::try_parse_from([
        "gatehouse-operator",
        &format!("--identity={identity}"),
        "--admin-listen=127.0.0.1:0",
        &format!("--watch-namespace={ns}"),
        &format!("--lease-namespace={ns}"),
        "--log-format=text",
    ])?;
    Ok(gatehouse_operator::start(args, client).await?)
}

async fn apply(client: &Client, ns: &str, value: serde_json::Value) -> Result<()> {
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let pp = PatchParams::apply("test").force();
    match kind.as_str() {
        "Secret" => {
            Api::<Secret>::namespaced(client.clone(), ns)
                .patch(&name, &pp, &Patch::Apply(&value))
                .await?;
        }
        "ModelProvider" => {
            Api::<ModelProvider>::namespaced(client.clone(), ns)
                .patch(&name, &pp, &Patch::Apply(&value))
                .await?;
        }
        "Route" => {
            Api::<Route>::namespaced(client.clone(), ns)
                .patch(&name, &pp, &Patch::Apply(&value))
                .await?;
        }
        other => bail!("unexpected kind {other}"),
    }
    Ok(())
}

fn secret(name: &str, key: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
           "stringData": {"api-key": key}})
}

fn provider(name: &str, secret: &str) -> serde_json::Value {
    json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "ModelProvider",
           "metadata": {"name": name},
           "spec": {"type": "openaiCompatible", "endpoint": "http://127.0.0.1:9/v1",
                    "apiKeySecretRef": {"name": secret, "key": "api-key"}}})
}

fn route(name: &str, provider: &str, model: &str) -> serde_json::Value {
    json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "Route",
           "metadata": {"name": name},
           "spec": {"models": [name], "targets": [{"provider": provider, "model": model}]}})
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn config(client: &Client, ns: &str) -> Result<Option<SidecarConfig>> {
    let Some(cm) = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(CONFIG_NAME)
        .await?
    else {
        return Ok(None);
    };
    let json = cm
        .data
        .unwrap_or_default()
        .remove(CONFIG_KEY)
        .context("config key missing")?;
    Ok(Some(serde_json::from_str(&json)?))
}

fn ready_of(
    conditions: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> Option<(String, String)> {
    conditions?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn writes(running: &gatehouse_operator::Running) -> u64 {
    running
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("gatehouse_operator_api_writes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn renders_config_keys_rbac_and_status_then_cleans_up() -> Result<()> {
    let cp = control_plane()?;
    let ns = cp.create_namespace("op-render").await?;
    let client = cp.admin_client().await?;
    apply(&client, &ns, secret("llm-key", "sk-one")).await?;
    apply(&client, &ns, provider("llm", "llm-key")).await?;
    apply(&client, &ns, route("chat", "llm", "m1")).await?;
    let operator = start_operator(client.clone(), &ns, "solo").await?;

    let cfg = eventually("rendered config", Duration::from_secs(20), || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            Ok(config(&client, &ns)
                .await?
                .filter(|c| c.routes.contains_key("chat")))
        }
    })
    .await?;
    ensure!(
        cfg.providers["llm"].key.as_deref() == Some("llm"),
        "{cfg:?}"
    );
    ensure!(cfg.routes["chat"].targets[0].model == "m1", "{cfg:?}");
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get(CONFIG_NAME)
        .await?;
    ensure!(
        !serde_json::to_string(&cm)?.contains("sk-one"),
        "the config must not carry keys"
    );
    let owners = cm.metadata.owner_references.unwrap_or_default();
    ensure!(
        owners.len() == 2,
        "owned by the provider and the route: {owners:?}"
    );

    let keys = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(KEYS_NAME)
        .await?;
    let data = keys.data.unwrap_or_default();
    ensure!(
        data.get("llm").map(|v| v.0.as_slice()) == Some(b"sk-one".as_slice()),
        "keys: {data:?}"
    );
    Api::<Role>::namespaced(client.clone(), &ns)
        .get(SIDECAR_RBAC_NAME)
        .await?;
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .get(SIDECAR_RBAC_NAME)
        .await?;

    let routes = Api::<Route>::namespaced(client.clone(), &ns);
    eventually("Route Ready=True", Duration::from_secs(10), || {
        let routes = routes.clone();
        async move {
            let r = routes.get("chat").await?;
            let status = r.status.as_ref();
            Ok(
                (ready_of(status.map(|s| &s.conditions)) == Some(("True".into(), "Ready".into()))
                    && status.and_then(|s| s.observed_generation) == r.metadata.generation)
                    .then_some(()),
            )
        }
    })
    .await?;
    // The observed fields: aliases served and usable/total targets; the provider's endpoint.
    let status = routes.get("chat").await?.status.context("route status")?;
    ensure!(status.aliases == ["chat"], "{status:?}");
    ensure!(
        (
            status.usable_targets,
            status.total_targets,
            status.targets.as_deref()
        ) == (Some(1), Some(1), Some("1/1")),
        "{status:?}"
    );
    let providers = Api::<ModelProvider>::namespaced(client.clone(), &ns);
    let p_status = eventually("provider status", Duration::from_secs(10), || {
        let providers = providers.clone();
        async move {
            Ok(providers
                .get("llm")
                .await?
                .status
                .filter(|s| s.endpoint.is_some()))
        }
    })
    .await?;
    ensure!(
        (p_status.endpoint.as_deref(), p_status.models) == (Some("http://127.0.0.1:9/v1"), Some(0)),
        "{p_status:?}"
    );

    // Steady state: a burst of reconciles triggered by our own writes settles, then nothing is
    // written however often the namespace is reconciled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = writes(&operator);
    // Touch a label on the Route: an event, a reconcile, no content change.
    routes
        .patch(
            "chat",
            &PatchParams::apply("test-label"),
            &Patch::Apply(
                json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "Route",
                "metadata": {"name": "chat", "labels": {"touched": "yes"}}}),
            ),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        writes(&operator) == settled,
        "no writes expected for a no-op change: {} -> {}",
        settled,
        writes(&operator)
    );

    // A route to a provider that does not exist: Ready=False with a reason, and an Event.
    apply(&client, &ns, route("broken", "nope", "m")).await?;
    let reason = eventually("broken Route Ready=False", Duration::from_secs(10), || {
        let routes = routes.clone();
        async move {
            let r = routes.get("broken").await?;
            Ok(ready_of(r.status.as_ref().map(|s| &s.conditions))
                .filter(|(s, _)| s == "False")
                .map(|(_, r)| r))
        }
    })
    .await?;
    ensure!(reason == "ProviderNotFound", "reason {reason}");
    let status = routes
        .get("broken")
        .await?
        .status
        .context("broken status")?;
    ensure!(
        (status.targets.as_deref(), status.aliases.as_slice())
            == (Some("0/1"), ["broken".to_string()].as_slice()),
        "{status:?}"
    );
    eventually(
        "a Warning event for the broken route",
        Duration::from_secs(10),
        || {
            let events = Api::<Event>::namespaced(client.clone(), &ns);
            async move {
                let list = events.list(&ListParams::default()).await?;
                Ok(list
                    .items
                    .iter()
                    .any(|e| {
                        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
                            && e.reason.as_deref() == Some("ProviderNotFound")
                            && e.type_.as_deref() == Some("Warning")
                    })
                    .then_some(()))
            }
        },
    )
    .await?;

    // Key rotation reaches the keys Secret.
    apply(&client, &ns, secret("llm-key", "sk-two")).await?;
    eventually("rotated key", Duration::from_secs(10), || {
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
        async move {
            let s = secrets.get(KEYS_NAME).await?;
            Ok((s.data.unwrap_or_default().get("llm").map(|v| v.0.clone())
                == Some(b"sk-two".to_vec()))
            .then_some(()))
        }
    })
    .await?;

    // The last resource goes: so do the rendered objects.
    let dp = DeleteParams::default();
    routes.delete("chat", &dp).await?;
    routes.delete("broken", &dp).await?;
    Api::<ModelProvider>::namespaced(client.clone(), &ns)
        .delete("llm", &dp)
        .await?;
    eventually("rendered objects removed", Duration::from_secs(10), || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get_opt(CONFIG_NAME)
                .await?;
            let s = Api::<Secret>::namespaced(client.clone(), &ns)
                .get_opt(KEYS_NAME)
                .await?;
            let r = Api::<Role>::namespaced(client.clone(), &ns)
                .get_opt(SIDECAR_RBAC_NAME)
                .await?;
            let b = Api::<RoleBinding>::namespaced(client, &ns)
                .get_opt(SIDECAR_RBAC_NAME)
                .await?;
            Ok((cm.is_none() && s.is_none() && r.is_none() && b.is_none()).then_some(()))
        }
    })
    .await?;
    operator.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn two_replicas_elect_one_leader() -> Result<()> {
    let cp = control_plane()?;
    let ns = cp.create_namespace("op-leader").await?;
    let client = cp.admin_client().await?;
    let first = start_operator(client.clone(), &ns, "one").await?;
    let second = start_operator(client.clone(), &ns, "two").await?;
    let leader = |r: &gatehouse_operator::Running| r.metrics.leader.get();
    eventually("one leader", Duration::from_secs(10), || {
        let sum = leader(&first) + leader(&second);
        async move { Ok((sum == 1).then_some(())) }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        leader(&first) + leader(&second) == 1,
        "exactly one leader after renewals"
    );
    // The leader steps down on shutdown and releases the Lease: the standby takes over quickly.
    let (gone, standby) = if leader(&first) == 1 {
        (first, second)
    } else {
        (second, first)
    };
    let started = Instant::now();
    gone.shutdown().await?;
    eventually("standby takes over", Duration::from_secs(10), || {
        let l = leader(&standby);
        async move { Ok((l == 1).then_some(())) }
    })
    .await?;
    ensure!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    standby.shutdown().await?;
    Ok(())
}
