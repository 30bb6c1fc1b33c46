//! Hostile upstreams: endless bodies, endless SSE lines, endless headers, credentials echoed back.
//!
//! Each upstream is a raw TCP server inside the test, so it can do what no well-behaved HTTP
//! server library would (never end a body, a line, or a head; echo every header it received).
//! Every case runs against the sidecar binary and checks:
//! - the client gets a clean answer (a 502 naming the cap, or a stream that ends with an error
//!   event) within a generous bound;
//! - peak RSS grows by a bounded amount (a few times the configured cap, never the gigabytes an
//!   unbounded read reaches);
//! - a normal request to a good route, sent at the same time, is served;
//! - no credential, nor any 16-byte piece of one, reaches any byte the client received (status,
//!   headers, body) or any log line.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_mock_provider::MockProvider;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::proc::SidecarProc;

const GOOD_KEY: &str = "sk-good-Wq3Er5Ty7Ui9Op1As3Df5Gh7";
const OPENAI_KEY: &str = "sk-proj-Hx7Qm2Vt9Lw4Zr8Np3Ks6Jd1Fb5Gc0Ye";
const COMPAT_KEY: &str = "vllm-local-7Hk2Qm9Vt4Lw8Zr3Np6Ks1Jd5F";
const AZURE_KEY: &str = "3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c2e";
const ANTHROPIC_KEY: &str = "sk-ant-api03-Tq4Wn8Ym2Rk6Hv0Pz3Lc7Xb1Js5Fd9Ga";
const GEMINI_KEY: &str = "AIzaSyD4k8Qm2Vt9Lw4Zr8Np3Ks6Jd1Fb5Gc0";
const AWS_ID: &str = "AKIAQX7HK2QM9VT4LW8Z";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY7Hk2Qm9Vt4";
const AWS_TOKEN: &str = "FwoGZXIvYXdzEBYaDH7Hk2Qm9Vt4Lw8Zr3Np6Ks1Jd5FbGc0Ye/session+token";

/// Every secret any provider of these tests is given.
const SECRETS: &[&str] = &[
    GOOD_KEY,
    OPENAI_KEY,
    COMPAT_KEY,
    AZURE_KEY,
    ANTHROPIC_KEY,
    GEMINI_KEY,
    AWS_ID,
    AWS_SECRET,
    AWS_TOKEN,
];

/// Peak RSS growth allowed for a case whose caps are `caps_mib` MiB in total: the bytes held at
/// the cap (counted twice: the buffer and a copy) plus 48 MiB for everything else a request
/// and the allocator hold. An unbounded read grows by gigabytes in the same time.
fn rss_bound_kib(caps_mib: u64) -> u64 {
    (2 * caps_mib + 48) * 1024
}

/// Time within which every hostile case must have a clean answer: generous, for a loaded
/// 2-core machine; a hang or a quadratic scan takes far longer.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// How a provider frames streams, and so what the hostile upstream writes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flavor {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

/// What the hostile upstream does with every request.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// 200 JSON whose body never ends.
    EndlessJson,
    /// 200 event stream; a valid first event if `committed`; then an event (a line, or a
    /// Bedrock frame) that never ends.
    EndlessEvent { committed: bool },
    /// A status line, then one header that never ends.
    EndlessHeaders,
    /// This status, with a body (and a header) echoing every request header received.
    Refuse(u16),
    /// 200 event stream: a valid first event, then an error event echoing every request header.
    StreamError,
    /// A valid 200 answer whose text echoes every request header.
    Answer,
}

/// A raw TCP upstream; records every request head it received.
struct Upstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start(act: Act, flavor: Flavor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, act, flavor, seen.clone()));
            }
        });
        Self { addr, heads }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

