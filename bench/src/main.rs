//! `gatehouse-bench`: what the sidecar adds over calling the provider directly.
//!
//! One command builds the release binaries, starts a fast mock upstream and the sidecar as separate
//! processes, and drives both with the same closed-loop load generator, interleaving direct and
//! through-the-sidecar rounds so machine noise hits both alike. `--peers` adds LiteLLM and
//! Portkey's gateway against the same mock. Prints Markdown tables (docs/benchmarks.md).

mod budget;
mod cache;
mod fanout;
mod faults;
mod ledger;
mod load;
mod memory;
mod metering;
mod metrics;
mod peers;
#[allow(dead_code, reason = "used by peers")]
mod procs;
mod redaction;
mod semantic;
mod stages;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;

use load::{Outcome, Target};
use procs::{Proc, free_port, release_bin, wait_http_ok};

/// Benchmark the Gatehouse sidecar against direct calls (and peers).
#[derive(Debug, Parser)]
struct Args {
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,32,256")]
    concurrency: Vec<usize>,
    /// Requests per round at concurrency 32 and above (a quarter of it at concurrency 1).
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Interleaved rounds per path (direct, sidecar, direct, sidecar…).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Content chunks per streamed answer.
    #[arg(long, default_value_t = 20)]
    stream_chunks: usize,
    /// Also measure LiteLLM proxy and Portkey's gateway (installed into the cache on first use).
    #[arg(long)]
    peers: bool,
    /// Also measure the sidecar with two worker threads instead of the default one.
    #[arg(long)]
    compare_threads: bool,
    /// Skip `cargo build --release` of the sidecar and mock.
    #[arg(long)]
    no_build: bool,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also measure config propagation on the real control plane (Route patch → first request
    /// served with the new rule) over this many changes; 0 skips it.
    #[arg(long, default_value_t = 0)]
    propagation: usize,
    /// Also measure this sidecar binary (for example the previous main's release build) in the
    /// same interleaved rounds, and print a before/after table.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// How the baseline is named in the tables (for example a commit).
    #[arg(long, default_value = "baseline")]
    baseline_label: String,
    /// Also measure RSS around maximum-size requests (one, then 8 at once) on a fresh sidecar
    /// (and on the baseline).
    #[arg(long)]
    memory: bool,
    /// Also measure what each stage of the request path costs (one sidecar per scenario).
    #[arg(long)]
    stages: bool,
    /// Also measure what clients see when a provider goes bad (one scenario per fault).
    #[arg(long)]
    faults: bool,
    /// Measure only the fault scenarios (implies --faults).
    #[arg(long)]
    faults_only: bool,
    /// Instead of everything else: start this many kube-mode sidecars on a real control plane
    /// and measure start success, Route change fan-out and what the fleet costs the apiserver.
    #[arg(long, default_value_t = 0)]
    fanout: usize,
    /// Fan-out: namespaces the sidecars are spread over.
    #[arg(long, default_value_t = 20)]
    fanout_namespaces: usize,
    /// Fan-out: Route changes timed.
    #[arg(long, default_value_t = 5)]
    fanout_changes: usize,
    /// Fan-out: sidecars started at once before waiting for them to be ready.
    #[arg(long, default_value_t = 50)]
    fanout_batch: usize,
    /// Fan-out: seconds the ready fleet idles while CPU is measured.
    #[arg(long, default_value_t = 30)]
    fanout_idle_secs: u64,
    /// Instead of everything else: simulate this many sidecars syncing with the operator's
    /// budget ledger on a real control plane (syncs/s, latency, operator CPU and RSS).
    #[arg(long, default_value_t = 0)]
    ledger: usize,
    /// Ledger: Budgets in the sidecars' namespace (every sync reports each).
    #[arg(long, default_value_t = 1)]
    ledger_budgets: usize,
    /// Ledger: seconds each phase (steady, saturation) is measured.
    #[arg(long, default_value_t = 20)]
    ledger_secs: u64,
    /// Also measure what metering costs: the sidecar with metering on against `--metering off`.
    #[arg(long)]
    metering: bool,
    /// Also measure what per-request metrics cost: the sidecar with `--metrics on` against
    /// `--metrics off`; then `/metrics` encoded with 1,000 label combinations.
    #[arg(long)]
    metrics: bool,
    /// Also measure what a Budget costs: one sidecar with a Budget covering the route against
    /// one with none, in the same interleaved rounds (requests/s and CPU per request).
    #[arg(long)]
    budget: bool,
    /// Instead of everything else: measure redaction in process (a 4 KiB prompt with every
    /// detector on; a 20-event stream through the hold-back).
    #[arg(long)]
    redaction: bool,
    /// Instead of everything else: measure a semantic-cache lookup in process (index search and
    /// guards at 10,000 entries × 384 dimensions, recall against an exact scan).
    #[arg(long)]
    semantic: bool,
    /// Instead of everything else: the semantic cache's threshold evaluation on this paraphrase
    /// set (tests/cache-eval/pairs.jsonl) with the real model of tests/embedding-server.
    #[arg(long)]
    semantic_eval: Option<PathBuf>,
    /// Instead of everything else: measure the exact cache (a hit over the sidecar's floor;
    /// RSS for `--cache-entries` stored answers). Uses the binaries beside this one: with a
    /// debug build of the bench, the debug sidecar and mock (`--no-build`).
    #[arg(long)]
    cache: bool,
    /// Cache: timed requests per path and round.
    #[arg(long, default_value_t = 2_000)]
    cache_requests: usize,
    /// Cache: answers stored for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    cache_entries: usize,
}

const CHAT_BODY: &str = r#"{"model":"MODEL","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write one sentence about gateways."}],"max_tokens":64STREAM}"#;

fn chat_body(model: &str, stream: bool) -> Bytes {
    let stream = if stream {
        r#","stream":true,"stream_options":{"include_usage":true}"#
    } else {
        ""
    };
    Bytes::from(CHAT_BODY.replace("MODEL", model).replace("STREAM", stream))
}

/// A path under test: where requests go and which model name they use.
#[derive(Debug, Clone)]
struct Path_ {
    name: String,
    addr: SocketAddr,
    model: String,
    prefix: &'static str,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Path_ {
    fn target(&self, stream: bool) -> Target {
        Target {
            addr: self.addr,
            path: if self.prefix.is_empty() {
                "/v1/chat/completions"
            } else {
                self.prefix
            },
            body: chat_body(&self.model, stream),
            stream,
            headers: self.headers.clone(),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.semantic || args.semantic_eval.is_some() {
        let report = match &args.semantic_eval {
            Some(pairs) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(semantic::report_eval(pairs))?,
            None => semantic::report_index()?,
        };
        println!("{report}");
        if let Some(out) = &args.out {
            std::fs::write(out, &report)?;
        }
        return Ok(());
    }
    if args.redaction {
        let report = redaction::report()?;
        println!("{report}");
        if let Some(out) = &args.out {
            std::fs::write(out, &report)?;
        }
        return Ok(());
    }
    if !args.no_build && std::env::var_os("GATEHOUSE_BENCH_BIN_DIR").is_none() {
        let mut packages = vec!["gatehouse-sidecar", "gatehouse-mock-provider"];
        if args.fanout > 0 || args.ledger > 0 {
            packages.push("gatehouse-operator");
        }
        let status = std::process::Command::new("cargo")
            .args(["build", "--release", "--quiet"])
            .args(packages.iter().flat_map(|p| ["-p", p]))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .context("failed to run cargo build")?;
        anyhow::ensure!(status.success(), "cargo build failed");
    }
    // One thread: the load generator must leave the cores to the processes it measures.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = if args.cache {
        runtime.block_on(cache::report(&cache::Plan {
            requests: args.cache_requests.max(1),
            entries: args.cache_entries,
        }))?
    } else if args.ledger > 0 {
        runtime.block_on(ledger::report(&ledger::Plan {
            sidecars: args.ledger,
            budgets: args.ledger_budgets.max(1),
            secs: args.ledger_secs.max(1),
        }))?
    } else if args.fanout > 0 {
        runtime.block_on(fanout::report(&fanout::Plan {
            sidecars: args.fanout,
            namespaces: args.fanout_namespaces.max(1),
            changes: args.fanout_changes,
            batch: args.fanout_batch.max(1),
            idle_secs: args.fanout_idle_secs.max(1),
        }))?
    } else {
        runtime.block_on(bench(&args))?
    };
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report)?;
    }
    Ok(())
}

