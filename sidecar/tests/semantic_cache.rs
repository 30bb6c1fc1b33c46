//! The semantic cache through the real sidecar: the chat Route's answers come from the mock
//! provider, its embeddings from an embedding Route served by a deterministic fake (texts on one
//! topic embed close together) or, in the end-to-end test, by the real all-MiniLM-L6-v2 model
//! (tests/embedding-server). Paraphrases hit; near-misses a guard catches, another system
//! prompt or parameters miss; an embedding Route that is down or slow is a bypass with a 200;
//! Routes never share an index; the index keeps at most `maxEntries`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_mock_provider::MockProvider;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::{Sidecar, header};

const KEY: &str = "sk-semantic-test-0123456789";

/// Topics of the fake embedder: a text's vector is its topic's axis plus a small
/// text-dependent wobble, so two texts of one topic have a similarity of about 0.96 or more
/// and texts of two topics about 0.
const TOPICS: [&str; 7] = [
    "password", "capital", "weather", "recipe", "planet", "guitar", "laptop",
];

fn fake_vector(text: &str) -> Vec<f32> {
    let lower = text.to_lowercase();
    let topic = TOPICS
        .iter()
        .position(|t| lower.contains(t))
        .unwrap_or(TOPICS.len());
    let mut v = vec![0f32; 12];
    v[topic] = 1.0;
    let h = lower.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    });
    for i in 0..4 {
        v[8 + i] = if (h >> i) & 1 == 1 { 0.07 } else { -0.07 };
    }
    v
}

/// The fake embeddings endpoint: counts its calls, can be made slow.
struct FakeEmbedder {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
}

