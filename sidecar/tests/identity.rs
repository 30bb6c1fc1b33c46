//! Workload identity, the `x-gatehouse-tag` and where they show, against the real binary: the
//! identity comes from `GATEHOUSE_*` variables and a downward-API labels file, no request header
//! changes it, a malformed tag is a 400 in the client's dialect, tags past the cap become
//! `other`, the access line has every field for a buffered and a streamed request, and
//! `/metrics` has the spend counters with the identity and tag labels.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "hostile/proc.rs"]
mod proc;

use std::time::Duration;

use gatehouse_mock_provider::MockProvider;
use proc::SidecarProc;
use serde_json::{Value, json};

const KEY: &str = "sk-identity-0123456789abcdef0123456789";
const POD: &str = "checkout-7d4b9c8f6d-x2x9k";

/// Headers an app might try to claim another identity with; none is read.
const OVERRIDES: [(&str, &str); 6] = [
    ("x-gatehouse-namespace", "kube-system"),
    ("x-gatehouse-workload", "impostor"),
    ("x-gatehouse-service-account", "impostor-sa"),
    ("x-gatehouse-pod", "impostor-pod"),
    ("x-gatehouse-identity", "kube-system/impostor"),
    ("x-forwarded-user", "impostor"),
];

fn manifests(mock: &MockProvider) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Secret
metadata: {{name: k}}
stringData: {{apiKey: "{KEY}"}}
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata: {{name: oai}}
spec:
  type: openaiCompatible
  endpoint: {base}
  apiKeySecretRef: {{name: k, key: apiKey}}
  models: [{{name: gpt-4o-mini, pricing: {{inputPerMillion: "1", outputPerMillion: "2"}}}}]
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: chat}}
spec:
  models: [chat]
  targets: [{{provider: oai, model: gpt-4o-mini}}]
"#,
        base = mock.base_url()
    )
}

/// The sidecar binary with its identity from the environment and a labels file, at most one tag.
fn start(mock: &MockProvider, labels: &tempfile::TempDir) -> SidecarProc {
    let file = labels.path().join("labels");
    std::fs::write(
        &file,
        "app.kubernetes.io/name=\"checkout\"\npod-template-hash=\"7d4b9c8f6d\"\nteam=\"payments\"\n",
    )
    .unwrap();
    SidecarProc::start_with_env(
        &manifests(mock),
        &[],
        &[
            ("GATEHOUSE_NAMESPACE", "shop"),
            ("GATEHOUSE_POD_NAME", POD),
            ("GATEHOUSE_SERVICE_ACCOUNT", "checkout-sa"),
            ("GATEHOUSE_POD_LABELS_FILE", file.to_str().unwrap()),
            ("GATEHOUSE_MAX_TAGS", "1"),
        ],
    )
}

fn chat(stream: bool) -> Value {
    json!({
        "model": "chat",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    })
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    tag: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut req = client.post(url).json(body);
    for (k, v) in OVERRIDES {
        req = req.header(k, v);
    }
    if let Some(tag) = tag {
        req = req.header("x-gatehouse-tag", tag);
    }
    req.send().await.unwrap()
}

/// The access line of `request_id`.
fn access_line(sidecar: &SidecarProc, request_id: &str) -> Value {
    sidecar.wait_log(Duration::from_secs(20), |j| {
        j["target"] == "gatehouse::access" && j["request_id"] == request_id
    })
}

