//! The operator in-process against a real kube-apiserver: resources in, rendered ConfigMap, keys
//! Secret, sidecar RBAC, status and Events out; no writes when nothing changed; cleanup when the
//! last resource goes; leader election; `/readyz` before and after the caches sync, and on a
//! standby. One operator (or two) per test, scoped to the test's namespace.

use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use gatehouse_crds::config::SidecarConfig;
use gatehouse_crds::contract::{CONFIG_KEY, CONFIG_NAME, KEYS_NAME, SIDECAR_RBAC_NAME};
use gatehouse_crds::{ModelProvider, Route};
use gatehouse_e2e::{ControlPlane, eventually, reconciled_after};
use gatehouse_operator::metrics::WatchLabels;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

fn control_plane() -> Result<&'static ControlPlane> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let cp = ControlPlane::shared()?;
    INSTALLED
        .get_or_init(|| {
            let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
            cp.install_crds(&crds)
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
        "--ledger-listen=127.0.0.1:0",
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

/// Sum of a counter family of the operator's metrics, e.g. `gatehouse_operator_api_writes_total`.
fn counter(running: &gatehouse_operator::Running, name: &str) -> u64 {
    running
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn writes(running: &gatehouse_operator::Running) -> u64 {
    counter(running, "gatehouse_operator_api_writes_total")
}

/// Finished reconciles, as a future for [`reconciled_after`].
fn reconciles(running: &gatehouse_operator::Running) -> impl Future<Output = Result<u64>> + use<> {
    let n = counter(running, "gatehouse_operator_reconciles_total");
    async move { Ok(n) }
}

/// Set label `gatehouse.dev/test-touch=<n>` on the namespace: the operator's primary object, so
/// it reconciles, and nothing it renders changes.
async fn touch_namespace(client: &Client, ns: &str, n: u64) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::apply("test-touch"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"gatehouse.dev/test-touch": n.to_string()}}})),
        )
        .await?;
    Ok(())
}

/// Wait until the operator is idle: a reconcile that started after every earlier change finished
/// without writing. Returns the write count then.
async fn settled(client: &Client, ns: &str, operator: &gatehouse_operator::Running) -> Result<u64> {
    for _ in 0..10 {
        let before = writes(operator);
        reconciled_after(
            Duration::from_secs(20),
            |n| touch_namespace(client, ns, n),
            || reconciles(operator),
        )
        .await?;
        if writes(operator) == before {
            return Ok(before);
        }
    }
    bail!("the operator kept writing through 10 rounds of reconciles")
}

/// `(status, body)` of the operator's `/readyz`.
async fn readyz(running: &gatehouse_operator::Running) -> Result<(u16, String)> {
    let r = reqwest::get(format!("http://{}/readyz", running.admin_addr)).await?;
    Ok((r.status().as_u16(), r.text().await?))
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
    let settled = settled(&client, &ns, &operator).await?;
    // Touch a label on the Route: an event, a reconcile, no content change. Wait until a
    // reconcile that started after the touch has finished, then check it wrote nothing.
    reconciled_after(
        Duration::from_secs(20),
        |n| {
            let routes = routes.clone();
            async move {
                routes
                    .patch(
                        "chat",
                        &PatchParams::apply("test-label"),
                        &Patch::Apply(json!({"apiVersion": "gatehouse.dev/v1alpha1",
                            "kind": "Route",
                            "metadata": {"name": "chat", "labels": {"touched": format!("yes-{n}")}}})),
                    )
                    .await?;
                Ok(())
            }
        },
        || reconciles(&operator),
    )
    .await?;
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
    // Two renewals of the Lease later (each a chance for the standby to take it wrongly) there is
    // still exactly one leader.
    let leases = Api::<Lease>::namespaced(client.clone(), &ns);
    let renewed = || {
        let leases = leases.clone();
        async move {
            Ok(leases
                .get("gatehouse-operator")
                .await?
                .spec
                .and_then(|s| s.renew_time)
                .map(|t| t.0))
        }
    };
    let mut last = eventually("the lease renewed", Duration::from_secs(10), renewed).await?;
    for _ in 0..2 {
        last = eventually("the lease renewed again", Duration::from_secs(10), || {
            let next = renewed();
            async move { Ok(next.await?.filter(|t| *t > last)) }
        })
        .await?;
    }
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

/// The rules of the operator's chart ClusterRole that a reconcile of an empty namespace and the
/// leader election need, bound in `ns` only: everything but Routes.
fn rules_without_routes() -> Vec<PolicyRule> {
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    };
    vec![
        rule(
            "gatehouse.dev",
            &["modelproviders", "budgets"],
            &["list", "watch"],
        ),
        rule("", &["secrets", "configmaps"], &["get", "list", "watch"]),
        rule(
            "rbac.authorization.k8s.io",
            &["roles", "rolebindings"],
            &["get"],
        ),
        rule(
            "coordination.k8s.io",
            &["leases"],
            &["get", "create", "update"],
        ),
        rule("events.k8s.io", &["events"], &["create", "patch"]),
    ]
}

