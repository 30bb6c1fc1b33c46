//! The Helm chart: its CRDs match `crds/`, `helm lint` and `helm template` pass, and `helm install`
//! against the real control plane creates the expected objects with RBAC that allows the operator
//! exactly what it does (no kubelet here: objects are asserted, not running pods).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use gatehouse_e2e::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

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
    Ok(())
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
    let pod = spec.template.spec.context("pod spec")?;
    ensure!(pod.service_account_name.as_deref() == Some("gatehouse"));
    let args = pod.containers[0].args.clone().unwrap_or_default();
    ensure!(
        args.contains(&"--leader-election=true".to_string()),
        "{args:?}"
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
    ])?;

    // What the operator does is allowed; what it does not do is not.
    let sa = format!("--as=system:serviceaccount:{ns}:gatehouse");
    let can = |args: &[&str]| -> Result<bool> {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        all.push(&sa);
        Ok(cp.kubectl(all)?.stdout.trim() == "yes")
    };
    for allowed in [
        &["watch", "routes.gatehouse.dev", "-A"][..],
        &[
            "patch",
            "routes.gatehouse.dev",
            "--subresource=status",
            "-n",
            "team-a",
        ],
        &["patch", "configmaps", "-n", "team-a"],
        &["get", "secrets", "-n", "team-a"],
        &["create", "roles.rbac.authorization.k8s.io", "-n", "team-a"],
        &["create", "events.events.k8s.io", "-n", "team-a"],
        &["update", "leases.coordination.k8s.io", "-n", ns],
    ] {
        ensure!(can(allowed)?, "operator should be allowed: {allowed:?}");
    }
    for denied in [
        &["patch", "routes.gatehouse.dev", "-n", "team-a"][..],
        &["delete", "routes.gatehouse.dev", "-n", "team-a"],
        &["create", "pods", "-n", "team-a"],
        &["update", "leases.coordination.k8s.io", "-n", "team-a"],
        &["create", "clusterroles.rbac.authorization.k8s.io"],
        &[
            "escalate",
            "roles.rbac.authorization.k8s.io",
            "-n",
            "team-a",
        ],
    ] {
        ensure!(!can(denied)?, "operator should be denied: {denied:?}");
    }

    cp.helm(["uninstall", "gatehouse", "--namespace", ns])?
        .ok("helm uninstall")?;
    Ok(())
}
