//! The exact response cache through the real sidecar and the mock provider: hits skip the
//! upstream and cost $0, streams are answered as streams in the client's dialect, what bypasses
//! it (headers, temperature, restored redaction), what is never stored (errors, cut streams),
//! its TTL and size bound, concurrency; and the Redis backend with a real redis-server: two
//! sidecars share hits, namespaces and workloads never do, Redis down is a bypass, back is hits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_mock_provider::{Behaviour, MockProvider};
use serde_json::{Value, json};
use support::{Sidecar, header, sse_events};

const KEY: &str = "sk-cache-test-0123456789";

fn manifests(base_url: &str, cache: &str, extra: &str) -> String {
    format!(
        "{}---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata:\n  name: chat\nspec:\n  models: [chat, chat-alias]\n  targets:\n    - provider: mock\n      model: gpt-4o-mini\n  cache:\n{cache}\n{extra}",
        support::provider("mock", base_url, Some(KEY)),
    )
}

fn body(prompt: &str, extra: Value) -> Value {
    let mut b = json!({
        "model": "chat",
        "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
    });
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    b
}

async fn post(
    s: &Sidecar,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = s.client.post(s.url(path)).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn chat(s: &Sidecar, body: &Value) -> (String, Value) {
    let resp = post(s, "/v1/chat/completions", body, &[]).await;
    assert_eq!(resp.status(), 200);
    let status = header(&resp, "x-gatehouse-cache").unwrap().to_string();
    (status, resp.json().await.unwrap())
}

async fn start(cache: &str) -> (MockProvider, Sidecar) {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(&mock.base_url(), cache, "")).await;
    (mock, sidecar)
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_hit_skips_the_upstream_costs_nothing_and_counts_what_it_saved() {
    let (mock, s) = start("    ttl: 1m").await;
    let b = body("What is the capital of France?", json!({}));
    let first = post(&s, "/v1/chat/completions", &b, &[]).await;
    assert_eq!(header(&first, "x-gatehouse-cache"), Some("miss"));
    let cost: f64 = header(&first, "x-gatehouse-cost-usd")
        .unwrap()
        .parse()
        .unwrap();
    assert!(cost > 0.0);
    let first: Value = first.json().await.unwrap();

    // Another alias of the same Route, other `user` and `metadata`: the same question.
    let again = body(
        "What is the capital of France?",
        json!({"model": "chat-alias", "user": "someone-else", "metadata": {"k": "v"}}),
    );
    let hit = post(&s, "/v1/chat/completions", &again, &[]).await;
    assert_eq!(hit.status(), 200);
    assert_eq!(header(&hit, "x-gatehouse-cache"), Some("hit"));
    assert_eq!(header(&hit, "x-gatehouse-cost-usd"), Some("0"));
    assert_eq!(header(&hit, "x-gatehouse-route"), Some("chat"));
    let hit: Value = hit.json().await.unwrap();
    assert_eq!(hit, first);
    assert_eq!(mock.request_count(), 1, "a hit never reaches the provider");

    // Saved: the stored usage at the model's price.
    let usage = &first["usage"];
    let expected = usage["prompt_tokens"].as_f64().unwrap() * 0.15 / 1e6
        + usage["completion_tokens"].as_f64().unwrap() * 0.60 / 1e6;
    let saved = metric(
        &s.metrics().await,
        "gatehouse_cache_saved_usd_total{route=\"chat\"}",
    )
    .expect("saved USD counted");
    assert!((saved - expected).abs() < 1e-12, "{saved} != {expected}");

    // Another question is a miss.
    let (status, _) = chat(&s, &body("And of Spain?", json!({}))).await;
    assert_eq!(status, "miss");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn streams_hit_as_streams_in_the_openai_dialect() {
    let (mock, s) = start("    ttl: 1m").await;
    // Filled by a stream, served to a buffered request and to streams with and without usage.
    let b = body("Tell me a story", json!({"stream": true}));
    let live = post(&s, "/v1/chat/completions", &b, &[]).await;
    assert_eq!(header(&live, "x-gatehouse-cache"), Some("miss"));
    let live_events = sse_events(live).await;
    assert_eq!(live_events.last().map(String::as_str), Some("[DONE]"));
    let text = |events: &[String]| -> String {
        events
            .iter()
            .filter(|e| *e != "[DONE]")
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    };
    let live_text = text(&live_events);
    assert!(!live_text.is_empty());

    let (status, buffered) = chat(&s, &body("Tell me a story", json!({}))).await;
    assert_eq!(status, "hit");
    assert_eq!(buffered["choices"][0]["message"]["content"], live_text);
    assert_eq!(buffered["object"], "chat.completion");

    let with_usage = body(
        "Tell me a story",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let hit = post(&s, "/v1/chat/completions", &with_usage, &[]).await;
    assert_eq!(header(&hit, "x-gatehouse-cache"), Some("hit"));
    assert!(
        header(&hit, "content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(hit).await;
    assert_eq!(text(&events), live_text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(usage["usage"]["gatehouse_cost_usd"], 0);

    let plain = post(&s, "/v1/chat/completions", &b, &[]).await;
    let events = sse_events(plain).await;
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "{events:?}"
    );
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn streams_hit_as_streams_in_the_anthropic_dialect_and_dialects_do_not_share() {
    let (mock, s) = start("    ttl: 1m").await;
    let msg = |stream: bool| {
        json!({
            "model": "chat", "max_tokens": 64, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": "Name three colours"}],
        })
    };
    let first = post(&s, "/v1/messages", &msg(false), &[]).await;
    assert_eq!(header(&first, "x-gatehouse-cache"), Some("miss"));
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["type"], "message");

    let hit = post(&s, "/v1/messages", &msg(true), &[]).await;
    assert_eq!(header(&hit, "x-gatehouse-cache"), Some("hit"));
    let raw = hit.text().await.unwrap();
    let names: Vec<&str> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"content_block_delta"));
    assert!(names.contains(&"message_delta"));
    let text: String = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|e| e["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(json!(text), first["content"][0]["text"]);
    assert_eq!(mock.request_count(), 1);

    // The same question from an OpenAI client: its own entry, never Anthropic's bytes.
    let (status, openai) = chat(&s, &body("Name three colours", json!({"max_tokens": 64}))).await;
    assert_eq!(status, "miss");
    assert_eq!(openai["object"], "chat.completion");
}

#[tokio::test]
async fn bypass_headers_and_non_deterministic_requests() {
    let (mock, s) = start("    ttl: 1m").await;
    let b = body("Q1", json!({}));
    assert_eq!(chat(&s, &b).await.0, "miss");
    assert_eq!(chat(&s, &b).await.0, "hit");
    // Asked to bypass: the provider answers (and the fresh answer replaces the entry).
    for h in [
        ("x-gatehouse-cache", "bypass"),
        ("cache-control", "no-cache"),
    ] {
        let resp = post(&s, "/v1/chat/completions", &b, &[h]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-gatehouse-cache"), Some("bypass"), "{h:?}");
    }
    assert_eq!(mock.request_count(), 3);
    // no-store: not stored either.
    let fresh = body("Q2", json!({}));
    let resp = post(
        &s,
        "/v1/chat/completions",
        &fresh,
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(header(&resp, "x-gatehouse-cache"), Some("bypass"));
    assert_eq!(chat(&s, &fresh).await.0, "miss");

    // Temperature above 0, unset (the provider's default), or several choices: bypass.
    for extra in [
        json!({"temperature": 0.7}),
        json!({"temperature": null}),
        json!({"n": 2}),
    ] {
        let b = body("Q3", extra.clone());
        assert_eq!(chat(&s, &b).await.0, "bypass", "{extra}");
        assert_eq!(chat(&s, &b).await.0, "bypass", "{extra}");
    }
}

#[tokio::test]
async fn a_route_may_allow_non_deterministic_requests() {
    let (_mock, s) = start("    allowNonDeterministic: true").await;
    let b = body("Q", json!({"temperature": 0.9}));
    assert_eq!(chat(&s, &b).await.0, "miss");
    assert_eq!(chat(&s, &b).await.0, "hit");
}

#[tokio::test]
async fn errors_and_cut_streams_are_not_stored() {
    let (mock, s) = start("    ttl: 1m").await;
    let b = body("Q", json!({}));
    mock.push(Behaviour::status(400));
    let resp = post(&s, "/v1/chat/completions", &b, &[]).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(chat(&s, &b).await.0, "miss", "a refusal was not stored");

    let streamed = body("S", json!({"stream": true}));
    mock.push(Behaviour::cut_after(2));
    let resp = post(&s, "/v1/chat/completions", &streamed, &[]).await;
    let _ = resp.text().await;
    let resp = post(&s, "/v1/chat/completions", &streamed, &[]).await;
    assert_eq!(
        header(&resp, "x-gatehouse-cache"),
        Some("miss"),
        "a cut stream was not stored"
    );
    let _ = resp.text().await;
    let resp = post(&s, "/v1/chat/completions", &streamed, &[]).await;
    assert_eq!(header(&resp, "x-gatehouse-cache"), Some("hit"));
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let (mock, s) = start("    ttl: 1s").await;
    let b = body("Q", json!({}));
    assert_eq!(chat(&s, &b).await.0, "miss");
    assert_eq!(chat(&s, &b).await.0, "hit");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(chat(&s, &b).await.0, "miss");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn the_least_recently_used_entries_go_past_max_bytes() {
    // Room for two answers, not three.
    let (_mock, s) = start("    maxBytes: 2048").await;
    let a = body("A", json!({}));
    let b = body("B", json!({}));
    let c = body("C", json!({}));
    assert_eq!(chat(&s, &a).await.0, "miss");
    assert_eq!(chat(&s, &b).await.0, "miss");
    assert_eq!(chat(&s, &a).await.0, "hit"); // A is now the most recently used.
    assert_eq!(chat(&s, &c).await.0, "miss"); // evicts B
    assert_eq!(chat(&s, &a).await.0, "hit");
    assert_eq!(chat(&s, &b).await.0, "miss");
    let m = s.metrics().await;
    let bytes = metric(
        &m,
        "gatehouse_cache_bytes{route=\"chat\",backend=\"memory\"}",
    )
    .unwrap();
    assert!(bytes > 0.0 && bytes <= 2048.0, "{bytes}");
    let entries = metric(
        &m,
        "gatehouse_cache_entries{route=\"chat\",backend=\"memory\"}",
    )
    .unwrap();
    assert_eq!(entries, 2.0);
}

#[tokio::test]
async fn keys_are_made_of_the_redacted_prompt_and_restored_values_bypass() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let s = Sidecar::start(&manifests(
        &mock.base_url(),
        "    ttl: 1m\n  redact:\n    action: mask",
        "",
    ))
    .await;
    let (status, first) = chat(&s, &body("Write to alice@example.com", json!({}))).await;
    assert_eq!(status, "miss");
    // The provider saw a placeholder, so another address asks the same question.
    let (status, second) = chat(&s, &body("Write to bob@example.org", json!({}))).await;
    assert_eq!(status, "hit");
    assert_eq!(first, second);
    assert!(!second.to_string().contains("alice@example.com"));
    assert_eq!(mock.request_count(), 1);

    let restore = Sidecar::start(&manifests(
        &mock.base_url(),
        "    ttl: 1m\n  redact:\n    action: maskAndRestore",
        "",
    ))
    .await;
    let b = body("Write to alice@example.com", json!({}));
    assert_eq!(chat(&restore, &b).await.0, "bypass");
    assert_eq!(chat(&restore, &b).await.0, "bypass");
}

#[tokio::test]
async fn concurrent_identical_requests_all_succeed_then_hit() {
    let (mock, s) = start("    ttl: 1m").await;
    let b = body("Q", json!({}));
    let s = std::sync::Arc::new(s);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            let b = b.clone();
            tokio::spawn(async move { chat(&s, &b).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert!(status == "miss" || status == "hit", "{status}");
        answers.push(v["choices"][0]["message"]["content"].clone());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(chat(&s, &b).await.0, "hit");
    assert!(mock.request_count() <= 16);
}

#[tokio::test]
async fn embeddings_are_cached() {
    let (mock, s) = start("    ttl: 1m").await;
    let b = json!({"model": "chat", "input": "hello"});
    let first = post(&s, "/v1/embeddings", &b, &[]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-gatehouse-cache"), Some("miss"));
    let first: Value = first.json().await.unwrap();
    let hit = post(&s, "/v1/embeddings", &b, &[]).await;
    assert_eq!(header(&hit, "x-gatehouse-cache"), Some("hit"));
    assert_eq!(hit.json::<Value>().await.unwrap(), first);
    assert_eq!(mock.request_count(), 1);
}

// --- Redis -------------------------------------------------------------------------------

/// A redis-server on a free loopback port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn binary() -> PathBuf {
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("redis-server"))
                .find(|p| p.is_file())
        });
        found.unwrap_or_else(|| {
            panic!("redis-server is not on PATH; install it with `scripts/ensure-debs redis-server=redis-server`")
        })
    }

    fn start(port: Option<u16>, password: Option<&str>) -> Self {
        let port = port.unwrap_or_else(|| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(Self::binary());
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.path().to_str().unwrap(),
        ]);
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, dir }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

async fn redis_sidecar(
    mock: &MockProvider,
    redis: &RedisServer,
    namespace: &str,
    workload: &str,
    scope: &str,
    password_file: Option<PathBuf>,
) -> Sidecar {
    let addr = redis.addr();
    let (namespace, workload) = (namespace.to_string(), workload.to_string());
    Sidecar::start_with(
        &manifests(
            &mock.base_url(),
            &format!("    backend: redis\n    scope: {scope}"),
            "",
        ),
        move |args| {
            args.cache_redis_addr = Some(addr);
            args.cache_redis_password_file = password_file;
            args.namespace = namespace;
            args.workload = Some(workload);
        },
    )
    .await
}

#[tokio::test]
async fn two_sidecars_share_hits_through_redis_and_tenants_never_do() {
    let redis = RedisServer::start(None, None);
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let a = redis_sidecar(&mock, &redis, "team-a", "web", "namespace", None).await;
    let b = redis_sidecar(&mock, &redis, "team-a", "worker", "namespace", None).await;
    let other = redis_sidecar(&mock, &redis, "team-b", "web", "namespace", None).await;
    let q = body("Shared question", json!({}));
    assert_eq!(chat(&a, &q).await.0, "miss");
    // The fill is written after the answer: wait for it to land.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = chat(&b, &q).await;
        if status == "hit" {
            break;
        }
        assert!(Instant::now() < deadline, "the other sidecar never hit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another namespace: never the same entry.
    assert_eq!(chat(&other, &q).await.0, "miss");

    // Workload scope: the same namespace's other workload does not share.
    let w1 = redis_sidecar(&mock, &redis, "team-c", "web", "workload", None).await;
    let w2 = redis_sidecar(&mock, &redis, "team-c", "worker", "workload", None).await;
    let w1b = redis_sidecar(&mock, &redis, "team-c", "web", "workload", None).await;
    let q = body("Workload question", json!({}));
    assert_eq!(chat(&w1, &q).await.0, "miss");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(chat(&w2, &q).await.0, "miss");
    assert_eq!(chat(&w1b, &q).await.0, "hit");
}

#[tokio::test]
async fn redis_down_is_a_bypass_and_hits_resume_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let password = "redis-secret-password-123";
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let redis = RedisServer::start(None, Some(password));
    let port = redis.port;
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let s = redis_sidecar(
        &mock,
        &redis,
        "team-a",
        "web",
        "namespace",
        Some(password_file.clone()),
    )
    .await;
    let q = body("Q", json!({}));
    assert_eq!(chat(&s, &q).await.0, "miss");
    let deadline = Instant::now() + Duration::from_secs(5);
    while chat(&s, &q).await.0 != "hit" {
        assert!(Instant::now() < deadline, "never hit through redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis stopped mid-test: every request still succeeds, promptly, as a bypass.
    drop(redis);
    for _ in 0..5 {
        let started = Instant::now();
        let (status, _) = chat(&s, &q).await;
        assert_eq!(status, "bypass");
        // Generous: the bound is the 100 ms Redis timeout, on a loaded machine.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a request hung on redis"
        );
    }
    let m = s.metrics().await;
    assert!(
        m.contains("gatehouse_cache_backend_errors_total{backend=\"redis\""),
        "{m}"
    );
    assert!(!m.contains(password));

    // Back (empty: it kept nothing): a miss fills it, then hits resume.
    let _redis = RedisServer::start(Some(port), Some(password));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen_miss = false;
    loop {
        let (status, _) = chat(&s, &q).await;
        seen_miss |= status == "miss";
        if status == "hit" {
            break;
        }
        assert!(Instant::now() < deadline, "hits never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_miss);

    // A wrong password is a bypass too, never an error, and never logged or counted by value.
    std::fs::write(&password_file, "wrong-password\n").unwrap();
    let s2 = redis_sidecar(
        &mock,
        &_redis,
        "team-a",
        "web",
        "namespace",
        Some(password_file),
    )
    .await;
    let (status, _) = chat(&s2, &q).await;
    assert_eq!(status, "bypass");
    let m = s2.metrics().await;
    assert!(m.contains("reason=\"auth\""), "{m}");
}

#[tokio::test]
async fn a_hit_neither_reserves_nor_spends_budget() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let s = Sidecar::start(&manifests(&mock.base_url(), "    ttl: 1m", "")).await;
    let cached = body("Cached question", json!({"max_tokens": 100}));
    assert_eq!(chat(&s, &cached).await.0, "miss");
    // A hard Budget nothing fits in any more.
    let budget = "---\napiVersion: gatehouse.dev/v1alpha1\nkind: Budget\nmetadata:\n  name: tiny\nspec:\n  limit:\n    usd: \"0.000000001\"\n  period: monthly\n  enforcement: hard\n";
    std::fs::write(
        s.manifest_path(),
        manifests(&mock.base_url(), "    ttl: 1m", budget),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0.. {
        // A new question each time (an answered one would be a hit).
        let fresh = body(&format!("Another question {i}"), json!({"max_tokens": 100}));
        let resp = post(&s, "/v1/chat/completions", &fresh, &[]).await;
        if resp.status() == 429 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Budget never applied: {} {:?}",
            resp.status(),
            resp.headers()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let upstream = mock.request_count();
    for _ in 0..3 {
        let resp = post(&s, "/v1/chat/completions", &cached, &[]).await;
        assert_eq!(resp.status(), 200, "a hit is served past the budget");
        assert_eq!(header(&resp, "x-gatehouse-cache"), Some("hit"));
        assert!(header(&resp, "x-gatehouse-budget").is_none());
    }
    assert_eq!(mock.request_count(), upstream);
}
