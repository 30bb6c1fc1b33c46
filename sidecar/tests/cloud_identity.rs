//! Workload-identity credentials against mock token services speaking each documented shape
//! (`gatehouse_mock_provider::identity`): AWS STS `AssumeRoleWithWebIdentity` (IRSA), the EKS Pod
//! Identity agent, Microsoft Entra ID, the GCP metadata server and Google OAuth with a
//! service-account key. Each flow exchanges a token and the provider mock accepts only issued,
//! unexpired credentials; short-lived credentials refresh under load; refusals fail over.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gatehouse_mock_provider::MockProvider;
use gatehouse_mock_provider::identity::{MockIdentity, SUBJECT_TOKEN, TokenFlow};
use serde_json::Value;
use support::Sidecar;

const ROLE: &str = "arn:aws:iam::123456789012:role/gatehouse-bedrock";
const BEDROCK_MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// The projected token, as the kubelet writes it, in a temp dir.
fn token_file() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), SUBJECT_TOKEN).unwrap();
    dir
}

fn token_path(dir: &tempfile::TempDir) -> String {
    dir.path().join("token").to_str().unwrap().to_string()
}

async fn mocks(lifetime: Duration) -> (MockIdentity, MockProvider) {
    let identity = MockIdentity::start(lifetime).await.unwrap();
    let provider = MockProvider::builder()
        .credential_check(identity.credential_check())
        .start()
        .await
        .unwrap();
    (identity, provider)
}

fn provider_yaml(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

fn route_yaml(name: &str, targets: &[(&str, &str)]) -> String {
    let mut out = format!(
        "---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: {name}}}\nspec:\n  targets:\n"
    );
    for (i, (provider, model)) in targets.iter().enumerate() {
        out.push_str(&format!(
            "    - {{provider: {provider}, model: \"{model}\", priority: {i}}}\n"
        ));
    }
    out.push_str(&format!("  retry: {{attempts: {}}}\n", targets.len()));
    out
}

fn irsa(identity: &MockIdentity, mock: &MockProvider, token: &str) -> String {
    provider_yaml(
        "aws",
        &format!(
            "  type: bedrock\n  endpoint: {}\n  bedrock:\n    region: us-east-1\n    webIdentity:\n      roleArn: {ROLE}\n      sessionName: gh-test\n      stsEndpoint: {}\n      tokenFile: {token}\n",
            mock.origin(),
            identity.origin()
        ),
    )
}

fn azure(identity: &MockIdentity, mock: &MockProvider, token: &str) -> String {
    provider_yaml(
        "az",
        &format!(
            "  type: azureOpenAI\n  endpoint: {}\n  azure:\n    workloadIdentity:\n      clientId: 11111111-2222-3333-4444-555555555555\n      tenantId: 99999999-8888-7777-6666-000000000000\n      authorityHost: {}/\n      tokenFile: {token}\n",
            mock.origin(),
            identity.origin()
        ),
    )
}

async fn ok_chat(sidecar: &Sidecar, route: &str, stream: bool) {
    let resp = sidecar.chat(route, stream).await;
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{route} (stream={stream}): {text}");
}

#[tokio::test]
async fn irsa_exchanges_the_projected_token_with_sts_and_signs_with_the_session_token() {
    let (identity, mock) = mocks(Duration::from_secs(3600)).await;
    let dir = token_file();
    let yaml =
        irsa(&identity, &mock, &token_path(&dir)) + &route_yaml("chat", &[("aws", BEDROCK_MODEL)]);
    let sidecar = Sidecar::start(&yaml).await;
    ok_chat(&sidecar, "chat", false).await;
    ok_chat(&sidecar, "chat", true).await;

    // One exchange for both requests (cached), in the Query API shape.
    let requests = identity.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let sts = &requests[0];
    assert_eq!(sts.flow, TokenFlow::Sts);
    assert_eq!(sts.method, "POST");
    assert_eq!(
        sts.headers.get("content-type").map(String::as_str),
        Some("application/x-www-form-urlencoded")
    );
    let form = |k: &str| sts.form.get(k).map(String::as_str);
    assert_eq!(form("Action"), Some("AssumeRoleWithWebIdentity"));
    assert_eq!(form("Version"), Some("2011-06-15"));
    assert_eq!(form("RoleArn"), Some(ROLE));
    assert_eq!(form("RoleSessionName"), Some("gh-test"));
    assert_eq!(form("WebIdentityToken"), Some(SUBJECT_TOKEN));
    assert_eq!(form("DurationSeconds"), Some("3600"));
    assert!(
        !sts.headers.contains_key("authorization"),
        "STS is called unsigned"
    );

    // Both Bedrock calls signed with the issued key and its session token (the mock's check
    // refused anything else; here the shape is asserted too).
    let calls = mock.requests();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        let auth = call.header("authorization").unwrap();
        assert!(auth.contains("Credential=ASIAMOCK"), "{auth}");
        assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
        assert!(
            auth.contains("x-amz-security-token"),
            "session token not signed: {auth}"
        );
        assert!(
            call.header("x-amz-security-token")
                .unwrap()
                .starts_with("IQoJb3JpZ2luX2VjEMOCK")
        );
    }
}

