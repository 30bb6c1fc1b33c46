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
    let on = super::start_sidecar_with(&bin, &path, None, 1, &[]).await?;
    let off = super::start_sidecar_with(&bin, &path, None, 1, &["--metrics", "off"]).await?;
    let sidecars = [("on", &on), ("off", &off)];
    let shapes: [(&str, bool, Bytes); 2] = [
        ("buffered", false, super::chat_body("bench", false)),
        ("stream", true, super::chat_body("bench", true)),
    ];
    writeln!(
        report,
        "\n### What metrics cost\n\n\
         The same sidecar with `--metrics on` and `--metrics off`, same mock, same load, \
         interleaved rounds; CPU time of the sidecar per request (user + system, warm-up \
         included), at concurrency 32, {} content chunks per stream. Target: on − off ≤ 1 µs.\n",
        args.stream_chunks
    )?;
    writeln!(
        report,
        "| request | metrics on, CPU µs | off, CPU µs | on − off |"
    )?;
    writeln!(report, "|---|---|---|---|")?;
    let concurrency = 32;
    for (name, stream, body) in shapes {
        let mut cpu = [Duration::ZERO; 2];
        let mut served = [0u64; 2];
        let warm_up = (args.requests / 10).max(200);
        for (round, n) in std::iter::once(warm_up)
            .chain(std::iter::repeat_n(args.requests, args.rounds as usize))
            .enumerate()
        {
            // Alternate which one goes first, so a drift in the machine hits both alike.
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (label, sidecar) = sidecars[i];
                let target = Target {
                    addr: sidecar.addr,
                    path: "/v1/chat/completions",
                    body: body.clone(),
                    stream,
                    headers: Vec::new(),
                };
                let before = sidecar.proc.cpu_time()?;
                let o = crate::load::run(&target, concurrency, n).await?;
                crate::load::check(&format!("metrics {label}, {name}"), &o)?;
                cpu[i] += sidecar.proc.cpu_time()?.saturating_sub(before);
                served[i] += o.requests;
            }
        }
        let per = |i: usize| cpu[i].as_secs_f64() * 1e6 / served[i].max(1) as f64;
        writeln!(
            report,
            "| {name} | {:.2} | {:.2} | {:+.2} |",
            per(0),
            per(1),
            per(0) - per(1)
        )?;
    }
    scrape(report)
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
