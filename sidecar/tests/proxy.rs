//! The sidecar in-process against mock providers: routing, failover, streaming, errors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use gatehouse_mock_provider::{Behaviour, MockProvider, StreamGate};
use support::{Sidecar, header, provider, refused_url, sse_events};

const PRIMARY_KEY: &str = "sk-primary-0123456789abcdef";
const SECONDARY_KEY: &str = "sk-secondary-fedcba9876543210";

fn failover_route(attempt_timeout: &str) -> String {
    format!(
        r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata:
  name: chat
spec:
  models: ["chat", "gpt-4o-mini"]
  targets:
    - provider: primary
      model: gpt-4o-mini
      priority: 0
    - provider: secondary
      model: backup-model
      priority: 1
  retry:
    attempts: 3
    backoff: {{base: 10ms, max: 20ms}}
  timeouts:
    attempt: {attempt_timeout}
    request: 10s
  # These tests make a target fail on purpose, request after request, to pin the retry table;
  # ejection would then skip it. Ejection has its own suite (tests/faults).
  outlier: {{enabled: false}}
"#
    )
}

async fn two_providers() -> (MockProvider, MockProvider, Sidecar) {
    let primary = MockProvider::with_api_key(PRIMARY_KEY)
        .start()
        .await
        .unwrap();
    let secondary = MockProvider::with_api_key(SECONDARY_KEY)
        .start()
        .await
        .unwrap();
    let manifests = [
        provider("primary", &primary.base_url(), Some(PRIMARY_KEY)),
        provider("secondary", &secondary.base_url(), Some(SECONDARY_KEY)),
        failover_route("500ms"),
    ]
    .concat();
    let sidecar = Sidecar::start(&manifests).await;
    (primary, secondary, sidecar)
}

#[tokio::test]
async fn routes_alias_rewrites_model_sends_provider_key_and_sets_headers() {
    let (primary, secondary, sidecar) = two_providers().await;
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-route"), Some("chat"));
    assert_eq!(header(&resp, "x-gatehouse-provider"), Some("primary"));
    assert_eq!(header(&resp, "x-gatehouse-model"), Some("gpt-4o-mini"));
    assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("1"));
    assert_eq!(header(&resp, "x-gatehouse-cache"), Some("bypass"));
    let id = header(&resp, "x-gatehouse-request-id").unwrap().to_string();
    assert_eq!(id.len(), 32);
    let cost: f64 = header(&resp, "x-gatehouse-cost-usd")
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    let usage = &body["usage"];
    let expected = (usage["prompt_tokens"].as_f64().unwrap() * 0.15
        + usage["completion_tokens"].as_f64().unwrap() * 0.60)
        / 1e6;
    assert!(
        (cost - expected).abs() < 1e-9,
        "cost {cost} expected {expected}"
    );
    assert_eq!(body["object"], "chat.completion");

    let seen = primary.last_request().unwrap();
    assert_eq!(
        seen.model(),
        Some("gpt-4o-mini"),
        "alias rewritten to the target model"
    );
    assert_eq!(seen.bearer(), Some(PRIMARY_KEY));
    assert_eq!(
        seen.body.as_ref().unwrap()["messages"][0]["content"],
        "Say hello"
    );
    assert_eq!(secondary.request_count(), 0);
}

