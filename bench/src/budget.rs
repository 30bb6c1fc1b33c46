//! What a Budget costs a sidecar (issue #12): the same sidecar binary with a Budget covering the
//! route and with none, on the same mock, measured in the same interleaved rounds. Standalone
//! mode, so the Budget is spent against the sidecar's local ledger: the request path pays the
//! scope match, the estimate, the reservation and the settlement, not a network call (the remote
//! ledger's syncs are off the request path; its throughput is the ledger bench's). The Budget's
//! limit is out of reach, so every request is served. The table gives requests per second and the
//! sidecar's CPU time per request, buffered and streamed, and the difference.

use std::fmt::Write as _;
use std::path::Path;

use crate::load::Target;

const MANIFESTS: &str = r#"apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {name: mock}
spec:
  type: openaiCompatible
  endpoint: http://MOCK/v1
  models:
    - name: gpt-4o-mini
      pricing: {inputPerMillion: "0.15", outputPerMillion: "0.60"}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {name: bench}
spec:
  models: [bench]
  targets: [{provider: mock, model: gpt-4o-mini}]
"#;

/// A Budget on the bench route whose limit is out of reach.
pub const BUDGET: &str = r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: Budget
metadata: {name: bench}
spec:
  limit: {usd: "1000000"}
  period: monthly
  scope: {routes: [bench]}
"#;

/// Run the comparison and append its table.
pub async fn report(
    report: &mut String,
    args: &super::Args,
    dir: &Path,
    mock: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let bin = crate::procs::release_bin("gatehouse-sidecar")?;
    let none = dir.join("budget-none.yaml");
    let with = dir.join("budget-with.yaml");
    let manifests = MANIFESTS.replace("MOCK", &mock.to_string());
    std::fs::write(&none, &manifests)?;
    std::fs::write(&with, format!("{manifests}{BUDGET}"))?;
    let budgeted = super::start_sidecar_with(&bin, &with, None, 1, &[]).await?;
    let plain = super::start_sidecar_with(&bin, &none, None, 1, &[]).await?;
    let sidecars = [("with a Budget", &budgeted), ("none", &plain)];
    writeln!(
        report,
        "\n### What a Budget costs\n\n\
         The same sidecar with a Budget covering the route (local ledger, limit out of reach) \
         and with none, same mock, same load, interleaved rounds, at concurrency 32, {} content \
         chunks per stream. Requests per second over all rounds; CPU time of the sidecar per \
         request (user + system, warm-up included).\n",
        args.stream_chunks
    )?;
    writeln!(
        report,
        "| request | with a Budget, req/s | none, req/s | difference | with, CPU µs | none, CPU µs | with − none |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|")?;
    let concurrency = 32;
    for (name, stream) in [("buffered", false), ("stream", true)] {
        let body = super::chat_body("bench", stream);
        let mut cpu = [std::time::Duration::ZERO; 2];
        let mut served = [0u64; 2];
        let mut elapsed = [std::time::Duration::ZERO; 2];
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
                crate::load::check(&format!("budget {label}, {name}"), &o)?;
                cpu[i] += sidecar.proc.cpu_time()?.saturating_sub(before);
                if round > 0 {
                    served[i] += o.requests;
                    elapsed[i] += o.elapsed;
                }
            }
        }
        let rps = |i: usize| served[i] as f64 / elapsed[i].as_secs_f64().max(1e-9);
        let per = |i: usize| cpu[i].as_secs_f64() * 1e6 / (served[i] + warm_up).max(1) as f64;
        writeln!(
            report,
            "| {name} | {:.0} | {:.0} | {:+.1}% | {:.1} | {:.1} | {:+.1} |",
            rps(0),
            rps(1),
            (rps(0) / rps(1) - 1.0) * 100.0,
            per(0),
            per(1),
            per(0) - per(1)
        )?;
    }
    Ok(())
}
