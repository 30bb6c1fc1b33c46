//! What the exact cache costs and saves (issue #18), through the sidecar binary:
//!
//! - **Hit over the floor.** The sidecar's own floor is a chat request it answers without any
//!   upstream work: the body read, parsed and looked up, answered 404 for an unknown model. A hit
//!   does the same plus the stages up to the lookup, the key (SHA-256 of the canonical body) and
//!   the lookup, and answers the stored body. Both one at a time on one keep-alive connection,
//!   interleaved in rounds so machine noise hits both alike. Target: a hit adds at most 50 µs.
//! - **Memory for N entries.** RSS of the sidecar before and after N distinct answers were
//!   stored (each a ~600-byte chat completion), and what the cache accounts for them
//!   (`gatehouse_cache_bytes`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::procs::release_bin;

/// What to measure.
pub struct Plan {
    /// Timed requests per path and round.
    pub requests: usize,
    /// Entries stored for the memory figure.
    pub entries: usize,
}

fn manifests(mock: std::net::SocketAddr) -> String {
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
kind: Route
metadata: {{name: cached}}
spec:
  models: [cached]
  targets: [{{provider: mock, model: gpt-4o-mini}}]
  cache: {{ttl: 1h, maxBytes: 1073741824}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: plain}}
spec:
  models: [plain]
  targets: [{{provider: mock, model: gpt-4o-mini}}]
"#
    )
}

fn chat(model: &str, prompt: &str) -> Value {
    json!({
        "model": model,
        "temperature": 0,
        "max_tokens": 64,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt},
        ],
    })
}

/// Latencies of `n` sequential requests, sorted.
async fn run(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    n: usize,
    expect: u16,
    cache: Option<&str>,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let resp = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await?;
        let status = resp.status().as_u16();
        let header = resp
            .headers()
            .get("x-gatehouse-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let _ = resp.bytes().await?;
        out.push(t.elapsed());
        anyhow::ensure!(status == expect, "expected {expect}, got {status}");
        if let Some(c) = cache {
            anyhow::ensure!(
                header.as_deref() == Some(c),
                "expected a {c}, got {header:?}"
            );
        }
    }
    out.sort();
    Ok(out)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn stats(v: &[Duration]) -> (f64, f64, f64) {
    let mean = v.iter().map(|d| us(*d)).sum::<f64>() / v.len().max(1) as f64;
    let at = |q: usize| v.get(v.len() * q / 100).copied().map_or(0.0, us);
    (mean, at(50), at(99))
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `n` distinct questions to `model`, `concurrency` at a time.
async fn send_distinct(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let per = n.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, url, model) = (client.clone(), url.to_string(), model.to_string());
        let count = per.min(n.saturating_sub(w * per));
        tasks.push(tokio::spawn(async move {
            for i in 0..count {
                let prompt = format!("Question number {} about gateways.", w * per + i);
                let resp = client
                    .post(&url)
                    .json(&chat(&model, &prompt))
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 200, "request failed: {}", resp.status());
                let _ = resp.bytes().await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The report section.
pub async fn report(plan: &Plan) -> anyhow::Result<String> {
    let (_mock, mock) = crate::start_mock(1).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, manifests(mock))?;
    let bin = release_bin("gatehouse-sidecar")?;
    let sidecar = crate::start_sidecar(&bin, &path, None, 1).await?;
    let url = format!("http://{}/v1/chat/completions", sidecar.addr);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;

    let floor_body =
        serde_json::to_vec(&chat("no-such-model", "Write one sentence about gateways."))?;
    let hit_body = serde_json::to_vec(&chat("cached", "Write one sentence about gateways."))?;
    run(&client, &url, &hit_body, 1, 200, Some("miss")).await?;
    // Warm-up.
    run(&client, &url, &floor_body, 500, 404, None).await?;
    run(&client, &url, &hit_body, 500, 200, Some("hit")).await?;
    let (mut floor, mut hit) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        floor.extend(run(&client, &url, &floor_body, plan.requests, 404, None).await?);
        hit.extend(run(&client, &url, &hit_body, plan.requests, 200, Some("hit")).await?);
    }
    floor.sort();
    hit.sort();
    let (fm, f50, f99) = stats(&floor);
    let (hm, h50, h99) = stats(&hit);

    let mut out = String::new();
    writeln!(
        out,
        "\n### The exact cache\n\n\
         One sidecar (`{}`), one keep-alive connection, requests one at a time; 3 interleaved \
         rounds of {} per path after 500 warm-up requests each. The floor is a chat request the \
         sidecar answers itself (unknown model: 404 after reading, parsing and looking up the \
         body); a hit is answered from the memory backend. Target: a hit adds at most 50 µs.\n",
        bin.display(),
        plan.requests
    )?;
    writeln!(out, "| path | mean µs | p50 µs | p99 µs |")?;
    writeln!(out, "|---|---|---|---|")?;
    writeln!(out, "| floor (404) | {fm:.1} | {f50:.1} | {f99:.1} |")?;
    writeln!(out, "| exact hit | {hm:.1} | {h50:.1} | {h99:.1} |")?;
    writeln!(
        out,
        "| **hit − floor** | **{:.1}** | **{:.1}** | {:.1} |",
        hm - fm,
        h50 - f50,
        h99 - f99
    )?;

    // Memory: the same N distinct requests first to a Route without a cache (the allocator
    // and connection buffers settle), then to the cached Route; the RSS delta of the second
    // pass is what N entries hold.
    let concurrency = 8;
    send_distinct(&client, &url, "plain", plan.entries, concurrency).await?;
    let (before, _) = sidecar.proc.memory_kib()?;
    let started = Instant::now();
    send_distinct(&client, &url, "cached", plan.entries, concurrency).await?;
    let fill = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (after, _) = sidecar.proc.memory_kib()?;
    let metrics = client
        .get(format!("http://{}/metrics", sidecar.admin))
        .send()
        .await?
        .text()
        .await?;
    let entries = metric(
        &metrics,
        "gatehouse_cache_entries{route=\"cached\",backend=\"memory\"}",
    )
    .unwrap_or(0.0);
    let bytes = metric(
        &metrics,
        "gatehouse_cache_bytes{route=\"cached\",backend=\"memory\"}",
    )
    .unwrap_or(0.0);
    let delta_kib = after.saturating_sub(before);
    writeln!(
        out,
        "\nMemory: {} distinct answers stored (filled at concurrency {concurrency} in {:.1} s), \
         after the same requests went once to a Route without a cache; RSS before and after, and \
         what the cache accounts for (bodies plus a fixed 160 bytes of bookkeeping per entry).\n",
        plan.entries,
        fill.as_secs_f64()
    )?;
    writeln!(
        out,
        "| entries held | RSS before | RSS after | RSS delta | delta per entry | cache bytes (gauge) |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    writeln!(
        out,
        "| {entries:.0} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.0} B | {:.1} MiB |",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        delta_kib as f64 / 1024.0,
        delta_kib as f64 * 1024.0 / plan.entries.max(1) as f64,
        bytes / 1024.0 / 1024.0
    )?;
    Ok(out)
}