#[tokio::test]
async fn client_authorization_is_replaced_by_the_provider_key() {
    let (primary, _secondary, sidecar) = two_providers().await;
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .bearer_auth("sk-app-should-not-leak")
        .json(
            &serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(primary.last_request().unwrap().bearer(), Some(PRIMARY_KEY));
}

#[tokio::test]
async fn fails_over_on_each_retryable_cause() {
    let causes: Vec<(&str, Behaviour)> = vec![
        ("503", Behaviour::status(503)),
        ("500", Behaviour::status(500)),
        ("429", Behaviour::rate_limited(3)),
        ("hang past the attempt timeout", Behaviour::hang()),
        ("connection dropped", Behaviour::drop_connection()),
        ("invalid JSON", Behaviour::garbage()),
        ("wrong content type", Behaviour::wrong_content_type()),
        ("401", Behaviour::status(401)),
    ];
    let (primary, secondary, sidecar) = two_providers().await;
    for (cause, behaviour) in causes {
        for stream in [false, true] {
            if stream && cause == "invalid JSON" {
                // The mock's garbage stream starts with a valid role chunk: that commits the
                // stream (see the mid-stream garbage test).
                continue;
            }
            primary.clear();
            secondary.clear();
            primary.push(behaviour.clone());
            let resp = sidecar.chat("chat", stream).await;
            assert_eq!(resp.status(), 200, "{cause} (stream={stream})");
            assert_eq!(
                header(&resp, "x-gatehouse-provider"),
                Some("secondary"),
                "{cause} (stream={stream})"
            );
            assert_eq!(
                header(&resp, "x-gatehouse-model"),
                Some("backup-model"),
                "{cause}"
            );
            assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("2"), "{cause}");
            if stream {
                let events = sse_events(resp).await;
                assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{cause}");
            } else {
                resp.json::<serde_json::Value>().await.unwrap();
            }
            assert_eq!(primary.request_count(), 1, "{cause}");
            assert_eq!(secondary.request_count(), 1, "{cause}");
            assert_eq!(
                secondary.last_request().unwrap().bearer(),
                Some(SECONDARY_KEY)
            );
        }
    }
}

#[tokio::test]
async fn fails_over_when_the_primary_refuses_connections() {
    let secondary = MockProvider::with_api_key(SECONDARY_KEY)
        .start()
        .await
        .unwrap();
    let manifests = [
        provider("primary", &refused_url(), Some(PRIMARY_KEY)),
        provider("secondary", &secondary.base_url(), Some(SECONDARY_KEY)),
        failover_route("500ms"),
    ]
    .concat();
    let sidecar = Sidecar::start(&manifests).await;
    for stream in [false, true] {
        let resp = sidecar.chat("chat", stream).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-gatehouse-provider"), Some("secondary"));
        assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("2"));
    }
}

#[tokio::test]
async fn retries_the_same_target_after_a_backoff_when_it_is_the_only_one() {
    let only = MockProvider::start().await.unwrap();
    let manifests = [
        provider("only", &only.base_url(), None),
        r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata:
  name: solo
spec:
  targets:
    - provider: only
      model: m
  retry:
    attempts: 3
    backoff: {base: 10ms, max: 10ms}
"#
        .to_string(),
    ]
    .concat();
    let sidecar = Sidecar::start(&manifests).await;
    only.push_n(Behaviour::status(502), 2);
    let resp = sidecar.chat("solo", false).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("3"));
    assert_eq!(only.request_count(), 3);
}

#[tokio::test]
async fn all_targets_failing_gives_502_with_a_summary_and_no_key() {
    let (primary, secondary, sidecar) = two_providers().await;
    primary.set_default(Behaviour::status(503));
    secondary.set_default(Behaviour::status(401));
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("3"));
    let body = resp.text().await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let message = json["error"]["message"].as_str().unwrap();
    assert_eq!(json["error"]["type"], "api_error");
    assert_eq!(json["error"]["code"], "upstream_failed");
    assert!(
        message.contains("primary/gpt-4o-mini: upstream answered 503"),
        "{message}"
    );
    assert!(message.contains("secondary/backup-model"), "{message}");
    assert!(message.contains("credentials"), "{message}");
    assert!(!body.contains(PRIMARY_KEY) && !body.contains(SECONDARY_KEY));
}