async fn serve(mut sock: TcpStream, act: Act, flavor: Flavor, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    heads.lock().unwrap().push(head.clone());
    // Everything the sidecar sent, on one line: what a careless server puts in its errors.
    let echo = format!("request was: {}", head.trim_end().replace("\r\n", " | "));
    let stream_type = match flavor {
        Flavor::Bedrock => "application/vnd.amazon.eventstream",
        _ => "text/event-stream",
    };
    match act {
        Act::EndlessJson => {
            let start = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n\
                         {\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"";
            if sock.write_all(start.as_bytes()).await.is_err() {
                return;
            }
            endless(&mut sock, b'a').await;
        }
        Act::EndlessEvent { committed } => {
            let mut out =
                format!("HTTP/1.1 200 OK\r\ncontent-type: {stream_type}\r\n\r\n").into_bytes();
            if committed {
                out.extend_from_slice(&first_event(flavor));
            }
            if flavor == Flavor::Bedrock {
                // A frame whose prelude announces 2 GB, then bytes that never complete it.
                out.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
                out.extend_from_slice(&0u32.to_be_bytes());
                out.extend_from_slice(&0u32.to_be_bytes());
            } else {
                out.extend_from_slice(b"data: {\"x\":\"");
            }
            if sock.write_all(&out).await.is_err() {
                return;
            }
            endless(&mut sock, b'a').await;
        }
        Act::EndlessHeaders => {
            if sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-long: ")
                .await
                .is_err()
            {
                return;
            }
            endless(&mut sock, b'h').await;
        }
        Act::Refuse(status) => {
            let body = json!({
                "type": "error",
                "error": {"type": "invalid_request_error", "message": echo},
                "message": echo,
            })
            .to_string();
            let response = format!(
                "HTTP/1.1 {status} Refused\r\ncontent-type: application/json\r\nx-echo: {echo}\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
        }
        Act::Answer => {
            let body = answer(flavor, &echo).to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
        }
        Act::StreamError => {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {stream_type}\r\nconnection: close\r\n\r\n"
            )
            .into_bytes();
            out.extend_from_slice(&first_event(flavor));
            out.extend_from_slice(&error_event(flavor, &echo));
            let _ = sock.write_all(&out).await;
        }
    }
    let _ = sock.shutdown().await;
}

/// Write `byte` until the peer goes away.
async fn endless(sock: &mut TcpStream, byte: u8) {
    let block = vec![byte; 64 * 1024];
    while sock.write_all(&block).await.is_ok() {}
}

/// A valid buffered chat answer of `flavor` saying `text`.
fn answer(flavor: Flavor, text: &str) -> Value {
    match flavor {
        Flavor::OpenAi => json!({"id": "c1", "object": "chat.completion", "created": 0,
            "model": "m", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}),
        Flavor::Anthropic => json!({"id": "msg_1", "type": "message", "role": "assistant",
            "model": "m", "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1}}),
        Flavor::Gemini => json!({"candidates": [{"content": {"role": "model",
            "parts": [{"text": text}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1}}),
        Flavor::Bedrock => json!({"output": {"message": {"role": "assistant",
            "content": [{"text": text}]}}, "stopReason": "end_turn",
            "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}}),
    }
}

/// A valid first event of a stream of `flavor`.
fn first_event(flavor: Flavor) -> Vec<u8> {
    match flavor {
        Flavor::OpenAi => format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                "finish_reason": null}]})
        )
        .into_bytes(),
        Flavor::Anthropic => format!(
            "event: message_start\ndata: {}\n\n",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "model": "m", "content": [], "stop_reason": null,
                "usage": {"input_tokens": 1, "output_tokens": 0}}})
        )
        .into_bytes(),
        Flavor::Gemini => format!(
            "data: {}\n\n",
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}}],
                "responseId": "r1"})
        )
        .into_bytes(),
        Flavor::Bedrock => frame(
            "event",
            ":event-type",
            "messageStart",
            &json!({"role": "assistant"}),
        ),
    }
}

/// An in-band error event of `flavor` carrying `message`.
fn error_event(flavor: Flavor, message: &str) -> Vec<u8> {
    match flavor {
        Flavor::OpenAi => format!(
            "data: {}\n\n",
            json!({"error": {"message": message, "type": "server_error"}})
        )
        .into_bytes(),
        Flavor::Anthropic => format!(
            "event: error\ndata: {}\n\n",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": message}})
        )
        .into_bytes(),
        Flavor::Gemini => format!(
            "data: {}\n\n",
            json!({"error": {"code": 500, "message": message, "status": "INTERNAL"}})
        )
        .into_bytes(),
        Flavor::Bedrock => frame(
            "exception",
            ":exception-type",
            "validationException",
            &json!({"message": message}),
        ),
    }
}

/// One AWS event-stream frame.
fn frame(message_type: &str, type_header: &str, name: &str, payload: &Value) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let message = Message::new(bytes::Bytes::from(serde_json::to_vec(payload).unwrap()))
        .add_header(Header::new(
            type_header.to_owned(),
            HeaderValue::String(name.to_owned().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String(message_type.to_owned().into()),
        ));
    let mut buf = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut buf).unwrap();
    buf
}

/// A provider of the manifest: name, type, where, key, type-specific block.
struct P<'a> {
    name: &'a str,
    kind: &'a str,
    endpoint: String,
    key: &'a str,
}

