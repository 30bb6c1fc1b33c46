//! Fault injection through the sidecar binary (issue #13): a primary target that hangs, resets
//! mid-body, answers garbage, storms 503s, is slow to its first byte or stalls mid-stream, next to
//! a healthy secondary. Each case asserts that clients keep getting answers, that the primary is
//! ejected (no more traffic, `/targets`, metrics, the log), and for the hanging primary that 1,000
//! requests after the ejection all succeed. Latencies are printed, not asserted, beyond a bound
//! that only proves no request waited for the broken primary. Recovery: a healed primary gets
//! traffic again once its cooldown ends. Billing refusals and overload fail over too.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "../hostile/proc.rs"]
mod proc;
mod rules;

use std::time::{Duration, Instant};

use gatehouse_mock_provider::{Behaviour, Fault, MockProvider};
use proc::SidecarProc;
use serde_json::{Value, json};

const KEY: &str = "sk-faults-0123456789";

/// Two OpenAI-compatible providers (`primary`, `secondary`), two Anthropic ones on the same
/// mocks, and routes over them: `chat` (primary first, then secondary) and `claude` (the
/// Anthropic pair). `route_extra` is spliced into both routes' spec (timeouts, outlier).
fn manifests(primary: &MockProvider, secondary: &MockProvider, route_extra: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Secret
metadata: {{name: k}}
stringData: {{apiKey: "{KEY}"}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: primary}}
spec:
  type: openaiCompatible
  endpoint: {p}
  apiKeySecretRef: {{name: k, key: apiKey}}
  models: [{{name: m1, pricing: {{inputPerMillion: "1", outputPerMillion: "2"}}}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: secondary}}
spec:
  type: openaiCompatible
  endpoint: {s}
  apiKeySecretRef: {{name: k, key: apiKey}}
  models: [{{name: m2, pricing: {{inputPerMillion: "1", outputPerMillion: "2"}}}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: ant-primary}}
spec:
  type: anthropic
  endpoint: {po}
  apiKeySecretRef: {{name: k, key: apiKey}}
  models: [{{name: claude-a, pricing: {{inputPerMillion: "1", outputPerMillion: "2"}}}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: ant-secondary}}
spec:
  type: anthropic
  endpoint: {so}
  apiKeySecretRef: {{name: k, key: apiKey}}
  models: [{{name: claude-b, pricing: {{inputPerMillion: "1", outputPerMillion: "2"}}}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: chat}}
spec:
  models: ["chat"]
  targets:
    - {{provider: primary, model: m1, priority: 0}}
    - {{provider: secondary, model: m2, priority: 1}}
{route_extra}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: claude}}
spec:
  models: ["claude"]
  targets:
    - {{provider: ant-primary, model: claude-a, priority: 0}}
    - {{provider: ant-secondary, model: claude-b, priority: 1}}
{route_extra}
"#,
        p = primary.base_url(),
        s = secondary.base_url(),
        po = primary.origin(),
        so = secondary.origin(),
    )
}

/// Timeouts and outlier settings short enough for a test; the cooldown is long unless a case
/// needs it short.
fn route_extra(cooldown: &str) -> String {
    format!(
        "  retry: {{attempts: 3, backoff: {{base: 10ms, max: 20ms}}}}\n  timeouts: {{attempt: 1s, idle: 500ms}}\n  outlier: {{baseEjection: {cooldown}, maxEjection: 10m}}"
    )
}