#[tokio::test]
async fn rate_limited_everywhere_gives_429_with_retry_after() {
    let (primary, secondary, sidecar) = two_providers().await;
    // The shortest stated delay: the first target free again serves the retried request.
    primary.set_default(Behaviour::rate_limited(11));
    secondary.set_default(Behaviour::rate_limited(7));
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 429);
    let retry_after = header(&resp, "retry-after").map(str::to_string);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(retry_after.as_deref(), Some("7"), "{json}");
    assert_eq!(json["error"]["type"], "rate_limit_error");
    assert_eq!(json["error"]["code"], "upstream_rate_limited");

    // Only one target said how long: that delay.
    primary.set_default(Behaviour::status(429));
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(header(&resp, "retry-after"), Some("7"));

    // Nobody said: one second.
    secondary.set_default(Behaviour::status(429));
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), Some("1"));

    // A 429 that was not the last failure leaves the answer a 502, without Retry-After.
    primary.set_default(Behaviour::status(503));
    secondary.set_default(Behaviour::rate_limited(5));
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(header(&resp, "retry-after"), None);
}

#[tokio::test]
async fn upstream_400_is_passed_back_and_not_retried() {
    let (primary, secondary, sidecar) = two_providers().await;
    primary.push(Behaviour::status(400).error_message("max_tokens is too large"));
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 400);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["error"]["message"], "max_tokens is too large");
    assert_eq!(primary.request_count(), 1);
    assert_eq!(secondary.request_count(), 0);
}

#[tokio::test]
async fn stream_chunks_reach_the_client_before_the_upstream_finishes() {
    let (primary, _secondary, sidecar) = two_providers().await;
    let gate = StreamGate::new();
    primary.push(Behaviour::normal().chunks(4).gate(gate.clone()));
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), Some("text/event-stream"));
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    // The mock holds everything after the first content chunk until the gate opens: the client
    // must see that chunk while the upstream is still mid-stream.
    while !seen.contains("\"content\":\"")
        || seen.contains("\"content\":\"\"") && seen.matches("\"content\":\"").count() < 2
    {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("first content chunk was not forwarded while the upstream was still streaming")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!seen.contains("[DONE]"));
    gate.open();
    while let Some(chunk) = body.next().await {
        seen.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(seen.trim_end().ends_with("data: [DONE]"), "{seen}");
    assert!(
        seen.contains("\"usage\":{"),
        "usage chunk forwarded: {seen}"
    );
}

#[tokio::test]
async fn a_stream_cut_after_the_first_byte_ends_with_an_error_event_and_is_not_retried() {
    let (primary, secondary, sidecar) = two_providers().await;
    primary.push(Behaviour::cut_after(2));
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("1"));
    let events = sse_events(resp).await;
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "a cut stream must not look finished: {events:?}"
    );
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_broken");
    assert!(
        events.len() >= 2,
        "chunks before the cut are delivered: {events:?}"
    );
    assert_eq!(
        secondary.request_count(),
        0,
        "no retry once bytes reached the client"
    );
    assert_eq!(primary.request_count(), 1);
}

#[tokio::test]
async fn garbage_after_the_first_event_ends_the_stream_with_an_error_event() {
    let (primary, secondary, sidecar) = two_providers().await;
    primary.push(Behaviour::garbage());
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    let first: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(
        !events.iter().any(|e| e.contains("<<not json")),
        "garbage is not relayed: {events:?}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"));
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_invalid_event");
    assert_eq!(secondary.request_count(), 0);
}

#[tokio::test]
async fn weights_split_traffic_within_a_priority() {
    let a = MockProvider::start().await.unwrap();
    let b = MockProvider::start().await.unwrap();
    let manifests = [
        provider("a", &a.base_url(), None),
        provider("b", &b.base_url(), None),
        r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata:
  name: split
spec:
  targets:
    - {provider: a, model: m, weight: 3}
    - {provider: b, model: m, weight: 1}
"#
        .to_string(),
    ]
    .concat();
    let sidecar = Sidecar::start(&manifests).await;
    for _ in 0..400 {
        assert_eq!(sidecar.chat("split", false).await.status(), 200);
    }
    let (na, nb) = (a.request_count(), b.request_count());
    assert_eq!(na + nb, 400);
    // expected 300/100; 4.5 standard deviations of slack
    assert!((260..=340).contains(&na), "a={na} b={nb}");
}

