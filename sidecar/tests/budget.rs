//! Budgets in standalone mode, where the sidecar is its own (local) ledger, through the real
//! request path against the mock provider: a hard limit under concurrency (spend never passes
//! it, and the budget is used up to what the requests in flight hold), refusals in both client
//! dialects, overlapping Budgets, scope by route, ServiceAccount and pod labels, soft budgets,
//! thresholds, downgrade, a streamed answer's spend, and a period rolling over.
//!
//! The Budgets come from manifests where the Budget CRD can express them; thresholds, downgrade
//! and a custom period (rendered config fields the CRD gains separately) are set on the running
//! config directly, as a rendered config would carry them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_crds::ProviderKeys;
use gatehouse_mock_provider::MockProvider;
use gatehouse_sidecar::state::Snapshot;
use serde_json::{Value, json};
use support::{Sidecar, header};

/// USD per million tokens of the `pricey` model: a request of 2 prompt and 5 completion tokens
/// (what the mock answers "Say hello" with) costs 0.017 USD.
const PRICEY: (f64, f64) = (1000.0, 3000.0);
const REQUEST_COST: f64 = 0.017;

fn manifests(mock: &MockProvider, budgets: &str) -> String {
    format!(
        r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: mock}}
spec:
  type: openaiCompatible
  endpoint: {base}
  models:
    - {{name: pricey, pricing: {{inputPerMillion: "{pin}", outputPerMillion: "{pout}"}}}}
    - {{name: cheap, pricing: {{inputPerMillion: "0.001", outputPerMillion: "0.001"}}}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: chat}}
spec:
  models: [chat]
  targets: [{{provider: mock, model: pricey}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: other}}
spec:
  models: [other]
  targets: [{{provider: mock, model: pricey}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: cheap}}
spec:
  models: [cheap]
  targets: [{{provider: mock, model: cheap}}]
{budgets}"#,
        base = mock.base_url(),
        pin = PRICEY.0,
        pout = PRICEY.1,
    )
}

fn budget(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: gatehouse.dev/v1alpha1\nkind: Budget\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

/// Replace the running config's Budgets with `budgets` (name → rendered `BudgetConfig`).
fn set_budgets(sidecar: &Sidecar, budgets: Value) {
    let mut config = sidecar.running.store.load().unwrap().config.clone();
    config.budgets = serde_json::from_value(budgets).unwrap();
    let snapshot = Snapshot::build(config, &ProviderKeys::new()).unwrap();
    sidecar.running.store.store(snapshot);
}

async fn stream(sidecar: &Sidecar, model: &str) -> reqwest::Response {
    sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .json(&json!({
            "model": model,
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 8,
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .send()
        .await
        .unwrap()
}

async fn chat(sidecar: &Sidecar, model: &str) -> reqwest::Response {
    sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .json(&json!({
            "model": model,
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 8,
        }))
        .send()
        .await
        .unwrap()
}

fn cost(resp: &reqwest::Response) -> f64 {
    header(resp, "x-gatehouse-cost-usd")
        .expect("a cost header")
        .parse()
        .unwrap()
}

/// Checks a refusal in OpenAI's shape and returns its `Retry-After` seconds.
async fn assert_openai_refusal(resp: reqwest::Response, budget: &str) -> Option<u64> {
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "x-gatehouse-budget"), Some("exceeded"));
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    let retry_after = header(&resp, "retry-after").map(|v| v.parse::<u64>().unwrap());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
    assert!(body["error"]["param"].is_null(), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("budget '{budget}'")),
        "the budget is named: {message}"
    );
    retry_after
}

/// What [`chat`] reserves on the pricey model: body bytes / 3 input tokens and its 8 output
/// tokens.
fn chat_estimate() -> f64 {
    let body_bytes = serde_json::to_vec(&json!({
        "model": "chat",
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 8,
    }))
    .unwrap()
    .len() as f64;
    (body_bytes / 3.0).ceil() * PRICEY.0 / 1e6 + 8.0 * PRICEY.1 / 1e6
}

fn seconds_to_utc_midnight() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    86_400 - now % 86_400
}