async fn mock() -> MockProvider {
    MockProvider::with_api_key(KEY).start().await.unwrap()
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "chat", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

fn messages_body(stream: bool) -> Value {
    json!({"model": "claude", "stream": stream, "max_tokens": 32,
           "messages": [{"role": "user", "content": "hi"}]})
}

/// POST `body` to `path`; status, headers and body text, and how long it took.
async fn send(
    client: &reqwest::Client,
    sidecar: &SidecarProc,
    path: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, String, Duration) {
    let start = Instant::now();
    let resp = client
        .post(sidecar.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (status, headers, text, start.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn targets(client: &reqwest::Client, sidecar: &SidecarProc) -> Value {
    client
        .get(sidecar.admin_url("/targets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn target_state<'a>(targets: &'a Value, provider: &str) -> &'a str {
    targets["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["provider"] == provider)
        .and_then(|t| t["state"].as_str())
        .unwrap_or("unknown")
}

async fn metrics(client: &reqwest::Client, sidecar: &SidecarProc) -> String {
    client
        .get(sidecar.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Send requests until the primary is ejected (each must succeed meanwhile); how many it took.
async fn until_ejected(
    client: &reqwest::Client,
    sidecar: &SidecarProc,
    path: &str,
    body: &Value,
    provider: &str,
) -> usize {
    for n in 1..=40 {
        let (status, _, text, _) = send(client, sidecar, path, body).await;
        assert_eq!(
            status, 200,
            "request {n} failed while the primary is bad: {text}"
        );
        if target_state(&targets(client, sidecar).await, provider) == "ejected" {
            return n;
        }
    }
    panic!(
        "{provider} not ejected after 40 requests: {}",
        targets(client, sidecar).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_primary_is_ejected_and_the_next_thousand_requests_all_succeed() {
    let primary = mock().await;
    let secondary = mock().await;
    let sidecar = SidecarProc::start(&manifests(&primary, &secondary, &route_extra("5m")), &[]);
    let client = reqwest::Client::new();
    let body = chat_body(false);

    // Healthy baseline: the primary answers.
    let mut healthy = Vec::new();
    for _ in 0..200 {
        let (status, _, _, took) = send(&client, &sidecar, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200);
        healthy.push(took);
    }
    healthy.sort();
    let healthy_p99 = percentile(&healthy, 0.99);

    primary.set_default(Behaviour::hang());
    let start = Instant::now();
    let n = until_ejected(&client, &sidecar, "/v1/chat/completions", &body, "primary").await;
    let time_to_eject = start.elapsed();
    // Two timeouts in a row eject (the default consecutiveTimeouts).
    assert_eq!(n, 2, "ejected after {n} requests");

    let primary_before = primary.request_count();
    let mut during = Vec::with_capacity(1000);
    for i in 0..1000 {
        let (status, headers, text, took) =
            send(&client, &sidecar, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "request {i}: {text}");
        assert_eq!(headers["x-gatehouse-provider"], "secondary");
        during.push(took);
    }
    // No request went to the ejected primary: none paid its hang.
    assert_eq!(primary.request_count(), primary_before);
    during.sort();
    let (p50, p99) = (percentile(&during, 0.5), percentile(&during, 0.99));
    eprintln!(
        "hanging primary: healthy p99 {healthy_p99:?}; ejected after {n} requests in {time_to_eject:?}; \
         next 1000: 100% ok, p50 {p50:?}, p99 {p99:?} ({:.2}x healthy p99)",
        p99.as_secs_f64() / healthy_p99.as_secs_f64()
    );
    // Generous: far below the 1 s attempt timeout a request touching the primary would wait.
    assert!(
        p99 < Duration::from_millis(900),
        "p99 {p99:?} suggests requests waited for the hung primary"
    );

    // The ejection shows in /targets, the metrics and the log.
    let t = targets(&client, &sidecar).await;
    assert_eq!(target_state(&t, "primary"), "ejected", "{t}");
    assert_eq!(target_state(&t, "secondary"), "healthy", "{t}");
    let m = metrics(&client, &sidecar).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("gatehouse_target_ejections_total{")
                && l.contains("provider=\"primary\"")
                && l.ends_with(" 1")),
        "{m}"
    );
    assert!(
        m.lines().any(|l| l.starts_with("gatehouse_target_ejected{")
            && l.contains("provider=\"primary\"")
            && l.ends_with(" 1")),
        "{m}"
    );
    sidecar.wait_log(Duration::from_secs(5), |j| {
        j["fields"]["message"] == "target ejected" || j["message"] == "target ejected"
    });
}

/// One fault on the primary: requests keep succeeding, and the primary ends up ejected.
async fn fault_is_survived_and_ejects(fault: Behaviour, stream: bool, expect_after: usize) {
    let primary = mock().await;
    let secondary = mock().await;
    let sidecar = SidecarProc::start(&manifests(&primary, &secondary, &route_extra("5m")), &[]);
    let client = reqwest::Client::new();
    primary.set_default(fault.clone());
    let body = chat_body(stream);
    let n = until_ejected(&client, &sidecar, "/v1/chat/completions", &body, "primary").await;
    assert!(n <= expect_after, "{fault:?}: ejected only after {n}");
    let before = primary.request_count();
    for _ in 0..50 {
        let (status, headers, text, _) =
            send(&client, &sidecar, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(headers["x-gatehouse-provider"], "secondary");
        if stream {
            assert!(text.contains("[DONE]"), "{text}");
        }
    }
    assert_eq!(primary.request_count(), before, "{fault:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_resetting_mid_body_is_ejected() {
    fault_is_survived_and_ejects(Behaviour::cut_after(1), false, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_answering_garbage_is_ejected() {
    fault_is_survived_and_ejects(Behaviour::garbage(), false, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_storm_ejects_the_primary() {
    fault_is_survived_and_ejects(Behaviour::status(503), false, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_slow_to_its_first_byte_fails_over_and_is_ejected() {
    // Headers after 3 s against a 1 s attempt timeout, for a stream: fails over before the
    // first byte, and two timeouts eject.
    fault_is_survived_and_ejects(Behaviour::normal().latency(Duration::from_secs(3)), true, 2)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stalling_mid_answer_ends_with_an_error_event_in_each_dialect_and_ejects() {
    let primary = mock().await;
    let secondary = mock().await;
    let sidecar = SidecarProc::start(&manifests(&primary, &secondary, &route_extra("5m")), &[]);
    let client = reqwest::Client::new();
    primary.set_default(Behaviour::stall_after(2));

    // OpenAI dialect: the committed stream ends with an error object, no [DONE].
    let (status, _, text, took) =
        send(&client, &sidecar, "/v1/chat/completions", &chat_body(true)).await;
    assert_eq!(status, 200);
    assert!(text.contains("upstream_idle_timeout"), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(took < Duration::from_secs(5), "stall ended after {took:?}");

    // Anthropic dialect: an `event: error`.
    let (status, _, text, _) = send(&client, &sidecar, "/v1/messages", &messages_body(true)).await;
    assert_eq!(status, 200);
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("stalled"), "{text}");

    // Counted per target.
    let m = metrics(&client, &sidecar).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("gatehouse_stream_stalls_total{")
                && l.contains("provider=\"primary\"")
                && l.ends_with(" 1")),
        "{m}"
    );
    // A second stall in a row ejects the primary: later streams go to the secondary whole.
    let (_, _, text, _) = send(&client, &sidecar, "/v1/chat/completions", &chat_body(true)).await;
    assert!(text.contains("upstream_idle_timeout"), "{text}");
    let t = targets(&client, &sidecar).await;
    assert_eq!(target_state(&t, "primary"), "ejected", "{t}");
    let (status, headers, text, _) =
        send(&client, &sidecar, "/v1/chat/completions", &chat_body(true)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-gatehouse-provider"], "secondary");
    assert!(text.contains("[DONE]"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_primary_gets_traffic_again_once_its_cooldown_ends() {
    let primary = mock().await;
    let secondary = mock().await;
    let sidecar = SidecarProc::start(&manifests(&primary, &secondary, &route_extra("2s")), &[]);
    let client = reqwest::Client::new();
    let body = chat_body(false);
    primary.set_default(Behaviour::status(503));
    until_ejected(&client, &sidecar, "/v1/chat/completions", &body, "primary").await;
    let ejected_at = Instant::now();
    primary.set_default(Behaviour::normal());
    let before = primary.request_count();
    // Keep traffic flowing; the first request after the cooldown tests the primary.
    let back = loop {
        let (status, headers, _, _) = send(&client, &sidecar, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200);
        if headers["x-gatehouse-provider"] == "primary" {
            break ejected_at.elapsed();
        }
        assert!(
            ejected_at.elapsed() < Duration::from_secs(15),
            "primary never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("healed primary back after {back:?} (cooldown 2s)");
    assert!(
        back >= Duration::from_millis(1900),
        "back after {back:?}, before its cooldown"
    );
    assert!(primary.request_count() > before);
    let t = targets(&client, &sidecar).await;
    assert_eq!(target_state(&t, "primary"), "healthy", "{t}");
    // And it keeps its traffic (priority 0).
    for _ in 0..10 {
        let (_, headers, _, _) = send(&client, &sidecar, "/v1/chat/completions", &body).await;
        assert_eq!(headers["x-gatehouse-provider"], "primary");
    }

    // A test that fails ejects again, for twice as long.
    primary.set_default(Behaviour::status(503));
    until_ejected(&client, &sidecar, "/v1/chat/completions", &body, "primary").await;
    let t = targets(&client, &sidecar).await;
    let entry = t["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["provider"] == "primary")
        .unwrap();
    assert_eq!(entry["ejections_in_row"], 2, "{t}");
    assert!(
        entry["cooldown_remaining_ms"].as_u64().unwrap() > 2_000,
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_refusals_and_overload_fail_over_to_the_next_target() {
    let primary = mock().await;
    let secondary = mock().await;
    let sidecar = SidecarProc::start(&manifests(&primary, &secondary, &route_extra("5m")), &[]);
    let client = reqwest::Client::new();

    // OpenAI: 429 insufficient_quota is not a rate limit.
    primary.push(Behaviour::status(429).with_fault(Fault::Status {
        status: 429,
        message: Some(
            "You exceeded your current quota, please check your plan and billing details.".into(),
        ),
        error_type: Some("insufficient_quota".into()),
        code: Some("insufficient_quota".into()),
        param: None,
        retry_after_secs: None,
    }));
    let (status, headers, text, _) =
        send(&client, &sidecar, "/v1/chat/completions", &chat_body(false)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-gatehouse-provider"], "secondary");

    // Anthropic: 400 "credit balance is too low".
    primary.push(
        Behaviour::status(400)
            .with_fault(Fault::Status {
                status: 400,
                message: Some("Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.".into()),
                error_type: Some("invalid_request_error".into()),
                code: None,
                param: None,
                retry_after_secs: None,
            }),
    );
    let (status, headers, text, _) =
        send(&client, &sidecar, "/v1/messages", &messages_body(false)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-gatehouse-provider"], "ant-secondary");

    // Any other 400 is the request's: passed back, no failover.
    primary.push(Behaviour::status(400).with_fault(Fault::Status {
        status: 400,
        message: Some("max_tokens: Field required".into()),
        error_type: Some("invalid_request_error".into()),
        code: None,
        param: None,
        retry_after_secs: None,
    }));
    let (status, _, text, _) = send(&client, &sidecar, "/v1/messages", &messages_body(false)).await;
    assert_eq!(status, 400, "{text}");

    // Anthropic: 529 overloaded.
    primary.push(Behaviour::status(529));
    let (status, headers, text, _) =
        send(&client, &sidecar, "/v1/messages", &messages_body(false)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-gatehouse-provider"], "ant-secondary");
    let m = metrics(&client, &sidecar).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("gatehouse_upstream_attempts_total{")
                && l.contains("outcome=\"overloaded\"")),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("gatehouse_upstream_attempts_total{")
                && l.contains("outcome=\"billing_refused\"")),
        "{m}"
    );
}
