//! The Helm chart: its CRDs match `crds/`, `helm lint` and `helm template` pass, and `helm install`
//! against the real control plane creates the expected objects with RBAC that allows the operator
//! exactly what it does (no kubelet here: objects are asserted, not running pods).
//!
//! "Exactly what it does" is proven by running the real `gatehouse-operator` binary with nothing but
//! a token of the chart's ServiceAccount, cluster-wide and with `operator.watchNamespace`, through a
//! full reconcile and cleanup, and failing on any 403 in its log. The binary is built by the test
//! (`cargo build -p gatehouse-operator`, a no-op when up to date).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use gatehouse_crds::{Budget, ModelProvider, Route};
use gatehouse_e2e::{ControlPlane, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Probe, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use serde::Deserialize;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart() -> String {
    repo_root()
        .join("charts/gatehouse")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn chart_crds_match_the_generated_ones() -> Result<()> {
    for entry in std::fs::read_dir(repo_root().join("crds"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().context("file name")?;
            let chart_copy = repo_root().join("charts/gatehouse/crds").join(name);
            ensure!(
                std::fs::read(&path)? == std::fs::read(&chart_copy).unwrap_or_default(),
                "{} drifted from crds/; run scripts/sync-chart-crds",
                chart_copy.display()
            );
        }
    }
    Ok(())
}

#[test]
fn chart_lints_and_templates() -> Result<()> {
    let cp = ControlPlane::shared()?;
    cp.helm(["lint", "--strict", &chart()])?.ok("helm lint")?;
    let out = cp
        .helm([
            "template",
            "gh",
            &chart(),
            "--namespace",
            "gatehouse-system",
        ])?
        .ok("helm template")?;
    for kind in [
        "kind: ServiceAccount",
        "kind: ClusterRole\n",
        "kind: ClusterRoleBinding",
        "kind: Role\n",
        "kind: RoleBinding",
        "kind: Deployment",
        "kind: Service\n",
    ] {
        ensure!(out.contains(kind), "helm template lacks {kind:?}");
    }
    // The schema rejects what the chart does not understand.
    let bad = cp.helm([
        "template",
        "gh",
        &chart(),
        "--set",
        "operator.logFormat=xml",
    ])?;
    ensure!(
        !bad.success,
        "values.schema.json should reject logFormat=xml"
    );
    let typo = cp.helm(["template", "gh", &chart(), "--set", "replicas=3"])?;
    ensure!(
        !typo.success,
        "values.schema.json should reject unknown keys"
    );

    // Without leader election old and new pods must never run together: Recreate.
    let single = rendered_objects(
        &cp.helm([
            "template",
            "gh",
            &chart(),
            "--set",
            "replicaCount=1",
            "--set",
            "operator.leaderElection=false",
        ])?
        .ok("helm template without leader election")?,
    )?;
    let deployment = single
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .context("deployment")?;
    ensure!(
        deployment["spec"]["strategy"]["type"].as_str() == Some("Recreate"),
        "{:?}",
        deployment["spec"]["strategy"]
    );

    // Cluster-wide by default; with watchNamespace the operator's rules are bound in that
    // namespace only, and it may list/watch that one Namespace.
    let docs = rendered_objects(&out)?;
    let find = |docs: &[serde_yaml::Value], kind: &str, name: &str| {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .cloned()
    };
    ensure!(
        find(&docs, "ClusterRoleBinding", "gh-gatehouse-operator").is_some(),
        "default install binds the operator cluster-wide"
    );
    let scoped = rendered_objects(
        &cp.helm([
            "template",
            "gh",
            &chart(),
            "--namespace",
            "gatehouse-system",
            "--set",
            "operator.watchNamespace=team-a",
        ])?
        .ok("helm template with watchNamespace")?,
    )?;
    ensure!(
        find(&scoped, "ClusterRoleBinding", "gh-gatehouse-operator").is_none(),
        "with watchNamespace nothing binds the operator's rules cluster-wide"
    );
    let binding = find(&scoped, "RoleBinding", "gh-gatehouse-operator")
        .context("with watchNamespace a RoleBinding grants the operator's rules")?;
    ensure!(binding["metadata"]["namespace"].as_str() == Some("team-a"));
    ensure!(binding["roleRef"]["name"].as_str() == Some("gh-gatehouse-operator"));
    let namespaces = find(&scoped, "ClusterRole", "gh-gatehouse-operator-namespaces")
        .context("namespaces ClusterRole")?;
    ensure!(
        namespaces["rules"][0]["resourceNames"] == serde_yaml::to_value(["team-a"])?,
        "with watchNamespace the operator may list/watch only that Namespace: {namespaces:?}"
    );
    Ok(())
}

/// The documents of a `helm template` output.
fn rendered_objects(yaml: &str) -> Result<Vec<serde_yaml::Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).context("helm template output")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// `kubectl auth can-i <args> --as=<user>`.
fn can_i(cp: &ControlPlane, user: &str, args: &[&str]) -> Result<bool> {
    let as_user = format!("--as={user}");
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.push(&as_user);
    Ok(cp.kubectl(all)?.stdout.trim() == "yes")
}

#[tokio::test]
async fn helm_install_creates_the_objects_with_least_privilege() -> Result<()> {
    let cp = ControlPlane::shared()?;
    let ns = "gatehouse-system";
    cp.helm([
        "install",
        "gatehouse",
        &chart(),
        "--namespace",
        ns,
        "--create-namespace",
        "--wait=false",
    ])?
    .ok("helm install")?;

    for crd in ["modelproviders", "routes", "budgets"] {
        cp.kubectl_ok(["get", "crd", &format!("{crd}.gatehouse.dev")])?;
    }
    let deploy = Api::<Deployment>::namespaced(cp.admin_client().await?, ns)
        .get("gatehouse-operator")
        .await?;
    let spec = deploy.spec.context("deployment spec")?;
    ensure!(spec.replicas == Some(2), "two replicas");
    // A standby is Ready, so a rollout can start each new pod before it stops an old one.
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .context("rolling update strategy")?;
    ensure!(
        rolling.max_unavailable == Some(IntOrString::Int(0))
            && rolling.max_surge == Some(IntOrString::Int(1)),
        "{rolling:?}"
    );
    let pod = spec.template.spec.context("pod spec")?;
    ensure!(pod.service_account_name.as_deref() == Some("gatehouse"));
    let args = pod.containers[0].args.clone().unwrap_or_default();
    ensure!(
        args.contains(&"--leader-election=true".to_string()),
        "{args:?}"
    );
    let probe_path = |p: &Option<Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|g| g.path.clone())
    };
    ensure!(
        probe_path(&pod.containers[0].readiness_probe).as_deref() == Some("/readyz")
            && probe_path(&pod.containers[0].liveness_probe).as_deref() == Some("/healthz"),
        "probes: {:?}",
        pod.containers[0]
    );
    for obj in [
        "serviceaccount/gatehouse",
        "role/gatehouse-leader-election",
        "rolebinding/gatehouse-leader-election",
        "service/gatehouse-operator-metrics",
    ] {
        cp.kubectl_ok(["get", "-n", ns, obj])?;
    }
    cp.kubectl_ok([
        "get",
        "clusterrole/gatehouse-operator",
        "clusterrolebinding/gatehouse-operator",
        "clusterrole/gatehouse-operator-namespaces",
        "clusterrolebinding/gatehouse-operator-namespaces",
    ])?;

    // What the operator does is allowed; what it does not do is not. (The operator binary running
    // with this RBAC is `operator_reconciles_with_only_the_chart_rbac_*`.)
    let sa = format!("system:serviceaccount:{ns}:gatehouse");
    let can = |args: &[&str]| can_i(cp, &sa, args);
    for allowed in [
        &["watch", "routes.gatehouse.dev", "-A"][..],
        &["watch", "namespaces"],
        &[
            "patch",
            "routes.gatehouse.dev",
            "--subresource=status",
            "-n",
            "team-a",
        ],
        &["patch", "configmaps/gatehouse-config", "-n", "team-a"],
        &["create", "secrets/gatehouse-keys", "-n", "team-a"],
        &["get", "secrets", "-n", "team-a"],
        &[
            "create",
            "roles.rbac.authorization.k8s.io/gatehouse-sidecar",
            "-n",
            "team-a",
        ],
        &["create", "events.events.k8s.io", "-n", "team-a"],
        &[
            "update",
            "leases.coordination.k8s.io/gatehouse-operator",
            "-n",
            ns,
        ],
    ] {
        ensure!(can(allowed)?, "operator should be allowed: {allowed:?}");
    }
    for denied in [
        &["patch", "routes.gatehouse.dev", "-n", "team-a"][..],
        &["delete", "routes.gatehouse.dev", "-n", "team-a"],
        &["create", "pods", "-n", "team-a"],
        &["update", "leases.coordination.k8s.io", "-n", "team-a"],
        &["update", "leases.coordination.k8s.io/other", "-n", ns],
        &["create", "clusterroles.rbac.authorization.k8s.io"],
        &[
            "escalate",
            "roles.rbac.authorization.k8s.io",
            "-n",
            "team-a",
        ],
        // Writes only under the names it renders.
        &["create", "secrets", "-n", "team-a"],
        &["patch", "secrets/app-credentials", "-n", "team-a"],
        &["delete", "configmaps/kube-root-ca.crt", "-n", "team-a"],
        &["create", "roles.rbac.authorization.k8s.io", "-n", "team-a"],
        &[
            "patch",
            "rolebindings.rbac.authorization.k8s.io/admin",
            "-n",
            "team-a",
        ],
        &["delete", "namespaces/team-a"],
    ] {
        ensure!(!can(denied)?, "operator should be denied: {denied:?}");
    }

    cp.helm(["uninstall", "gatehouse", "--namespace", ns])?
        .ok("helm uninstall")?;
    Ok(())
}

