//! OTLP traces against a real OpenTelemetry Collector (tests/otel-collector: the OTLP receiver
//! and the file exporter, built from Go modules and cached), and the request records of the
//! admin port.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_mock_provider::{Behaviour, MockProvider};
use serde_json::Value;
use support::{Sidecar, header, provider};

const PRIMARY_KEY: &str = "sk-primary-trace-0123456789abcdef";
const SECONDARY_KEY: &str = "sk-secondary-trace-fedcba9876543210";
const SECRET_PROMPT: &str = "my card is 4111 1111 1111 1111 and the launch code is zebra-42";

/// The collector, killed on drop.
struct Collector {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collector_binary() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/otel-collector/build");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e} (needs Go)", script.display()));
    assert!(
        out.status.success(),
        "{} failed: the test collector could not be built",
        script.display()
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_collector() -> Collector {
    let bin = collector_binary();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dir.path().join("spans.json");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            r#"receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
exporters:
  file:
    path: {out}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
"#,
            out = out.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("collector.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!("--config=file:{}", config.display()))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let collector = Collector {
        child,
        port,
        out,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the collector never listened; its log:\n{}",
            std::fs::read_to_string(collector._dir.path().join("collector.log"))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    collector
}

/// Every span the collector wrote so far, with its resource attributes.
fn spans(collector: &Collector) -> (String, Vec<(Value, Value)>) {
    let text = std::fs::read_to_string(&collector.out).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let doc: Value = serde_json::from_str(line).unwrap();
        for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    out.push((rs["resource"].clone(), span.clone()));
                }
            }
        }
    }
    (text, out)
}

async fn wait_for_spans(
    collector: &Collector,
    trace_id: &str,
    n: usize,
) -> (String, Vec<(Value, Value)>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (text, all) = spans(collector);
        let of: Vec<_> = all
            .into_iter()
            .filter(|(_, s)| s["traceId"] == trace_id)
            .collect();
        if of.len() >= n {
            return (text, of);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} spans of trace {trace_id} reached the collector; it wrote:\n{text}",
            of.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn str_attr<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    attr(span, key)?.get("stringValue")?.as_str()
}

fn int_attr(span: &Value, key: &str) -> Option<i64> {
    // OTLP/JSON writes 64-bit integers as strings.
    attr(span, key)?.get("intValue")?.as_str()?.parse().ok()
}

fn manifests(primary: &MockProvider, secondary: &MockProvider) -> String {
    [
        provider("primary", &primary.base_url(), Some(PRIMARY_KEY)),
        provider("secondary", &secondary.base_url(), Some(SECONDARY_KEY)),
        r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata:
  name: chat
spec:
  models: ["chat"]
  targets:
    - provider: primary
      model: primary-model
      priority: 0
    - provider: secondary
      model: backup-model
      priority: 1
  retry:
    attempts: 2
    backoff: {base: 10ms, max: 20ms}
  outlier: {enabled: false}
"#
        .to_string(),
    ]
    .concat()
}

