//! What an app sees when a provider goes bad (issue #13): per fault, a primary mock that
//! develops it under load next to a healthy secondary, one sidecar in front. Measured: success
//! rate and latency before, during and after the fault, the time from the fault to the primary's
//! ejection (`/targets` on the admin port), and the time from healing the primary to it serving
//! again (its cooldown has to end first, then one real request tests it).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::load::{Outcome, Target};

/// The primary's cooldown in these scenarios.
const COOLDOWN: &str = "5s";
/// Concurrency of the load.
const CONCURRENCY: usize = 8;

struct Fault {
    name: &'static str,
    behaviour: Value,
    stream: bool,
}

fn faults() -> Vec<Fault> {
    vec![
        Fault {
            name: "hang",
            behaviour: json!({"fault": {"kind": "hang"}}),
            stream: false,
        },
        Fault {
            name: "reset mid-body",
            behaviour: json!({"fault": {"kind": "cut_after", "chunks": 1}}),
            stream: false,
        },
        Fault {
            name: "garbage",
            behaviour: json!({"fault": {"kind": "garbage"}}),
            stream: false,
        },
        Fault {
            name: "503 storm",
            behaviour: json!({"fault": {"kind": "status", "status": 503}}),
            stream: false,
        },
        Fault {
            name: "slow first byte (3 s), stream",
            behaviour: json!({"latency_ms": 3000}),
            stream: true,
        },
        Fault {
            name: "stall mid-stream",
            behaviour: json!({"fault": {"kind": "stall_after", "chunks": 2}}),
            stream: true,
        },
    ]
}

fn manifests(primary: SocketAddr, secondary: SocketAddr) -> String {
    let provider = |name: &str, addr: SocketAddr| {
        format!(
            r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: {name}}}
spec:
  type: openaiCompatible
  endpoint: http://{addr}/v1
  models: [{{name: gpt-4o-mini, pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}}}]
"#
        )
    };
    format!(
        r#"{}{}---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: bench}}
spec:
  models: [bench]
  targets:
    - {{provider: primary, model: gpt-4o-mini, priority: 0}}
    - {{provider: secondary, model: gpt-4o-mini, priority: 1}}
  retry: {{attempts: 3, backoff: {{base: 10ms, max: 50ms}}}}
  timeouts: {{attempt: 1s, idle: 500ms}}
  outlier: {{baseEjection: {COOLDOWN}}}
"#,
        provider("primary", primary),
        provider("secondary", secondary)
    )
}

async fn http(addr: SocketAddr, req: http::Request<Full<Bytes>>) -> anyhow::Result<Bytes> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "{addr} answered {}",
        resp.status()
    );
    Ok(resp.into_body().collect().await?.to_bytes())
}

async fn set_default(mock: SocketAddr, behaviour: &Value) -> anyhow::Result<()> {
    let req = http::Request::put("/__mock/default")
        .header(http::header::HOST, mock.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(behaviour.to_string())))?;
    http(mock, req).await.map(|_| ())
}

async fn primary_state(admin: SocketAddr) -> anyhow::Result<String> {
    let req = http::Request::get("/targets")
        .header(http::header::HOST, admin.to_string())
        .body(Full::new(Bytes::new()))?;
    let body: Value = serde_json::from_slice(&http(admin, req).await?)?;
    Ok(body["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["provider"] == "primary"))
        .and_then(|t| t["state"].as_str())
        .unwrap_or("unknown")
        .to_string())
}

/// Poll until the primary is in `state` (every 5 ms, at most `limit`); how long it took.
async fn wait_state(admin: SocketAddr, state: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if primary_state(admin).await.ok().as_deref() == Some(state) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn cells(o: &Outcome) -> String {
    let ok = 100.0 * (o.requests - o.errors) as f64 / o.requests.max(1) as f64;
    format!(
        "{ok:.1}% | {:.1} | {:.1} | {:.0}",
        ms(o.latency.value_at_quantile(0.5)),
        ms(o.latency.value_at_quantile(0.99)),
        ms(o.latency.max())
    )
}

/// Run every fault scenario and append the table.
pub async fn report(report: &mut String, args: &super::Args, dir: &Path) -> anyhow::Result<()> {
    let bin = crate::procs::release_bin("gatehouse-sidecar")?;
    let n = (args.requests / 10).max(500);
    writeln!(
        report,
        "\n### When a provider goes bad\n\n\
         Per fault: a primary mock develops it under load (concurrency {CONCURRENCY}, {n} requests \
         per phase) next to a healthy secondary; attempt timeout 1 s, `timeouts.idle` 500 ms, \
         cooldown {COOLDOWN}, other outlier settings at their defaults. *During* starts when the \
         fault does (so it includes the requests before the ejection); *after* is measured once \
         the healed primary serves again. Time to eject: fault to `/targets` saying `ejected`. \
         Time to recover: healing to `healthy` (the rest of the cooldown, then one test \
         request). Latencies in ms.\n"
    )?;
    writeln!(
        report,
        "| fault | before: ok | p50 | p99 | max | during: ok | p50 | p99 | max | after: ok | p50 | p99 | max | time to eject | time to recover |"
    )?;
    writeln!(
        report,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )?;
    for (i, fault) in faults().into_iter().enumerate() {
        let (_primary_proc, primary) = super::start_mock(args.stream_chunks).await?;
        let (_secondary_proc, secondary) = super::start_mock(args.stream_chunks).await?;
        let path = dir.join(format!("faults-{i}.yaml"));
        std::fs::write(&path, manifests(primary, secondary))?;
        let sidecar = super::start_sidecar(&bin, &path, None, 1).await?;
        let target = Target {
            addr: sidecar.addr,
            path: "/v1/chat/completions",
            body: super::chat_body("bench", fault.stream),
            stream: fault.stream,
            headers: Vec::new(),
        };
        // Warm-up, then before.
        crate::load::run(&target, CONCURRENCY, 200).await?;
        let before = crate::load::run(&target, CONCURRENCY, n).await?;

        set_default(primary, &fault.behaviour).await?;
        let admin = sidecar.admin;
        let ejected =
            tokio::spawn(
                async move { wait_state(admin, "ejected", Duration::from_secs(60)).await },
            );
        let during = crate::load::run(&target, CONCURRENCY, n).await?;
        let to_eject = ejected.await?;

        set_default(primary, &json!({})).await?;
        let healed_at = Instant::now();
        let mut to_recover = None;
        // Light traffic until the primary is back: a test request has to reach it.
        while healed_at.elapsed() < Duration::from_secs(60) {
            crate::load::run(&target, 1, 20).await?;
            if primary_state(admin).await? == "healthy" {
                to_recover = Some(healed_at.elapsed());
                break;
            }
        }
        let after = crate::load::run(&target, CONCURRENCY, n).await?;
        let secs = |d: Option<Duration>| {
            d.map_or("—".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
        };
        writeln!(
            report,
            "| {} | {} | {} | {} | {} | {} |",
            fault.name,
            cells(&before),
            cells(&during),
            cells(&after),
            secs(to_eject),
            secs(to_recover),
        )?;
    }
    Ok(())
}
