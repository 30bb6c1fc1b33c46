//! What each stage of the request path costs (issue #10): one sidecar per scenario, each with one
//! more policy switched on than the minimal one, measured in the same interleaved rounds. The table
//! gives the sidecar's CPU time per request and the difference to the minimal scenario. It grows as
//! stages land: add a [`Scenario`] with the manifests that switch the stage on.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use crate::load::Target;
use crate::procs::Proc;

/// The key the keyed scenarios send; the keyed mock insists on it.
const KEY: &str = "sk-bench-0123456789abcdef0123456789abcdef";

/// One configuration of the sidecar.
struct Scenario {
    name: &'static str,
    /// What is on, in words, for the table.
    on: &'static str,
    manifests: String,
    /// Sidecar flags besides the usual ones.
    flags: Vec<String>,
}

fn route(provider: &str) -> String {
    route_with(provider, "")
}

/// The bench Route with `extra` lines in its spec.
fn route_with(provider: &str, extra: &str) -> String {
    format!(
        r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: bench}}
spec:
  models: [bench]
  targets: [{{provider: {provider}, model: gpt-4o-mini}}]
{extra}"#
    )
}

fn scenarios(mock: SocketAddr, keyed_mock: SocketAddr, dir: &Path) -> Vec<Scenario> {
    let provider = format!(
        r#"apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: mock}}
spec:
  type: openaiCompatible
  endpoint: http://{mock}/v1
  models:
    - name: gpt-4o-mini
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
"#
    );
    let plain = format!(
        r#"apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: mock}}
spec:
  type: openaiCompatible
  endpoint: http://{mock}/v1
  models:
    - name: gpt-4o-mini
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
{}"#,
        route("mock")
    );
    let keyed = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: mock-key}}
stringData: {{apiKey: {KEY}}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: mock}}
spec:
  type: openai
  endpoint: http://{keyed_mock}/v1
  apiKeySecretRef: {{name: mock-key, key: apiKey}}
  models:
    - name: gpt-4o-mini
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
{}"#,
        route("mock")
    );
    vec![
        Scenario {
            name: "minimal",
            on: "routing, metering, metrics, access log (always on)",
            manifests: plain.clone(),
            flags: Vec::new(),
        },
        // The same configuration again: how far apart two identical sidecars measure is the noise
        // floor the other rows are read against.
        Scenario {
            name: "minimal, again",
            on: "the same as minimal (noise floor)",
            manifests: plain.clone(),
            flags: Vec::new(),
        },
        Scenario {
            name: "budget",
            on: "+ a Budget covering the route (local ledger): scope, estimate, reserve, settle",
            manifests: format!("{plain}{}", crate::budget::BUDGET),
            flags: Vec::new(),
        },
        Scenario {
            name: "keyed",
            on: "+ a provider key: credentials applied, answers scrubbed of the key",
            manifests: keyed,
            flags: Vec::new(),
        },
        Scenario {
            name: "redaction",
            on: "+ redaction, every detector, mask (prompt, answer, stream hold-back)",
            manifests: format!(
                "{provider}{}",
                route_with("mock", "  redact: {action: mask}\n")
            ),
            flags: Vec::new(),
        },
        Scenario {
            name: "rate limit",
            on: "+ a local rate limit (requests and tokens per minute, never reached)",
            manifests: format!(
                "{provider}{}",
                route_with(
                    "mock",
                    "  rateLimits: [{name: bench, requestsPerMinute: 2000000000, tokensPerMinute: 2000000000}]\n"
                )
            ),
            flags: Vec::new(),
        },
        Scenario {
            name: "audit line",
            on: "+ the audit line, to a file",
            manifests: plain.clone(),
            flags: vec![
                "--audit-file".to_string(),
                dir.join("audit.log").display().to_string(),
            ],
        },
        // Records (on by default) and metrics (on by default) are measured by taking them away.
        Scenario {
            name: "no request records",
            on: "− the last-requests records (`--request-records 0`)",
            manifests: plain.clone(),
            flags: vec!["--request-records".to_string(), "0".to_string()],
        },
        Scenario {
            name: "no metrics",
            on: "− per-request metrics (`--metrics off`)",
            manifests: plain.clone(),
            flags: vec!["--metrics".to_string(), "off".to_string()],
        },
        Scenario {
            name: "traces",
            on: "+ OTLP traces: a span per request and per attempt, exported in batches (to an endpoint that answers 404)",
            manifests: plain.clone(),
            flags: vec![
                "--otlp-endpoint".to_string(),
                format!("http://{mock}/v1/traces"),
            ],
        },
        Scenario {
            name: "exact cache, hits",
            on: "+ an exact cache (memory) that answers every request after the first",
            manifests: format!(
                "{provider}{}",
                route_with("mock", "  cache: {allowNonDeterministic: true}\n")
            ),
            flags: Vec::new(),
        },
        Scenario {
            name: "extra header",
            on: "+ a static extra header on the provider (the egress path for a provider with settings)",
            manifests: plain.replace(
                "  type: openaiCompatible\n",
                "  type: openaiCompatible\n  headers: [{name: OpenAI-Organization, value: org-bench}]\n",
            ),
            flags: Vec::new(),
        },
    ]
}