impl<'a> P<'a> {
    fn new(name: &'a str, kind: &'a str, endpoint: String, key: &'a str) -> Self {
        Self {
            name,
            kind,
            endpoint,
            key,
        }
    }

    /// A provider of `kind` at the hostile upstream `up`, with that kind's test credentials.
    fn at(name: &'a str, kind: &'a str, up: &Upstream) -> Self {
        let (endpoint, key) = match kind {
            "openai" => (format!("{}/v1", up.origin()), OPENAI_KEY),
            "openaiCompatible" => (format!("{}/v1", up.origin()), COMPAT_KEY),
            "azureOpenAI" => (up.origin(), AZURE_KEY),
            "anthropic" => (up.origin(), ANTHROPIC_KEY),
            "gemini" => (up.origin(), GEMINI_KEY),
            "bedrock" => (up.origin(), BEDROCK_KEY),
            other => panic!("no such kind {other}"),
        };
        Self::new(name, kind, endpoint, key)
    }
}

const BEDROCK_KEY: &str = concat!(
    "AKIAQX7HK2QM9VT4LW8Z",
    ":",
    "wJalrXUtnFEMI/K7MDENG+bPxRfiCY7Hk2Qm9Vt4",
    ":",
    "FwoGZXIvYXdzEBYaDH7Hk2Qm9Vt4Lw8Zr3Np6Ks1Jd5FbGc0Ye/session+token"
);

/// Manifests: the providers, a `good` provider at `good` (a well-behaved mock), a route per
/// entry of `routes` (name, providers in priority order).
fn manifests(providers: &[P], good: &MockProvider, routes: &[(&str, &[&str])]) -> String {
    let mut yaml =
        String::from("apiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData:\n");
    yaml.push_str(&format!("  good: \"{GOOD_KEY}\"\n"));
    for p in providers {
        yaml.push_str(&format!("  {}: \"{}\"\n", p.name, p.key));
    }
    let mut all: Vec<P> = vec![P::new("good", "openai", good.base_url(), GOOD_KEY)];
    all.extend(
        providers
            .iter()
            .map(|p| P::new(p.name, p.kind, p.endpoint.clone(), p.key)),
    );
    for p in &all {
        let extra = match p.kind {
            "azureOpenAI" => "  azure: {apiVersion: \"2024-10-21\"}\n",
            "bedrock" => "  bedrock: {region: us-east-1}\n",
            _ => "",
        };
        yaml.push_str(&format!(
            "---\napiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: {n}}}\n\
             spec:\n  type: {k}\n  endpoint: {e}\n  apiKeySecretRef: {{name: keys, key: {n}}}\n{extra}",
            n = p.name,
            k = p.kind,
            e = p.endpoint,
        ));
    }
    let mut routes: Vec<(&str, &[&str])> = routes.to_vec();
    routes.push(("good", &["good"]));
    for (name, targets) in routes {
        yaml.push_str(&format!(
            "---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: {name}}}\n\
             spec:\n  retry: {{attempts: {}}}\n  timeouts: {{attemptMs: 20000, requestMs: 25000}}\n  targets:\n",
            targets.len()
        ));
        for (priority, t) in targets.iter().enumerate() {
            let model = if *t == "good" { "gpt-4o-mini" } else { "m-1" };
            yaml.push_str(&format!(
                "    - {{provider: {t}, model: {model}, priority: {priority}}}\n"
            ));
        }
    }
    yaml
}

/// The client's dialect.
#[derive(Clone, Copy, Debug)]
enum Dialect {
    OpenAi,
    Anthropic,
}

/// Everything a client received: status, headers (as text) and body.
struct Received {
    status: u16,
    headers: String,
    body: Vec<u8>,
    took: Duration,
}

impl Received {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Every byte of it, for the secret check.
    fn all(&self) -> String {
        format!("{}\n{}\n{}", self.status, self.headers, self.text())
    }
}

