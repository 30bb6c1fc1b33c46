//! Workload identity meets egress: STS and Entra token calls take the provider's proxy (its
//! `spec.proxy`, else the environment's), the EKS Pod Identity agent is reached directly even
//! with a proxy in the environment, and an identity provider's Secret header values are scrubbed
//! out of relayed answers like a static provider's.

use std::collections::BTreeMap;
use std::time::Duration;

use gatehouse_mock_provider::identity::{MockIdentity, SUBJECT_TOKEN, TokenFlow};
use gatehouse_mock_provider::{Behaviour, MockProvider};

use crate::chat;
use crate::proxy::{PASSWORD, Tinyproxy, USER, basic_auth};
use crate::support::Sidecar;

const ROLE: &str = "arn:aws:iam::123456789012:role/gatehouse-bedrock";
const BEDROCK_MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const TENANT: &str = "99999999-8888-7777-6666-000000000000";

async fn mocks() -> (MockIdentity, MockProvider) {
    let identity = MockIdentity::start(Duration::from_secs(3600))
        .await
        .unwrap();
    let provider = MockProvider::builder()
        .credential_check(identity.credential_check())
        .start()
        .await
        .unwrap();
    (identity, provider)
}

/// The projected token in a temp dir, and its path.
fn token_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, SUBJECT_TOKEN).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

/// ModelProvider `p` with `spec` (indented two spaces), a Route `chat` to `model` on it, then
/// `objects`.
fn manifests(spec: &str, model: &str, objects: &str) -> String {
    format!(
        "---\napiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: p}}\nspec:\n{spec}---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: chat}}\nspec:\n  retry: {{attempts: 1}}\n  targets:\n    - {{provider: p, model: \"{model}\"}}\n{objects}"
    )
}

fn proxy_env(proxy: &Tinyproxy) -> BTreeMap<String, String> {
    let url = format!("http://{USER}:{PASSWORD}@127.0.0.1:{}", proxy.port);
    BTreeMap::from([
        ("HTTP_PROXY".to_string(), url.clone()),
        ("HTTPS_PROXY".to_string(), url),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irsa_calls_sts_through_the_providers_proxy() {
    let proxy = Tinyproxy::start();
    let (identity, mock) = mocks().await;
    let (_dir, token) = token_file();
    let spec = format!(
        "  type: bedrock\n  endpoint: {}\n  bedrock:\n    region: us-east-1\n    webIdentity:\n      roleArn: {ROLE}\n      sessionName: gh-test\n      stsEndpoint: {}\n      tokenFile: {token}\n  proxy:\n    url: {}\n    authSecretRef:\n      name: proxy-auth\n",
        mock.origin(),
        identity.origin(),
        proxy.url()
    );
    let sidecar = Sidecar::start(&manifests(&spec, BEDROCK_MODEL, &basic_auth(PASSWORD))).await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    let requests = identity.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].flow, TokenFlow::Sts);
    let log = proxy.log();
    // tinyproxy (with BasicAuth) relayed the STS call: it carried the proxy's credentials.
    assert!(
        log.contains(&format!("POST {}/", identity.origin())),
        "the proxy saw no STS request:\n{log}"
    );
    assert!(
        log.contains(&format!("POST {}/", mock.origin())),
        "the proxy saw no Bedrock request:\n{log}"
    );
    assert!(
        !requests[0].headers.contains_key("proxy-authorization"),
        "STS saw the proxy's credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_calls_go_through_the_environments_proxy() {
    let proxy = Tinyproxy::start();
    let (identity, mock) = mocks().await;
    let (_dir, token) = token_file();
    let spec = format!(
        "  type: azureOpenAI\n  endpoint: {}\n  azure:\n    workloadIdentity:\n      clientId: 11111111-2222-3333-4444-555555555555\n      tenantId: {TENANT}\n      authorityHost: {}/\n      tokenFile: {token}\n",
        mock.origin(),
        identity.origin()
    );
    let env = proxy_env(&proxy);
    let sidecar = Sidecar::start_with(&manifests(&spec, "gpt4o-deploy", ""), |args| {
        args.proxy_env = Some(env);
    })
    .await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    let requests = identity.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].flow, TokenFlow::Entra);
    let log = proxy.log();
    assert!(
        log.contains(&format!(
            "POST {}/{TENANT}/oauth2/v2.0/token",
            identity.origin()
        )),
        "the proxy saw no Entra request:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_identity_agent_is_reached_directly_even_with_a_proxy_in_the_environment() {
    let proxy = Tinyproxy::start();
    let (identity, mock) = mocks().await;
    let (_dir, token) = token_file();
    let spec = format!(
        "  type: bedrock\n  endpoint: {}\n  bedrock:\n    region: us-east-1\n    podIdentity:\n      endpoint: {}/v1/credentials\n      tokenFile: {token}\n",
        mock.origin(),
        identity.origin()
    );
    let env = proxy_env(&proxy);
    let sidecar = Sidecar::start_with(&manifests(&spec, BEDROCK_MODEL, ""), |args| {
        args.proxy_env = Some(env);
    })
    .await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    let requests = identity.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].flow, TokenFlow::PodIdentity);
    let log = proxy.log();
    // The provider call took the environment's proxy; the agent call did not.
    assert!(
        log.contains(&format!("POST {}/", mock.origin())),
        "the proxy saw no Bedrock request:\n{log}"
    );
    assert!(
        !log.contains("/v1/credentials"),
        "the agent was reached through the proxy:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_providers_secret_header_values_are_scrubbed_from_answers() {
    const SECRET: &str = "tok-SECRET-header-5f1c0a9e77";
    let (identity, mock) = mocks().await;
    let (_dir, token) = token_file();
    // The answer echoes the header value, as a misconfigured upstream or a proxy in front of it
    // may.
    mock.set_default(Behaviour::normal().content(format!("you sent x-internal-token: {SECRET}")));
    let spec = format!(
        "  type: azureOpenAI\n  endpoint: {}\n  azure:\n    workloadIdentity:\n      clientId: 11111111-2222-3333-4444-555555555555\n      tenantId: {TENANT}\n      authorityHost: {}/\n      tokenFile: {token}\n  headers:\n    - name: X-Internal-Token\n      valueFrom:\n        secretKeyRef:\n          name: internal-token\n          key: token\n",
        mock.origin(),
        identity.origin()
    );
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: internal-token\nstringData:\n  token: {SECRET}\n"
    );
    let sidecar = Sidecar::start(&manifests(&spec, "gpt4o-deploy", &secret)).await;
    for _ in 0..2 {
        let (status, body) = chat(&sidecar).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            !body.contains(SECRET),
            "the header value was relayed: {body}"
        );
        assert!(body.contains("[redacted]"), "{body}");
    }
    assert_eq!(
        mock.last_request().unwrap().header("x-internal-token"),
        Some(SECRET)
    );
    assert_eq!(identity.requests().len(), 1);
}