impl FakeEmbedder {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (c, d) = (calls.clone(), delay_ms.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (c, d) = (c.clone(), d.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (c, d) = (c.clone(), d.clone());
                        async move {
                            c.fetch_add(1, Ordering::SeqCst);
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let v: Value = serde_json::from_slice(&body).unwrap();
                            let delay = d.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            let text = v["input"].as_str().unwrap_or_default();
                            let answer = json!({
                                "object": "list",
                                "data": [{"object": "embedding", "index": 0, "embedding": fake_vector(text)}],
                                "model": v["model"],
                                "usage": {"prompt_tokens": 5, "total_tokens": 5},
                            });
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(answer.to_string())));
                            resp.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            calls,
            delay_ms,
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The chat Route (`chat`, on the mock) with `cache`, a second one (`other`) with the same
/// cache, and the embedding Route `embed` on `embed_url`.
fn manifests(chat_url: &str, embed_url: &str, embed_model: &str, cache: &str) -> String {
    let route = |name: &str| {
        format!(
            "---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata:\n  name: {name}\nspec:\n  models: [{name}]\n  targets:\n    - provider: mock\n      model: gpt-4o-mini\n  cache:\n{cache}\n"
        )
    };
    format!(
        "{}{}---\napiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata:\n  name: embedder\nspec:\n  type: openaiCompatible\n  endpoint: {embed_url}\n  models:\n    - name: {embed_model}\n      pricing:\n        inputPerMillion: \"0.02\"\n        outputPerMillion: \"0\"\n---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata:\n  name: embed\nspec:\n  models: [embed]\n  targets:\n    - provider: embedder\n      model: {embed_model}\n{}",
        support::provider("mock", chat_url, Some(KEY)),
        route("chat"),
        route("other"),
    )
}

fn semantic_cache(threshold: &str, max_entries: usize, timeout: &str) -> String {
    format!(
        "    ttl: 10m\n    semantic:\n      embeddingRoute: embed\n      threshold: \"{threshold}\"\n      maxEntries: {max_entries}\n      timeout: {timeout}"
    )
}

fn body(model: &str, system: Option<&str>, prompt: &str, extra: Value) -> Value {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": prompt}));
    let mut b = json!({"model": model, "temperature": 0, "messages": messages});
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    b
}

/// POST a chat; 200 expected. The cache header and the answer.
async fn ask(s: &Sidecar, b: &Value) -> (String, Value) {
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(b)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a cache outcome is never an error");
    let cache = header(&resp, "x-gatehouse-cache").unwrap().to_string();
    (cache, resp.json().await.unwrap())
}

async fn start(cache: &str) -> (MockProvider, FakeEmbedder, Sidecar) {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let embedder = FakeEmbedder::start().await;
    let s = Sidecar::start(&manifests(
        &mock.base_url(),
        &embedder.base_url(),
        "fake-embed",
        cache,
    ))
    .await;
    (mock, embedder, s)
}

#[tokio::test]
async fn a_paraphrase_hits_and_guarded_near_misses_do_not() {
    let (mock, embedder, s) = start(&semantic_cache("0.90", 100, "2s")).await;
    let (status, first) = ask(
        &s,
        &body("chat", None, "How do I reset my password?", json!({})),
    )
    .await;
    assert_eq!(status, "miss");
    assert_eq!(embedder.calls(), 1, "one embedding per exact miss");

    // Another wording of the same question: served from the cache, no upstream call.
    let (status, hit) = ask(
        &s,
        &body(
            "chat",
            None,
            "What's the way to reset my password?",
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, "hit");
    assert_eq!(hit, first);
    assert_eq!(mock.request_count(), 1);

    // Close in embedding space, but another number, a negation, another name: misses.
    for near in [
        "How do I reset my password for 2 accounts?",
        "How do I not reset my password?",
        "How do I reset my Gmail password?",
    ] {
        let (status, _) = ask(&s, &body("chat", None, near, json!({}))).await;
        assert_eq!(status, "miss", "{near}");
    }
    assert_eq!(mock.request_count(), 4);

    // The same words under another system prompt, or with other parameters: misses.
    let (status, _) = ask(
        &s,
        &body(
            "chat",
            Some("Answer in French."),
            "What's the way to reset my password?",
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, "miss");
    let (status, _) = ask(
        &s,
        &body(
            "chat",
            None,
            "What's the way to reset my password?",
            json!({"max_tokens": 7}),
        ),
    )
    .await;
    assert_eq!(status, "miss");
    assert_eq!(mock.request_count(), 6);

    // A stream request's semantic hit is answered as a stream.
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&body(
            "chat",
            None,
            "Tell me how to reset my password",
            json!({"stream": true}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-cache"), Some("hit"));
    let events = support::sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(mock.request_count(), 6);

    // An exact repeat is an exact hit: no embedding asked.
    let calls = embedder.calls();
    let (status, _) = ask(
        &s,
        &body("chat", None, "How do I reset my password?", json!({})),
    )
    .await;
    assert_eq!(status, "hit");
    assert_eq!(embedder.calls(), calls);

    // The embeddings went through the embedding Route: metered like any request of the
    // workload (its requests and cost are counted under route "embed").
    let metrics = s.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("route=\"embed\"") && l.starts_with("gatehouse_requests")),
        "embedding requests are counted under their Route:\n{metrics}"
    );
}

#[tokio::test]
async fn an_embedding_route_down_or_slow_is_a_bypass_never_an_error() {
    // Down: the embedding provider refuses connections.
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let s = Sidecar::start(&manifests(
        &mock.base_url(),
        &support::refused_url(),
        "fake-embed",
        &semantic_cache("0.90", 100, "2s"),
    ))
    .await;
    let b = body("chat", None, "What is the capital of France?", json!({}));
    let (status, first) = ask(&s, &b).await;
    assert_eq!(status, "bypass");
    // The exact entry was still stored: the same request again is an exact hit.
    let (status, again) = ask(&s, &b).await;
    assert_eq!(status, "hit");
    assert_eq!(again, first);
    let (status, _) = ask(
        &s,
        &body(
            "chat",
            None,
            "Which city is the capital of France?",
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, "bypass");
    assert_eq!(mock.request_count(), 2);

    // Slow: past `timeout` the request goes on without it.
    let (mock, embedder, s) = start(&semantic_cache("0.90", 100, "100ms")).await;
    embedder.delay_ms.store(5_000, Ordering::SeqCst);
    let started = Instant::now();
    let (status, _) = ask(
        &s,
        &body("chat", None, "What is the weather in Oslo?", json!({})),
    )
    .await;
    assert_eq!(status, "bypass");
    assert!(
        started.elapsed() < Duration::from_millis(4_000),
        "the request waited for the slow embedding ({:?})",
        started.elapsed()
    );
    assert_eq!(mock.request_count(), 1);
    // Fast again: lookups work.
    embedder.delay_ms.store(0, Ordering::SeqCst);
    let (status, _) = ask(
        &s,
        &body(
            "chat",
            None,
            "What is the weather in Oslo today?",
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, "miss");
    let (status, _) = ask(
        &s,
        &body("chat", None, "Tell me the weather in Oslo today", json!({})),
    )
    .await;
    assert_eq!(status, "hit");
}

#[tokio::test]
async fn routes_never_share_an_index() {
    let (mock, _embedder, s) = start(&semantic_cache("0.90", 100, "2s")).await;
    let (status, _) = ask(
        &s,
        &body("chat", None, "Give me a pancake recipe", json!({})),
    )
    .await;
    assert_eq!(status, "miss");
    // The same meaning on another Route (another model behind it): a miss.
    let (status, _) = ask(
        &s,
        &body("other", None, "A pancake recipe, please", json!({})),
    )
    .await;
    assert_eq!(status, "miss");
    // And each Route hits its own.
    let (status, _) = ask(
        &s,
        &body(
            "other",
            None,
            "Could you give me a pancake recipe",
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, "hit");
    let (status, _) = ask(
        &s,
        &body(
            "chat",
            None,
            "Could you give me a pancake recipe",
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, "hit");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn the_index_keeps_at_most_max_entries_oldest_out_first() {
    let (_mock, _embedder, s) = start(&semantic_cache("0.90", 3, "2s")).await;
    for q in [
        "How do I reset my password?",
        "What is the capital of Peru?",
        "What is the weather in Rome?",
        "Give me a soup recipe",
    ] {
        let (status, _) = ask(&s, &body("chat", None, q, json!({}))).await;
        assert_eq!(status, "miss", "{q}");
    }
    // The oldest (password) is out of the index: its paraphrase misses; the newest hit.
    let (status, _) = ask(
        &s,
        &body(
            "chat",
            None,
            "What's the way to reset my password?",
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, "miss");
    let (status, _) = ask(&s, &body("chat", None, "A soup recipe, please", json!({}))).await;
    assert_eq!(status, "hit");
}

/// The real model server (tests/embedding-server/run), killed on drop.
struct ModelServer(Child, String);

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn model_server() -> ModelServer {
    let run = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/embedding-server/run");
    let mut child = Command::new(run)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("failed to start {run} (needs python3 and PyPI on first run): {e}")
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{run} did not start: {line:?}"))
        .to_string();
    ModelServer(child, format!("http://{addr}/v1"))
}

#[tokio::test]
async fn end_to_end_with_the_real_model() {
    let server = model_server();
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    // A generous timeout: the model runs in numpy on a shared machine.
    let s = Sidecar::start(&manifests(
        &mock.base_url(),
        &server.1,
        "all-MiniLM-L6-v2",
        &semantic_cache("0.90", 100, "20s"),
    ))
    .await;
    let (status, first) = ask(
        &s,
        &body(
            "chat",
            None,
            "How do I create a virtual environment in Python?",
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, "miss");
    let (status, hit) = ask(
        &s,
        &body(
            "chat",
            None,
            "How can I make a Python virtual environment?",
            json!({}),
        ),
    )
    .await;
    assert_eq!(
        status, "hit",
        "a paraphrase (similarity 0.96 with this model) hits"
    );
    assert_eq!(hit, first);
    // A reversal embeds almost the same (0.99) and is refused by the order guard.
    let (status, _) = ask(
        &s,
        &body("chat", None, "convert kilometers to miles", json!({})),
    )
    .await;
    assert_eq!(status, "miss");
    let (status, _) = ask(
        &s,
        &body("chat", None, "convert miles to kilometers", json!({})),
    )
    .await;
    assert_eq!(status, "miss");
    // Another language: a miss.
    let (status, _) = ask(
        &s,
        &body(
            "chat",
            None,
            "¿Cómo creo un entorno virtual en Python?",
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, "miss");
    assert_eq!(mock.request_count(), 4);
}
