//! Rate limits and the audit log through the sidecar: OpenAI's `x-ratelimit-*` headers count
//! down, a request over a limit gets 429 `rate_limit_exceeded` with `Retry-After` in the
//! client's dialect and never reaches the provider, token estimates are corrected by the usage,
//! limits apply only to the workloads they select; one audit line per request with who called
//! what, the decisions, and the prompt and answer only where the route opts in, after redaction.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::time::Duration;

use gatehouse_mock_provider::{Behaviour, MockProvider};
use serde_json::{Value, json};
use support::{Sidecar, header};

const KEY: &str = "sk-guardrails-test-0123456789";

/// A provider `p` on `mock` and the given Route documents.
fn manifests(mock: &MockProvider, routes: &str) -> String {
    format!(
        "{}{routes}",
        support::provider("p", &mock.base_url(), Some(KEY))
    )
}

fn route(name: &str, extra: &str) -> String {
    format!(
        r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: {name}}}
spec:
  targets: [{{provider: p, model: gpt-4o-mini}}]
  retry: {{attempts: 1}}
{extra}"#
    )
}

async fn post(sidecar: &Sidecar, path: &str, body: Value) -> reqwest::Response {
    sidecar
        .client
        .post(sidecar.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

fn num(resp: &reqwest::Response, name: &str) -> u64 {
    header(resp, name)
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn requests_per_minute_count_down_then_429_in_each_dialect() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &route(
            "chat",
            "  rateLimits: [{name: per-pod, requestsPerMinute: 3}]\n",
        ),
    ))
    .await;
    for left in [2, 1, 0] {
        let resp = post(&sidecar, "/v1/chat/completions", chat("chat")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(num(&resp, "x-ratelimit-limit-requests"), 3);
        assert_eq!(num(&resp, "x-ratelimit-remaining-requests"), left);
        let reset = header(&resp, "x-ratelimit-reset-requests").unwrap();
        assert!(reset.ends_with('s'), "{reset}");
        assert!(header(&resp, "x-ratelimit-limit-tokens").is_none());
    }
    let resp = post(&sidecar, "/v1/chat/completions", chat("chat")).await;
    assert_eq!(resp.status(), 429);
    // One request per 20 s comes back.
    let retry: u64 = num(&resp, "retry-after");
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(num(&resp, "x-ratelimit-remaining-requests"), 0);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "requests", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per-pod"),
        "{body}"
    );
    let resp = post(
        &sidecar,
        "/v1/messages",
        json!({"model": "chat", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert!(header(&resp, "retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(mock.request_count(), 3, "refused requests never left");
    let metrics = sidecar.metrics().await;
    let line = r#"gatehouse_rate_limited_total{route="chat",limit="per-pod",unit="requests"} 2"#;
    assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
}

#[tokio::test]
async fn the_allowance_comes_back_over_the_minute() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &route("chat", "  rateLimits: [{name: r, requestsPerMinute: 60}]\n"),
    ))
    .await;
    let mut last = 60;
    for _ in 0..5 {
        let resp = post(&sidecar, "/v1/chat/completions", chat("chat")).await;
        let left = num(&resp, "x-ratelimit-remaining-requests");
        assert!(left < last, "{left} after {last}");
        last = left;
    }
    // One a second comes back (the sleep bounds nothing about speed: more time only helps).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = post(&sidecar, "/v1/chat/completions", chat("chat")).await;
    let left = num(&resp, "x-ratelimit-remaining-requests");
    assert!(left >= last, "{left} after {last} and a second");
}

#[tokio::test]
async fn token_estimates_are_charged_up_front_and_corrected_by_the_usage() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &route("chat", "  rateLimits: [{name: t, tokensPerMinute: 1000}]\n"),
    ))
    .await;
    let body = json!({"model": "chat", "max_tokens": 600,
                      "messages": [{"role": "user", "content": "hi"}]});
    let estimate = (serde_json::to_vec(&body).unwrap().len() as u64).div_ceil(4) + 600;
    let resp = post(&sidecar, "/v1/chat/completions", body.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(num(&resp, "x-ratelimit-limit-tokens"), 1000);
    let first = num(&resp, "x-ratelimit-remaining-tokens");
    assert!(
        first <= 1000 - estimate,
        "{first}: the estimate was charged"
    );
    let usage: Value = resp.json().await.unwrap();
    let used = usage["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used < 50, "{usage}");
    // Without the correction this one would not fit (first < estimate); with it, it does, and
    // the header says what was left once the first one's usage replaced its estimate.
    let resp = post(&sidecar, "/v1/chat/completions", body.clone()).await;
    assert_eq!(
        resp.status(),
        200,
        "the first request's estimate was refunded"
    );
    let second = num(&resp, "x-ratelimit-remaining-tokens");
    assert!(second + estimate + used >= 1000 - 2, "{second}");
    assert!(second <= 1000 - estimate - used + 1, "{second}");
    // A prompt bigger than what is left is refused with the tokens unit.
    let big = json!({"model": "chat", "max_tokens": 990,
                     "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&sidecar, "/v1/chat/completions", big).await;
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "tokens", "{body}");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn limits_apply_only_to_the_workloads_they_select() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let routes = [
        route(
            "other-sa",
            "  rateLimits: [{name: l, requestsPerMinute: 1, serviceAccounts: [billing]}]\n",
        ),
        route(
            "our-team",
            "  rateLimits: [{name: l, requestsPerMinute: 1, workloadSelector: {matchLabels: {team: search}}}]\n",
        ),
        route(
            "other-team",
            "  rateLimits: [{name: l, requestsPerMinute: 1, workloadSelector: {matchExpressions: [{key: team, operator: In, values: [ads]}]}}]\n",
        ),
        route(
            "our-sa",
            "  rateLimits: [{name: l, requestsPerMinute: 1, serviceAccounts: [search-api]}]\n",
        ),
    ]
    .concat();
    let sidecar = Sidecar::start_with(&manifests(&mock, &routes), |args| {
        args.service_account = Some("search-api".into());
        args.pod_labels = vec![("team".into(), "search".into())];
    })
    .await;
    for (route, limited) in [
        ("other-sa", false),
        ("our-team", true),
        ("other-team", false),
        ("our-sa", true),
    ] {
        let first = post(&sidecar, "/v1/chat/completions", chat(route)).await;
        assert_eq!(first.status(), 200, "{route}");
        assert_eq!(
            header(&first, "x-ratelimit-limit-requests").is_some(),
            limited,
            "{route}"
        );
        let second = post(&sidecar, "/v1/chat/completions", chat(route)).await;
        assert_eq!(second.status() == 429, limited, "{route}");
    }
}

/// The audit lines written so far (waiting for `n`).
async fn audit_lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} audit lines in {}", path.display());
}