async fn chat(sidecar: &Sidecar, traceparent: Option<&str>) -> reqwest::Response {
    let mut req = sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "chat",
            "messages": [{"role": "user", "content": SECRET_PROMPT}],
        }));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_traced_as_one_request_span_and_two_attempt_spans_continuing_the_callers_trace()
 {
    let collector = start_collector();
    let primary = MockProvider::with_api_key(PRIMARY_KEY)
        .start()
        .await
        .unwrap();
    let secondary = MockProvider::with_api_key(SECONDARY_KEY)
        .start()
        .await
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let sidecar = Sidecar::start_with(&manifests(&primary, &secondary), |args| {
        args.otlp_endpoint = Some(endpoint);
        args.pod_name = Some("app-7d9f".into());
    })
    .await;

    // Not sampled by the caller: recorded, not exported.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let resp = chat(
        &sidecar,
        Some(&format!("00-{unsampled_trace}-b7ad6b7169203331-00")),
    )
    .await;
    assert_eq!(resp.status(), 200);

    // The caller's trace, sampled; the primary fails with a 503 and the secondary answers.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    primary.push(Behaviour::status(503));
    let resp = chat(&sidecar, Some(&format!("00-{trace_id}-{parent}-01"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("2"));
    let request_id = header(&resp, "x-gatehouse-request-id").unwrap().to_string();
    resp.json::<Value>().await.unwrap();

    let (text, spans) = wait_for_spans(&collector, trace_id, 3).await;
    assert_eq!(spans.len(), 3, "{text}");
    let (resource, request) = spans
        .iter()
        .find(|(_, s)| s["kind"] == 2)
        .expect("a SERVER span for the request");
    // The caller's span is the parent: the trace is continued.
    assert_eq!(request["parentSpanId"], parent);
    assert_eq!(request["name"], "chat chat");
    assert_eq!(str_attr(request, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(str_attr(request, "gen_ai.request.model"), Some("chat"));
    assert_eq!(
        str_attr(request, "gen_ai.provider.name"),
        Some("openai_compatible")
    );
    assert_eq!(
        str_attr(request, "gen_ai.response.model"),
        Some("backup-model")
    );
    assert!(int_attr(request, "gen_ai.usage.input_tokens").unwrap() > 0);
    assert!(int_attr(request, "gen_ai.usage.output_tokens").unwrap() > 0);
    assert_eq!(int_attr(request, "http.response.status_code"), Some(200));
    assert_eq!(
        str_attr(request, "gatehouse.request_id"),
        Some(request_id.as_str())
    );
    assert_eq!(str_attr(request, "gatehouse.route"), Some("chat"));
    assert_eq!(int_attr(request, "gatehouse.attempts"), Some(2));
    assert!(attr(request, "error.type").is_none());
    let resource_attr = |key: &str| {
        resource["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .and_then(|a| a["value"]["stringValue"].as_str())
            .map(str::to_string)
    };
    assert_eq!(
        resource_attr("service.name").as_deref(),
        Some("gatehouse-sidecar")
    );
    assert_eq!(resource_attr("k8s.pod.name").as_deref(), Some("app-7d9f"));

    // One CLIENT span per attempt, children of the request's span, in order.
    let mut attempts: Vec<&Value> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s["kind"] == 3)
        .collect();
    attempts.sort_by_key(|s| {
        s["startTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    });
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert_eq!(a["parentSpanId"], request["spanId"]);
        assert_eq!(str_attr(a, "gen_ai.operation.name"), Some("chat"));
        assert_eq!(
            str_attr(a, "gen_ai.provider.name"),
            Some("openai_compatible")
        );
        assert_eq!(str_attr(a, "server.address"), Some("127.0.0.1"));
    }
    let (failed, answered) = (attempts[0], attempts[1]);
    assert_eq!(failed["name"], "chat primary-model");
    assert_eq!(str_attr(failed, "gatehouse.provider"), Some("primary"));
    assert!(str_attr(failed, "error.type").is_some(), "{failed}");
    assert_eq!(failed["status"]["code"], 2, "{failed}");
    assert_eq!(
        int_attr(failed, "server.port"),
        Some(i64::from(primary.addr().port()))
    );
    assert_eq!(answered["name"], "chat backup-model");
    assert_eq!(str_attr(answered, "gatehouse.provider"), Some("secondary"));
    assert!(attr(answered, "error.type").is_none(), "{answered}");
    assert_eq!(
        str_attr(answered, "gen_ai.response.model"),
        Some("backup-model")
    );

    // Nothing secret: no prompt, no key.
    for secret in [
        SECRET_PROMPT,
        "zebra-42",
        "4111",
        PRIMARY_KEY,
        SECONDARY_KEY,
    ] {
        assert!(!text.contains(secret), "the spans hold {secret:?}: {text}");
    }
    // The unsampled request was before it in the queue, and was not exported.
    assert!(!text.contains(unsampled_trace), "{text}");

    // A request without a traceparent starts a trace whose id is its request id.
    let resp = chat(&sidecar, None).await;
    assert_eq!(resp.status(), 200);
    let own = header(&resp, "x-gatehouse-request-id").unwrap().to_string();
    let (_, spans) = wait_for_spans(&collector, &own, 2).await;
    let root = spans.iter().find(|(_, s)| s["kind"] == 2).unwrap();
    assert!(
        root.1.get("parentSpanId").is_none_or(|p| p == ""),
        "{}",
        root.1
    );

    // The record of the failover, on the admin port, by request id.
    let record: Value = sidecar
        .client
        .get(sidecar.admin_url(&format!("/v1/requests/{request_id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["trace_id"], trace_id);
    assert_eq!(record["route"], "chat");
    assert_eq!(record["provider"], "secondary");
    assert_eq!(record["model"], "backup-model");
    assert_eq!(record["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(record["attempts"][0]["provider"], "primary");
    assert_ne!(record["attempts"][0]["outcome"], "success");
    assert_eq!(record["attempts"][1]["outcome"], "success");
    assert_eq!(record["status"], 200);
    assert_eq!(record["cache"], "bypass");
    assert!(record["tokens"]["input"].as_u64().unwrap() > 0);
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains("gatehouse_trace_spans_exported_total"),
        "{metrics}"
    );
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn records_are_served_by_id_and_hold_no_prompt_and_tracing_is_off_by_default() {
    let primary = MockProvider::with_api_key(PRIMARY_KEY)
        .start()
        .await
        .unwrap();
    let secondary = MockProvider::with_api_key(SECONDARY_KEY)
        .start()
        .await
        .unwrap();
    let sidecar = Sidecar::start_with(&manifests(&primary, &secondary), |args| {
        args.request_records = 2;
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let resp = chat(&sidecar, None).await;
        assert_eq!(resp.status(), 200);
        ids.push(header(&resp, "x-gatehouse-request-id").unwrap().to_string());
    }
    let get = |path: String| {
        let client = sidecar.client.clone();
        let url = sidecar.admin_url(&path);
        async move { client.get(url).send().await.unwrap() }
    };
    // The oldest is gone (2 kept); the newest two are there.
    let old = get(format!("/v1/requests/{}", ids[0])).await;
    assert_eq!(old.status(), 404);
    let resp = get(format!("/v1/requests/{}", ids[2])).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("zebra-42"), "{text}");
    assert!(!text.contains(PRIMARY_KEY), "{text}");
    let record: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(record["request_id"], ids[2].as_str());
    assert_eq!(record["requested_model"], "chat");
    assert_eq!(record["provider"], "primary");
    // Tracing off: no trace id.
    assert!(record["trace_id"].is_null());
    let list: Value = get("/v1/requests".to_string()).await.json().await.unwrap();
    let listed: Vec<&str> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    assert!(!sidecar.metrics().await.contains("gatehouse_trace_"));
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn a_hung_endpoint_never_holds_up_requests_and_drops_are_counted() {
    // Accepts connections and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hole.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = hole.accept().await {
            conns.push(c);
        }
    });
    let primary = MockProvider::with_api_key(PRIMARY_KEY)
        .start()
        .await
        .unwrap();
    let secondary = MockProvider::with_api_key(SECONDARY_KEY)
        .start()
        .await
        .unwrap();
    let sidecar = Sidecar::start_with(&manifests(&primary, &secondary), |args| {
        args.otlp_endpoint = Some(format!("http://{addr}"));
        args.otlp_queue = 1;
        args.otlp_timeout_ms = 60_000;
    })
    .await;
    // The exporter takes the first record and, a batch delay later, hangs on its POST; the
    // queue then holds one more, the rest are dropped, and every request is answered meanwhile.
    assert_eq!(chat(&sidecar, None).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    for _ in 0..10 {
        let resp = chat(&sidecar, None).await;
        assert_eq!(resp.status(), 200);
    }
    // Generous: proves "did not wait for the exporter's 60 s timeout", nothing finer.
    assert!(started.elapsed() < Duration::from_secs(30));
    let metrics = sidecar.metrics().await;
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_trace_records_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no drop counter: {metrics}"));
    assert!(dropped >= 1.0, "{metrics}");
}
