//! What metering costs (issue #11): the same sidecar with metering on and with `--metering off`,
//! on the same mock, measured in the same interleaved rounds. Three request shapes: a buffered
//! answer (usage read, priced, the cost header written), a stream whose client asked for usage
//! (usage read per event, the cost spliced into the usage chunk), and a stream whose client did
//! not (usage asked for upstream, every chunk's `usage` member and the usage chunk removed before
//! the client). The table gives the sidecar's CPU time per request of each and the difference;
//! the target is at most 2 µs.

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;

use crate::load::Target;

pub const MANIFESTS: &str = r#"apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {name: mock}
spec:
  type: openaiCompatible
  endpoint: http://MOCK/v1
  models:
    - name: gpt-4o-mini
      pricing: {inputPerMillion: "0.15", outputPerMillion: "0.60", cachedInputPerMillion: "0.075"}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {name: bench}
spec:
  models: [bench]
  targets: [{provider: mock, model: gpt-4o-mini}]
"#;

/// Run the comparison and append its table.
pub async fn report(
    report: &mut String,
    args: &super::Args,
    dir: &Path,
    mock: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let bin = crate::procs::release_bin("gatehouse-sidecar")?;
    let path = dir.join("metering.yaml");
    std::fs::write(&path, MANIFESTS.replace("MOCK", &mock.to_string()))?;
    let on = super::start_sidecar_with(&bin, &path, None, 1, &[]).await?;
    let off = super::start_sidecar_with(&bin, &path, None, 1, &["--metering", "off"]).await?;
    let sidecars = [("on", &on), ("off", &off)];
    let shapes: [(&str, bool, Bytes); 3] = [
        ("buffered", false, super::chat_body("bench", false)),
        (
            "stream, usage asked for",
            true,
            super::chat_body("bench", true),
        ),
        (
            "stream, usage not asked for",
            true,
            Bytes::from(
                super::CHAT_BODY
                    .replace("MODEL", "bench")
                    .replace("STREAM", r#","stream":true"#),
            ),
        ),
    ];
    writeln!(
        report,
        "\n### What metering costs\n\n\
         The same sidecar with metering on and with `--metering off`, same mock, same load, \
         interleaved rounds; CPU time of the sidecar per request (user + system, warm-up \
         included), at concurrency 32, {} content chunks per stream.\n",
        args.stream_chunks
    )?;
    writeln!(
        report,
        "| request | metering on, CPU µs | off, CPU µs | on − off |"
    )?;
    writeln!(report, "|---|---|---|---|")?;
    let concurrency = 32;
    for (name, stream, body) in shapes {
        let mut cpu = [std::time::Duration::ZERO; 2];
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
                crate::load::check(&format!("metering {label}, {name}"), &o)?;
                cpu[i] += sidecar.proc.cpu_time()?.saturating_sub(before);
                served[i] += o.requests;
            }
        }
        let per = |i: usize| cpu[i].as_secs_f64() * 1e6 / served[i].max(1) as f64;
        writeln!(
            report,
            "| {name} | {:.1} | {:.1} | {:+.1} |",
            per(0),
            per(1),
            per(0) - per(1)
        )?;
    }
    Ok(())
}
