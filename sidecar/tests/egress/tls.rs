//! spec.tls: a private CA (Secret or ConfigMap), mTLS, a server name override, rotation under
//! load, and insecureSkipVerifyDangerous.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_mock_provider::MockProvider;
use gatehouse_mock_provider::tls::TlsFront;

use crate::pki::{Ca, server_config};
use crate::support::Sidecar;
use crate::{chat, manifests, object, reload};

const CA_BUNDLE: &str =
    "  tls:\n    caBundle:\n      secretRef:\n        name: corp-ca\n        key: ca.crt\n";

async fn private_upstream(ca: &Ca, names: &[&str]) -> (MockProvider, TlsFront) {
    let mock = MockProvider::start().await.unwrap();
    let leaf = ca.server(names);
    let front = TlsFront::start(mock.addr(), server_config(&leaf, None))
        .await
        .unwrap();
    (mock, front)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_provider_is_reachable_only_with_its_ca() {
    let ca = Ca::new("corp root");
    let (mock, front) = private_upstream(&ca, &["127.0.0.1"]).await;
    let endpoint = format!("https://127.0.0.1:{}/v1", front.addr().port());

    // Without the CA: the public roots do not know it, the handshake fails, nothing reaches
    // the provider, and the client gets the gateway's error.
    let sidecar = Sidecar::start(&manifests(&endpoint, "", "")).await;
    let (status, body) = chat(&sidecar).await;
    assert!(status >= 500, "{status} {body}");
    assert_eq!(mock.request_count(), 0);
    // The front counts the failed handshake once it read the client's alert, which may be
    // after the client has its answer.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while front.failed_handshakes() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed handshake"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // With the CA from a Secret.
    let secret = object("Secret", "corp-ca", &[("ca.crt", &ca.pem)]);
    reload(&sidecar, &manifests(&endpoint, CA_BUNDLE, &secret)).await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.last_request().unwrap().bearer(), Some("sk-egress-key"));

    // With the CA from a ConfigMap (e.g. one trust-manager fills), in a bundle of two. (A
    // render identical to the last one is not applied again: the bundle must differ.)
    let other = Ca::new("someone else");
    let bundle = format!("{}{}", ca.pem, other.pem);
    let config_map = object("ConfigMap", "corp-bundle", &[("bundle.pem", &bundle)]);
    let extra = "  tls:\n    caBundle:\n      configMapRef:\n        name: corp-bundle\n        key: bundle.pem\n";
    reload(&sidecar, &manifests(&endpoint, extra, &config_map)).await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");

    // Another CA's bundle: refused again.
    let secret = object("Secret", "corp-ca", &[("ca.crt", &other.pem)]);
    reload(&sidecar, &manifests(&endpoint, CA_BUNDLE, &secret)).await;
    let before = mock.request_count();
    let (status, body) = chat(&sidecar).await;
    assert!(status >= 500, "{status} {body}");
    assert_eq!(mock.request_count(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_reaches_the_provider_only_with_the_client_certificate() {
    let ca = Ca::new("corp root");
    let clients = Ca::new("client issuer");
    let mock = MockProvider::start().await.unwrap();
    let leaf = ca.server(&["127.0.0.1"]);
    let front = TlsFront::start(mock.addr(), server_config(&leaf, Some(&clients)))
        .await
        .unwrap();
    let endpoint = format!("https://127.0.0.1:{}/v1", front.addr().port());
    let ca_secret = object("Secret", "corp-ca", &[("ca.crt", &ca.pem)]);

    let sidecar = Sidecar::start(&manifests(&endpoint, CA_BUNDLE, &ca_secret)).await;
    let (status, body) = chat(&sidecar).await;
    assert!(status >= 500, "no client certificate: {status} {body}");
    assert_eq!(mock.request_count(), 0);

    // A certificate of another issuer: refused too.
    let stranger = Ca::new("stranger").client("gatehouse");
    let extra = format!("{CA_BUNDLE}    clientCertificateSecretRef:\n      name: client-tls\n");
    let with = |leaf: &crate::pki::Leaf| {
        let tls = object(
            "Secret",
            "client-tls",
            &[("tls.crt", &leaf.cert_pem), ("tls.key", &leaf.key_pem)],
        );
        manifests(&endpoint, &extra, &format!("{ca_secret}{tls}"))
    };
    reload(&sidecar, &with(&stranger)).await;
    let (status, body) = chat(&sidecar).await;
    assert!(status >= 500, "a stranger's certificate: {status} {body}");
    assert_eq!(mock.request_count(), 0);

    reload(&sidecar, &with(&clients.client("gatehouse"))).await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_name_override_is_verified_and_sent_as_sni() {
    let ca = Ca::new("corp root");
    // The certificate names the service, not the address the endpoint uses.
    let (mock, front) = private_upstream(&ca, &["llm.internal.test"]).await;
    let endpoint = format!("https://127.0.0.1:{}/v1", front.addr().port());
    let secret = object("Secret", "corp-ca", &[("ca.crt", &ca.pem)]);

    let sidecar = Sidecar::start(&manifests(&endpoint, CA_BUNDLE, &secret)).await;
    let (status, _) = chat(&sidecar).await;
    assert!(status >= 500, "the certificate does not name 127.0.0.1");
    assert_eq!(mock.request_count(), 0);

    let extra = format!("{CA_BUNDLE}    serverName: llm.internal.test\n");
    reload(&sidecar, &manifests(&endpoint, &extra, &secret)).await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        front.server_names().last().cloned().flatten().as_deref(),
        Some("llm.internal.test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_dangerous_reaches_an_unknown_ca_and_is_called_out() {
    let logs = crate::logs::capture();
    let ca = Ca::new("nobody trusts this");
    let (mock, front) = private_upstream(&ca, &["127.0.0.1"]).await;
    let endpoint = format!("https://127.0.0.1:{}/v1", front.addr().port());
    let extra = "  tls:\n    insecureSkipVerifyDangerous: true\n";
    let sidecar = Sidecar::start(&manifests(&endpoint, extra, "")).await;
    let (status, body) = chat(&sidecar).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.request_count(), 1);
    // Every reload says so, naming the field.
    let logged = logs.text();
    assert!(
        logged.lines().any(|l| l.contains("WARN")
            && l.contains("TLS verification is OFF")
            && l.contains("insecureSkipVerifyDangerous")
            && l.contains("provider=up")),
        "no warning naming the provider and the field"
    );
}

/// The documented rotation: the bundle gains the new CA, the server switches to a certificate
/// of the new CA, the bundle drops the old CA. Requests run throughout; not one fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_rotates_under_load_without_a_failed_request() {
    let old = Ca::new("root 2025");
    let new = Ca::new("root 2026");
    let mock = MockProvider::start().await.unwrap();
    let front = TlsFront::start(
        mock.addr(),
        server_config(&old.server(&["127.0.0.1"]), None),
    )
    .await
    .unwrap();
    let endpoint = format!("https://127.0.0.1:{}/v1", front.addr().port());
    let with_bundle = |pem: &str| {
        manifests(
            &endpoint,
            CA_BUNDLE,
            &object("Secret", "corp-ca", &[("ca.crt", pem)]),
        )
    };
    let sidecar = Arc::new(Sidecar::start(&with_bundle(&old.pem)).await);
    assert_eq!(chat(&sidecar).await.0, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (sidecar, stop, ok, failed) =
            (sidecar.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = chat(&sidecar).await;
                if status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.lock().unwrap().push(format!("{status} {body}"));
                }
            }
        }));
    }
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    settle().await;
    // 1. Trust both.
    reload(&sidecar, &with_bundle(&format!("{}{}", old.pem, new.pem))).await;
    settle().await;
    // 2. The server presents the new CA's certificate to new connections.
    front.set_config(server_config(&new.server(&["127.0.0.1"]), None));
    settle().await;
    // 3. Trust only the new CA: the next snapshot's client opens new connections, which the
    //    new certificate serves.
    reload(&sidecar, &with_bundle(&new.pem)).await;
    settle().await;
    let served_before = ok.load(Ordering::Relaxed);
    settle().await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > served_before,
        "requests went on after the rotation"
    );
    let per_config = front.handshakes_per_config();
    assert!(
        per_config[1] >= 1,
        "the new certificate served: {per_config:?}"
    );
    assert_eq!(front.failed_handshakes(), 0);
    // And the old CA alone no longer works: the rotation really changed the trust.
    reload(&sidecar, &with_bundle(&old.pem)).await;
    let (status, _) = chat(&sidecar).await;
    assert!(status >= 500);
}
