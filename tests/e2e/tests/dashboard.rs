//! The Grafana dashboard against a real Prometheus: Debian's `prometheus` (started by the test on
//! a free loopback port, scraping every second) scrapes two kube-mode sidecars' admin ports and
//! the operator's metrics port while a load runs through the sidecars against mock providers. The
//! load produces every signal the dashboard shows: answers buffered and streamed, tagged and
//! priced; errors; a failover and an ejection (the primary provider fails twice in a row); Budget
//! decisions and the operator's Budget gauges; rate-limit refusals. Then every panel's PromQL,
//! taken from the dashboard as the chart renders it (`helm template`), with the dashboard's
//! variables substituted, must return data through Prometheus's HTTP API, aggregated to the
//! labels its `by (...)` names, at least one series carrying every one of them.
//!
//! The binaries are built by the test (`cargo build -p gatehouse-operator -p gatehouse-sidecar`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gatehouse_crds::ledger::TOKEN_AUDIENCE;
use gatehouse_e2e::procs::KubeSidecar;
use gatehouse_e2e::procs::{self, Proc, binary, free_port, repo_root};
use gatehouse_e2e::{ControlPlane, answers_ok, eventually};
use gatehouse_mock_provider::{Behaviour, MockProvider};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use serde_json::{Value, json};

/// How long Prometheus gets to have every panel's data once the load runs.
const PANELS_DEADLINE: Duration = Duration::from_secs(120);

/// `prometheus` on PATH, or a failure that says how to get it.
fn prometheus_bin() -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .context(
            "prometheus is not on PATH: install Debian's package with \
             `scripts/ensure-debs prometheus=prometheus` (scripts/test does)",
        )
}

/// The dashboard JSON from the chart, as `helm template` renders the ConfigMap.
fn rendered_dashboard(cp: &ControlPlane) -> Result<Value> {
    let chart = repo_root().join("charts/gatehouse");
    let default = cp
        .helm(["template", "gh", chart.to_str().context("chart path")?])?
        .ok("helm template")?;
    ensure!(
        !default.contains("grafana_dashboard"),
        "the dashboard ConfigMap is rendered by default; it is off unless dashboard.enabled"
    );
    let out = cp
        .helm([
            "template",
            "gh",
            chart.to_str().context("chart path")?,
            "--set",
            "dashboard.enabled=true",
            "--show-only",
            "templates/dashboard.yaml",
        ])?
        .ok("helm template the dashboard")?;
    let cm: serde_yaml::Value = serde_yaml::from_str(&out).context("the dashboard ConfigMap")?;
    ensure!(
        cm["metadata"]["labels"]["grafana_dashboard"].as_str() == Some("1"),
        "the ConfigMap lacks the Grafana sidecar's discovery label: {cm:?}"
    );
    let json = cm["data"]["gatehouse.json"]
        .as_str()
        .context("data.gatehouse.json")?;
    Ok(serde_json::from_str(json)?)
}

/// One query of a panel, variables substituted, with the labels its aggregation keeps.
#[derive(Debug)]
struct PanelQuery {
    title: String,
    expr: String,
    labels: BTreeSet<String>,
}

/// Every target of every panel, the dashboard's variables replaced by what "All" selects
/// (`.*`) and Grafana's rate interval by a window of the test's scrapes.
fn panel_queries(dashboard: &Value) -> Result<Vec<PanelQuery>> {
    let panels = dashboard["panels"].as_array().context("panels")?;
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().context("panel title")?.to_string();
        let targets = panel["targets"].as_array().context("panel targets")?;
        ensure!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let raw = target["expr"].as_str().context("target expr")?;
            let expr = raw
                .replace("$__rate_interval", "1m")
                .replace("$namespace", ".*")
                .replace("$route", ".*");
            ensure!(
                !expr.contains('$'),
                "panel {title:?}: a variable the test does not know in {raw}"
            );
            queries.push(PanelQuery {
                title: title.clone(),
                labels: grouping(&expr),
                expr,
            });
        }
    }
    Ok(queries)
}

