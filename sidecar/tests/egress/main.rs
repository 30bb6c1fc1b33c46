//! Reaching providers the way companies do (docs/egress.md): a private CA, mTLS, a server name
//! override, rotation under load, the loudly named skip-verification field; an egress proxy (a
//! real tinyproxy with Basic auth), the environment's proxy and NO_PROXY; extra headers, static
//! and from a Secret; workload-identity token calls by the same proxy settings (the node-local
//! agents never), and Secret header values scrubbed for identity providers too.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "../support/mod.rs"]
#[allow(
    missing_debug_implementations,
    reason = "the shared fixtures are not public API here"
)]
mod support;

mod headers;
mod identity;
mod logs;
mod pki;
mod proxy;
mod tls;

use std::time::Duration;

use support::Sidecar;

/// A ModelProvider `up` (openaiCompatible, key `sk-egress-key`) at `endpoint` with `extra`
/// appended to its spec (indented by the caller to two spaces), a Route `chat` to it, and
/// `objects` (Secrets, ConfigMaps) after them.
pub fn manifests(endpoint: &str, extra: &str, objects: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Secret
metadata:
  name: up-key
stringData:
  apiKey: sk-egress-key
---
apiVersion: gatehouse.dev/v1alpha1
kind: ModelProvider
metadata:
  name: up
spec:
  type: openaiCompatible
  endpoint: {endpoint}
  apiKeySecretRef:
    name: up-key
    key: apiKey
{extra}
---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata:
  name: chat
spec:
  models: [chat]
  retry:
    attempts: 1
  targets:
    - provider: up
      model: gpt-4o-mini
{objects}"#
    )
}

/// A Secret (or ConfigMap, `kind`) document with one multi-line string entry per `(key, value)`.
pub fn object(kind: &str, name: &str, entries: &[(&str, &str)]) -> String {
    let field = if kind == "Secret" {
        "stringData"
    } else {
        "data"
    };
    let mut out =
        format!("---\napiVersion: v1\nkind: {kind}\nmetadata:\n  name: {name}\n{field}:\n");
    for (key, value) in entries {
        out.push_str(&format!("  {key}: |\n"));
        for line in value.lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

/// Replace the manifests the way config tools do (write, rename).
pub fn replace(sidecar: &Sidecar, content: &str) {
    let tmp = sidecar.dir.path().join(".gatehouse.yaml.tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, sidecar.manifest_path()).unwrap();
}

/// Successful config reloads so far.
pub async fn reloads(sidecar: &Sidecar) -> u64 {
    let metrics = sidecar.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"gatehouse_config_reloads_total{result="success"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Replace the manifests and wait until the sidecar applied them.
pub async fn reload(sidecar: &Sidecar, content: &str) {
    let before = reloads(sidecar).await;
    replace(sidecar, content);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reloads(sidecar).await <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sidecar never applied the new manifests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One chat request: its status and body.
pub async fn chat(sidecar: &Sidecar) -> (u16, String) {
    let resp = sidecar.chat("chat", false).await;
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}
