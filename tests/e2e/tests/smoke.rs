//! The harness itself: a namespace, a ServiceAccount token, RBAC that allows exactly what is
//! bound, kubectl and helm against the real apiserver.

use anyhow::{Context, Result, ensure};
use gatehouse_e2e::ControlPlane;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::ListParams;

#[tokio::test]
async fn namespaces_and_admin_client_work() -> Result<()> {
    let cp = ControlPlane::shared()?;
    let ns = cp.create_namespace("smoke").await?;
    let out = cp.kubectl_ok(["get", "namespace", &ns, "-o", "jsonpath={.metadata.name}"])?;
    ensure!(out == ns, "kubectl saw namespace {out:?}, want {ns:?}");
    let cms = Api::<ConfigMap>::namespaced(cp.admin_client().await?, &ns)
        .list(&ListParams::default())
        .await?;
    // kube-root-ca.crt is published by controller-manager, which does not run here.
    ensure!(
        cms.items.is_empty(),
        "unexpected configmaps: {:?}",
        cms.items
    );
    Ok(())
}

#[tokio::test]
async fn service_account_token_has_exactly_its_rbac() -> Result<()> {
    let cp = ControlPlane::shared()?;
    let ns = cp.create_namespace("rbac").await?;
    cp.create_service_account(&ns, "reader").await?;
    let token = cp.mint_token(&ns, "reader").await?;
    let as_reader = cp.client_for_token(&token).await?;
    let cms = Api::<ConfigMap>::namespaced(as_reader.clone(), &ns);

    let denied = cms.list(&ListParams::default()).await;
    match denied {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => anyhow::bail!("list before any binding should be forbidden, got {other:?}"),
    }

    cp.kubectl_ok([
        "create",
        "role",
        "cm-reader",
        "-n",
        &ns,
        "--verb=get,list",
        "--resource=configmaps",
    ])?;
    cp.kubectl_ok([
        "create",
        "rolebinding",
        "reader-cm",
        "-n",
        &ns,
        "--role=cm-reader",
        &format!("--serviceaccount={ns}:reader"),
    ])?;
    // RBAC is served from an informer cache: allow a moment for the binding to land.
    let mut allowed = false;
    for _ in 0..50 {
        if cms.list(&ListParams::default()).await.is_ok() {
            allowed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ensure!(
        allowed,
        "list should be allowed once the rolebinding exists"
    );

    // Reading is bound; writing and other namespaces are not.
    let can_create = cp.kubectl([
        "auth",
        "can-i",
        "create",
        "configmaps",
        "-n",
        &ns,
        "--token",
        &token,
    ])?;
    ensure!(
        !can_create.success && can_create.stdout.trim() == "no",
        "reader must not create configmaps: {can_create:?}"
    );
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("x".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match cms.create(&Default::default(), &cm).await {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => anyhow::bail!("create should be forbidden, got {other:?}"),
    }
    let elsewhere = Api::<ConfigMap>::namespaced(as_reader, "default");
    ensure!(
        elsewhere.list(&ListParams::default()).await.is_err(),
        "reader must not list configmaps outside its namespace"
    );

    let whoami = cp.kubectl_ok([
        "auth",
        "whoami",
        "--token",
        &token,
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])?;
    ensure!(
        whoami == format!("system:serviceaccount:{ns}:reader"),
        "whoami: {whoami}"
    );
    Ok(())
}

#[test]
fn kubectl_create_token_works() -> Result<()> {
    let cp = ControlPlane::shared()?;
    cp.kubectl_ok(["create", "namespace", "e2e-kubectl-token"])?;
    cp.kubectl_ok(["create", "serviceaccount", "bot", "-n", "e2e-kubectl-token"])?;
    let token = cp.kubectl_ok(["create", "token", "bot", "-n", "e2e-kubectl-token"])?;
    ensure!(token.trim().split('.').count() == 3, "not a JWT: {token}");
    Ok(())
}

#[test]
fn helm_runs() -> Result<()> {
    let cp = ControlPlane::shared()?;
    let version = cp.helm(["version", "--short"])?.ok("helm version")?;
    ensure!(version.starts_with("v4."), "helm version: {version}");
    // helm reaches the apiserver through the same kubeconfig.
    let list = cp
        .helm(["list", "--all-namespaces"])?
        .ok("helm list")
        .context("helm list")?;
    ensure!(list.contains("NAME"), "helm list: {list}");
    Ok(())
}