/// The labels of every `by (...)` in `expr`, `le` excepted (histogram_quantile consumes it).
fn grouping(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        rest = &rest[at + 4..];
        let Some(end) = rest.find(')') else { break };
        for l in rest[..end].split(',').map(str::trim) {
            if !l.is_empty() && l != "le" {
                labels.insert(l.to_string());
            }
        }
        rest = &rest[end..];
    }
    labels
}

/// Why a query's answer is not yet what the panel needs, or `None` when it is.
fn lacking(q: &PanelQuery, answer: &Value) -> Option<String> {
    if answer["status"] != "success" {
        return Some(format!("query failed: {answer}"));
    }
    let result = answer["data"]["result"].as_array()?;
    if result.is_empty() {
        return Some("no data".into());
    }
    let mut complete = false;
    for series in result {
        let metric = series["metric"].as_object()?;
        let names: BTreeSet<String> = metric.keys().cloned().collect();
        if let Some(extra) = names.difference(&q.labels).next() {
            return Some(format!("label {extra:?} not in its by (...): {series}"));
        }
        complete |= q.labels.iter().all(|l| {
            metric
                .get(l)
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
        });
    }
    (!complete).then(|| format!("no series carries all of {:?}: {result:?}", q.labels))
}

struct Env {
    cp: &'static ControlPlane,
    ns: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    api_token: PathBuf,
    ledger_token: PathBuf,
}

impl Env {
    fn operator(&self, admin: u16, ledger: u16) -> Result<Proc> {
        let mut cmd = Command::new(binary("gatehouse-operator"));
        cmd.env("KUBECONFIG", self.cp.kubeconfig())
            .env("RUST_LOG", "info")
            .args([
                format!("--admin-listen=127.0.0.1:{admin}"),
                format!("--ledger-listen=127.0.0.1:{ledger}"),
                format!("--watch-namespace={}", self.ns),
                format!("--lease-namespace={}", self.ns),
                "--identity=operator".to_string(),
            ]);
        Proc::spawn(cmd, self.dir.path().join("operator.log"))
    }

    /// Wait for the rendered config (with the Budget) and its keys; mount the keys as the
    /// kubelet would.
    async fn keys(&self) -> Result<PathBuf> {
        let admin = self.cp.admin_client().await?;
        let configs = Api::<ConfigMap>::namespaced(admin.clone(), &self.ns);
        let secrets = Api::<Secret>::namespaced(admin, &self.ns);
        let secret = eventually(
            "the rendered config with the Budget",
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
                    let config: Value = serde_json::from_str(&json)?;
                    if config["budgets"].get("team").is_none() {
                        return Ok(None);
                    }
                    secrets.get_opt("gatehouse-keys").await.map_err(Into::into)
                }
            },
        )
        .await?;
        let dir = self.dir.path().join("keys");
        if dir.exists() {
            return Ok(dir);
        }
        gatehouse_e2e::kubelet::mount_secret(&dir, secret)?;
        Ok(dir)
    }

    /// A kube-mode sidecar of pod `pod` (workload `web`): its proxy and admin addresses.
    async fn sidecar(&self, pod: &str, ledger: &str) -> Result<(Proc, String, String)> {
        let keys = self.keys().await?;
        let started = KubeSidecar {
            control_plane: self.cp,
            namespace: &self.ns,
            api_token: &self.api_token,
            keys_dir: &keys,
            pod,
            workload: Some("web"),
            ledger_url: ledger,
            ledger_token: &self.ledger_token,
            admin_host: "127.0.0.1",
        }
        .start(
            &self.http,
            self.dir.path().join(format!("sidecar-{pod}.log")),
        )
        .await?;
        Ok((
            started.proc,
            started.base,
            format!("127.0.0.1:{}", started.admin_port),
        ))
    }
}

/// Start Prometheus scraping `targets` every second; wait until it is ready.
async fn prometheus(
    http: &reqwest::Client,
    dir: &Path,
    targets: &[String],
) -> Result<(Proc, String)> {
    let bin = prometheus_bin()?;
    let port = free_port()?;
    let config = dir.join("prometheus.yml");
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: gatehouse\n    static_configs:\n      - targets: [{list}]\n"
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.args([
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ]);
    let proc = Proc::spawn(cmd, dir.join("prometheus.log"))?;
    let base = format!("http://127.0.0.1:{port}");
    answers_ok(
        http,
        &format!("{base}/-/ready"),
        "prometheus ready",
        Duration::from_secs(60),
    )
    .await?;
    Ok((proc, base))
}

