//! The GenAI semantic-convention metrics and the gateway's own per-request counters, as
//! `/metrics` exposes them: names after the OTel→Prometheus mapping, the conventions' buckets
//! and attributes, a failover counted, and nothing recorded with `--metrics off`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::time::Duration;

use gatehouse_mock_provider::{Behaviour, MockProvider};
use support::{Sidecar, SseReader, provider};

const KEY: &str = "sk-genai-test-0123456789";
const WAIT: Duration = Duration::from_secs(5);

async fn setup(
    tweak: impl FnOnce(&mut gatehouse_sidecar::Args),
) -> (MockProvider, MockProvider, Sidecar) {
    let primary = MockProvider::with_api_key(KEY).start().await.unwrap();
    let backup = MockProvider::with_api_key(KEY).start().await.unwrap();
    let manifests = format!(
        r#"{}---
{}---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: chat}}
spec:
  models: ["chat"]
  targets:
    - {{provider: primary, model: gpt-4o-mini, priority: 0}}
    - {{provider: backup, model: gpt-4o, priority: 1}}
  retry: {{attempts: 2}}
"#,
        provider("primary", &primary.base_url(), Some(KEY)),
        provider("backup", &backup.base_url(), Some(KEY)),
    );
    (
        primary,
        backup,
        Sidecar::start_with(&manifests, tweak).await,
    )
}

/// Wait until the metrics contain every one of `needles`; fail with the metrics otherwise.
async fn metrics_with(sidecar: &Sidecar, needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = sidecar.metrics().await;
        if needles.iter().all(|n| metrics.contains(n)) {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing one of {needles:?} in\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stream_records_the_server_and_client_metrics_with_the_conventions_names() {
    let (primary, _backup, sidecar) = setup(|_| {}).await;
    primary.push(Behaviour::normal().content("one two three four five six"));
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 200);
    let _ = SseReader::new(resp).rest(WAIT).await;
    let server = r#"gen_ai_operation_name="chat",gen_ai_provider_name="openai_compatible",gen_ai_request_model="chat",gen_ai_response_model="gpt-4o-mini",error_type="",route="chat",provider="primary""#;
    let client = r#"gen_ai_operation_name="chat",gen_ai_provider_name="openai_compatible",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini",error_type="",route="chat",provider="primary""#;
    let needles = [
        format!("gen_ai_server_request_duration_seconds_count{{{server}}} 1"),
        format!("gen_ai_server_time_to_first_token_seconds_count{{{server}}} 1"),
        format!("gen_ai_server_time_per_output_token_seconds_count{{{server}}} 1"),
        format!("gen_ai_client_operation_duration_seconds_count{{{client}}} 1"),
        // The conventions' boundaries: the first and last of each.
        format!("gen_ai_server_request_duration_seconds_bucket{{le=\"81.92\",{server}}} 1"),
        format!("gen_ai_server_time_to_first_token_seconds_bucket{{le=\"0.001\",{server}}}"),
        format!("gen_ai_server_time_per_output_token_seconds_bucket{{le=\"2.5\",{server}}} 1"),
        r#"gatehouse_cache_requests_total{route="chat",result="bypass"} 1"#.to_string(),
        "# TYPE gen_ai_client_token_usage histogram".to_string(),
    ];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    let text = metrics_with(&sidecar, &needles).await;
    for kind in ["input", "output"] {
        let labels = format!(
            r#"gen_ai_operation_name="chat",gen_ai_provider_name="openai_compatible",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini",route="chat",provider="primary",gen_ai_token_type="{kind}""#
        );
        let count = format!("gen_ai_client_token_usage_count{{{labels}}} 1");
        assert!(text.contains(&count), "{count} missing:\n{text}");
        let top = format!("gen_ai_client_token_usage_bucket{{le=\"67108864.0\",{labels}}} 1");
        assert!(text.contains(&top), "{top} missing:\n{text}");
        let sum = text
            .lines()
            .find(|l| l.starts_with(&format!("gen_ai_client_token_usage_sum{{{labels}}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {kind} token sum in\n{text}"));
        assert!(sum > 0.0, "{kind} tokens: {sum}");
    }
    assert!(!text.contains("gatehouse_failovers_total{"), "{text}");
}

#[tokio::test]
async fn a_failover_is_counted_and_the_failed_attempt_carries_its_error_type() {
    let (primary, backup, sidecar) = setup(|_| {}).await;
    primary.push(Behaviour::status(500));
    backup.push(Behaviour::normal());
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 200);
    let text = metrics_with(
        &sidecar,
        &[
            r#"gatehouse_failovers_total{route="chat",from_provider="primary",to_provider="backup"} 1"#,
            r#"gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name="chat",gen_ai_provider_name="openai_compatible",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="",error_type="server_error",route="chat",provider="primary"} 1"#,
            r#"gen_ai_server_request_duration_seconds_count{gen_ai_operation_name="chat",gen_ai_provider_name="openai_compatible",gen_ai_request_model="chat",gen_ai_response_model="gpt-4o",error_type="",route="chat",provider="backup"} 1"#,
        ],
    )
    .await;
    // A buffered answer has no first token of its own: no TTFT or TPOT series.
    for name in [
        "gen_ai_server_time_to_first_token_seconds_count{",
        "gen_ai_server_time_per_output_token_seconds_count{",
    ] {
        assert!(
            !text.contains(name),
            "{name} for a buffered answer:\n{text}"
        );
    }
}

#[tokio::test]
async fn an_unknown_model_is_a_server_error_without_a_route_or_model() {
    let (_primary, _backup, sidecar) = setup(|_| {}).await;
    let resp = sidecar.chat("no-such-model", false).await;
    assert_eq!(resp.status(), 404);
    let text = metrics_with(&sidecar, &["gen_ai_server_request_duration_seconds_count{"]).await;
    let line = text
        .lines()
        .find(|l| l.starts_with("gen_ai_server_request_duration_seconds_count{"))
        .unwrap();
    assert!(line.contains(r#"gen_ai_request_model="""#), "{line}");
    assert!(
        !line.contains(r#"error_type="""#),
        "an error has an error.type: {line}"
    );
}

#[tokio::test]
async fn metrics_off_records_nothing_per_request() {
    let (primary, _backup, sidecar) = setup(|a| a.metrics = false).await;
    primary.push(Behaviour::normal());
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 200);
    let _ = resp.text().await.unwrap();
    // The request ended before its answer was read to the end; the record is written by then.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = sidecar.metrics().await;
    for name in [
        "gen_ai_server_request_duration_seconds_count{",
        "gen_ai_client_operation_duration_seconds_count{",
        "gatehouse_requests_total{",
        "gatehouse_tokens_total{",
        "gatehouse_cache_requests_total{",
    ] {
        assert!(
            !text.contains(name),
            "{name} recorded with --metrics off:\n{text}"
        );
    }
    // The endpoint itself still answers with the metrics that are not per request.
    assert!(text.contains("gatehouse_connections"), "{text}");
}