#[tokio::test]
async fn one_audit_line_per_request_with_content_only_where_opted_in() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let routes = [
        route(
            "open",
            "  redact: {action: mask}\n  audit: {prompt: true, answer: true}\n  rateLimits: [{name: r, requestsPerMinute: 100}]\n",
        ),
        route("quiet", "  redact: {action: mask}\n"),
        // A Budget covering `open` only: its decision joins the audit line.
        "---\napiVersion: gatehouse.dev/v1alpha1\nkind: Budget\nmetadata: {name: team}\n\
         spec: {limit: {usd: \"100\"}, period: daily, scope: {routes: [open]}}\n"
            .to_string(),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let audit = path.clone();
    let sidecar = Sidecar::start_with(&manifests(&mock, &routes), |args| {
        args.audit_file = Some(audit);
        args.service_account = Some("search-api".into());
        args.pod_name = Some("search-7d4b9c8f6d-x2x9k".into());
        args.pod_labels = vec![("team".into(), "search".into())];
    })
    .await;
    let ask = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream, "messages": [{"role": "user",
               "content": "mail bob@example.com"}]})
    };
    mock.push(Behaviour::normal().content("Mailed carol@example.org as asked"));
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .header("x-gatehouse-tag", "support")
        .json(&ask("open", false))
        .send()
        .await
        .unwrap();
    let id = header(&resp, "x-gatehouse-request-id").unwrap().to_string();
    assert_eq!(resp.status(), 200);
    mock.push(Behaviour::normal().pieces(["Mailed car", "ol@exam", "ple.org done"]));
    let resp = post(&sidecar, "/v1/chat/completions", ask("open", true)).await;
    let _ = resp.text().await.unwrap();
    mock.push(Behaviour::normal().content("Mailed carol@example.org"));
    let _ = post(&sidecar, "/v1/chat/completions", ask("quiet", false))
        .await
        .text()
        .await;
    let lines = audit_lines(&path, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let first = &lines[0];
    assert_eq!(first["request_id"], id);
    assert!(first["time"].as_str().unwrap().ends_with('Z'), "{first}");
    assert_eq!(first["namespace"], "default");
    assert_eq!(first["service_account"], "search-api");
    assert_eq!(first["pod"], "search-7d4b9c8f6d-x2x9k");
    assert_eq!(first["workload"], "search");
    assert_eq!(first["labels"]["team"], "search");
    assert_eq!(first["tag"], "support");
    assert_eq!(first["route"], "open");
    assert_eq!(first["provider"], "p");
    assert_eq!(first["model"], "gpt-4o-mini");
    assert!(first["tokens"]["input"].as_u64().unwrap() > 0, "{first}");
    assert!(
        first["cost_usd"].as_str().unwrap().starts_with("0.0"),
        "{first}"
    );
    assert_eq!(first["status"], 200);
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["cache"], "bypass");
    assert_eq!(first["end"], "answered");
    assert_eq!(first["redaction"]["action"], "mask");
    assert_eq!(first["redaction"]["request"]["email"], 1);
    assert_eq!(first["redaction"]["response"]["email"], 1);
    assert_eq!(first["rate_limit"]["decision"], "allowed");
    assert_eq!(first["rate_limit"]["limits"], json!(["r"]));
    assert_eq!(first["rate_limit"]["remaining_requests"], 99);
    assert_eq!(first["budget"]["decision"], "ok", "{first}");
    assert_eq!(first["budget"]["budgets"], json!(["team"]));
    // The content, after redaction.
    assert_eq!(
        first["prompt"]["messages"][0]["content"], "mail [EMAIL_1]",
        "{first}"
    );
    assert_eq!(
        first["answer"]["choices"][0]["message"]["content"],
        "Mailed [EMAIL_2] as asked"
    );
    let streamed = &lines[1];
    assert_eq!(streamed["stream"], true);
    assert_eq!(streamed["end"], "complete");
    assert_eq!(streamed["answer"], "Mailed [EMAIL_2] done", "{streamed}");
    let quiet = &lines[2];
    assert_eq!(quiet["route"], "quiet");
    assert!(
        quiet.get("prompt").is_none() && quiet.get("answer").is_none(),
        "{quiet}"
    );
    assert!(quiet.get("rate_limit").is_none(), "{quiet}");
    assert!(quiet.get("budget").is_none(), "{quiet}");
    let text = std::fs::read_to_string(&path).unwrap();
    for value in ["bob@example.com", "carol@example.org", KEY] {
        assert!(!text.contains(value), "{value} in the audit log");
    }
}