#[tokio::test]
async fn a_hard_limit_holds_under_concurrency() {
    let mock = MockProvider::start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &budget("cap", r#"{limit: {usd: "1"}, period: daily}"#),
    ))
    .await;
    let concurrency = 8;
    let total = 150;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next) = (
            sidecar.client.clone(),
            sidecar.url("/v1/chat/completions"),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let resp = client
                    .post(&url)
                    .json(&json!({
                        "model": "chat",
                        "messages": [{"role": "user", "content": "Say hello"}],
                        "max_tokens": 8,
                    }))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let cost = header(&resp, "x-gatehouse-cost-usd").map(|c| c.parse::<f64>().unwrap());
                let retry_after = header(&resp, "retry-after").map(str::to_string);
                let budget = header(&resp, "x-gatehouse-budget").map(str::to_string);
                let body: Value = resp.json().await.unwrap();
                out.push((status, cost, retry_after, budget, body));
            }
            out
        }));
    }
    let mut spent = 0.0;
    let (mut served, mut refused) = (0, 0);
    for worker in workers {
        for (status, cost, retry_after, budget, body) in worker.await.unwrap() {
            match status {
                200 => {
                    served += 1;
                    spent += cost.unwrap();
                    assert_eq!(budget.as_deref(), Some("ok"));
                }
                429 => {
                    refused += 1;
                    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                    assert!(
                        body["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains("budget 'cap'")
                    );
                    assert_eq!(budget.as_deref(), Some("exceeded"));
                    let secs: u64 = retry_after.unwrap().parse().unwrap();
                    assert!(
                        secs >= 1 && secs <= seconds_to_utc_midnight() + 1,
                        "Retry-After {secs} is until the day ends"
                    );
                }
                other => panic!("unexpected status {other}: {body}"),
            }
        }
    }
    assert_eq!(served + refused, total);
    // The bound: every request costs at most its reservation (the mock answers within
    // `max_tokens`), so the local ledger lets nothing past the limit.
    assert!(spent <= 1.0 + 1e-6, "spent {spent} of a 1 USD limit");
    // And the limit is used up to what the requests in flight may hold: at most `concurrency`
    // reservations of this request's estimate (body bytes / 3 input tokens and 8 output tokens
    // at the pricey rates).
    let estimate = chat_estimate();
    assert!(
        spent >= 1.0 - concurrency as f64 * estimate,
        "spent {spent}: the budget was not used up to its in-flight bound ({estimate} each)"
    );
    assert!(
        (served as f64 * REQUEST_COST - spent).abs() < 1e-6,
        "{served} requests at {REQUEST_COST} each, spent {spent}"
    );
    assert!(refused > 0);
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains(&format!(
            "gatehouse_budget_decisions_total{{budget=\"cap\",outcome=\"ok\"}} {served}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "gatehouse_budget_decisions_total{{budget=\"cap\",outcome=\"exceeded\"}} {refused}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_errors_total{reason=\"budget_exceeded\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn refusals_in_both_dialects_name_the_budget() {
    let mock = MockProvider::start().await.unwrap();
    // Fewer tokens than any request reserves: refused before anything is sent.
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &[
            budget("tiny", r#"{limit: {tokens: 10}, period: daily}"#),
            budget(
                "forever",
                r#"{limit: {tokens: 10}, period: none, scope: {routes: [other]}}"#,
            ),
        ]
        .concat(),
    ))
    .await;
    let secs = assert_openai_refusal(chat(&sidecar, "chat").await, "tiny")
        .await
        .unwrap();
    assert!(secs >= 1 && secs <= seconds_to_utc_midnight() + 1, "{secs}");
    // A stream is refused the same way, before any event.
    let resp = stream(&sidecar, "chat").await;
    assert_openai_refusal(resp, "tiny").await;
    // Anthropic's shape on /v1/messages.
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/messages"))
        .json(&json!({
            "model": "chat",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hello"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "x-gatehouse-budget"), Some("exceeded"));
    assert!(header(&resp, "retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("budget 'tiny'"),
        "{body}"
    );
    // Period none never resets: no Retry-After, and the message says why. Both Budgets cover
    // route other; the one that never resets is named.
    let resp = chat(&sidecar, "other").await;
    assert_eq!(resp.status(), 429);
    assert!(header(&resp, "retry-after").is_none());
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("budget 'forever'") && message.contains("does not reset"),
        "{message}"
    );
    assert_eq!(mock.request_count(), 0, "nothing went upstream");
}

#[tokio::test]
async fn overlapping_budgets_must_all_allow() {
    let mock = MockProvider::start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &[
            budget(
                "chat-only",
                r#"{limit: {usd: "0.1"}, period: monthly, scope: {routes: [chat]}}"#,
            ),
            budget("everything", r#"{limit: {usd: "0.2"}, period: weekly}"#),
        ]
        .concat(),
    ))
    .await;
    let (mut chat_spent, mut all_spent) = (0.0, 0.0);
    // Chat requests until the narrow budget refuses; the wide one still has room.
    loop {
        let resp = chat(&sidecar, "chat").await;
        if resp.status() == 429 {
            assert_openai_refusal(resp, "chat-only").await;
            break;
        }
        assert_eq!(resp.status(), 200);
        chat_spent += cost(&resp);
        all_spent += cost(&resp);
        assert!(chat_spent < 0.1, "runaway: {chat_spent}");
    }
    assert!(chat_spent > 0.0 && chat_spent <= 0.1);
    // Route other is covered by the wide budget only, which counted the chat spend too.
    loop {
        let resp = chat(&sidecar, "other").await;
        if resp.status() == 429 {
            assert_openai_refusal(resp, "everything").await;
            break;
        }
        assert_eq!(resp.status(), 200);
        all_spent += cost(&resp);
        assert!(all_spent < 0.2, "runaway: {all_spent}");
    }
    assert!(all_spent <= 0.2 + 1e-9 && all_spent > chat_spent);
    let other_spent = all_spent - chat_spent;
    assert!(
        other_spent + chat_estimate() <= 0.2,
        "route other alone ({other_spent}) left room: the wide budget counted the chat spend too"
    );
    // A reservation is priced at the request's own targets: what the wide budget has left is
    // too little for the pricey model but plenty for the cheap one.
    let resp = chat(&sidecar, "cheap").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-budget"), Some("ok"));
}

#[tokio::test]
async fn scope_is_the_sidecars_own_identity() {
    let mock = MockProvider::start().await.unwrap();
    let budgets = [
        budget(
            "batch-sa",
            r#"{limit: {tokens: 1}, period: daily, scope: {serviceAccounts: [batch]}}"#,
        ),
        budget(
            "ads-team",
            r#"{limit: {tokens: 1}, period: daily, scope: {workloadSelector: {matchLabels: {team: ads}}}}"#,
        ),
        budget(
            "canary-pods",
            r#"{limit: {tokens: 1}, period: daily, scope: {workloadSelector: {matchExpressions: [{key: track, operator: Exists}]}}}"#,
        ),
        budget(
            "search-web",
            r#"{limit: {tokens: 1}, period: daily, scope: {routes: [other], serviceAccounts: [web], workloadSelector: {matchLabels: {team: search}}}}"#,
        ),
    ]
    .concat();
    let sidecar = Sidecar::start_with(&manifests(&mock, &budgets), |args| {
        args.service_account = Some("web".into());
        args.pod_labels = vec![("team".into(), "search".into())];
    })
    .await;
    // No budget covers route chat for this pod: served, and no budget header.
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        // An app cannot claim another identity.
        .header("x-gatehouse-service-account", "batch")
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-budget"), None);
    // Route other from ServiceAccount web with team=search: covered.
    assert_openai_refusal(chat(&sidecar, "other").await, "search-web").await;
}

#[tokio::test]
async fn a_soft_budget_warns_and_serves() {
    let mock = MockProvider::start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &budget(
            "soft",
            r#"{limit: {tokens: 10}, period: daily, enforcement: soft}"#,
        ),
    ))
    .await;
    let first = chat(&sidecar, "chat").await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-gatehouse-budget"), Some("ok"));
    // 7 of 10 tokens spent; the next one passes the limit.
    let second = chat(&sidecar, "chat").await;
    assert_eq!(header(&second, "x-gatehouse-budget"), Some("ok"));
    for _ in 0..3 {
        let resp = chat(&sidecar, "chat").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-gatehouse-budget"), Some("warn"));
    }
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains("gatehouse_budget_decisions_total{budget=\"soft\",outcome=\"warn\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn thresholds_warn_and_a_downgrade_switches_the_targets() {
    let mock = MockProvider::start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(&mock, "")).await;
    set_budgets(
        &sidecar,
        json!({
            "warned": {"limitUsd": 10.0, "period": "daily", "enforcement": "hard",
                       "thresholds": [1]},
            "capped": {"limitUsd": 0.2, "period": "daily", "enforcement": "hard",
                       "routes": ["chat"], "thresholds": [90],
                       "downgrade": {"atPercent": 40, "route": "cheap"}},
        }),
    );
    // Until 40% of 0.2 USD is spent, chat goes to its own target.
    let mut spent = 0.0;
    let mut warned_spent = 0.0;
    while spent < 0.08 {
        let resp = chat(&sidecar, "chat").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-gatehouse-model"), Some("pricey"));
        assert_eq!(header(&resp, "x-gatehouse-downgraded-to"), None);
        // "warned" passes its 1% threshold (0.1 USD) only later.
        let expected = if warned_spent >= 0.1 { "warn" } else { "ok" };
        assert_eq!(header(&resp, "x-gatehouse-budget"), Some(expected));
        spent += cost(&resp);
        warned_spent += cost(&resp);
    }
    // Past it: the cheap Route's targets serve, and the answer says so. The route asked for
    // stays the one named.
    for _ in 0..5 {
        let resp = chat(&sidecar, "chat").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-gatehouse-budget"), Some("downgraded"));
        assert_eq!(header(&resp, "x-gatehouse-downgraded-to"), Some("cheap"));
        assert_eq!(header(&resp, "x-gatehouse-route"), Some("chat"));
        assert_eq!(header(&resp, "x-gatehouse-model"), Some("cheap"));
        assert!(cost(&resp) < 0.001);
        warned_spent += cost(&resp);
    }
    // Route other is not covered by the downgrading budget: its own target, and a warning once
    // the 1% threshold of "warned" (0.1 USD) is passed.
    while warned_spent < 0.1 {
        let resp = chat(&sidecar, "other").await;
        assert_eq!(header(&resp, "x-gatehouse-budget"), Some("ok"));
        warned_spent += cost(&resp);
    }
    let resp = chat(&sidecar, "other").await;
    assert_eq!(header(&resp, "x-gatehouse-model"), Some("pricey"));
    assert_eq!(header(&resp, "x-gatehouse-budget"), Some("warn"));
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains(
            "gatehouse_budget_decisions_total{budget=\"capped\",outcome=\"downgraded\"} 5"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_streamed_answer_is_settled_with_its_metered_usage() {
    let mock = MockProvider::start().await.unwrap();
    // Each stream costs 7 tokens (2 in, 5 out) and reserves more than 40: a limit of 100 lets
    // a few through, and only if each one's spend is settled does it ever refuse.
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &budget("tokens", r#"{limit: {tokens: 100}, period: daily}"#),
    ))
    .await;
    let mut served = 0;
    loop {
        let resp = stream(&sidecar, "chat").await;
        if resp.status() == 429 {
            assert_openai_refusal(resp, "tokens").await;
            break;
        }
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-gatehouse-budget"), Some("ok"));
        let events = support::sse_events(resp).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        served += 1;
        assert!(
            served <= 100 / 7,
            "streams are not settled: {served} served"
        );
    }
    assert!(served >= 1);
}

#[tokio::test]
async fn a_short_custom_period_rolls_over() {
    let mock = MockProvider::start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(&mock, "")).await;
    let period = 3u64;
    set_budgets(
        &sidecar,
        json!({"short": {"limitTokens": 60, "period": "custom", "periodSeconds": period,
                         "enforcement": "hard"}}),
    );
    // Start just after a period boundary so the whole test fits in one period.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = now.as_millis() as u64 % (period * 1000);
    tokio::time::sleep(Duration::from_millis(period * 1000 - into + 50)).await;
    let mut served = 0;
    let retry_after = loop {
        let resp = chat(&sidecar, "chat").await;
        if resp.status() == 429 {
            break assert_openai_refusal(resp, "short").await.unwrap();
        }
        served += 1;
        assert!(served < 10, "never refused");
    };
    assert!(served >= 1);
    assert!(
        (1..=period).contains(&retry_after),
        "Retry-After {retry_after} is until the {period} s period ends"
    );
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100)).await;
    let resp = chat(&sidecar, "chat").await;
    assert_eq!(resp.status(), 200, "a new period starts from zero");
}

/// A `/v1/responses` request for `model` asking for at most `max_output_tokens`.
async fn responses(
    sidecar: &Sidecar,
    model: &str,
    max_output_tokens: u64,
    stream: bool,
) -> reqwest::Response {
    sidecar
        .client
        .post(sidecar.url("/v1/responses"))
        .json(&json!({
            "model": model,
            "input": "Say hello",
            "max_output_tokens": max_output_tokens,
            "stream": stream,
        }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn responses_requests_reserve_their_max_output_tokens_and_are_refused_in_openai_shape() {
    let mock = MockProvider::start().await.unwrap();
    // 200 tokens: a request reserving its 16 output tokens fits; one reserving the default 4096
    // (`max_output_tokens` not read) would not.
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &[
            budget("small", r#"{limit: {tokens: 200}, period: daily}"#),
            budget(
                "tiny",
                r#"{limit: {tokens: 10}, period: daily, scope: {routes: [other]}}"#,
            ),
        ]
        .concat(),
    ))
    .await;
    for stream in [false, true] {
        let resp = responses(&sidecar, "chat", 16, stream).await;
        assert_eq!(
            resp.status(),
            200,
            "stream {stream}: {:?}",
            resp.text().await
        );
    }
    // Over the limit: OpenAI's error shape on /v1/responses, streamed or not.
    for stream in [false, true] {
        assert_openai_refusal(responses(&sidecar, "other", 16, stream).await, "tiny").await;
    }
    let resp = responses(&sidecar, "chat", 1000, false).await;
    assert_openai_refusal(resp, "small").await;
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn a_streamed_responses_answer_is_settled_with_its_metered_usage() {
    let mock = MockProvider::start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &budget("tokens", r#"{limit: {tokens: 100}, period: daily}"#),
    ))
    .await;
    let mut served = 0;
    loop {
        let resp = responses(&sidecar, "chat", 8, true).await;
        if resp.status() == 429 {
            assert_openai_refusal(resp, "tokens").await;
            break;
        }
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        assert!(body.contains("event: response.completed"), "{body}");
        served += 1;
        assert!(
            served <= 100 / 7,
            "Responses streams are not settled: {served} served"
        );
    }
    assert!(served >= 1);
    let metrics = sidecar.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gatehouse_tokens_total{") && l.contains("route=\"chat\"")),
        "the streams' tokens are metered:\n{metrics}"
    );
}
