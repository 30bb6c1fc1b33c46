//! RSS around maximum-size requests (issue #9): a fresh sidecar with default flags gets one body of
//! `--max-body-bytes` (32 MiB) made of about a million tiny messages, then eight at once; the table
//! gives its idle RSS, the peak while they were handled and the RSS once they were answered.
//!
//! The upstream is a sink in this process that drains the body without parsing it and answers a
//! fixed completion in the wire format of the path it was called on, so the sidecar's memory is all
//! that is measured (the mock provider would parse each 32 MiB body into a JSON tree of its own).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The sidecar's default `--max-body-bytes`.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// One kind of maximum-size request.
struct Case {
    name: &'static str,
    path: &'static str,
    body: Bytes,
}

/// A JSON body of `prefix`, then as many `{"role":"user","content":"x"}` messages as fit in
/// [`MAX_BODY`], then `]}`.
fn million_messages(prefix: &str) -> Bytes {
    const MESSAGE: &str = r#"{"role":"user","content":"x"},"#;
    let mut body = String::with_capacity(MAX_BODY);
    body.push_str(prefix);
    while body.len() + MESSAGE.len() + 2 < MAX_BODY {
        body.push_str(MESSAGE);
    }
    body.pop(); // the last comma
    body.push_str("]}");
    Bytes::from(body)
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "chat, OpenAI-wire target",
            path: "/v1/chat/completions",
            body: million_messages(r#"{"model":"sink-openai","messages":["#),
        },
        Case {
            name: "messages, Anthropic target",
            path: "/v1/messages",
            body: million_messages(r#"{"model":"sink-anthropic","max_tokens":16,"messages":["#),
        },
        Case {
            name: "messages, OpenAI-wire target (translated)",
            path: "/v1/messages",
            body: million_messages(r#"{"model":"sink-openai","max_tokens":16,"messages":["#),
        },
        Case {
            name: "chat, unknown model (404)",
            path: "/v1/chat/completions",
            body: million_messages(r#"{"model":"no-such-model","messages":["#),
        },
    ]
}

fn manifests(sink: SocketAddr) -> String {
    format!(
        r#"apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: sink-openai}}
spec:
  type: openaiCompatible
  endpoint: http://{sink}/v1
---
apiVersion: v1
kind: Secret
metadata: {{name: sink-key}}
stringData: {{apiKey: sk-ant-bench}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: sink-anthropic}}
spec:
  type: anthropic
  endpoint: http://{sink}
  apiKeySecretRef: {{name: sink-key, key: apiKey}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: sink-openai}}
spec:
  targets: [{{provider: sink-openai, model: gpt-4o-mini}}]
  retry: {{attempts: 1}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: sink-anthropic}}
spec:
  targets: [{{provider: sink-anthropic, model: claude-3-5-haiku-latest}}]
  retry: {{attempts: 1}}
"#
    )
}

const OPENAI_ANSWER: &str = r#"{"id":"chatcmpl-sink","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
const ANTHROPIC_ANSWER: &str = r#"{"id":"msg_sink","type":"message","role":"assistant","model":"claude-3-5-haiku-latest","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}"#;

/// Start the sink upstream on a free port.
async fn start_sink() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<Incoming>| async move {
                    let anthropic = req.uri().path().ends_with("/messages");
                    // Drain without keeping: only the sidecar's memory is measured.
                    let mut body = req.into_body();
                    while let Some(frame) = body.frame().await {
                        if frame.is_err() {
                            break;
                        }
                    }
                    let answer = if anthropic {
                        ANTHROPIC_ANSWER
                    } else {
                        OPENAI_ANSWER
                    };
                    let mut response =
                        http::Response::new(Full::new(Bytes::from_static(answer.as_bytes())));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Send one body; the answer's status (0 when the connection failed).
async fn send(addr: SocketAddr, path: &'static str, body: Bytes) -> u16 {
    let attempt = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let request = http::Request::post(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(Full::new(body))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        anyhow::Ok(status)
    };
    attempt.await.unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn statuses(mut codes: Vec<u16>) -> String {
    codes.sort_unstable();
    codes.dedup();
    codes
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Append the table for each `(name, binary)`.
pub async fn report(
    report: &mut String,
    bins: &[(String, PathBuf)],
    dir: &Path,
    _mock: SocketAddr,
) -> anyhow::Result<()> {
    let sink = start_sink().await?;
    let manifest_path = dir.join("memory.yaml");
    std::fs::write(&manifest_path, manifests(sink)).context("failed to write manifests")?;
    let cases = cases();
    writeln!(
        report,
        "\n### Memory around maximum-size requests\n\n\
         A fresh sidecar (default flags) per row; each body is {:.1} MiB of about {} messages \
         `{{\"role\":\"user\",\"content\":\"x\"}}`. \"after\" is the RSS one second after the \
         answers arrived. The upstream drains bodies without parsing them.\n",
        MAX_BODY as f64 / (1024.0 * 1024.0),
        MAX_BODY / 30
    )?;
    writeln!(
        report,
        "| gateway | request | idle RSS | one: status | one: peak | one: after | 8 at once: statuses | 8: peak | 8: after |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|---|")?;
    for (name, bin) in bins {
        for case in &cases {
            let sidecar = crate::start_sidecar(bin, &manifest_path, None, 1).await?;
            let (proc, addr) = (sidecar.proc, sidecar.addr);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (idle, _) = proc.memory_kib()?;
            proc.reset_peak()?;
            let one = send(addr, case.path, case.body.clone()).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (one_after, one_peak) = proc.memory_kib()?;
            proc.reset_peak()?;
            let eight = futures_join(addr, case.path, &case.body, 8).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (eight_after, eight_peak) = proc.memory_kib()?;
            writeln!(
                report,
                "| {name} | {} | {} MiB | {one} | {} MiB | {} MiB | {} | {} MiB | {} MiB |",
                case.name,
                mib(idle),
                mib(one_peak),
                mib(one_after),
                statuses(eight),
                mib(eight_peak),
                mib(eight_after),
            )?;
        }
    }
    Ok(())
}

/// Send `n` copies of `body` at once, each on its own connection.
async fn futures_join(addr: SocketAddr, path: &'static str, body: &Bytes, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(send(addr, path, body.clone())))
        .collect();
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.push(task.await.unwrap_or(0));
    }
    out
}
