//! The budget ledger under many sidecars: `--ledger N` simulates N sidecar instances syncing with
//! a real operator (release build, one replica) on a private control plane, each with its own
//! projected ServiceAccount token (TokenRequest, audience `gatehouse-ledger`), each reporting
//! every Budget of its namespace in one call, as the sidecar does.
//!
//! Two phases after a warm-up round (every instance's first sync: a TokenReview each):
//!
//! - **steady**: each instance syncs every `sync_after_ms` the ledger answers (2 s by default),
//!   spending a little of its lease in between; the rate a fleet of N sidecars really offers.
//! - **saturation**: each instance syncs again as soon as it has its answer (closed loop); the
//!   most syncs per second the ledger (and the API server under its record writes) sustains.
//!
//! Measured per phase: syncs/s, sync latency p50/p99/max, refusals, the operator's CPU (share of
//! one core) and RSS, the API server's CPU, and the ledger's record writes/s (group commit: one
//! write per Budget covers every sync that arrived during the previous write).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use gatehouse_crds::Budget;
use gatehouse_crds::ledger::{
    AccountSync, Amount, SYNC_PATH, SyncRequest, SyncResponse, TOKEN_AUDIENCE,
};
use gatehouse_e2e::ControlPlane;
use hdrhistogram::Histogram;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::Mutex;

use crate::procs::{Proc, free_port, release_bin, wait_http_ok};

/// What the ledger run is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Simulated sidecar instances.
    pub sidecars: usize,
    /// Budgets in their namespace (each sync reports all of them).
    pub budgets: usize,
    /// Seconds each phase is measured.
    pub secs: u64,
}