fn manifests(mock: SocketAddr, failing: SocketAddr) -> String {
    format!(
        r#"apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: mock}}
spec:
  type: openaiCompatible
  endpoint: http://{mock}/v1
  models:
    - name: gpt-4o-mini
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: failing}}
spec:
  type: openaiCompatible
  endpoint: http://{failing}/v1
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: bench}}
spec:
  models: [bench]
  targets: [{{provider: mock, model: gpt-4o-mini}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: failover}}
spec:
  models: [failover]
  targets:
    - {{provider: failing, model: gpt-4o-mini, priority: 0}}
    - {{provider: mock, model: gpt-4o-mini, priority: 1}}
  retry: {{attempts: 2}}
"#
    )
}

struct Sidecar {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    ready_after: Duration,
}

async fn start_sidecar(
    bin: &Path,
    manifests: &Path,
    log: Option<&Path>,
    worker_threads: u16,
) -> anyhow::Result<Sidecar> {
    start_sidecar_with(bin, manifests, log, worker_threads, &[]).await
}

/// [`start_sidecar`] with extra flags.
async fn start_sidecar_with(
    bin: &Path,
    manifests: &Path,
    log: Option<&Path>,
    worker_threads: u16,
    extra: &[&str],
) -> anyhow::Result<Sidecar> {
    let port = free_port()?;
    let admin = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut args = vec![
        "--manifests".to_string(),
        manifests.display().to_string(),
        "--listen".to_string(),
        addr.to_string(),
        "--admin-listen".to_string(),
        format!("127.0.0.1:{admin}"),
        "--worker-threads".to_string(),
        worker_threads.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let proc = Proc::spawn("gatehouse", bin, &args, log)?;
    let ready_after = wait_http_ok(
        &format!("http://127.0.0.1:{admin}/readyz"),
        Duration::from_secs(10),
    )
    .await?;
    Ok(Sidecar {
        proc,
        addr,
        admin: format!("127.0.0.1:{admin}").parse()?,
        ready_after,
    })
}

async fn start_mock(chunks: usize) -> anyhow::Result<(Proc, SocketAddr)> {
    start_mock_with(chunks, &[]).await
}

/// A mock with extra flags (for example `--api-key`).
async fn start_mock_with(chunks: usize, extra: &[&str]) -> anyhow::Result<(Proc, SocketAddr)> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut args = vec![
        "--listen".to_string(),
        addr.to_string(),
        "--chunks".to_string(),
        chunks.to_string(),
        "--no-record".to_string(),
        "--quiet".to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let proc = Proc::spawn(
        "mock",
        &release_bin("gatehouse-mock-provider")?,
        &args,
        None,
    )?;
    // The control API answers whatever key the mock insists on.
    wait_http_ok(
        &format!("http://{addr}/__mock/requests"),
        Duration::from_secs(10),
    )
    .await?;
    Ok((proc, addr))
}

/// Make a mock answer every request with `status`, through its control API.
async fn set_mock_status(addr: SocketAddr, status: u16) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = serde_json::json!({"fault": {"kind": "status", "status": status}}).to_string();
    let req = http::Request::put("/__mock/default")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "mock control API answered {}",
        resp.status()
    );
    Ok(())
}