#[tokio::test]
async fn refused_requests_are_audited_with_the_decision() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let routes = [
        route(
            "limited",
            "  rateLimits: [{name: once, requestsPerMinute: 1}]\n",
        ),
        route(
            "blocked",
            "  redact: {action: block}\n  audit: {prompt: true}\n",
        ),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let audit = path.clone();
    let sidecar = Sidecar::start_with(&manifests(&mock, &routes), |args| {
        args.audit_file = Some(audit);
    })
    .await;
    for _ in 0..2 {
        let _ = post(&sidecar, "/v1/chat/completions", chat("limited")).await;
    }
    let resp = post(
        &sidecar,
        "/v1/chat/completions",
        json!({"model": "blocked", "messages": [{"role": "user", "content": "ssn 123-45-6789"}]}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let lines = audit_lines(&path, 3).await;
    assert_eq!(lines[1]["status"], 429);
    assert_eq!(lines[1]["error"], "rate_limit_exceeded");
    assert_eq!(lines[1]["rate_limit"]["decision"], "limited");
    assert_eq!(lines[1]["rate_limit"]["refused_by"], "once");
    assert_eq!(lines[2]["status"], 400);
    assert_eq!(lines[2]["error"], "sensitive_data_blocked");
    assert_eq!(lines[2]["redaction"]["request"]["ssn"], 1);
    assert!(
        lines[2].get("prompt").is_none(),
        "a blocked prompt is never written"
    );
    assert!(
        !std::fs::read_to_string(&path)
            .unwrap()
            .contains("123-45-6789")
    );
}

#[tokio::test]
async fn restored_values_never_reach_the_audit_line() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let routes = route(
        "restore",
        "  redact: {action: maskAndRestore}\n  audit: {prompt: true, answer: true}\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let audit = path.clone();
    let sidecar = Sidecar::start_with(&manifests(&mock, &routes), |args| {
        args.audit_file = Some(audit);
    })
    .await;
    let ask = |stream: bool| {
        json!({"model": "restore", "stream": stream, "messages": [{"role": "user",
               "content": "mail bob@example.com"}]})
    };
    for stream in [false, true] {
        mock.push(Behaviour::normal().pieces(["Mailed [EMAIL_1] and ", "dave@example.net"]));
        let text = post(&sidecar, "/v1/chat/completions", ask(stream))
            .await
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("bob@example.com"),
            "the app gets it back: {text}"
        );
    }
    let lines = audit_lines(&path, 2).await;
    assert_eq!(
        lines[0]["answer"]["choices"][0]["message"]["content"],
        "Mailed [EMAIL_1] and [EMAIL_2]"
    );
    assert_eq!(lines[1]["answer"], "Mailed [EMAIL_1] and [EMAIL_2]");
    assert_eq!(lines[0]["redaction"]["restored"], 1);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("bob@example.com") && !text.contains("dave@example.net"));
}