#[tokio::test]
async fn pod_identity_fetches_credentials_from_the_agent_with_the_token_as_authorization() {
    let (identity, mock) = mocks(Duration::from_secs(3600)).await;
    let dir = token_file();
    let yaml = provider_yaml(
        "aws",
        &format!(
            "  type: bedrock\n  endpoint: {}\n  bedrock:\n    region: us-east-1\n    podIdentity:\n      endpoint: {}/v1/credentials\n      tokenFile: {}\n",
            mock.origin(),
            identity.origin(),
            token_path(&dir)
        ),
    ) + &route_yaml("chat", &[("aws", BEDROCK_MODEL)]);
    let sidecar = Sidecar::start(&yaml).await;
    ok_chat(&sidecar, "chat", false).await;
    let requests = identity.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].flow, TokenFlow::PodIdentity);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(
        requests[0].headers.get("authorization").map(String::as_str),
        Some(SUBJECT_TOKEN)
    );
    let call = &mock.requests()[0];
    assert!(call.header("x-amz-security-token").is_some());
}

#[tokio::test]
async fn azure_workload_identity_exchanges_the_federated_token_and_sends_a_bearer() {
    let (identity, mock) = mocks(Duration::from_secs(3600)).await;
    let dir = token_file();
    let yaml =
        azure(&identity, &mock, &token_path(&dir)) + &route_yaml("chat", &[("az", "gpt4o-deploy")]);
    let sidecar = Sidecar::start(&yaml).await;
    ok_chat(&sidecar, "chat", false).await;
    ok_chat(&sidecar, "chat", true).await;
    let requests = identity.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let entra = &requests[0];
    assert_eq!(entra.flow, TokenFlow::Entra);
    assert_eq!(entra.method, "POST");
    assert_eq!(
        entra.path,
        "/99999999-8888-7777-6666-000000000000/oauth2/v2.0/token"
    );
    let form = |k: &str| entra.form.get(k).map(String::as_str);
    assert_eq!(
        form("client_id"),
        Some("11111111-2222-3333-4444-555555555555")
    );
    assert_eq!(
        form("scope"),
        Some("https://cognitiveservices.azure.com/.default")
    );
    assert_eq!(form("grant_type"), Some("client_credentials"));
    assert_eq!(
        form("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(form("client_assertion"), Some(SUBJECT_TOKEN));
    for call in mock.requests() {
        assert!(
            call.path.starts_with("/openai/deployments/gpt4o-deploy/"),
            "{}",
            call.path
        );
        assert!(call.bearer().unwrap().starts_with("entra-access-token-"));
        assert_eq!(
            call.header("api-key"),
            None,
            "no api-key with workload identity"
        );
    }
}

fn vertex(identity: &MockIdentity, mock: &MockProvider, credentials: &str) -> String {
    provider_yaml(
        "vx",
        &format!(
            "  type: vertexAI\n  endpoint: {}\n  vertex:\n    project: my-project-123\n    location: us-central1\n    metadataEndpoint: {}\n    tokenEndpoint: {}/token\n{credentials}",
            mock.origin(),
            identity.origin(),
            identity.origin()
        ),
    )
}

#[tokio::test]
async fn vertex_with_the_metadata_server_uses_vertex_urls_and_a_bearer() {
    let (identity, mock) = mocks(Duration::from_secs(3600)).await;
    let yaml = vertex(&identity, &mock, "") + &route_yaml("chat", &[("vx", "gemini-2.5-flash")]);
    let sidecar = Sidecar::start(&yaml).await;
    ok_chat(&sidecar, "chat", false).await;
    ok_chat(&sidecar, "chat", true).await;
    let requests = identity.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].flow, TokenFlow::Metadata);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(
        requests[0]
            .headers
            .get("metadata-flavor")
            .map(String::as_str),
        Some("Google")
    );
    let calls = mock.requests();
    let base = "/v1/projects/my-project-123/locations/us-central1/publishers/google/models/gemini-2.5-flash";
    assert_eq!(calls[0].path, format!("{base}:generateContent"));
    assert_eq!(calls[0].query, None);
    assert_eq!(calls[1].path, format!("{base}:streamGenerateContent"));
    assert_eq!(calls[1].query.as_deref(), Some("alt=sse"));
    for call in &calls {
        assert!(call.bearer().unwrap().starts_with("gce-access-token-"));
        assert_eq!(call.header("x-goog-api-key"), None);
    }
}