/// The value of the one sample of `metric` whose labels include every one of `labels`.
fn sample(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = metrics.lines().filter(|l| {
        l.strip_prefix(metric)
            .is_some_and(|rest| rest.starts_with('{'))
            && labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
    });
    let line = found.next()?;
    assert!(
        found.next().is_none(),
        "more than one {metric} sample for {labels:?}"
    );
    line.rsplit(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_tag_reach_the_access_line_and_the_spend_counters() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let labels = tempfile::tempdir().unwrap();
    let sidecar = start(&mock, &labels);
    let client = reqwest::Client::new();
    let listening = sidecar.wait_log(Duration::from_secs(5), |j| {
        j["message"] == "gatehouse-sidecar listening"
    });
    assert_eq!(listening["namespace"], "shop");
    assert_eq!(listening["workload"], "checkout");
    assert_eq!(listening["service_account"], "checkout-sa");
    assert_eq!(listening["pod"], POD);
    assert!(
        listening["labels"].as_str().unwrap().contains("payments")
            && !listening["labels"]
                .as_str()
                .unwrap()
                .contains("pod-template-hash"),
        "{listening}"
    );

    // Buffered, tagged.
    let resp = post(
        &client,
        &sidecar.url("/v1/chat/completions"),
        Some("checkout-summary"),
        &chat(false),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-gatehouse-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let cost_header = resp.headers()["x-gatehouse-cost-usd"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = resp.json().await.unwrap();
    let (prompt, completion) = (
        body["usage"]["prompt_tokens"].as_u64().unwrap(),
        body["usage"]["completion_tokens"].as_u64().unwrap(),
    );
    let line = access_line(&sidecar, &id);
    let expect = |line: &Value, fields: &[(&str, Value)]| {
        for (k, v) in fields {
            assert_eq!(&line[*k], v, "field {k} of {line}");
        }
    };
    let identity = [
        ("namespace", json!("shop")),
        ("workload", json!("checkout")),
        ("service_account", json!("checkout-sa")),
        ("pod", json!(POD)),
        ("route", json!("chat")),
        ("provider", json!("oai")),
        ("model", json!("gpt-4o-mini")),
        ("status", json!(200)),
        ("attempts", json!(1)),
        ("cache_write_tokens", json!(0)),
        ("reasoning_tokens", json!(0)),
        ("cost_estimated", json!(false)),
    ];
    expect(&line, &identity);
    expect(
        &line,
        &[
            ("message", json!("request")),
            ("tag", json!("checkout-summary")),
            ("input_tokens", json!(prompt)),
            ("cached_read_tokens", json!(0)),
            ("output_tokens", json!(completion)),
            ("cost_usd", json!(cost_header)),
            ("stream", json!(false)),
            ("end", json!("answered")),
        ],
    );
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
    let cost: f64 = cost_header.parse().unwrap();
    assert!((cost - (prompt as f64 + 2.0 * completion as f64) / 1e6).abs() < 1e-9);

    // Streamed, with a second tag: past the cap of one, so `other`.
    let resp = post(
        &client,
        &sidecar.url("/v1/chat/completions"),
        Some("second-feature"),
        &chat(true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-gatehouse-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let text = resp.text().await.unwrap();
    let usage: Value = text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|c| c.get("usage").filter(|u| u.is_object()).cloned())
        .expect("a usage chunk");
    let line = access_line(&sidecar, &id);
    expect(&line, &identity);
    expect(
        &line,
        &[
            ("message", json!("stream finished")),
            ("tag", json!("other")),
            ("input_tokens", usage["prompt_tokens"].clone()),
            ("output_tokens", usage["completion_tokens"].clone()),
            ("stream", json!(true)),
            ("end", json!("complete")),
        ],
    );
    let streamed_cost: f64 = line["cost_usd"].as_str().unwrap().parse().unwrap();
    assert!(streamed_cost > 0.0, "{line}");

    // Untagged: the identity still, and no tag.
    let resp = post(
        &client,
        &sidecar.url("/v1/chat/completions"),
        None,
        &chat(false),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-gatehouse-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let line = access_line(&sidecar, &id);
    expect(&line, &identity);
    assert_eq!(line["tag"], "", "{line}");

    let metrics = client
        .get(sidecar.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let who = [
        ("namespace", "shop"),
        ("workload", "checkout"),
        ("route", "chat"),
        ("provider", "oai"),
        ("model", "gpt-4o-mini"),
    ];
    let with = |tag: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut labels = who.to_vec();
        labels.push(("tag", tag));
        labels.extend_from_slice(extra);
        labels
    };
    let tokens = |tag, ty| {
        sample(
            &metrics,
            "gatehouse_tokens_total",
            &with(tag, &[("type", ty)]),
        )
    };
    assert_eq!(tokens("checkout-summary", "input"), Some(prompt as f64));
    assert_eq!(
        tokens("checkout-summary", "output"),
        Some(completion as f64)
    );
    assert_eq!(tokens("checkout-summary", "reasoning"), Some(0.0));
    assert_eq!(
        tokens("other", "input"),
        usage["prompt_tokens"].as_f64(),
        "{metrics}"
    );
    let usd = sample(
        &metrics,
        "gatehouse_cost_usd_total",
        &with("checkout-summary", &[]),
    )
    .unwrap();
    assert!((usd - cost).abs() < 1e-9, "{usd} vs {cost}");
    let usd_other = sample(&metrics, "gatehouse_cost_usd_total", &with("other", &[])).unwrap();
    assert!((usd_other - streamed_cost).abs() < 1e-6, "{usd_other}");
    assert!(sample(&metrics, "gatehouse_cost_usd_total", &with("", &[])).is_some());
    assert!(
        metrics
            .lines()
            .any(|l| l == "gatehouse_tags_overflowed_total 1"),
        "{metrics}"
    );
    // No header reached any label or line.
    let log = sidecar.stop();
    for (_, claimed) in OVERRIDES {
        assert!(!metrics.contains(claimed), "{claimed} in the metrics");
        assert!(
            !log.iter().any(|l| l.contains(claimed)),
            "{claimed} in the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_tag_is_a_400_in_the_clients_dialect() {
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let labels = tempfile::tempdir().unwrap();
    let sidecar = start(&mock, &labels);
    let client = reqwest::Client::new();
    let long = "x".repeat(65);
    for bad in ["has space", "slash/y", long.as_str()] {
        let resp = post(
            &client,
            &sidecar.url("/v1/chat/completions"),
            Some(bad),
            &chat(false),
        )
        .await;
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["error"]["code"], "invalid_tag", "{body}");
        assert!(body["error"]["param"].is_null(), "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("x-gatehouse-tag"), "{message}");
        assert!(
            !message.contains(bad),
            "the value is not quoted back: {message}"
        );
    }
    let resp = post(
        &client,
        &sidecar.url("/v1/messages"),
        Some("has space"),
        &json!({"model": "chat", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-gatehouse-tag"),
        "{body}"
    );
    // Nothing reached the provider, and the refusals were logged with the identity.
    assert_eq!(mock.request_count(), 0);
    let refused = sidecar.wait_log(Duration::from_secs(20), |j| {
        j["target"] == "gatehouse::access" && j["status"] == 400
    });
    assert_eq!(refused["workload"], "checkout", "{refused}");
    assert_eq!(refused["cost_usd"], "0", "{refused}");
}
