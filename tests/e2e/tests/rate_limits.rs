//! Cluster-wide rate limits, end to end: the real kube-apiserver, a real operator (whose
//! leader keeps the ledger) and 10 kube-mode sidecars as processes, each with its own
//! ServiceAccount tokens from the TokenRequest API (one for the API server, one for the
//! ledger's audience), against a mock provider. A Route's `scope: cluster` requests-per-minute
//! limit holds across all of them: per fixed minute window, the requests admitted stay within the
//! limit plus the stated slack (docs/guardrails.md), and every refusal is OpenAI's 429.
//!
//! The binaries are built by the test (`cargo build -p gatehouse-operator -p gatehouse-sidecar`).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, anyhow, ensure};
use gatehouse_crds::ledger::TOKEN_AUDIENCE;
use gatehouse_e2e::procs::KubeSidecar;
use gatehouse_e2e::procs::{self, Proc, binary, free_port};
use gatehouse_e2e::{ControlPlane, eventually};
use gatehouse_mock_provider::MockProvider;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

fn setup() -> Result<&'static ControlPlane> {
    procs::with_operator_and_sidecar()
}

const SIDECARS: usize = 10;
const CONCURRENCY: usize = 2;
const RPM: u64 = 40;

/// The stated slack (docs/guardrails.md, "Cluster limits"): per window, what sidecars admit
/// on leases of the window before, after its end and before their first sync of the new one.
/// A lease is granted within the limit of its window, so this is at most what the leases still
/// held at the boundary; under this saturating load they are empty by then. Bounded here by one
/// request per client connection in flight at the boundary.
const SLACK: u64 = (SIDECARS * CONCURRENCY) as u64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rpm_limit_holds_across_10_sidecars() -> Result<()> {
    let cp = setup()?;
    let ns = cp.create_namespace("ratelimit-cluster").await?;
    let admin = cp.admin_client().await?;
    let mock = MockProvider::start().await?;
    let dir = tempfile::tempdir()?;
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .patch(
            "llm-key",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "llm-key"}, "stringData": {"api-key": "sk-rl"}})),
        )
        .await?;
    let yaml = format!(
        "apiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: llm}}\n\
         spec:\n  type: openaiCompatible\n  endpoint: {}\n  apiKeySecretRef: {{name: llm-key, key: api-key}}\n  models:\n\
         \x20   - {{name: small, pricing: {{inputPerMillion: 1, outputPerMillion: 1}}}}\n\
         ---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: chat}}\n\
         spec:\n  targets: [{{provider: llm, model: small}}]\n  retry: {{attempts: 1}}\n\
         \x20 rateLimits: [{{name: shared, requestsPerMinute: {RPM}, scope: cluster}}]\n",
        mock.base_url()
    );
    cp.kubectl_stdin(["apply", "-n", &ns, "-f", "-"], &yaml)?
        .ok("kubectl apply the provider and route")?;
    cp.create_service_account(&ns, "app").await?;
    let api_token = dir.path().join("api-token");
    std::fs::write(&api_token, cp.mint_token(&ns, "app").await?)?;
    let ledger_token = dir.path().join("ledger-token");
    std::fs::write(
        &ledger_token,
        cp.mint_token_for(&ns, "app", &[TOKEN_AUDIENCE]).await?,
    )?;

    // The operator (its ledger), then the rendered config and keys, mounted as the kubelet would.
    let (ledger_port, op_admin) = (free_port()?, free_port()?);
    let mut cmd = Command::new(binary("gatehouse-operator"));
    cmd.env("KUBECONFIG", cp.kubeconfig())
        .env("RUST_LOG", "info")
        .args([
            format!("--admin-listen=127.0.0.1:{op_admin}"),
            format!("--ledger-listen=127.0.0.1:{ledger_port}"),
            format!("--watch-namespace={ns}"),
            format!("--lease-namespace={ns}"),
            "--identity=operator".into(),
        ]);
    let _operator = Proc::spawn(cmd, dir.path().join("operator.log"))?;
    let configs = Api::<ConfigMap>::namespaced(admin.clone(), &ns);
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    let secret = eventually(
        "the rendered config with the cluster limit",
        Duration::from_secs(60),
        || {
            let (configs, secrets) = (configs.clone(), secrets.clone());
            async move {
                let Some(cm) = configs.get_opt("gatehouse-config").await? else {
                    return Ok(None);
                };
                let json = cm
                    .data
                    .unwrap_or_default()
                    .remove("config.json")
                    .unwrap_or_default();
                let config: serde_json::Value = serde_json::from_str(&json)?;
                if config["routes"]["chat"]["rateLimits"][0]["scope"] != "cluster" {
                    return Ok(None);
                }
                Ok(secrets.get_opt("gatehouse-keys").await?)
            }
        },
    )
    .await?;
    let keys = dir.path().join("keys");
    gatehouse_e2e::kubelet::mount_secret(&keys, secret)?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut sidecars = Vec::new();
    for i in 0..SIDECARS {
        let started = KubeSidecar {
            control_plane: cp,
            namespace: &ns,
            api_token: &api_token,
            keys_dir: &keys,
            pod: &format!("web-{i}"),
            workload: None,
            ledger_url: &format!("http://127.0.0.1:{ledger_port}"),
            ledger_token: &ledger_token,
            admin_host: "127.0.0.1",
        }
        .start(&http, dir.path().join(format!("sidecar-{i}.log")))
        .await?;
        sidecars.push((started.proc, started.base));
    }

    // Load until two window boundaries have passed: at least one whole window is observed.
    let start = Timestamp::now().as_second();
    let until = (start.div_euclid(60) + 2) * 60 + 5;
    let mut clients = Vec::new();
    for (_, base) in &sidecars {
        for _ in 0..CONCURRENCY {
            let (http, base) = (http.clone(), base.clone());
            clients.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while Timestamp::now().as_second() < until {
                    let r = http
                        .post(format!("{base}/v1/chat/completions"))
                        .header("content-type", "application/json")
                        .body(r#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#)
                        .send()
                        .await?;
                    // Admitted at the latest when the answer's head arrives.
                    let at = Timestamp::now().as_second();
                    let status = r.status().as_u16();
                    let header = |n: &str| {
                        r.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let (limit, retry) = (
                        header("x-ratelimit-limit-requests"),
                        header("retry-after"),
                    );
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    seen.push((at, status, limit, retry, body));
                    if status == 429 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                anyhow::Ok(seen)
            }));
        }
    }
    let mut per_window: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for c in clients {
        for (at, status, limit, retry, body) in c.await?? {
            let w = per_window.entry(at.div_euclid(60) * 60).or_default();
            match status {
                200 => {
                    w.0 += 1;
                    ensure!(
                        limit.as_deref() == Some(RPM.to_string().as_str()),
                        "x-ratelimit-limit-requests {limit:?}"
                    );
                }
                429 => {
                    w.1 += 1;
                    ensure!(
                        body["error"]["code"] == "rate_limit_exceeded"
                            && body["error"]["type"] == "requests",
                        "not the rate-limit 429: {body}"
                    );
                    ensure!(
                        retry.as_deref().is_some_and(|r| r.parse::<u64>().is_ok()),
                        "Retry-After {retry:?}"
                    );
                }
                s => return Err(anyhow!("neither served nor limited: {s} {body}")),
            }
        }
    }
    for (window, (admitted, refused)) in &per_window {
        println!(
            "window {}: {admitted} admitted, {refused} refused (limit {RPM}, bound {})",
            Timestamp::from_second(*window)?,
            RPM + SLACK
        );
        ensure!(
            *admitted <= RPM + SLACK,
            "window {window}: {admitted} admitted > {RPM} + {SLACK}"
        );
    }
    // A whole window under load reaches the limit (the ledger does not strand it in leases) and
    // refuses the rest.
    let whole = (start.div_euclid(60) + 1) * 60;
    let (admitted, refused) = per_window.get(&whole).copied().unwrap_or_default();
    ensure!(
        admitted + (SIDECARS as u64) >= RPM && refused > 0,
        "whole window: {admitted} admitted, {refused} refused"
    );
    Ok(())
}