/// Run the scenarios and append the table.
pub async fn report(
    report: &mut String,
    args: &super::Args,
    dir: &Path,
    mock: SocketAddr,
) -> anyhow::Result<()> {
    let (_keyed_proc, keyed_mock) =
        super::start_mock_with(args.stream_chunks, &["--api-key", KEY]).await?;
    let bin = crate::procs::release_bin("gatehouse-sidecar")?;
    let mut running: Vec<(Scenario, Proc, SocketAddr)> = Vec::new();
    for scenario in scenarios(mock, keyed_mock, dir) {
        let path = dir.join(format!("stages-{}.yaml", running.len()));
        std::fs::write(&path, &scenario.manifests)?;
        let flags: Vec<&str> = scenario.flags.iter().map(String::as_str).collect();
        let sidecar = super::start_sidecar_with(&bin, &path, None, 1, &flags).await?;
        running.push((scenario, sidecar.proc, sidecar.addr));
    }
    writeln!(
        report,
        "\n### What each stage costs\n\n\
         One sidecar per scenario, same load, interleaved rounds; CPU time of the sidecar per \
         request (user + system, warm-up included), at concurrency 32.\n"
    )?;
    writeln!(
        report,
        "| scenario | on | CPU µs / request | vs minimal | CPU µs / stream | vs minimal |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|")?;
    let concurrency = 32;
    let n = args.requests;
    let mut per_mode: Vec<Vec<f64>> = Vec::new();
    for stream in [false, true] {
        let targets: Vec<Target> = running
            .iter()
            .map(|(_, _, addr)| Target {
                addr: *addr,
                path: "/v1/chat/completions",
                body: super::chat_body("bench", stream),
                stream,
                headers: Vec::new(),
            })
            .collect();
        let mut cpu = vec![std::time::Duration::ZERO; running.len()];
        let mut served = vec![0u64; running.len()];
        for (i, target) in targets.iter().enumerate() {
            let before = running[i].1.cpu_time()?;
            let o = crate::load::run(target, concurrency, (n / 10).max(200)).await?;
            crate::load::check(running[i].0.name, &o)?;
            cpu[i] += running[i].1.cpu_time()?.saturating_sub(before);
            served[i] += o.requests;
        }
        for _ in 0..args.rounds {
            for (i, target) in targets.iter().enumerate() {
                let before = running[i].1.cpu_time()?;
                let o = crate::load::run(target, concurrency, n).await?;
                crate::load::check(running[i].0.name, &o)?;
                cpu[i] += running[i].1.cpu_time()?.saturating_sub(before);
                served[i] += o.requests;
            }
        }
        per_mode.push(
            cpu.iter()
                .zip(&served)
                .map(|(c, s)| c.as_secs_f64() * 1e6 / (*s).max(1) as f64)
                .collect(),
        );
    }
    for (i, (scenario, _, _)) in running.iter().enumerate() {
        let (plain, streamed) = (per_mode[0][i], per_mode[1][i]);
        let delta = |v: f64, base: f64| {
            if i == 0 {
                "—".to_string()
            } else {
                format!("{:+.1}", v - base)
            }
        };
        writeln!(
            report,
            "| {} | {} | {plain:.1} | {} | {streamed:.1} | {} |",
            scenario.name,
            scenario.on,
            delta(plain, per_mode[0][0]),
            delta(streamed, per_mode[1][0]),
        )?;
    }
    Ok(())
}