#[tokio::test]
async fn vertex_with_a_service_account_key_signs_a_jwt_bearer_grant() {
    let (identity, mock) = mocks(Duration::from_secs(3600)).await;
    let key = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/identity/service-account.json"
    ))
    .unwrap();
    // The mock checks the assertion's RS256 signature with the key's public half.
    let parsed: Value = serde_json::from_str(&key).unwrap();
    let pem = parsed["private_key"].as_str().unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    identity.set_public_key(pair.public().as_ref().to_vec());

    let indented: String = key.lines().map(|l| format!("    {l}\n")).collect();
    let yaml = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: gcp-sa}}\nstringData:\n  key.json: |\n{indented}"
    ) + &vertex(
        &identity,
        &mock,
        "  apiKeySecretRef: {name: gcp-sa, key: key.json}\n",
    ) + &route_yaml("chat", &[("vx", "gemini-2.5-flash")]);
    let sidecar = Sidecar::start(&yaml).await;
    ok_chat(&sidecar, "chat", false).await;
    let requests = identity.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let grant = &requests[0];
    assert_eq!(grant.flow, TokenFlow::GoogleOAuth);
    assert_eq!(
        grant.form.get("grant_type").map(String::as_str),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    let jwt = grant.form.get("assertion").unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["iss"],
        "gatehouse@gatehouse-test.iam.gserviceaccount.com"
    );
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    assert_eq!(claims["aud"], format!("{}/token", identity.origin()));
    assert!(
        mock.requests()[0]
            .bearer()
            .unwrap()
            .starts_with("oauth-access-token-")
    );
}