/// How long the first render may take on a loaded machine (watches list, the Lease is taken).
const FIRST_RENDER: Duration = Duration::from_secs(60);
/// How long any later change may take to show.
const CHANGE: Duration = Duration::from_secs(30);

/// One operator process at a time in this test binary: a cluster-wide operator reconciles every
/// namespace, so next to a namespace-scoped one it would do that one's work and hide what its RBAC
/// lacks.
fn one_operator_at_a_time() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// `cargo build -p gatehouse-operator` once per test binary; the path of the binary.
fn operator_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(repo_root())
                .args(["build", "-p", "gatehouse-operator"])
                .status()
                .map_err(|e| format!("failed to run cargo build: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err("cargo build -p gatehouse-operator failed".into())
            }
        })
        .clone()
        .map_err(|e| anyhow!("{e}"))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    Ok(target.join("debug").join("gatehouse-operator"))
}

/// The operator binary with an empty environment but `KUBECONFIG` and `RUST_LOG`, so the
/// kubeconfig's credential is the only one it can use (no in-cluster config, no inherited
/// `GATEHOUSE_*`). Its stdout and stderr go to `log`; killed on drop.
struct OperatorProcess {
    child: Child,
    log: PathBuf,
}

impl OperatorProcess {
    fn start(kubeconfig: &Path, args: &[String], log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)
            .with_context(|| format!("failed to create {}", log.display()))?;
        let child = Command::new(operator_binary()?)
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("failed to start gatehouse-operator")?;
        Ok(Self { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, then wait for the graceful shutdown (which releases the Lease) to exit 0.
    fn stop(&mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "the operator exited with {status}");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the operator did not stop within 15 s of SIGTERM")
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(status, reason)` of the Ready condition.
fn ready(conditions: &[Condition]) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// What the admin applies in the test namespace: a key Secret, a provider using it, a Route to it,
/// a Route to a provider that does not exist (Ready=False, a Warning Event) and a Budget, so the
/// operator writes the status of all three kinds.
fn user_manifests(key: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: llm-key}}
stringData: {{api-key: {key}}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: llm}}
spec:
  type: openaiCompatible
  endpoint: http://127.0.0.1:9/v1
  apiKeySecretRef: {{name: llm-key, key: api-key}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: chat}}
spec:
  targets: [{{provider: llm, model: m}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: broken}}
spec:
  targets: [{{provider: missing, model: m}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: Budget
metadata: {{name: monthly}}
spec:
  limit: {{usd: "5"}}
  period: monthly
  scope: {{routes: [chat]}}
"#
    )
}

/// The value of `key` in Secret `ns/name`, if both exist.
async fn secret_value(client: &Client, ns: &str, name: &str, key: &str) -> Result<Option<String>> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    Ok(secret.and_then(|s| s.data).and_then(|d| {
        d.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    }))
}

/// Whether the status of `object` records its current generation.
fn observed<K: Resource>(object: &K, observed_generation: Option<i64>) -> bool {
    observed_generation.is_some() && observed_generation == object.meta().generation
}

#[tokio::test]
async fn operator_reconciles_with_only_the_chart_rbac_cluster_wide() -> Result<()> {
    operator_reconciles_with_only_the_chart_rbac(false).await
}

#[tokio::test]
async fn operator_reconciles_with_only_the_chart_rbac_in_its_watch_namespace() -> Result<()> {
    operator_reconciles_with_only_the_chart_rbac(true).await
}

/// `helm install`, then the operator binary with only the chart ServiceAccount's token: the full
/// reconcile, a key rotation, status and Events, the leader Lease, cleanup and a graceful stop,
/// with no 403 anywhere in its log.
async fn operator_reconciles_with_only_the_chart_rbac(watch_namespace: bool) -> Result<()> {
    let _alone = one_operator_at_a_time().lock().await;
    let cp = ControlPlane::shared()?;
    let binary = operator_binary()?;
    ensure!(binary.is_file(), "{} is missing", binary.display());
    let dir = tempfile::tempdir()?;
    let ns = cp.create_namespace("chart-rbac").await?;
    let release = if watch_namespace {
        "gatehouse-scoped"
    } else {
        "gatehouse-cluster"
    };
    // The chart names the ServiceAccount after the release.
    let (release_ns, sa) = (format!("{release}-system"), release);
    let user = format!("system:serviceaccount:{release_ns}:{sa}");

    let (chart, watch_value) = (chart(), format!("operator.watchNamespace={ns}"));
    let mut install = vec![
        "install",
        release,
        &chart,
        "--namespace",
        &release_ns,
        "--create-namespace",
        "--wait=false",
    ];
    if watch_namespace {
        install.extend(["--set", &watch_value]);
    }
    cp.helm(install)?.ok("helm install")?;
    cp.wait_crds_established()?;

    // RBAC is served from informer caches: start the operator only once every binding of the
    // chart is in effect, so an early 403 in its log means a missing rule and not a slow cache.
    let namespaces = if watch_namespace {
        format!("namespaces/{ns}")
    } else {
        "namespaces".to_string()
    };
    let settled = [
        vec!["watch", namespaces.as_str()],
        vec!["watch", "routes.gatehouse.dev", "-n", &ns],
        vec![
            "update",
            "leases.coordination.k8s.io/gatehouse-operator",
            "-n",
            &release_ns,
        ],
    ];
    eventually("the chart's RBAC in effect", CHANGE, || {
        let all = settled
            .iter()
            .map(|args| can_i(cp, &user, args))
            .collect::<Result<Vec<bool>>>();
        async move { Ok(all?.into_iter().all(|yes| yes).then_some(())) }
    })
    .await?;
    if watch_namespace {
        // Scoped to the watched namespace: nothing outside it but its own Namespace and the Lease.
        for denied in [
            &["list", "namespaces"][..],
            &["watch", "namespaces/default"],
            &["list", "secrets", "-n", "default"],
            &["list", "secrets", "-A"],
            &["patch", "configmaps/gatehouse-config", "-n", "default"],
            &["watch", "routes.gatehouse.dev", "-A"],
        ] {
            ensure!(
                !can_i(cp, &user, denied)?,
                "a namespace-scoped operator should be denied: {denied:?}"
            );
        }
    }

    // Only the ServiceAccount's token, in a kubeconfig the operator loads like any other.
    let token = cp.mint_token(&release_ns, sa).await?;
    let kubeconfig = dir.path().join("kubeconfig");
    cp.write_kubeconfig_for_token(&kubeconfig, &token)?;
    let as_operator = Client::try_from(
        Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?,
    )?;
    let review = Api::<SelfSubjectReview>::all(as_operator)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let who = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    ensure!(
        who.as_deref() == Some(user.as_str()),
        "the kubeconfig authenticates as {who:?}, not {user}"
    );

    cp.kubectl_stdin(
        ["apply", "-n", &ns, "-f", "-"],
        &user_manifests("sk-rbac-one"),
    )?
    .ok("kubectl apply the user's objects")?;

    let identity = format!("{release}-test-operator");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let ledger_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut args = vec![
        format!("--admin-listen=127.0.0.1:{port}"),
        format!("--ledger-listen=127.0.0.1:{ledger_port}"),
        format!("--lease-namespace={release_ns}"),
        format!("--identity={identity}"),
    ];
    if watch_namespace {
        args.push(format!("--watch-namespace={ns}"));
    }
    let mut operator = OperatorProcess::start(&kubeconfig, &args, dir.path().join("operator.log"))?;
    let admin = cp.admin_client().await?;
    let ledger = format!("http://127.0.0.1:{ledger_port}");
    if let Err(e) = reconcile_and_clean_up(cp, &admin, &ns, &release_ns, &identity, &ledger).await {
        bail!("{e:#}\n--- operator log ---\n{}", operator.tail());
    }
    operator
        .stop()
        .with_context(|| format!("--- operator log ---\n{}", operator.tail()))?;

    // A graceful stop hands the Lease back (a GET and an update under its name).
    let lease = Api::<Lease>::namespaced(admin.clone(), &release_ns)
        .get("gatehouse-operator")
        .await?;
    let holder = lease.spec.and_then(|s| s.holder_identity);
    ensure!(
        holder.is_none(),
        "the stopped operator still holds the Lease: {holder:?}\n{}",
        operator.tail()
    );

    let log = operator.log();
    ensure!(
        log.contains("acquired leader lease") && log.contains("released leader lease"),
        "the operator log lacks the Lease lines, so it cannot vouch for anything:\n{}",
        operator.tail()
    );
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("forbidden") || l.contains("code: 403") || l.contains("\"code\":403")
        })
        .collect();
    ensure!(
        denied.is_empty(),
        "the chart's RBAC refused the operator {} time(s):\n{}",
        denied.len(),
        denied.join("\n")
    );
    println!(
        "operator with only the chart's RBAC ({}): reconciled, rotated, cleaned up, 0 forbidden",
        if watch_namespace {
            "watchNamespace"
        } else {
            "cluster-wide"
        }
    );

    cp.helm(["uninstall", release, "--namespace", &release_ns])?
        .ok("helm uninstall")?;
    Ok(())
}

/// The operator's side of the test, observed as admin: everything it renders and records, a
/// sidecar's sync with the budget ledger, a key rotation, then the cleanup once the resources are
/// deleted.
async fn reconcile_and_clean_up(
    cp: &ControlPlane,
    admin: &Client,
    ns: &str,
    release_ns: &str,
    identity: &str,
    ledger: &str,
) -> Result<()> {
    let configs = Api::<ConfigMap>::namespaced(admin.clone(), ns);
    let config = eventually("ConfigMap gatehouse-config", FIRST_RENDER, || {
        let configs = configs.clone();
        async move {
            Ok(configs
                .get_opt("gatehouse-config")
                .await?
                .and_then(|cm| cm.data?.remove("config.json")))
        }
    })
    .await?;
    ensure!(
        config.contains("\"chat\"") && config.contains("\"llm\""),
        "the rendered config lacks the route or the provider: {config}"
    );
    ensure!(
        !config.contains("sk-rbac-one"),
        "the key leaked into the config"
    );
    // The keys Secret, Role and RoleBinding are applied before the config.
    ensure!(
        secret_value(admin, ns, "gatehouse-keys", "llm")
            .await?
            .as_deref()
            == Some("sk-rbac-one"),
        "gatehouse-keys should hold the provider's key"
    );
    let role = Api::<Role>::namespaced(admin.clone(), ns)
        .get("gatehouse-sidecar")
        .await?;
    ensure!(
        role.rules
            .unwrap_or_default()
            .iter()
            .any(|r| r.resource_names.as_deref() == Some(&["gatehouse-config".to_string()][..])),
        "the sidecar Role should cover gatehouse-config"
    );
    let binding = Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .get("gatehouse-sidecar")
        .await?;
    ensure!(binding.role_ref.name == "gatehouse-sidecar");

    // Status of every kind, with the generation it describes.
    let routes = Api::<Route>::namespaced(admin.clone(), ns);
    for (name, want) in [
        ("chat", ("True", None)),
        ("broken", ("False", Some("ProviderNotFound"))),
    ] {
        eventually(&format!("Route {name} Ready={}", want.0), CHANGE, || {
            let routes = routes.clone();
            async move {
                let route = routes.get(name).await?;
                let status = route.status.clone().unwrap_or_default();
                let Some((ready, reason)) = ready(&status.conditions) else {
                    return Ok(None);
                };
                Ok((ready == want.0
                    && want.1.is_none_or(|w| w == reason)
                    && observed(&route, status.observed_generation))
                .then_some(()))
            }
        })
        .await?;
    }
    let providers = Api::<ModelProvider>::namespaced(admin.clone(), ns);
    eventually("ModelProvider llm status", CHANGE, || {
        let providers = providers.clone();
        async move {
            let p = providers.get("llm").await?;
            let status = p.status.clone().unwrap_or_default();
            Ok(
                (ready(&status.conditions).is_some() && observed(&p, status.observed_generation))
                    .then_some(()),
            )
        }
    })
    .await?;
    let budgets = Api::<Budget>::namespaced(admin.clone(), ns);
    eventually("Budget monthly status", CHANGE, || {
        let budgets = budgets.clone();
        async move {
            let b = budgets.get("monthly").await?;
            let status = b.status.clone().unwrap_or_default();
            Ok(
                (ready(&status.conditions).is_some() && observed(&b, status.observed_generation))
                    .then_some(()),
            )
        }
    })
    .await?;

    // A sidecar syncs with the budget ledger: a TokenReview, a record in the release namespace,
    // Budget status (each a call the chart's RBAC must allow).
    cp.create_service_account(ns, "app").await?;
    let token = cp
        .mint_token_for(ns, "app", &[gatehouse_crds::ledger::TOKEN_AUDIENCE])
        .await?;
    let http = reqwest::Client::new();
    let sync = |spent: u64, want: u64| {
        let (http, token) = (http.clone(), token.clone());
        let url = format!("{ledger}{}", gatehouse_crds::ledger::SYNC_PATH);
        let body = serde_json::json!({"instance": "web-0/0001", "namespace": ns,
            "accounts": [{"name": "monthly", "spent": {"nanoUsd": spent},
                          "want": {"nanoUsd": want}}]});
        async move {
            let r = http.post(url).bearer_auth(token).json(&body).send().await?;
            let status = r.status();
            let text = r.text().await?;
            ensure!(status == 200, "sync: {status} {text}");
            Ok(serde_json::from_str::<serde_json::Value>(&text)?)
        }
    };
    let answer = eventually("the ledger answers", CHANGE, || {
        let s = sync(0, 0);
        async move { Ok(s.await.ok()) }
    })
    .await?;
    ensure!(answer["accounts"][0]["known"] == true, "{answer}");
    sync(0, 1_000_000_000).await?;
    sync(250_000_000, 0).await?;
    eventually("Budget monthly spent from the ledger", CHANGE, || {
        let budgets = budgets.clone();
        async move {
            let b = budgets.get("monthly").await?;
            Ok((b.status.and_then(|s| s.spent).as_deref() == Some("0.25")).then_some(()))
        }
    })
    .await?;
    let record = format!("gatehouse-ledger.budget.{ns}.monthly");
    ensure!(
        Api::<ConfigMap>::namespaced(admin.clone(), release_ns)
            .get_metadata_opt(&record)
            .await?
            .is_some(),
        "no ledger record {release_ns}/{record}"
    );

    // The broken Route's Warning Event, from this operator.
    let events = Api::<Event>::namespaced(admin.clone(), ns);
    eventually("a Warning Event for Route broken", CHANGE, || {
        let events = events.clone();
        async move {
            let found = events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
                        && e.reason.as_deref() == Some("ProviderNotFound")
                        && e.type_.as_deref() == Some("Warning")
                        && e.reporting_controller.as_deref() == Some("gatehouse-operator")
                        && e.reporting_instance.as_deref() == Some(identity)
                });
            Ok(found.then_some(()))
        }
    })
    .await?;

    // The leader Lease, in the release namespace.
    let lease = Api::<Lease>::namespaced(admin.clone(), release_ns)
        .get("gatehouse-operator")
        .await?;
    let holder = lease.spec.and_then(|s| s.holder_identity);
    ensure!(
        holder.as_deref() == Some(identity),
        "Lease {release_ns}/gatehouse-operator is held by {holder:?}, not {identity}"
    );

    // A key rotation: the Secret metadata watch triggers the namespace, which GETs the Secret.
    let secrets = Api::<Secret>::namespaced(admin.clone(), ns);
    secrets
        .patch(
            "llm-key",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-key"},
                "stringData": {"api-key": "sk-rbac-two"}})),
        )
        .await?;
    eventually("gatehouse-keys rotated", CHANGE, || async move {
        Ok((secret_value(admin, ns, "gatehouse-keys", "llm")
            .await?
            .as_deref()
            == Some("sk-rbac-two"))
        .then_some(()))
    })
    .await?;

    // The last resource goes: the operator deletes what it rendered (no garbage collector runs
    // here), and nothing of the user's.
    let dp = DeleteParams::default();
    routes.delete("chat", &dp).await?;
    routes.delete("broken", &dp).await?;
    providers.delete("llm", &dp).await?;
    budgets.delete("monthly", &dp).await?;
    eventually("the rendered objects deleted", CHANGE, || async move {
        let gone = [
            Api::<ConfigMap>::namespaced(admin.clone(), ns)
                .get_metadata_opt("gatehouse-config")
                .await?
                .is_none(),
            Api::<Secret>::namespaced(admin.clone(), ns)
                .get_metadata_opt("gatehouse-keys")
                .await?
                .is_none(),
            Api::<RoleBinding>::namespaced(admin.clone(), ns)
                .get_metadata_opt("gatehouse-sidecar")
                .await?
                .is_none(),
            Api::<Role>::namespaced(admin.clone(), ns)
                .get_metadata_opt("gatehouse-sidecar")
                .await?
                .is_none(),
        ];
        Ok(gone.iter().all(|g| *g).then_some(()))
    })
    .await?;
    ensure!(
        secrets.get_metadata_opt("llm-key").await?.is_some(),
        "the user's Secret must survive the cleanup"
    );
    // The Budget's ledger record goes with it.
    let records = Api::<ConfigMap>::namespaced(admin.clone(), release_ns);
    eventually("the ledger record deleted", Duration::from_secs(30), || {
        let (records, record) = (records.clone(), record.clone());
        async move {
            Ok(records
                .get_metadata_opt(&record)
                .await?
                .is_none()
                .then_some(()))
        }
    })
    .await?;
    Ok(())
}
