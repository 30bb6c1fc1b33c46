//! Routing rules through the binary: each request feature picks its rule's target set, in both
//! dialects, and the rule is named in `x-gatehouse-rule`; a rule on workload labels matches the
//! labels the sidecar's identity carries (`--pod-labels`), never a request header.

use gatehouse_mock_provider::MockProvider;
use serde_json::{Value, json};

use super::proc::SidecarProc;
use super::{KEY, mock};

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
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata: {{name: tiered}}
spec:
  models: ["tiered"]
  targets:
    - {{name: default, provider: oai, model: m-default, priority: 0}}
    - {{name: long, provider: oai, model: m-long, priority: 1}}
    - {{name: tools, provider: oai, model: m-tools, priority: 1}}
    - {{name: vision, provider: oai, model: m-vision, priority: 1}}
    - {{name: json, provider: oai, model: m-json, priority: 1}}
    - {{name: cheap, provider: oai, model: m-cheap, priority: 1}}
  rules:
    - {{name: long-prompts, match: {{minInputTokens: 2000}}, targets: [long]}}
    - {{name: tier-cheap, match: {{headers: {{x-gatehouse-tier: cheap}}}}, targets: [cheap]}}
    - {{name: with-tools, match: {{tools: true}}, targets: [tools]}}
    - {{name: with-images, match: {{images: true}}, targets: [vision]}}
    - {{name: json-out, match: {{jsonMode: true}}, targets: [json]}}
    - {{name: team-search, match: {{workloadLabels: {{team: search}}}}, targets: [cheap]}}
"#,
        base = mock.base_url(),
    )
}

/// A request in `dialect` ("openai" or "anthropic") with the given extras.
fn request(
    dialect: &str,
    text: &str,
    tools: bool,
    image: bool,
    json_mode: bool,
) -> (String, Value) {
    if dialect == "openai" {
        let content = if image {
            json!([{"type": "text", "text": text},
                   {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}])
        } else {
            json!(text)
        };
        let mut body =
            json!({"model": "tiered", "messages": [{"role": "user", "content": content}]});
        if tools {
            body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {}}}}]);
        }
        if json_mode {
            body["response_format"] = json!({"type": "json_object"});
        }
        ("/v1/chat/completions".into(), body)
    } else {
        let content = if image {
            json!([{"type": "text", "text": text},
                   {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}])
        } else {
            json!(text)
        };
        let mut body = json!({"model": "tiered", "max_tokens": 32,
                              "messages": [{"role": "user", "content": content}]});
        if tools {
            body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]);
        }
        ("/v1/messages".into(), body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_feature_selects_its_rules_targets_in_both_dialects() {
    let mock = mock().await;
    let sidecar = SidecarProc::start(&manifests(&mock), &[]);
    let client = reqwest::Client::new();
    let long_text = "word ".repeat(2000);
    for dialect in ["openai", "anthropic"] {
        // (text, tools, image, json, tier header) -> (rule, upstream model)
        let mut cases = vec![
            ("hi", false, false, false, None, None, "m-default"),
            (
                long_text.as_str(),
                false,
                false,
                false,
                None,
                Some("long-prompts"),
                "m-long",
            ),
            (
                "hi",
                false,
                false,
                false,
                Some("cheap"),
                Some("tier-cheap"),
                "m-cheap",
            ),
            (
                "hi",
                false,
                false,
                false,
                Some("premium"),
                None,
                "m-default",
            ),
            (
                "hi",
                true,
                false,
                false,
                None,
                Some("with-tools"),
                "m-tools",
            ),
            (
                "hi",
                false,
                true,
                false,
                None,
                Some("with-images"),
                "m-vision",
            ),
            // A prompt that merely mentions image parts is not an image.
            (
                r#"what is "image_url"?"#,
                false,
                false,
                false,
                None,
                None,
                "m-default",
            ),
        ];
        if dialect == "openai" {
            cases.push(("hi", false, false, true, None, Some("json-out"), "m-json"));
        }
        for (text, tools, image, json_mode, tier, rule, model) in cases {
            let (path, body) = request(dialect, text, tools, image, json_mode);
            let mut req = client.post(sidecar.url(&path)).json(&body);
            if let Some(tier) = tier {
                req = req.header("x-gatehouse-tier", tier);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap();
            let case =
                format!("{dialect} tools={tools} image={image} json={json_mode} tier={tier:?}");
            assert_eq!(status, 200, "{case}: {text}");
            assert_eq!(headers["x-gatehouse-model"], model, "{case}");
            assert_eq!(
                headers
                    .get("x-gatehouse-rule")
                    .and_then(|v| v.to_str().ok()),
                rule,
                "{case}"
            );
        }
    }
    // Named in the access line too.
    sidecar.wait_log(std::time::Duration::from_secs(5), |j| {
        j["fields"]["rule"] == "with-tools" || j["rule"] == "with-tools"
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_on_workload_labels_matches_the_pods_own_labels_only() {
    let mock = mock().await;
    let client = reqwest::Client::new();
    let send = |sidecar: &SidecarProc, dialect: &str| {
        let (path, body) = request(dialect, "hi", false, false, false);
        client
            .post(sidecar.url(&path))
            // A header naming the label must not stand in for the pod's own labels.
            .header("team", "search")
            .header("x-gatehouse-team", "search")
            .json(&body)
            .send()
    };
    let search = SidecarProc::start_with_env(
        &manifests(&mock),
        &[],
        &[(
            "GATEHOUSE_POD_LABELS",
            "team=search,app.kubernetes.io/name=finder",
        )],
    );
    let other = SidecarProc::start_with_env(
        &manifests(&mock),
        &[],
        &[("GATEHOUSE_POD_LABELS", "team=payments")],
    );
    for dialect in ["openai", "anthropic"] {
        let resp = send(&search, dialect).await.unwrap();
        assert_eq!(resp.status(), 200, "{dialect}");
        assert_eq!(
            resp.headers()["x-gatehouse-rule"],
            "team-search",
            "{dialect}"
        );
        assert_eq!(resp.headers()["x-gatehouse-model"], "m-cheap", "{dialect}");

        let resp = send(&other, dialect).await.unwrap();
        assert_eq!(resp.status(), 200, "{dialect}");
        assert!(
            resp.headers().get("x-gatehouse-rule").is_none(),
            "{dialect}"
        );
        assert_eq!(
            resp.headers()["x-gatehouse-model"],
            "m-default",
            "{dialect}"
        );
    }
}