/// 3-second credentials, 8 clients in a loop for 7 seconds: every request succeeds (the provider
/// mock refuses expired credentials), more than one exchange happens, and far fewer exchanges than
/// requests (one refresh at a time).
async fn refresh_under_load(flow: &str) {
    let (identity, mock) = mocks(Duration::from_secs(3)).await;
    let dir = token_file();
    let yaml = match flow {
        "aws" => {
            irsa(&identity, &mock, &token_path(&dir))
                + &route_yaml("chat", &[("aws", BEDROCK_MODEL)])
        }
        _ => {
            azure(&identity, &mock, &token_path(&dir))
                + &route_yaml("chat", &[("az", "gpt4o-deploy")])
        }
    };
    let sidecar = Arc::new(Sidecar::start(&yaml).await);
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(7);
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let (sidecar, failures, done) = (
                Arc::clone(&sidecar),
                Arc::clone(&failures),
                Arc::clone(&done),
            );
            tokio::spawn(async move {
                while Instant::now() < until {
                    let resp = sidecar.chat("chat", i % 2 == 0).await;
                    let ok = resp.status() == 200;
                    let text = resp.text().await.unwrap_or_default();
                    if !ok || text.contains("\"error\"") {
                        failures.fetch_add(1, Ordering::SeqCst);
                        eprintln!("failed: {text}");
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let (failures, done, exchanges) = (
        failures.load(Ordering::SeqCst),
        done.load(Ordering::SeqCst),
        identity.exchanges(),
    );
    eprintln!("{flow}: {done} requests, {failures} failed, {exchanges} exchanges");
    assert_eq!(failures, 0, "{flow}: {failures} of {done} requests failed");
    assert!(
        exchanges > 1,
        "{flow}: credentials never refreshed ({exchanges} exchanges)"
    );
    // 7 s of 3 s credentials renewed after 1.5 s: about 5 exchanges; one per request (or per
    // worker per renewal) would be far more.
    assert!(
        exchanges <= 12,
        "{flow}: {exchanges} exchanges for {done} requests"
    );
    assert!(done > exchanges * 4, "{flow}: only {done} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_credentials_refresh_before_expiry_under_load() {
    refresh_under_load("aws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_tokens_refresh_before_expiry_under_load() {
    refresh_under_load("azure").await;
}

#[tokio::test]
async fn refused_identities_fail_over_like_a_refused_key_and_never_show_the_token() {
    let (identity, mock) = mocks(Duration::from_secs(3600)).await;
    let fallback = MockProvider::start().await.unwrap();
    let dir = token_file();
    let token = token_path(&dir);
    let yaml = irsa(&identity, &mock, &token)
        + &azure(&identity, &mock, &token)
        + &provider_yaml(
            "fallback",
            &format!(
                "  type: openaiCompatible\n  endpoint: {}\n",
                fallback.base_url()
            ),
        )
        + &route_yaml(
            "aws-fo",
            &[("aws", BEDROCK_MODEL), ("fallback", "gpt-4o-mini")],
        )
        + &route_yaml(
            "az-fo",
            &[("az", "gpt4o-deploy"), ("fallback", "gpt-4o-mini")],
        )
        + &route_yaml("aws-solo", &[("aws", BEDROCK_MODEL)])
        + &route_yaml("az-solo", &[("az", "gpt4o-deploy")]);
    let sidecar = Sidecar::start(&yaml).await;
    for (status, route, provider, reason) in [
        (403, "aws", "aws", "AccessDenied"),
        (401, "az", "az", "invalid_client"),
        (400, "az", "az", "invalid_client"),
    ] {
        identity.refuse(Some(status));
        // The refusal is held for a second; let a previous case's pass.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = identity.exchanges();
        let resp = sidecar.chat(&format!("{route}-fo"), false).await;
        assert_eq!(resp.status(), 200, "{route} refused {status}");
        assert_eq!(
            support::header(&resp, "x-gatehouse-provider"),
            Some("fallback")
        );
        assert!(identity.exchanges() > before, "no exchange was tried");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let resp = tokio::time::timeout(
            Duration::from_secs(20),
            sidecar.chat(&format!("{route}-solo"), false),
        )
        .await
        .expect("a refused identity must not hang the request");
        assert_eq!(resp.status(), 502);
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("rejected the gateway's credentials"),
            "{text}"
        );
        assert!(text.contains(provider), "{text}");
        assert!(text.contains(reason), "{text}");
        for secret in [
            SUBJECT_TOKEN,
            "mock-projected-service-account-token",
            "ASIAMOCK",
            "access-token",
        ] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    // Nothing reached the refusing providers' upstream.
    assert!(mock.requests().is_empty());
    identity.refuse(None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ok_chat(&sidecar, "aws-solo", false).await;
}

#[tokio::test]
async fn a_missing_token_file_fails_over_without_hanging() {
    let (identity, mock) = mocks(Duration::from_secs(3600)).await;
    let fallback = MockProvider::start().await.unwrap();
    let yaml = irsa(&identity, &mock, "/nonexistent/gatehouse/token")
        + &provider_yaml(
            "fallback",
            &format!(
                "  type: openaiCompatible\n  endpoint: {}\n",
                fallback.base_url()
            ),
        )
        + &route_yaml(
            "chat",
            &[("aws", BEDROCK_MODEL), ("fallback", "gpt-4o-mini")],
        );
    let sidecar = Sidecar::start(&yaml).await;
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        support::header(&resp, "x-gatehouse-provider"),
        Some("fallback")
    );
    assert_eq!(identity.exchanges(), 0);
}
