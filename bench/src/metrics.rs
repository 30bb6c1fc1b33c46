//! What per-request metrics cost (issue #16): the same sidecar with `--metrics on` and `--metrics
//! off`, on the same mock, in the same interleaved rounds (CPU time of the sidecar per request,
//! target at most 1 µs); then what `/metrics` costs to encode with 1,000 label combinations in
//! every per-request family, in process, the work a scrape asks of the sidecar.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_sidecar::metrics::{
    CacheLabels, GenAiLabels, Metrics, RequestLabels, RouteLabels, SpendLabels, TokenUsageLabels,
};
use gatehouse_sidecar::usage::Tokens;

use crate::load::Target;

/// Run both comparisons and append their tables.
pub async fn report(
    report: &mut String,
    args: &super::Args,
    dir: &Path,
    mock: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let bin = crate::procs::release_bin("gatehouse-sidecar")?;
    let path = dir.join("metrics.yaml");
    std::fs::write(
        &path,
        crate::metering::MANIFESTS.replace("MOCK", &mock.to_string()),
    )?;
    // Two sidecars of each, started on, off, off, on: a sidecar's place in the start order
    // shows in its CPU time (about 2 µs a request on this machine), and this cancels it. The
    // two of the same kind against each other are the noise floor.
    let mut sidecars = Vec::with_capacity(4);
    for on in [true, false, false, true] {
        let args: &[&str] = if on { &[] } else { &["--metrics", "off"] };
        sidecars.push((
            on,
            super::start_sidecar_with(&bin, &path, None, 1, args).await?,
        ));
    }
    let shapes: [(&str, bool, Bytes); 2] = [
        ("buffered", false, super::chat_body("bench", false)),
        ("stream", true, super::chat_body("bench", true)),
    ];
    writeln!(
        report,
        "\n### What metrics cost\n\n\
         Two sidecars with `--metrics on` and two with `--metrics off` (started on, off, off, on), \
         same mock, same load, interleaved rounds in a rotating order; CPU time of the sidecar per \
         request (user + system, warm-up excluded), at concurrency 32, {} content chunks per \
         stream. The noise floor is each pair against itself (on₁ − on₂, off₁ − off₂). Target: \
         on − off ≤ 1 µs.\n",
        args.stream_chunks
    )?;
    writeln!(
        report,
        "| request | metrics on, CPU µs | off, CPU µs | on − off | on₁ − on₂ | off₁ − off₂ |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|")?;
    let concurrency = 32;
    for (name, stream, body) in shapes {
        let mut cpu = [Duration::ZERO; 4];
        let mut served = [0u64; 4];
        let warm_up = (args.requests / 10).max(200);
        for (round, n) in std::iter::once(warm_up)
            .chain(std::iter::repeat_n(args.requests, args.rounds as usize))
            .enumerate()
        {
            // Rotate which one goes first, so a drift in the machine hits all alike.
            for k in 0..sidecars.len() {
                let i = (round + k) % sidecars.len();
                let (on, sidecar) = &sidecars[i];
                let target = Target {
                    addr: sidecar.addr,
                    path: "/v1/chat/completions",
                    body: body.clone(),
                    stream,
                    headers: Vec::new(),
                };
                let before = sidecar.proc.cpu_time()?;
                let o = crate::load::run(&target, concurrency, n).await?;
                let label = if *on { "on" } else { "off" };
                crate::load::check(&format!("metrics {label}, {name}"), &o)?;
                if round > 0 {
                    cpu[i] += sidecar.proc.cpu_time()?.saturating_sub(before);
                    served[i] += o.requests;
                }
            }
        }
        let per = |is: &[usize]| {
            let cpu: Duration = is.iter().map(|&i| cpu[i]).sum();
            let served: u64 = is.iter().map(|&i| served[i]).sum();
            cpu.as_secs_f64() * 1e6 / served.max(1) as f64
        };
        let (on, off) = (per(&[0, 3]), per(&[1, 2]));
        writeln!(
            report,
            "| {name} | {on:.2} | {off:.2} | {:+.2} | {:+.2} | {:+.2} |",
            on - off,
            per(&[0]) - per(&[3]),
            per(&[1]) - per(&[2]),
        )?;
    }
    recording(report, &path)?;
    scrape(report)
}

