//! `kubectl gatehouse` on the real control plane: the plugin binary run by the real kubectl
//! (found on `PATH` as `kubectl-gatehouse`) against kube-apiserver, reading Routes and Budgets
//! through the API and the sidecars' admin ports through the API server's `pods/proxy`.
//!
//! No kubelet runs here, so the test stands in for the two things a kubelet would have done for
//! each pod: it runs the pod's sidecar as a process on this machine (kube mode, the operator's
//! rendered config and keys, its admin port on `0.0.0.0:<port>` as injected), and it writes the
//! pod's status (`phase: Running`, `podIP`) the way the kubelet reports it, with this machine's
//! own non-loopback address as the pod IP (the API server refuses to proxy to loopback
//! addresses). The API server then proxies `pods/{pod}:{port}/proxy/...` to that address and
//! port: the path the plugin takes in a real cluster, minus the pod network.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use gatehouse_crds::Budget;
use gatehouse_crds::ledger::TOKEN_AUDIENCE;
use gatehouse_e2e::network::host_ip;
use gatehouse_e2e::procs::KubeSidecar;
use gatehouse_e2e::procs::{self, Proc, binary, free_port};
use gatehouse_e2e::{ControlPlane, eventually};
use gatehouse_mock_provider::{Behaviour, MockProvider};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

fn setup() -> Result<&'static ControlPlane> {
    let cp = procs::with_operator_and_sidecar()?;
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let ok = Command::new(cargo)
                .current_dir(procs::repo_root())
                .args(["build", "-p", "kubectl-gatehouse"])
                .status()
                .map_err(|e| format!("failed to run cargo build: {e}"))?
                .success();
            ok.then_some(())
                .ok_or_else(|| "cargo build -p kubectl-gatehouse failed".to_string())
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(cp)
}