#[tokio::test]
async fn responses_requests_are_limited_by_their_output_limit_with_openai_429s() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &[
            route("tok", "  rateLimits: [{name: t, tokensPerMinute: 1000}]\n"),
            route("req", "  rateLimits: [{name: r, requestsPerMinute: 1}]\n"),
        ]
        .concat(),
    ))
    .await;
    // The estimate is the body's bytes / 4 plus `max_output_tokens`, charged up front.
    let first = json!({"model": "tok", "input": "hi", "max_output_tokens": 600});
    let estimate = (serde_json::to_vec(&first).unwrap().len() as u64).div_ceil(4) + 600;
    let resp = post(&sidecar, "/v1/responses", first).await;
    assert_eq!(resp.status(), 200);
    let left = num(&resp, "x-ratelimit-remaining-tokens");
    assert!(
        left <= 1000 - estimate,
        "the output limit was charged: {left}"
    );
    // Once its usage replaced its estimate, 990 more output tokens do not fit: OpenAI's 429.
    let big = json!({"model": "tok", "input": "hi", "max_output_tokens": 990});
    let resp = post(&sidecar, "/v1/responses", big).await;
    assert_eq!(resp.status(), 429);
    assert!(header(&resp, "retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "tokens", "{body}");
    // Requests per minute, streamed: refused before any event, in OpenAI's shape.
    for (n, stream) in [false, true].into_iter().enumerate() {
        let resp = post(
            &sidecar,
            "/v1/responses",
            json!({"model": "req", "input": "hi", "stream": stream}),
        )
        .await;
        if n == 0 {
            assert_eq!(resp.status(), 200);
            continue;
        }
        assert_eq!(resp.status(), 429);
        assert_eq!(header(&resp, "content-type"), Some("application/json"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        assert_eq!(body["error"]["type"], "requests", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    assert_eq!(mock.request_count(), 2, "refused requests never left");
}

#[tokio::test]
async fn a_responses_stream_is_audited_masked_and_the_app_gets_its_values() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let routes = route(
        "restore",
        "  redact: {action: maskAndRestore}\n  audit: {prompt: true, answer: true}\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let audit = path.clone();
    let sidecar = Sidecar::start_with(&manifests(&mock, &routes), |args| {
        args.audit_file = Some(audit);
    })
    .await;
    for stream in [false, true] {
        mock.push(Behaviour::normal().pieces([
            "Mailed [EMA",
            "IL_1] and ",
            "dave@exam",
            "ple.net",
        ]));
        let text = post(
            &sidecar,
            "/v1/responses",
            json!({"model": "restore", "stream": stream, "input": "mail bob@example.com"}),
        )
        .await
        .text()
        .await
        .unwrap();
        assert!(
            text.contains("Mailed bob@example.com and [EMAIL_2]"),
            "the app gets it back: {text}"
        );
        assert!(!text.contains("dave@example.net"), "{text}");
    }
    let lines = audit_lines(&path, 2).await;
    let buffered = &lines[0]["answer"]["output"];
    assert_eq!(
        buffered[0]["content"][0]["text"], "Mailed [EMAIL_1] and [EMAIL_2]",
        "{buffered}"
    );
    assert_eq!(lines[1]["answer"], "Mailed [EMAIL_1] and [EMAIL_2]");
    assert_eq!(lines[1]["redaction"]["restored"], 1, "{}", lines[1]);
    assert_eq!(
        lines[1]["redaction"]["response"]["email"], 1,
        "{}",
        lines[1]
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("bob@example.com") && !text.contains("dave@example.net"));
}