/// What the end-of-request stage costs with recording on against off, in process: the telemetry
/// stage's `on_end` on the record of one request through the bench Route (one attempt, usage,
/// priced), called in a loop; no subscriber takes the access line, so on − off is the recording
/// alone, without the noise of a whole request's syscalls.
fn recording(report: &mut String, manifests: &Path) -> anyhow::Result<()> {
    use gatehouse_sidecar::dialect::{Dialect, Operation};
    use gatehouse_sidecar::source::manifests::Manifests;
    use gatehouse_sidecar::stages::telemetry::Telemetry;
    use gatehouse_sidecar::stages::{AttemptRecord, Context, End, Stage};
    use gatehouse_sidecar::state::{Snapshot, Target};
    use gatehouse_sidecar::usage::Usage;

    let rendered = Manifests::new(vec![manifests.to_path_buf()], "default").load()?;
    let snapshot = Snapshot::build(rendered.config, &rendered.keys)?;
    let route = snapshot
        .routes
        .get("bench")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the bench manifests have no Route `bench`"))?;
    let target: Target = route
        .targets
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("Route `bench` has no target"))?;
    let context = |stream: bool| {
        let mut ctx = Context::new(Dialect::OpenAi);
        ctx.stream = stream;
        ctx.streaming = stream;
        ctx.operation = Some(Operation::Chat);
        ctx.route = Some(route.clone());
        ctx.answered_by = Some(target.clone());
        ctx.attempts.push(AttemptRecord {
            target: target.clone(),
            outcome: "success",
            elapsed: Duration::from_micros(900),
            started: ctx.start,
        });
        ctx.upstream_wait = Duration::from_micros(900);
        ctx.usage = Some(Usage {
            prompt_tokens: 12,
            completion_tokens: 20,
            ..Usage::default()
        });
        ctx.cost_usd = Some(0.000_013_8);
        ctx.status = Some(http::StatusCode::OK);
        ctx.head_elapsed = Some(Duration::from_micros(950));
        if stream {
            ctx.first_event = Some(Duration::from_micros(960));
        }
        ctx
    };
    let telemetry = |on: bool| {
        let mut m = Metrics::new();
        m.recording = on;
        Telemetry::new(Arc::new(m))
    };
    let stages = [telemetry(true), telemetry(false)];
    const CALLS: u32 = 200_000;
    const ROUNDS: usize = 7;
    writeln!(
        report,
        "\nIn process: the telemetry stage's end-of-request work on one request's record, \
         recording on against off, {CALLS} calls a round, median of {ROUNDS} interleaved rounds \
         (no access-log subscriber, so on − off is the recording alone).\n"
    )?;
    writeln!(report, "| request | on, ns | off, ns | on − off, ns |")?;
    writeln!(report, "|---|---|---|---|")?;
    for (name, stream, end) in [
        ("buffered", false, End::Answered),
        ("stream", true, End::StreamComplete),
    ] {
        let mut ctx = context(stream);
        let mut ns: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..=ROUNDS {
            for (i, stage) in stages.iter().enumerate() {
                let started = Instant::now();
                for _ in 0..CALLS {
                    stage.on_end(std::hint::black_box(&mut ctx), end);
                }
                // Round 0 warms the label sets and the caches up.
                if round > 0 {
                    ns[i].push(started.elapsed().as_secs_f64() * 1e9 / f64::from(CALLS));
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (on, off) = (median(&mut ns[0]), median(&mut ns[1]));
        writeln!(report, "| {name} | {on:.0} | {off:.0} | {:+.0} |", on - off)?;
    }
    Ok(())
}

/// Fill every per-request family with 1,000 label combinations (10 routes × 10 providers × 10
/// models; the spend family by 1,000 tags) and time the text encoding.
fn scrape(report: &mut String) -> anyhow::Result<()> {
    let m = Metrics::new();
    let name = |p: &str, i: usize| -> Arc<str> { Arc::from(format!("{p}-{i}")) };
    let (ns, wl) = (Arc::<str>::from("shop"), Arc::<str>::from("checkout"));
    let tokens = Tokens {
        input: 100,
        cached_read: 10,
        cache_write: 0,
        output: 50,
        reasoning: 0,
    };
    for i in 0..1_000 {
        let (route, provider, model) = (
            name("route", i / 100),
            name("provider", i / 10 % 10),
            name("model", i % 10),
        );
        m.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                provider: provider.clone(),
                model: model.clone(),
                status: 200,
            })
            .inc();
        m.request_duration
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(0.2);
        let genai = GenAiLabels {
            gen_ai_operation_name: "chat",
            gen_ai_provider_name: "openai",
            gen_ai_request_model: route.clone(),
            gen_ai_response_model: model.clone(),
            error_type: "",
            route: route.clone(),
            provider: provider.clone(),
        };
        m.genai_server.with(&genai, |s| {
            s.duration.observe(0.2);
            s.observe_ttft(0.05);
            s.observe_tpot(0.02);
        });
        m.genai_client_duration.with(&genai, |h| h.observe(0.2));
        let tokens_labels = TokenUsageLabels {
            gen_ai_operation_name: "chat",
            gen_ai_provider_name: "openai",
            gen_ai_request_model: model.clone(),
            gen_ai_response_model: model.clone(),
            route: route.clone(),
            provider: provider.clone(),
        };
        m.genai_tokens.with(&tokens_labels, |t| {
            t.input.observe(100.0);
            t.output.observe(50.0);
        });
        m.cache_requests
            .get_or_create(&CacheLabels {
                route: route.clone(),
                result: "miss",
            })
            .inc();
        m.spend.add(
            &SpendLabels {
                namespace: ns.clone(),
                workload: wl.clone(),
                tag: name("tag", i),
                route,
                provider,
                model,
            },
            &tokens,
            Some(0.001),
        );
    }
    let runs = 20;
    let mut bytes = 0;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let text = m.encode();
        times.push(t.elapsed());
        bytes = text.len();
    }
    times.sort();
    let median = times[runs / 2];
    let series = m.encode().lines().filter(|l| !l.starts_with('#')).count();
    writeln!(
        report,
        "\n### `/metrics` with 1,000 label combinations\n\n\
         Every per-request family filled with 1,000 label sets (10 routes × 10 providers × 10 \
         models; the spend counters by 1,000 tags), encoded in process {runs} times \
         (the work one scrape asks of the sidecar, HTTP excluded).\n"
    )?;
    writeln!(
        report,
        "| series | body | encode, median | encode, slowest |"
    )?;
    writeln!(report, "|---|---|---|---|")?;
    writeln!(
        report,
        "| {series} | {:.1} MiB | {:.1} ms | {:.1} ms |",
        bytes as f64 / (1024.0 * 1024.0),
        median.as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    )?;
    Ok(())
}