fn requests_for(args: &Args, concurrency: usize) -> u64 {
    if concurrency == 1 {
        args.requests / 4
    } else {
        args.requests
    }
}

/// Run `paths` interleaved for `rounds`, returning one merged outcome per path.
async fn interleaved(
    paths: &[Path_],
    stream: bool,
    concurrency: usize,
    requests: u64,
    rounds: u32,
) -> anyhow::Result<Vec<Outcome>> {
    let mut merged = Vec::new();
    for path in paths {
        // Warm-up: connections, pools, caches.
        load::run(&path.target(stream), concurrency, (requests / 10).max(200)).await?;
        merged.push(Outcome::empty()?);
    }
    for _ in 0..rounds {
        for (path, total) in paths.iter().zip(merged.iter_mut()) {
            let outcome = load::run(&path.target(stream), concurrency, requests).await?;
            load::check(&path.name, &outcome)?;
            total.merge(&outcome)?;
        }
    }
    Ok(merged)
}

/// Run the operator end-to-end test with `samples` route changes and return its propagation line.
fn propagation(samples: usize) -> anyhow::Result<String> {
    let output = std::process::Command::new("cargo")
        .args([
            "test",
            "--quiet",
            "-p",
            "gatehouse-e2e",
            "--test",
            "operator",
            "operator_to_sidecar_end_to_end",
            "--",
            "--nocapture",
        ])
        .env("GATEHOUSE_PROPAGATION_SAMPLES", samples.to_string())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .context("failed to run the operator end-to-end test")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "operator end-to-end test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("route propagation over"))
        .context("the test printed no propagation line")?;
    Ok(format!(
        "Route patched with server-side apply → operator renders the ConfigMap → kube-mode sidecar (watching it with a ServiceAccount token) serves the new target; polled every 2 ms. {line}."
    ))
}