async fn ask(proc_url: &str, dialect: Dialect, model: &str, stream: bool) -> Received {
    let (path, body) = match dialect {
        Dialect::OpenAi => (
            "/v1/chat/completions",
            json!({"model": model, "stream": stream, "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}]}),
        ),
        Dialect::Anthropic => (
            "/v1/messages",
            json!({"model": model, "stream": stream, "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}]}),
        ),
    };
    let start = Instant::now();
    let client = reqwest::Client::new();
    let response = tokio::time::timeout(
        ANSWER_WITHIN,
        client.post(format!("{proc_url}{path}")).json(&body).send(),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer head within {ANSWER_WITHIN:?} ({model}, {dialect:?})"))
    .unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect::<Vec<_>>()
        .join("\n");
    let body = tokio::time::timeout(ANSWER_WITHIN, response.bytes())
        .await
        .unwrap_or_else(|_| panic!("the answer did not end within {ANSWER_WITHIN:?} ({model})"))
        .unwrap()
        .to_vec();
    Received {
        status,
        headers,
        body,
        took: start.elapsed(),
    }
}

/// The good route answers while a hostile case runs.
async fn normal_request_is_served(base: &str) {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = ask(base, Dialect::OpenAi, "good", false).await;
    assert_eq!(
        r.status,
        200,
        "the good route failed beside a hostile one: {}",
        r.text()
    );
}

/// No secret, nor any [`FRAGMENT`]-byte piece of one, nor any signature in `signatures`, is in
/// `text`.
fn assert_no_secret(text: &str, signatures: &[String], what: &str) {
    const FRAGMENT: usize = 16;
    for secret in SECRETS
        .iter()
        .copied()
        .chain(signatures.iter().map(String::as_str))
    {
        let windows: Vec<&str> = if secret.len() <= FRAGMENT {
            vec![secret]
        } else {
            (0..=secret.len() - FRAGMENT)
                .map(|i| &secret[i..i + FRAGMENT])
                .collect()
        };
        for w in windows {
            assert!(
                !text.contains(w),
                "{what} carries (a piece of) a credential: {w}\n---\n{text}"
            );
        }
    }
}

/// The SigV4 signatures in the heads an upstream received.
fn signatures(heads: &[String]) -> Vec<String> {
    heads
        .iter()
        .filter_map(|h| h.split_once("Signature=").map(|(_, s)| s))
        .map(|s| {
            s.split(|c: char| c == ',' || c.is_whitespace())
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

async fn sidecar_with(yaml: String, args: &[&str]) -> SidecarProc {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        SidecarProc::start(&yaml, &args)
    })
    .await
    .unwrap()
}

async fn good_mock() -> MockProvider {
    MockProvider::with_api_key(GOOD_KEY).start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_json_body_fails_over_within_the_response_cap() {
    let good = good_mock().await;
    let up = Upstream::start(Act::EndlessJson, Flavor::OpenAi).await;
    let yaml = manifests(
        &[P::at("endless", "openai", &up)],
        &good,
        &[
            ("endless", &["endless"]),
            ("endless-fo", &["endless", "good"]),
        ],
    );
    // 8 MiB: small enough to make the bound visible in RSS, far above the 1-2 KB of an answer.
    let proc = sidecar_with(yaml, &["--max-response-bytes", "8388608"]).await;
    let base = format!("http://{}", proc.proxy);
    let before = proc.rss_kib();
    proc.reset_peak();

    let (alone, with_fallback, ()) = tokio::join!(
        ask(&base, Dialect::OpenAi, "endless", false),
        ask(&base, Dialect::Anthropic, "endless-fo", false),
        normal_request_is_served(&base),
    );
    assert_eq!(alone.status, 502, "{}", alone.text());
    assert!(
        alone.text().contains("--max-response-bytes"),
        "the 502 names the cap: {}",
        alone.text()
    );
    assert!(
        !alone.text().contains("aaaaaaaa"),
        "the body is never relayed"
    );
    assert_eq!(with_fallback.status, 200, "{}", with_fallback.text());
    assert!(with_fallback.headers.contains("x-gatehouse-attempts: 2"));
    for r in [&alone, &with_fallback] {
        assert!(r.took < ANSWER_WITHIN);
    }
    let grown = proc.peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS grew by {grown} KiB");
    assert!(grown < rss_bound_kib(8), "peak RSS grew by {grown} KiB");
    let log = proc.stop().join("\n");
    assert!(
        log.contains("max-response-bytes"),
        "the failed attempt is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_event_before_the_first_one_fails_over_within_the_event_cap() {
    let good = good_mock().await;
    let line = Upstream::start(Act::EndlessEvent { committed: false }, Flavor::OpenAi).await;
    let frame = Upstream::start(Act::EndlessEvent { committed: false }, Flavor::Bedrock).await;
    let yaml = manifests(
        &[
            P::at("line", "openai", &line),
            P::at("frame", "bedrock", &frame),
        ],
        &good,
        &[
            ("line", &["line"]),
            ("frame", &["frame"]),
            ("line-fo", &["line", "good"]),
        ],
    );
    let proc = sidecar_with(yaml, &["--max-event-bytes", "4194304"]).await;
    let base = format!("http://{}", proc.proxy);
    let before = proc.rss_kib();
    proc.reset_peak();

    let (line_alone, frame_alone, fallback, ()) = tokio::join!(
        ask(&base, Dialect::OpenAi, "line", true),
        ask(&base, Dialect::Anthropic, "frame", true),
        ask(&base, Dialect::OpenAi, "line-fo", true),
        normal_request_is_served(&base),
    );
    for r in [&line_alone, &frame_alone] {
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.text().contains("--max-event-bytes"), "{}", r.text());
        assert!(r.took < ANSWER_WITHIN);
    }
    assert_eq!(fallback.status, 200, "{}", fallback.text());
    assert!(fallback.text().contains("[DONE]"), "{}", fallback.text());
    let grown = proc.peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS grew by {grown} KiB");
    assert!(grown < rss_bound_kib(3 * 4), "peak RSS grew by {grown} KiB");
}

/// At the default cap (64 MiB): an endless line after the stream was committed ends it with an
/// `upstream_event_too_large` error event, in each client dialect. The line is scanned once:
/// rescanning it on every read took 27 s of CPU for 32 s of line before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_line_after_the_first_event_ends_the_stream_with_an_error_event() {
    let good = good_mock().await;
    let up = Upstream::start(Act::EndlessEvent { committed: true }, Flavor::OpenAi).await;
    let yaml = manifests(
        &[P::at("line", "openai", &up)],
        &good,
        &[("line", &["line"])],
    );
    let proc = sidecar_with(yaml, &[]).await;
    let base = format!("http://{}", proc.proxy);
    let before = proc.rss_kib();
    proc.reset_peak();

    let (openai, anthropic, ()) = tokio::join!(
        ask(&base, Dialect::OpenAi, "line", true),
        ask(&base, Dialect::Anthropic, "line", true),
        normal_request_is_served(&base),
    );
    for r in [&openai, &anthropic] {
        assert_eq!(r.status, 200);
        assert!(r.took < ANSWER_WITHIN);
        assert!(
            r.text().contains("Hi"),
            "the first event was relayed: {}",
            r.text()
        );
        assert!(r.text().contains("--max-event-bytes"), "{}", r.text());
        assert!(
            !r.text().contains("aaaaaaaa"),
            "the endless line is never relayed"
        );
    }
    let last = openai
        .text()
        .trim_end()
        .rsplit("\n\n")
        .next()
        .unwrap()
        .to_string();
    let error: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "upstream_event_too_large", "{last}");
    assert!(
        anthropic.text().contains("event: error"),
        "{}",
        anthropic.text()
    );
    // Two streams at the cap each (the pass-through buffer, the translator's) plus their copies.
    let grown = proc.peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS grew by {grown} KiB");
    assert!(
        grown < rss_bound_kib(2 * 64),
        "peak RSS grew by {grown} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_headers_fail_the_attempt_cleanly() {
    let good = good_mock().await;
    let up = Upstream::start(Act::EndlessHeaders, Flavor::OpenAi).await;
    let yaml = manifests(
        &[P::at("headers", "openai", &up)],
        &good,
        &[
            ("headers", &["headers"]),
            ("headers-fo", &["headers", "good"]),
        ],
    );
    let proc = sidecar_with(yaml, &[]).await;
    let base = format!("http://{}", proc.proxy);
    let before = proc.rss_kib();
    proc.reset_peak();

    let (alone, stream, fallback, ()) = tokio::join!(
        ask(&base, Dialect::OpenAi, "headers", false),
        ask(&base, Dialect::Anthropic, "headers", true),
        ask(&base, Dialect::OpenAi, "headers-fo", false),
        normal_request_is_served(&base),
    );
    for r in [&alone, &stream] {
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(
            r.text().contains("too large"),
            "names the cause: {}",
            r.text()
        );
        assert!(r.took < ANSWER_WITHIN);
    }
    assert_eq!(fallback.status, 200, "{}", fallback.text());
    // hyper holds at most ~400 KiB of a response head.
    let grown = proc.peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS grew by {grown} KiB");
    assert!(grown < rss_bound_kib(1), "peak RSS grew by {grown} KiB");
}

const KINDS: &[(&str, Flavor)] = &[
    ("openai", Flavor::OpenAi),
    ("openaiCompatible", Flavor::OpenAi),
    ("azureOpenAI", Flavor::OpenAi),
    ("anthropic", Flavor::Anthropic),
    ("gemini", Flavor::Gemini),
    ("bedrock", Flavor::Bedrock),
];

/// The credentials each upstream in `cases` (label, provider type, what it does, the status the
/// client should get) received, echoed back: relayed to an OpenAI and an Anthropic client
/// (streamed if `stream`), scrubbed in every byte they received and in the log.
async fn echo_cases(cases: &[(String, &str, Act, Flavor, u16)], stream: bool) {
    let good = good_mock().await;
    let mut ups = Vec::new();
    for (_, _, act, flavor, _) in cases {
        ups.push(Upstream::start(*act, *flavor).await);
    }
    let providers: Vec<P> = cases
        .iter()
        .zip(&ups)
        .map(|((name, kind, ..), up)| P::at(name, kind, up))
        .collect();
    let targets: Vec<[&str; 1]> = cases.iter().map(|(n, ..)| [n.as_str()]).collect();
    let routes: Vec<(&str, &[&str])> = cases
        .iter()
        .zip(&targets)
        .map(|((n, ..), t)| (n.as_str(), t.as_slice()))
        .collect();
    let proc = sidecar_with(manifests(&providers, &good, &routes), &[]).await;
    let base = format!("http://{}", proc.proxy);

    let mut received = Vec::new();
    for (name, kind, _, _, status) in cases {
        for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
            let r = ask(&base, dialect, name, stream).await;
            let what = format!("{name} ({kind}) {dialect:?}");
            assert_eq!(r.status, *status, "{what}: {}", r.text());
            assert!(
                r.text().contains("[redacted]"),
                "{what}: the echo is relayed, scrubbed: {}",
                r.text()
            );
            if !stream {
                // The body changed length when scrubbed: the declared length is the new one.
                let declared = r
                    .headers
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|v| v.parse::<usize>().unwrap());
                assert_eq!(declared, Some(r.body.len()), "{what}");
            }
            received.push((what, r));
        }
    }
    normal_request_is_served(&base).await;
    let mut heads = Vec::new();
    for ((_, kind, ..), up) in cases.iter().zip(&ups) {
        let sent = up.heads().join("\n");
        // The upstream really got (and so echoed) the credentials.
        let expected: &[&str] = match *kind {
            "bedrock" => &[AWS_ID, AWS_TOKEN],
            "openai" => &[OPENAI_KEY],
            "openaiCompatible" => &[COMPAT_KEY],
            "azureOpenAI" => &[AZURE_KEY],
            "anthropic" => &[ANTHROPIC_KEY],
            "gemini" => &[GEMINI_KEY],
            other => panic!("no such kind {other}"),
        };
        for secret in expected {
            assert!(
                sent.contains(secret),
                "{kind} was sent its credentials: {sent}"
            );
        }
        heads.extend(up.heads());
    }
    let signatures = signatures(&heads);
    assert!(!signatures.is_empty(), "bedrock requests are signed");
    for (what, r) in &received {
        assert_no_secret(&r.all(), &signatures, what);
    }
    let log = proc.stop().join("\n");
    assert_no_secret(&log, &signatures, "the log");
}

/// Each provider type's credentials (bearer, api-key, x-api-key, x-goog-api-key, SigV4) echoed in
/// a 400, 404 and 422 body and header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_echoed_in_refusals_never_reach_the_client_or_the_log() {
    let mut cases = Vec::new();
    for status in [400u16, 404, 422] {
        for (kind, flavor) in KINDS {
            let name = format!("{kind}-{status}").to_lowercase();
            cases.push((name, *kind, Act::Refuse(status), *flavor, status));
        }
    }
    echo_cases(&cases, false).await;
}

/// Each provider type's credentials echoed in the text of a 200 answer (a careless echo server):
/// scrubbed as the body is read, before translation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_echoed_in_answers_never_reach_the_client_or_the_log() {
    let cases: Vec<_> = KINDS
        .iter()
        .map(|(kind, flavor)| (kind.to_lowercase(), *kind, Act::Answer, *flavor, 200))
        .collect();
    echo_cases(&cases, false).await;
}

/// A stream's error event echoing the credentials, for each provider type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_echoed_in_stream_error_events_never_reach_the_client_or_the_log() {
    let cases: Vec<_> = KINDS
        .iter()
        .map(|(kind, flavor)| (kind.to_lowercase(), *kind, Act::StreamError, *flavor, 200))
        .collect();
    echo_cases(&cases, true).await;
}