/// `kubectl gatehouse args...`, the plugin found on `PATH` by kubectl itself.
fn plugin(cp: &ControlPlane, args: &[&str]) -> Result<(bool, String, String)> {
    let dir = binary("kubectl-gatehouse")
        .parent()
        .map(PathBuf::from)
        .context("no target dir")?;
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(&cp.binaries().kubectl)
        .arg("gatehouse")
        .args(args)
        .env("KUBECONFIG", cp.kubeconfig())
        .env("PATH", path)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

struct Sidecar {
    _proc: Proc,
    base: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spend_and_failover_answer_from_the_api_and_the_sidecars() -> Result<()> {
    let cp = setup()?;
    let ns = cp.create_namespace("kgh").await?;
    let admin = cp.admin_client().await?;
    let ip = host_ip()?;
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let primary = MockProvider::start().await?;
    let secondary = MockProvider::start().await?;
    let pp = PatchParams::apply("e2e").force();
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .patch(
            "llm-key",
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "llm-key"}, "stringData": {"api-key": "sk-kubectl-plugin-secret"}})),
        )
        .await?;
    for (name, mock) in [("primary", &primary), ("secondary", &secondary)] {
        cp.kubectl_stdin(
            ["apply", "-n", &ns, "-f", "-"],
            &format!(
                "apiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: {name}}}\n\
                 spec:\n  type: openaiCompatible\n  endpoint: {}\n  apiKeySecretRef: {{name: llm-key, key: api-key}}\n  models:\n\
                 \x20   - {{name: {name}-model, pricing: {{inputPerMillion: 100, outputPerMillion: 400}}}}\n",
                mock.base_url()
            ),
        )?
        .ok("kubectl apply a provider")?;
    }
    cp.kubectl_stdin(
        ["apply", "-n", &ns, "-f", "-"],
        "apiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {name: chat}\n\
         spec:\n  models: [chat]\n  targets:\n\
         \x20   - {provider: secondary, model: secondary-model, priority: 1}\n\
         \x20   - {provider: primary, model: primary-model, priority: 0}\n\
         \x20 retry: {attempts: 2, backoff: {base: 10ms, max: 20ms}}\n\
         \x20 outlier: {consecutiveFailures: 3}\n",
    )?
    .ok("kubectl apply the route")?;
    Api::<Budget>::namespaced(admin.clone(), &ns)
        .patch(
            "team",
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "Budget",
                "metadata": {"name": "team"},
                "spec": {"limit": {"usd": "10"}, "period": "monthly"}}),
            ),
        )
        .await?;
    cp.create_service_account(&ns, "app").await?;
    let api_token = dir.path().join("api-token");
    std::fs::write(&api_token, cp.mint_token(&ns, "app").await?)?;
    let ledger_token = dir.path().join("ledger-token");
    std::fs::write(
        &ledger_token,
        cp.mint_token_for(&ns, "app", &[TOKEN_AUDIENCE]).await?,
    )?;

    // The operator renders the config and keeps the Budget's ledger (and status).
    let (op_admin, ledger) = (free_port()?, free_port()?);
    let mut cmd = Command::new(binary("gatehouse-operator"));
    cmd.env("KUBECONFIG", cp.kubeconfig()).args([
        format!("--admin-listen=127.0.0.1:{op_admin}"),
        format!("--ledger-listen=127.0.0.1:{ledger}"),
        format!("--watch-namespace={ns}"),
        format!("--lease-namespace={ns}"),
        "--identity=operator".to_string(),
    ]);
    let _operator = Proc::spawn(cmd, dir.path().join("operator.log"))?;

    // The rendered keys, laid out as the kubelet mounts a Secret.
    let configs = Api::<ConfigMap>::namespaced(admin.clone(), &ns);
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    let keys = eventually("the rendered config", Duration::from_secs(60), || {
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
            if config["budgets"].get("team").is_none() {
                return Ok(None);
            }
            Ok(secrets.get_opt("gatehouse-keys").await?)
        }
    })
    .await?;
    let keys_dir = dir.path().join("keys");
    gatehouse_e2e::kubelet::mount_secret(&keys_dir, keys)?;

    // Two pods, each with its sidecar: the Pod object in the API, the sidecar as a process, and
    // the status the kubelet would write.
    let pods = Api::<Pod>::namespaced(admin.clone(), &ns);
    let mut sidecars = Vec::new();
    for (pod, workload) in [("checkout-0", "checkout"), ("search-0", "search")] {
        let started = KubeSidecar {
            control_plane: cp,
            namespace: &ns,
            api_token: &api_token,
            keys_dir: &keys_dir,
            pod,
            workload: Some(workload),
            ledger_url: &format!("http://127.0.0.1:{ledger}"),
            ledger_token: &ledger_token,
            // The API server's pods/proxy reaches it at the pod IP.
            admin_host: "0.0.0.0",
        }
        .start(&http, dir.path().join(format!("sidecar-{pod}.log")))
        .await?;
        let admin_port = started.admin_port;
        let spec: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "labels": {"app": workload}},
            "spec": {
                "serviceAccountName": "app",
                "automountServiceAccountToken": false,
                "containers": [
                    {"name": "app", "image": "example.com/app:1"},
                    {"name": "gatehouse", "image": "example.com/gatehouse-sidecar:1",
                     "env": [{"name": "GATEHOUSE_ADMIN_LISTEN", "value": format!("0.0.0.0:{admin_port}")}]}
                ]
            }
        }))?;
        pods.create(&PostParams::default(), &spec).await?;
        pods.patch_status(
            pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running",
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}],
                "conditions": [{"type": "Ready", "status": "True"}]
            }})),
        )
        .await?;
        sidecars.push(Sidecar {
            _proc: started.proc,
            base: started.base,
        });
    }

    let chat = |base: String| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{base}/v1/chat/completions"))
                .json(&json!({"model": "chat", "max_tokens": 8,
                    "messages": [{"role": "user", "content": "the secret plan is tangerine"}]}))
                .send()
                .await?;
            ensure!(r.status() == 200, "chat answered {}", r.status());
            let id = r
                .headers()
                .get("x-gatehouse-request-id")
                .and_then(|v| v.to_str().ok())
                .context("no request id")?
                .to_string();
            r.bytes().await?;
            Ok::<_, anyhow::Error>(id)
        }
    };
    // Both sidecars serve from the primary; then the primary fails: the checkout sidecar fails
    // over to the secondary, request after request, until it ejects the primary.
    chat(sidecars[1].base.clone()).await?;
    chat(sidecars[0].base.clone()).await?;
    primary.set_default(Behaviour::status(503));
    let failed_over = chat(sidecars[0].base.clone()).await?;
    for _ in 0..3 {
        chat(sidecars[0].base.clone()).await?;
    }

    // request <id>: found in the checkout sidecar's records, through the API server.
    let (ok, out, err) = plugin(cp, &["request", &failed_over, "-n", &ns])?;
    ensure!(ok, "kubectl gatehouse request failed: {err}");
    println!("$ kubectl gatehouse request {failed_over} -n {ns}\n{out}");
    for want in [
        format!("Request     {failed_over}"),
        format!("{ns}/checkout (pod {ns}/checkout-0)"),
        "Route       chat, no rule matched".to_string(),
        "Answered by secondary / secondary-model".to_string(),
        "Status      200 (answered)".to_string(),
        "Budget      ok (team)".to_string(),
        "Cache       bypass".to_string(),
    ] {
        ensure!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
    let attempts: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "Attempts")
        .skip(2)
        .collect();
    ensure!(attempts.len() == 2, "two attempts expected:\n{out}");
    ensure!(
        attempts[0].contains("primary") && attempts[0].contains("server_error"),
        "{out}"
    );
    ensure!(
        attempts[1].contains("secondary") && attempts[1].contains("success"),
        "{out}"
    );
    ensure!(out.contains("Cost        $0.0"), "{out}");
    ensure!(
        !out.contains("tangerine") && !out.contains("sk-kubectl"),
        "{out}"
    );
    let (ok, _, err) = plugin(
        cp,
        &["request", "00000000000000000000000000000000", "-n", &ns],
    )?;
    ensure!(!ok, "an unknown id must fail");
    ensure!(
        err.contains("is not in the records of the 2 sidecars"),
        "{err}"
    );

    // failover <route>: priority order, the primary ejected by one of the two sidecars.
    let (ok, out, err) = plugin(cp, &["failover", "chat", "-n", &ns])?;
    ensure!(ok, "kubectl gatehouse failover failed: {err}");
    println!("$ kubectl gatehouse failover chat -n {ns}\n{out}");
    let rows: Vec<&str> = out.lines().skip(2).collect();
    ensure!(rows.len() == 2, "{out}");
    ensure!(
        rows[0].starts_with("1  0") && rows[0].contains("primary"),
        "{out}"
    );
    ensure!(
        rows[0].contains("ejected in 1/2")
            && rows[0].contains("healthy in 1/2")
            && rows[0].contains("ejected for consecutive_failures"),
        "{out}"
    );
    ensure!(
        rows[1].starts_with("2  1")
            && rows[1].contains("secondary")
            && rows[1].contains("healthy in 2/2"),
        "{out}"
    );

    // spend: the Budget's status (once the operator has written it) and spend by workload.
    let budgets = Api::<Budget>::namespaced(admin.clone(), &ns);
    eventually(
        "the Budget's spend in its status",
        Duration::from_secs(60),
        || {
            let budgets = budgets.clone();
            async move {
                let spent = budgets
                    .get("team")
                    .await?
                    .status
                    .and_then(|s| s.spent)
                    .filter(|s| s.parse::<f64>().is_ok_and(|v| v > 0.0));
                Ok(spent.map(|_| ()))
            }
        },
    )
    .await?;
    let (ok, out, err) = plugin(cp, &["spend", "-n", &ns])?;
    ensure!(ok, "kubectl gatehouse spend failed: {err}");
    println!("$ kubectl gatehouse spend -n {ns}\n{out}");
    let budget_row = out
        .lines()
        .find(|l| l.starts_with(&format!("{ns}  team")))
        .with_context(|| format!("no Budget row:\n{out}"))?;
    ensure!(
        budget_row.contains("monthly") && budget_row.contains("$10"),
        "{out}"
    );
    for workload in ["checkout", "search"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("{ns}  {workload}")))
            .with_context(|| format!("no {workload} row:\n{out}"))?;
        ensure!(row.contains("$0.0"), "{out}");
    }
    ensure!(out.contains("from the metrics of 2 sidecars"), "{out}");
    Ok(())
}