/// A gateway's CPU and memory in one scenario.
struct Usage {
    gateway: String,
    stream: bool,
    concurrency: usize,
    cpu_us: f64,
    peak_kib: u64,
}

/// One path's throughput and added latency (p50; TTFT for streams) in one scenario.
struct Measured {
    path: String,
    stream: bool,
    concurrency: usize,
    rps: f64,
    added_ms: f64,
}

/// The figures the request path must not regress on, this build against the baseline, from the
/// same interleaved rounds.
fn before_after(
    report: &mut String,
    baseline: &str,
    measured: &[Measured],
    usage: &[Usage],
    idle_kib: (u64, u64),
) -> anyhow::Result<()> {
    writeln!(report, "\n### This build against {baseline} (same run)\n")?;
    writeln!(report, "| figure | {baseline} | gatehouse | change |")?;
    writeln!(report, "|---|---|---|---|")?;
    let find = |path: &str, stream: bool, c: usize| {
        measured
            .iter()
            .find(|m| m.path == path && m.stream == stream && m.concurrency == c)
    };
    for (stream, c, label) in [
        (false, 1, "added p50, c=1 (ms)"),
        (false, 32, "added p50, c=32 (ms)"),
        (true, 1, "added TTFT p50, c=1 (ms)"),
        (true, 32, "added TTFT p50, c=32 (ms)"),
    ] {
        if let (Some(b), Some(g)) = (find(baseline, stream, c), find("gatehouse", stream, c)) {
            writeln!(
                report,
                "| {label} | {:+.3} | {:+.3} | {:+.3} |",
                b.added_ms,
                g.added_ms,
                g.added_ms - b.added_ms
            )?;
        }
    }
    for (stream, c, label) in [(false, 32, "req/s, c=32"), (true, 32, "streams/s, c=32")] {
        if let (Some(b), Some(g)) = (find(baseline, stream, c), find("gatehouse", stream, c)) {
            writeln!(
                report,
                "| {label} | {:.0} | {:.0} | {:+.1}% |",
                b.rps,
                g.rps,
                (g.rps / b.rps - 1.0) * 100.0
            )?;
        }
    }
    for (stream, c) in [(false, 1), (false, 32), (true, 32)] {
        let of = |gateway: &str| {
            usage
                .iter()
                .find(|u| u.gateway == gateway && u.stream == stream && u.concurrency == c)
        };
        if let (Some(b), Some(g)) = (of(baseline), of("gatehouse")) {
            writeln!(
                report,
                "| CPU µs / request, {} c={c} | {:.1} | {:.1} | {:+.1} |",
                if stream { "stream" } else { "non-stream" },
                b.cpu_us,
                g.cpu_us,
                g.cpu_us - b.cpu_us
            )?;
            writeln!(
                report,
                "| peak RSS, {} c={c} (MiB) | {:.1} | {:.1} | {:+.1} |",
                if stream { "stream" } else { "non-stream" },
                b.peak_kib as f64 / 1024.0,
                g.peak_kib as f64 / 1024.0,
                (g.peak_kib as f64 - b.peak_kib as f64) / 1024.0
            )?;
        }
    }
    writeln!(
        report,
        "| idle RSS (MiB) | {:.1} | {:.1} | {:+.1} |",
        idle_kib.1 as f64 / 1024.0,
        idle_kib.0 as f64 / 1024.0,
        (idle_kib.0 as f64 - idle_kib.1 as f64) / 1024.0
    )?;
    Ok(())
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn added(us_with: u64, us_without: u64) -> String {
    format!("{:+.3}", (us_with as f64 - us_without as f64) / 1000.0)
}

async fn bench(args: &Args) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("gatehouse-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    if args.faults_only {
        let mut report = String::new();
        faults::report(&mut report, args, &dir).await?;
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(report);
    }
    let (_mock, mock_addr) = start_mock(args.stream_chunks).await?;
    let (_failing, failing_addr) = start_mock(args.stream_chunks).await?;
    set_mock_status(failing_addr, 503).await?;
    let manifest_path = dir.join("bench.yaml");
    std::fs::write(&manifest_path, manifests(mock_addr, failing_addr))?;

    let mut report = String::new();
    writeln!(report, "## Results\n")?;
    writeln!(
        report,
        "Machine: {} cores, load generator (1 thread), mock upstream and gateway on the same cores. \
         Requests per round: {} ({} at concurrency 1), {} interleaved rounds per path, streams of {} chunks. \
         Latencies in milliseconds.\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.requests,
        args.requests / 4,
        args.rounds,
        args.stream_chunks
    )?;

    // Start-to-ready, five fresh processes.
    let sidecar_bin = release_bin("gatehouse-sidecar")?;
    let mut ready = Vec::new();
    for _ in 0..5 {
        let s = start_sidecar(&sidecar_bin, &manifest_path, None, 1).await?;
        ready.push(s.ready_after);
    }
    ready.sort();
    let ready_median = ready[ready.len() / 2];

    let sidecar = start_sidecar(&sidecar_bin, &manifest_path, None, 1).await?;
    let (idle_rss, _) = sidecar.proc.memory_kib()?;

    let mut paths = vec![
        Path_ {
            name: "direct".into(),
            addr: mock_addr,
            model: "gpt-4o-mini".into(),
            prefix: "",
            headers: Vec::new(),
        },
        Path_ {
            name: "gatehouse".into(),
            addr: sidecar.addr,
            model: "bench".into(),
            prefix: "",
            headers: Vec::new(),
        },
    ];
    // Gateways whose CPU time and peak RSS are read per scenario: (index in `paths`, process).
    let mut gateways: Vec<(usize, &Proc)> = vec![(1, &sidecar.proc)];
    // The baseline binary right after the sidecar, so every round measures both back to back.
    let baseline = match &args.baseline_bin {
        Some(bin) => Some(start_sidecar(bin, &manifest_path, None, 1).await?),
        None => None,
    };
    let baseline_name = format!("gatehouse {}", args.baseline_label);
    if let Some(b) = &baseline {
        paths.push(Path_ {
            name: baseline_name.clone(),
            addr: b.addr,
            model: "bench".into(),
            prefix: "",
            headers: Vec::new(),
        });
        gateways.push((paths.len() - 1, &b.proc));
    }
    let baseline_idle_rss = match &baseline {
        Some(b) => Some(b.proc.memory_kib()?.0),
        None => None,
    };
    // The default runtime (one thread) against a two-worker one, same binary and config.
    let mut _threaded = None;
    if args.compare_threads {
        let threaded = start_sidecar(&sidecar_bin, &manifest_path, None, 2).await?;
        paths.push(Path_ {
            name: "gatehouse --worker-threads 2".into(),
            addr: threaded.addr,
            model: "bench".into(),
            prefix: "",
            headers: Vec::new(),
        });
        _threaded = Some(threaded);
    }
    let mut peer_procs = Vec::new();
    let mut peers_unavailable = Vec::new();
    if args.peers {
        let (running, unavailable) = peers::start_all(&dir, mock_addr).await?;
        peers_unavailable = unavailable;
        for peer in running {
            paths.push(Path_ {
                name: peer.name.clone(),
                addr: peer.addr,
                model: peer.model.clone(),
                prefix: peer.path,
                headers: peer.headers.clone(),
            });
            peer_procs.push(peer);
        }
    }

    let mut cpu_per_request = Vec::new();
    let mut comparison = Vec::new();
    for stream in [false, true] {
        if stream {
            writeln!(
                report,
                "### Streaming ({} chunks, `include_usage`)\n",
                args.stream_chunks
            )?;
            writeln!(
                report,
                "| concurrency | path | req/s | TTFB p50 | TTFT p50 | TTFT p99 | total p50 | total p99 | added TTFT p50 | added TTFT p99 |"
            )?;
            writeln!(report, "|---|---|---|---|---|---|---|---|---|---|")?;
        } else {
            writeln!(report, "### Non-streaming\n")?;
            writeln!(
                report,
                "| concurrency | path | req/s | p50 | p90 | p99 | added p50 | added p99 |"
            )?;
            writeln!(report, "|---|---|---|---|---|---|---|---|")?;
        }
        for &c in &args.concurrency {
            let n = requests_for(args, c);
            let mut cpu_before = Vec::new();
            for (_, proc) in &gateways {
                proc.reset_peak()?;
                cpu_before.push(proc.cpu_time()?);
            }
            let outcomes = interleaved(&paths, stream, c, n, args.rounds).await?;
            for ((index, proc), before) in gateways.iter().zip(cpu_before) {
                let cpu = proc.cpu_time()?.saturating_sub(before);
                // Warm-up requests count too: they used CPU.
                let served = outcomes[*index].requests + (n / 10).max(200);
                cpu_per_request.push(Usage {
                    gateway: paths[*index].name.clone(),
                    stream,
                    concurrency: c,
                    cpu_us: cpu.as_secs_f64() * 1e6 / served as f64,
                    peak_kib: proc.memory_kib()?.1,
                });
            }
            let direct = &outcomes[0];
            for (path, o) in paths.iter().zip(&outcomes) {
                let (added_us, d) = if stream {
                    (
                        o.ttft.value_at_quantile(0.5),
                        direct.ttft.value_at_quantile(0.5),
                    )
                } else {
                    (
                        o.latency.value_at_quantile(0.5),
                        direct.latency.value_at_quantile(0.5),
                    )
                };
                comparison.push(Measured {
                    path: path.name.clone(),
                    stream,
                    concurrency: c,
                    rps: o.rps(),
                    added_ms: (added_us as f64 - d as f64) / 1000.0,
                });
            }
            for (path, o) in paths.iter().zip(&outcomes) {
                let is_direct = path.name == "direct";
                if stream {
                    let (d_ttft50, d_ttft99) = (
                        direct.ttft.value_at_quantile(0.5),
                        direct.ttft.value_at_quantile(0.99),
                    );
                    let (ttft50, ttft99) = (
                        o.ttft.value_at_quantile(0.5),
                        o.ttft.value_at_quantile(0.99),
                    );
                    writeln!(
                        report,
                        "| {c} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                        path.name,
                        o.rps(),
                        ms(o.ttfb.value_at_quantile(0.5)),
                        ms(ttft50),
                        ms(ttft99),
                        ms(o.latency.value_at_quantile(0.5)),
                        ms(o.latency.value_at_quantile(0.99)),
                        if is_direct {
                            "—".into()
                        } else {
                            added(ttft50, d_ttft50)
                        },
                        if is_direct {
                            "—".into()
                        } else {
                            added(ttft99, d_ttft99)
                        },
                    )?;
                } else {
                    let (d50, d99) = (
                        direct.latency.value_at_quantile(0.5),
                        direct.latency.value_at_quantile(0.99),
                    );
                    let (p50, p99) = (
                        o.latency.value_at_quantile(0.5),
                        o.latency.value_at_quantile(0.99),
                    );
                    writeln!(
                        report,
                        "| {c} | {} | {:.0} | {} | {} | {} | {} | {} |",
                        path.name,
                        o.rps(),
                        ms(p50),
                        ms(o.latency.value_at_quantile(0.9)),
                        ms(p99),
                        if is_direct {
                            "—".into()
                        } else {
                            added(p50, d50)
                        },
                        if is_direct {
                            "—".into()
                        } else {
                            added(p99, d99)
                        },
                    )?;
                }
            }
        }
        writeln!(report)?;
    }

    // Failover: the primary answers 503, the secondary serves.
    writeln!(
        report,
        "### Failover (primary answers 503, secondary serves)\n"
    )?;
    writeln!(
        report,
        "| concurrency | path | req/s | p50 | p99 | added p50 vs direct |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|")?;
    let failover_paths = [
        paths[0].clone(),
        Path_ {
            name: "gatehouse failover".into(),
            addr: sidecar.addr,
            model: "failover".into(),
            prefix: "",
            headers: Vec::new(),
        },
    ];
    for c in [1usize, 32] {
        let outcomes = interleaved(
            &failover_paths,
            false,
            c,
            requests_for(args, c) / 2,
            args.rounds,
        )
        .await?;
        let d50 = outcomes[0].latency.value_at_quantile(0.5);
        for (path, o) in failover_paths.iter().zip(&outcomes) {
            let p50 = o.latency.value_at_quantile(0.5);
            writeln!(
                report,
                "| {c} | {} | {:.0} | {} | {} | {} |",
                path.name,
                o.rps(),
                ms(p50),
                ms(o.latency.value_at_quantile(0.99)),
                if path.name == "direct" {
                    "—".into()
                } else {
                    added(p50, d50)
                },
            )?;
        }
    }
    writeln!(report)?;

    let (_, peak_rss) = sidecar.proc.memory_kib()?;
    writeln!(report, "### Gateway resources\n")?;
    writeln!(
        report,
        "| gateway | idle RSS | peak RSS under load | start to ready |"
    )?;
    writeln!(report, "|---|---|---|---|")?;
    writeln!(
        report,
        "| gatehouse | {:.1} MiB | {:.1} MiB | {:.1} ms (median of 5) |",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        ready_median.as_secs_f64() * 1000.0
    )?;
    for peer in &peer_procs {
        let (rss, hwm) = peer.proc.memory_kib()?;
        writeln!(
            report,
            "| {} | {:.1} MiB (after load) | {:.1} MiB (sum of per-process peaks) | {:.1} s |",
            peer.name,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            peer.ready_after.as_secs_f64()
        )?;
    }
    for peer in &peers_unavailable {
        writeln!(
            report,
            "| {} | not available: {} | | |",
            peer.name, peer.reason
        )?;
    }
    if let (Some(b), Some(idle)) = (&baseline, baseline_idle_rss) {
        let (_, peak) = b.proc.memory_kib()?;
        writeln!(
            report,
            "| {baseline_name} | {:.1} MiB | {:.1} MiB | |",
            idle as f64 / 1024.0,
            peak as f64 / 1024.0,
        )?;
    }
    writeln!(report)?;
    writeln!(
        report,
        "Gateway CPU time per request (user + system, warm-up included) and peak RSS per scenario:\n"
    )?;
    writeln!(
        report,
        "| gateway | mode | concurrency | CPU µs / request | peak RSS |"
    )?;
    writeln!(report, "|---|---|---|---|---|")?;
    for u in &cpu_per_request {
        writeln!(
            report,
            "| {} | {} | {} | {:.1} | {:.1} MiB |",
            u.gateway,
            if u.stream { "stream" } else { "non-stream" },
            u.concurrency,
            u.cpu_us,
            u.peak_kib as f64 / 1024.0
        )?;
    }
    if baseline.is_some() {
        before_after(
            &mut report,
            &baseline_name,
            &comparison,
            &cpu_per_request,
            (idle_rss, baseline_idle_rss.unwrap_or(0)),
        )?;
    }
    // Stages before memory: the memory cases leave the machine reclaiming gigabytes (the
    // baseline's), which would add noise to CPU figures taken after them.
    if args.stages {
        stages::report(&mut report, args, &dir, mock_addr).await?;
    }
    if args.faults {
        faults::report(&mut report, args, &dir).await?;
    }
    if args.metering {
        metering::report(&mut report, args, &dir, mock_addr).await?;
    }
    if args.metrics {
        metrics::report(&mut report, args, &dir, mock_addr).await?;
    }
    if args.budget {
        budget::report(&mut report, args, &dir, mock_addr).await?;
    }
    if args.memory {
        let mut bins = vec![("gatehouse".to_string(), sidecar_bin.clone())];
        if let Some(bin) = &args.baseline_bin {
            bins.push((baseline_name.clone(), bin.clone()));
        }
        memory::report(&mut report, &bins, &dir, mock_addr).await?;
    }
    if args.propagation > 0 {
        writeln!(report, "\n### Propagation on the real control plane\n")?;
        writeln!(report, "{}", propagation(args.propagation)?)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}
