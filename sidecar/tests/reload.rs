//! Live config: edits to the manifests apply without disturbing requests; invalid edits keep the
//! last good config.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_mock_provider::MockProvider;
use support::{Sidecar, header, provider};

fn route_to(model: &str) -> String {
    format!(
        r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata:
  name: chat
spec:
  models: [chat]
  targets:
    - provider: upstream
      model: {model}
"#
    )
}

/// Replace the manifest the way editors and config tools do: write a temp file, then rename.
fn replace(sidecar: &Sidecar, content: &str) {
    let tmp = sidecar.dir.path().join(".gatehouse.yaml.tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, sidecar.manifest_path()).unwrap();
}

async fn served_model(sidecar: &Sidecar) -> Option<String> {
    let resp = sidecar.chat("chat", false).await;
    header(&resp, "x-gatehouse-model").map(str::to_string)
}

async fn wait_for_model(sidecar: &Sidecar, model: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while served_model(sidecar).await.as_deref() != Some(model) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "config never switched to {model}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_concurrent_load_without_a_single_failure() {
    let mock = MockProvider::start().await.unwrap();
    let base = provider("upstream", &mock.base_url(), None);
    let sidecar = Arc::new(Sidecar::start(&format!("{base}{}", route_to("model-0"))).await);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (sidecar, stop, ok) = (sidecar.clone(), stop.clone(), ok.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for stream in [false, true] {
                    let resp = sidecar.chat("chat", stream).await;
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    let complete = if stream {
                        body.contains("data: [DONE]")
                    } else {
                        body.contains("chat.completion")
                    };
                    if status == 200 && complete {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.push(format!("{status}: {body}"));
                    }
                }
            }
            failures
        }));
    }
    for i in 1..=10 {
        let model = format!("model-{i}");
        replace(&sidecar, &format!("{base}{}", route_to(&model)));
        wait_for_model(&sidecar, &model).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(ok.load(Ordering::Relaxed) > 50, "the load actually ran");
    // The models the mock saw are exactly the ones the route pointed at over time.
    let models: std::collections::BTreeSet<String> = mock
        .requests()
        .iter()
        .filter_map(|r| r.model().map(str::to_string))
        .collect();
    assert!(models.iter().all(|m| m.starts_with("model-")), "{models:?}");
    assert!(models.contains("model-10"));
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_last_good_config() {
    let mock = MockProvider::start().await.unwrap();
    let base = provider("upstream", &mock.base_url(), None);
    let sidecar = Sidecar::start(&format!("{base}{}", route_to("good"))).await;
    assert_eq!(served_model(&sidecar).await.as_deref(), Some("good"));

    let bad_edits = [
        "this: is: not: yaml: [".to_string(),
        format!(
            "{base}---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata:\n  name: chat\nspec:\n  targets: 7\n"
        ),
        format!("{base}{}{}", route_to("x"), route_to("y")),
    ];
    for (i, bad) in bad_edits.iter().enumerate() {
        replace(&sidecar, bad);
        let expected = format!(
            r#"gatehouse_config_reloads_total{{result="error"}} {}"#,
            i + 1
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !sidecar.metrics().await.contains(&expected) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "edit {i} was not rejected"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            served_model(&sidecar).await.as_deref(),
            Some("good"),
            "edit {i}"
        );
    }
    // A valid edit after the bad ones applies again.
    replace(&sidecar, &format!("{base}{}", route_to("better")));
    wait_for_model(&sidecar, "better").await;
}

#[tokio::test]
async fn a_request_in_flight_keeps_the_config_it_started_with() {
    let mock = MockProvider::start().await.unwrap();
    let base = provider("upstream", &mock.base_url(), None);
    let sidecar = Sidecar::start(&format!("{base}{}", route_to("before"))).await;
    let gate = gatehouse_mock_provider::StreamGate::new();
    mock.push(gatehouse_mock_provider::Behaviour::normal().gate(gate.clone()));
    let resp = sidecar.chat("chat", true).await;
    replace(&sidecar, &format!("{base}{}", route_to("after")));
    wait_for_model(&sidecar, "after").await;
    gate.open();
    assert_eq!(header(&resp, "x-gatehouse-model"), Some("before"));
    let body = resp.text().await.unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
}