async fn query(http: &reqwest::Client, base: &str, expr: &str) -> Result<Value> {
    // The expression percent-encoded into the query string.
    let mut encoded = String::with_capacity(expr.len() * 3);
    for b in expr.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(http
        .get(format!("{base}/api/v1/query?query={encoded}"))
        .send()
        .await?
        .json()
        .await?)
}

/// One chat request; its status.
async fn chat(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    tag: &str,
    stream: bool,
) -> Result<u16> {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "how is the dashboard"}],
        "max_tokens": 16,
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    });
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .header("x-gatehouse-tag", tag)
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    // Read to the end: a stream's record is written when it ends.
    let _ = r.bytes().await?;
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus() -> Result<()> {
    prometheus_bin()?;
    let cp = procs::with_operator_and_sidecar()?;
    let queries = panel_queries(&rendered_dashboard(cp)?)?;
    ensure!(queries.len() >= 10, "too few panel queries: {queries:?}");

    let ns = cp.create_namespace("dashboard").await?;
    let primary = MockProvider::start().await?;
    let backup = MockProvider::start().await?;
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: llm-key}}\nstringData: {{api-key: sk-dashboard}}\n\
         ---\napiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: primary}}\n\
         spec:\n  type: openaiCompatible\n  endpoint: {}\n  apiKeySecretRef: {{name: llm-key, key: api-key}}\n  models:\n\
         \x20   - {{name: fast, pricing: {{inputPerMillion: \"1\", outputPerMillion: \"2\"}}}}\n\
         ---\napiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: backup}}\n\
         spec:\n  type: openaiCompatible\n  endpoint: {}\n  apiKeySecretRef: {{name: llm-key, key: api-key}}\n  models:\n\
         \x20   - {{name: steady, pricing: {{inputPerMillion: \"3\", outputPerMillion: \"6\"}}}}\n\
         ---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: chat}}\n\
         spec:\n  targets:\n    - {{provider: primary, model: fast, priority: 0}}\n    - {{provider: backup, model: steady, priority: 1}}\n\
         \x20 retry: {{attempts: 2}}\n  outlier: {{consecutiveFailures: 2, baseEjection: 20s}}\n\
         ---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: limited}}\n\
         spec:\n  targets: [{{provider: backup, model: steady}}]\n  retry: {{attempts: 1}}\n\
         \x20 rateLimits: [{{name: tight, requestsPerMinute: 2}}]\n\
         ---\napiVersion: gatehouse.dev/v1alpha1\nkind: Budget\nmetadata: {{name: team}}\n\
         spec:\n  limit: {{usd: \"1000\"}}\n  period: monthly\n  scope: {{routes: [chat, limited]}}\n",
        primary.base_url(),
        backup.base_url()
    );
    cp.kubectl_stdin(["apply", "-n", &ns, "-f", "-"], &yaml)?
        .ok("kubectl apply the providers, routes and budget")?;
    cp.create_service_account(&ns, "app").await?;
    let dir = tempfile::tempdir()?;
    let api_token = dir.path().join("api-token");
    std::fs::write(&api_token, cp.mint_token(&ns, "app").await?)?;
    let ledger_token = dir.path().join("ledger-token");
    std::fs::write(
        &ledger_token,
        cp.mint_token_for(&ns, "app", &[TOKEN_AUDIENCE]).await?,
    )?;
    let env = Env {
        cp,
        ns,
        dir,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        api_token,
        ledger_token,
    };
    let (op_admin, op_ledger) = (free_port()?, free_port()?);
    let _operator = env.operator(op_admin, op_ledger)?;
    let ledger = format!("http://127.0.0.1:{op_ledger}");
    let (_a, web0, admin0) = env.sidecar("web-0", &ledger).await?;
    let (_b, web1, admin1) = env.sidecar("web-1", &ledger).await?;
    let (_prometheus, prom) = prometheus(
        &env.http,
        env.dir.path(),
        &[admin0, admin1, format!("127.0.0.1:{op_admin}")],
    )
    .await?;
    eventually(
        "prometheus scrapes all three targets",
        Duration::from_secs(60),
        || {
            let (http, prom) = (env.http.clone(), prom.clone());
            async move {
                let up = query(&http, &prom, "sum(up)").await?;
                let n = up["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok());
                Ok((n == Some(3.0)).then_some(()))
            }
        },
    )
    .await?;

    // The one-off signals first: the primary fails twice in a row on web-0, each attempt fails
    // over to the backup, and the second failure ejects the primary there.
    primary.push_n(Behaviour::status(500), 2);
    for _ in 0..2 {
        ensure!(
            chat(&env.http, &web0, "chat", "summary", false).await? == 200,
            "a failover did not answer"
        );
    }
    // Rate-limit refusals: the limit allows 2 a minute per sidecar.
    let mut refused = 0;
    for _ in 0..4 {
        if chat(&env.http, &web1, "limited", "search", false).await? == 429 {
            refused += 1;
        }
    }
    ensure!(refused >= 2, "the rate limit refused {refused} of 4");

    // A steady load in the background until the panels have their data: buffered and streamed,
    // two tags, and an unknown model (an error without a route).
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (http, stop) = (env.http.clone(), stop.clone());
        let bases = [web0.clone(), web1.clone()];
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let base = &bases[i % 2];
                let tag = if i.is_multiple_of(3) {
                    "search"
                } else {
                    "summary"
                };
                chat(&http, base, "chat", tag, i.is_multiple_of(2)).await?;
                if i.is_multiple_of(5) {
                    chat(&http, base, "no-such-model", tag, false).await?;
                    chat(&http, base, "limited", tag, false).await?;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(i)
        })
    };

    let deadline = tokio::time::Instant::now() + PANELS_DEADLINE;
    let missing = loop {
        let mut missing = Vec::new();
        for q in &queries {
            let answer = query(&env.http, &prom, &q.expr).await?;
            if let Some(why) = lacking(q, &answer) {
                missing.push(format!("{}: {}\n  {why}", q.title, q.expr));
            }
        }
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let sent = load.await??;
    if !missing.is_empty() {
        bail!(
            "{} of {} panel queries lack data after {sent} load rounds (logs in {}):\n{}",
            missing.len(),
            queries.len(),
            env.dir.path().display(),
            missing.join("\n")
        );
    }
    println!(
        "{} panel queries returned data after {sent} load rounds",
        queries.len()
    );
    Ok(())
}

#[test]
fn the_grouping_of_a_query_is_the_labels_of_its_by_clauses() {
    let labels = grouping(
        "histogram_quantile(0.99, sum by (le, route, provider) (rate(x[1m]))) / sum by (route) (y)",
    );
    let want: BTreeSet<String> = ["provider", "route"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(labels, want);
}

#[test]
fn a_panel_answer_lacks_data_when_empty_unaggregated_or_without_its_labels() {
    let q = PanelQuery {
        title: "t".into(),
        expr: "sum by (route, tag) (x)".into(),
        labels: grouping("sum by (route, tag) (x)"),
    };
    let answer = |result: Value| json!({"status": "success", "data": {"result": result}});
    assert!(lacking(&q, &answer(json!([]))).is_some(), "empty");
    assert!(
        lacking(&q, &json!({"status": "error", "error": "parse error"})).is_some(),
        "failed query"
    );
    let extra = json!([{"metric": {"route": "chat", "tag": "a", "pod": "x"}, "value": [0, "1"]}]);
    assert!(
        lacking(&q, &answer(extra)).is_some(),
        "a label outside by (...)"
    );
    let partial = json!([{"metric": {"route": "chat"}, "value": [0, "1"]}]);
    assert!(
        lacking(&q, &answer(partial)).is_some(),
        "no series with every label"
    );
    let good = json!([
        {"metric": {"route": "chat"}, "value": [0, "1"]},
        {"metric": {"route": "chat", "tag": "a"}, "value": [0, "1"]},
    ]);
    assert_eq!(lacking(&q, &answer(good)), None);
}