/// One simulated sidecar instance: cumulative numbers per Budget, like the real one.
struct Instance {
    token: String,
    id: String,
    books: Vec<(Option<k8s_openapi::jiff::Timestamp>, Amount, Amount)>,
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    syncs: u64,
    refused: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    operator_cpu: Duration,
    apiserver_cpu: Duration,
    operator_rss_kib: u64,
    operator_peak_kib: u64,
    commits: u64,
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `/proc/<pid>/stat` user + system time.
fn cpu_of(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

impl Instance {
    fn request(&self, namespace: &str, budgets: usize, spend: u64, want: u64) -> SyncRequest {
        SyncRequest {
            instance: self.id.clone(),
            namespace: namespace.to_string(),
            accounts: (0..budgets)
                .map(|b| {
                    let (period_start, spent, granted) = self.books[b];
                    // Spend within the lease only.
                    let ceiling = granted.nano_usd.max(spent.nano_usd);
                    AccountSync {
                        name: format!("b{b}"),
                        period_start,
                        spent: Amount {
                            nano_usd: (spent.nano_usd + spend).min(ceiling),
                            tokens: spent.tokens,
                        },
                        granted,
                        want: Amount {
                            nano_usd: want,
                            tokens: 0,
                        },
                        ..AccountSync::default()
                    }
                })
                .collect(),
        }
    }

    fn adopt(&mut self, sent: &SyncRequest, answer: &SyncResponse) {
        for (b, (a, s)) in answer.accounts.iter().zip(&sent.accounts).enumerate() {
            let spent = if a.period_start == self.books[b].0 {
                s.spent
            } else {
                Amount::default()
            };
            self.books[b] = (a.period_start, spent, a.granted);
        }
    }
}

async fn sync_once(
    http: &reqwest::Client,
    url: &str,
    namespace: &str,
    budgets: usize,
    instance: &mut Instance,
) -> anyhow::Result<(Duration, Option<SyncResponse>)> {
    // A sidecar spends a little between syncs and asks for more.
    let req = instance.request(namespace, budgets, 10_000, 1_000_000);
    let started = Instant::now();
    let r = http
        .post(format!("{url}{SYNC_PATH}"))
        .bearer_auth(&instance.token)
        .json(&req)
        .send()
        .await?;
    let ok = r.status().is_success();
    let body = r.bytes().await?;
    let took = started.elapsed();
    if !ok {
        return Ok((took, None));
    }
    let answer: SyncResponse = serde_json::from_slice(&body)?;
    instance.adopt(&req, &answer);
    Ok((took, Some(answer)))
}

/// Run the ledger load and return its Markdown report.
pub async fn report(plan: &Plan) -> anyhow::Result<String> {
    let operator_bin = release_bin("gatehouse-operator")?;
    let dir = tempfile::Builder::new()
        .prefix("gatehouse-ledger-bench-")
        .tempdir()?;
    let cp = ControlPlane::start()?;
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    cp.install_crds(std::path::Path::new(&format!("{repo}/crds")))?;
    let admin = cp.admin_client().await?;
    let ns = cp.create_namespace("ledger").await?;
    cp.create_service_account(&ns, "app").await?;
    let budgets = Api::<Budget>::namespaced(admin.clone(), &ns);
    for b in 0..plan.budgets {
        // A limit no run reaches: this measures the ledger, not refusals.
        budgets
            .patch(
                &format!("b{b}"),
                &PatchParams::apply("bench").force(),
                &Patch::Apply(
                    json!({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "Budget",
                    "metadata": {"name": format!("b{b}")},
                    "spec": {"limit": {"usd": "1000000"}, "period": "monthly"}}),
                ),
            )
            .await?;
    }

    let (admin_port, ledger_port) = (free_port()?, free_port()?);
    let log = dir.path().join("operator.log");
    let mut cmd = std::process::Command::new(&operator_bin);
    cmd.env("KUBECONFIG", cp.kubeconfig()).args([
        format!("--admin-listen=127.0.0.1:{admin_port}"),
        format!("--ledger-listen=127.0.0.1:{ledger_port}"),
        format!("--watch-namespace={ns}"),
        format!("--lease-namespace={ns}"),
        "--leader-election=false".into(),
    ]);
    let operator = Proc::spawn_cmd("gatehouse-operator", cmd, &log)?;
    let admin_url = format!("http://127.0.0.1:{admin_port}");
    wait_http_ok(&format!("{admin_url}/readyz"), Duration::from_secs(60)).await?;
    let url = format!("http://127.0.0.1:{ledger_port}");

    // One token per instance, as every pod has its own.
    let started = Instant::now();
    let tokens: Vec<String> = futures::stream::iter(0..plan.sidecars)
        .map(|_| cp.mint_token_for(&ns, "app", &[TOKEN_AUDIENCE]))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    eprintln!(
        "ledger bench: {} tokens minted in {:.1}s",
        tokens.len(),
        started.elapsed().as_secs_f64()
    );
    let instances: Vec<Arc<Mutex<Instance>>> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            Arc::new(Mutex::new(Instance {
                token,
                id: format!("app-{i}/{i:08x}"),
                books: vec![(None, Amount::default(), Amount::default()); plan.budgets],
            }))
        })
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.sidecars)
        .timeout(Duration::from_secs(30))
        .build()?;

    // Warm-up: every instance's first sync (its TokenReview), all at once.
    let started = Instant::now();
    let mut sync_after = Duration::from_secs(2);
    let warm: Vec<anyhow::Result<(Duration, Option<SyncResponse>)>> =
        futures::stream::iter(instances.iter().cloned())
            .map(|inst| {
                let (http, url, ns) = (http.clone(), url.clone(), ns.clone());
                let budgets = plan.budgets;
                async move {
                    let mut inst = inst.lock().await;
                    let mut last = Ok((Duration::ZERO, None));
                    // A sidecar retries while the ledger is still loading its books.
                    for _ in 0..50 {
                        last = sync_once(&http, &url, &ns, budgets, &mut inst).await;
                        if matches!(last, Ok((_, Some(_)))) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    last
                }
            })
            .buffer_unordered(plan.sidecars)
            .collect()
            .await;
    let mut warm_ok = 0;
    for w in warm {
        if let (_, Some(answer)) = w? {
            warm_ok += 1;
            sync_after = Duration::from_millis(answer.sync_after_ms.max(1));
        }
    }
    if warm_ok != plan.sidecars {
        bail!(
            "only {warm_ok} of {} instances got a first answer; log {}",
            plan.sidecars,
            log.display()
        );
    }
    let warm_up = started.elapsed();

    let mut phases = Vec::new();
    for (name, closed) in [("steady", false), ("saturation", true)] {
        phases.push(
            phase(
                name,
                closed,
                plan,
                &instances,
                &http,
                &url,
                &ns,
                sync_after,
                &operator,
                cp.apiserver_pid(),
                &admin_url,
            )
            .await?,
        );
    }

    let mut out = String::new();
    writeln!(
        out,
        "### Budget ledger: {} simulated sidecars, {} Budget(s) each\n",
        plan.sidecars, plan.budgets
    )?;
    writeln!(
        out,
        "Warm-up (every instance's first sync and TokenReview, all at once): {:.2} s. Each phase \
         {} s; the operator is one release-build replica; the load generator, the API server and \
         etcd share the same 2 cores.\n",
        warm_up.as_secs_f64(),
        plan.secs
    )?;
    writeln!(
        out,
        "| phase | syncs/s | p50 ms | p99 ms | max ms | refused | operator CPU | operator RSS (peak) MiB | apiserver CPU | record writes/s |"
    )?;
    writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for p in &phases {
        let secs = p.elapsed.as_secs_f64();
        writeln!(
            out,
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.0}% | {:.1} ({:.1}) | {:.0}% | {:.1} |",
            p.name,
            p.syncs as f64 / secs,
            p.latency.value_at_quantile(0.5) as f64 / 1000.0,
            p.latency.value_at_quantile(0.99) as f64 / 1000.0,
            p.latency.max() as f64 / 1000.0,
            p.refused,
            100.0 * p.operator_cpu.as_secs_f64() / secs,
            p.operator_rss_kib as f64 / 1024.0,
            p.operator_peak_kib as f64 / 1024.0,
            100.0 * p.apiserver_cpu.as_secs_f64() / secs,
            p.commits as f64 / secs,
        )?;
    }
    Ok(out)
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
async fn phase(
    name: &'static str,
    closed: bool,
    plan: &Plan,
    instances: &[Arc<Mutex<Instance>>],
    http: &reqwest::Client,
    url: &str,
    ns: &str,
    sync_after: Duration,
    operator: &Proc,
    apiserver: u32,
    admin_url: &str,
) -> anyhow::Result<Phase> {
    let metrics = || async {
        let text = reqwest::get(format!("{admin_url}/metrics"))
            .await?
            .text()
            .await?;
        anyhow::Ok(counter(&text, "gatehouse_operator_ledger_commits_total"))
    };
    let commits0 = metrics().await?;
    operator.reset_peak()?;
    let (op0, api0) = (operator.cpu_time()?, cpu_of(apiserver));
    let syncs = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let n = instances.len().max(1);
    let tasks: Vec<_> = instances
        .iter()
        .enumerate()
        .map(|(i, inst)| {
            let (inst, http, url, ns) =
                (inst.clone(), http.clone(), url.to_string(), ns.to_string());
            let (syncs, refused, latency, stop) = (
                syncs.clone(),
                refused.clone(),
                latency.clone(),
                stop.clone(),
            );
            let budgets = plan.budgets;
            tokio::spawn(async move {
                if !closed {
                    // Spread the fleet over one interval, as pods started at different times are.
                    tokio::time::sleep(sync_after.mul_f64(i as f64 / n as f64)).await;
                }
                let mut inst = inst.lock().await;
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    match sync_once(&http, &url, &ns, budgets, &mut inst).await {
                        Ok((took, Some(_))) => {
                            syncs.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut h) = latency.lock() {
                                let _ = h.record(took.as_micros().max(1) as u64);
                            }
                        }
                        _ => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if !closed {
                        let next = at + sync_after;
                        tokio::time::sleep_until(next.into()).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(plan.secs)).await;
    let elapsed = started.elapsed();
    let (op1, api1) = (operator.cpu_time()?, cpu_of(apiserver));
    let (rss, peak) = operator.memory_kib()?;
    let commits1 = metrics().await?;
    let counted = syncs.load(Ordering::Relaxed);
    let refused_n = refused.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let latency = latency
        .lock()
        .map(|h| h.clone())
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    Ok(Phase {
        name,
        syncs: counted,
        refused: refused_n,
        elapsed,
        latency,
        operator_cpu: op1.saturating_sub(op0),
        apiserver_cpu: api1.saturating_sub(api0),
        operator_rss_kib: rss,
        operator_peak_kib: peak,
        commits: commits1.saturating_sub(commits0),
    })
}