/// Bind `rules` to ServiceAccount `sa` in `ns` under `name`.
async fn grant(
    client: &Client,
    ns: &str,
    sa: &str,
    name: &str,
    rules: Vec<PolicyRule>,
) -> Result<()> {
    let meta = || ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        ..ObjectMeta::default()
    };
    let pp = PostParams::default();
    Api::<Role>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &Role {
                metadata: meta(),
                rules: Some(rules),
            },
        )
        .await?;
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &RoleBinding {
                metadata: meta(),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: name.into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: sa.into(),
                    namespace: Some(ns.into()),
                    ..Subject::default()
                }]),
            },
        )
        .await?;
    Ok(())
}

/// Let ServiceAccount `sa` of `ns` list and watch that one Namespace (what the chart grants with
/// `operator.watchNamespace`).
async fn grant_namespace_watch(client: &Client, ns: &str, sa: &str) -> Result<()> {
    let name = format!("{ns}-namespaces");
    let pp = PostParams::default();
    Api::<ClusterRole>::all(client.clone())
        .create(
            &pp,
            &ClusterRole {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["namespaces".into()]),
                    resource_names: Some(vec![ns.into()]),
                    verbs: vec!["list".into(), "watch".into()],
                    ..PolicyRule::default()
                }]),
                ..ClusterRole::default()
            },
        )
        .await?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(
            &pp,
            &ClusterRoleBinding {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name,
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: sa.into(),
                    namespace: Some(ns.into()),
                    ..Subject::default()
                }]),
            },
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn ready_once_the_caches_synced_and_a_standby_is_ready() -> Result<()> {
    let cp = control_plane()?;
    let ns = cp.create_namespace("op-ready").await?;
    let admin = cp.admin_client().await?;

    // The first replica may do everything but list Routes: it wins the Lease, but its Route cache
    // cannot list, so it must not report ready.
    cp.create_service_account(&ns, "operator").await?;
    grant(&admin, &ns, "operator", "operator", rules_without_routes()).await?;
    grant_namespace_watch(&admin, &ns, "operator").await?;
    let restricted = cp
        .client_for_token(&cp.mint_token(&ns, "operator").await?)
        .await?;
    let leader = start_operator(restricted, &ns, "restricted").await?;
    eventually(
        "the restricted replica leads",
        Duration::from_secs(20),
        || {
            let l = leader.metrics.leader.get();
            async move { Ok((l == 1).then_some(())) }
        },
    )
    .await?;
    // The positive signal that it tried: its Route list was refused.
    eventually("a failed Route list", Duration::from_secs(20), || {
        let failed = leader
            .metrics
            .watch_errors
            .get_or_create(&WatchLabels { watch: "routes" })
            .get();
        async move { Ok((failed >= 1).then_some(())) }
    })
    .await?;
    let (status, body) = readyz(&leader).await?;
    ensure!(
        status == 503 && body.contains("waiting for the caches to sync"),
        "a leader whose Route cache has not listed is not ready: {status} {body}"
    );
    let healthz = reqwest::get(format!("http://{}/healthz", leader.admin_addr)).await?;
    ensure!(healthz.status() == 200, "but it is alive");

    // A second replica stands by, and is ready: a rollout can proceed past it.
    let standby = start_operator(admin.clone(), &ns, "standby").await?;
    let (status, body) = eventually("the standby ready", Duration::from_secs(20), || {
        let r = readyz(&standby);
        async move { Ok(Some(r.await?).filter(|(s, _)| *s == 200)) }
    })
    .await?;
    ensure!(
        body.contains("standby") && standby.metrics.leader.get() == 0,
        "{status} {body}"
    );

    // Routes allowed: the Route watch lists on its next retry and the leader becomes ready.
    let routes_rule = PolicyRule {
        api_groups: Some(vec!["gatehouse.dev".into()]),
        resources: Some(vec!["routes".into()]),
        verbs: vec!["list".into(), "watch".into()],
        ..PolicyRule::default()
    };
    grant(
        &admin,
        &ns,
        "operator",
        "operator-routes",
        vec![routes_rule],
    )
    .await?;
    let (_, body) = eventually("the leader ready", Duration::from_secs(30), || {
        let r = readyz(&leader);
        async move { Ok(Some(r.await?).filter(|(s, _)| *s == 200)) }
    })
    .await?;
    ensure!(body.contains("leader, caches synced"), "{body}");

    // The leader goes; the standby takes over, lists its caches and reports ready as the leader.
    leader.shutdown().await?;
    let (_, body) = eventually("the new leader ready", Duration::from_secs(30), || {
        let r = readyz(&standby);
        async move { Ok(Some(r.await?).filter(|(s, b)| *s == 200 && b.contains("leader"))) }
    })
    .await?;
    ensure!(standby.metrics.leader.get() == 1, "{body}");
    standby.shutdown().await?;
    Ok(())
}