#[tokio::test]
async fn error_cases_use_openai_error_bodies() {
    let (_primary, _secondary, sidecar) = two_providers().await;
    let post = |body: &'static str| {
        sidecar
            .client
            .post(sidecar.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        (
            post("{not json").await.unwrap(),
            400,
            "invalid_request_error",
            "invalid_request",
        ),
        (
            post(r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#)
                .await
                .unwrap(),
            404,
            "invalid_request_error",
            "model_not_found",
        ),
        (
            sidecar
                .client
                .post(sidecar.url("/v1/chat/completions"))
                .body(vec![b' '; 2 * 1024 * 1024])
                .send()
                .await
                .unwrap(),
            413,
            "invalid_request_error",
            "request_too_large",
        ),
        (
            sidecar
                .client
                .get(sidecar.url("/v1/nothing"))
                .send()
                .await
                .unwrap(),
            404,
            "invalid_request_error",
            "not_found",
        ),
        (
            sidecar
                .client
                .get(sidecar.url("/v1/chat/completions"))
                .send()
                .await
                .unwrap(),
            405,
            "invalid_request_error",
            "method_not_allowed",
        ),
    ];
    for (resp, status, kind, code) in cases {
        assert_eq!(resp.status(), status, "{code}");
        assert!(header(&resp, "x-gatehouse-request-id").is_some());
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["error"]["type"], kind);
        assert_eq!(json["error"]["code"], code);
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
}

#[tokio::test]
async fn a_route_whose_provider_is_missing_answers_503_naming_why() {
    let manifests = r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata:
  name: orphan
spec:
  targets:
    - provider: ghost
      model: m
"#;
    let sidecar = Sidecar::start(manifests).await;
    let resp = sidecar.chat("orphan", false).await;
    assert_eq!(resp.status(), 503);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["error"]["code"], "no_usable_targets");
    assert!(json["error"]["message"].as_str().unwrap().contains("ghost"));
}

#[tokio::test]
async fn lists_route_aliases_as_models() {
    let (_p, _s, sidecar) = two_providers().await;
    let json: serde_json::Value = sidecar
        .client
        .get(sidecar.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat", "gpt-4o-mini"]);
    assert_eq!(json["object"], "list");
}

#[tokio::test]
async fn embeddings_are_routed_too() {
    let (primary, _s, sidecar) = two_providers().await;
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/embeddings"))
        .json(&serde_json::json!({"model": "chat", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["object"], "list");
    assert_eq!(primary.last_request().unwrap().path, "/v1/embeddings");
}

#[tokio::test]
async fn admin_port_serves_health_readiness_and_metrics() {
    let (primary, _s, sidecar) = two_providers().await;
    primary.push(Behaviour::status(503));
    assert_eq!(sidecar.chat("chat", false).await.status(), 200);
    assert_eq!(sidecar.chat("nope", false).await.status(), 404);
    let get = |p: &str| sidecar.client.get(sidecar.admin_url(p)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for needle in [
        r#"gatehouse_requests_total{route="chat",provider="secondary",model="backup-model",status="200"} 1"#,
        r#"gatehouse_upstream_attempts_total{provider="primary",outcome="server_error"} 1"#,
        r#"gatehouse_upstream_attempts_total{provider="secondary",outcome="success"} 1"#,
        r#"gatehouse_errors_total{reason="model_not_found"} 1"#,
        "gatehouse_request_duration_seconds_bucket",
        "gatehouse_gateway_overhead_seconds_count 1",
        r#"gatehouse_config_reloads_total{result="success"} 1"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}
