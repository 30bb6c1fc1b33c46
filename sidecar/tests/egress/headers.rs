//! spec.headers: static values and values from a Secret, which rotate like keys.

use gatehouse_mock_provider::MockProvider;

use crate::support::Sidecar;
use crate::{chat, manifests, reload};

const EXTRA: &str = "  headers:\n    - name: OpenAI-Organization\n      value: org-gatehouse\n    - name: X-Internal-Token\n      valueFrom:\n        secretKeyRef:\n          name: internal-token\n          key: token\n";

fn token(value: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: internal-token\nstringData:\n  token: {value}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_sees_extra_headers_and_secret_values_rotate() {
    let logs = crate::logs::capture();
    let mock = MockProvider::start().await.unwrap();
    let sidecar = Sidecar::start(&manifests(
        &mock.base_url(),
        EXTRA,
        &token("tok-SECRET-one"),
    ))
    .await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.header("openai-organization"), Some("org-gatehouse"));
    assert_eq!(seen.header("x-internal-token"), Some("tok-SECRET-one"));
    assert_eq!(seen.bearer(), Some("sk-egress-key"));

    reload(
        &sidecar,
        &manifests(&mock.base_url(), EXTRA, &token("tok-SECRET-two")),
    )
    .await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.header("x-internal-token"), Some("tok-SECRET-two"));

    // A Secret the header names is missing: the provider is left out with a clear problem, the
    // route answers 503, nothing reaches the provider.
    let before = mock.request_count();
    reload(&sidecar, &manifests(&mock.base_url(), EXTRA, "")).await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(mock.request_count(), before);

    let logged = logs.text();
    assert!(
        logged.contains("internal-token"),
        "the problem names the Secret"
    );
    assert!(
        !logged.contains("tok-SECRET"),
        "a secret header value was logged"
    );
}
