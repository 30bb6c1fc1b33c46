#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use super::*;

const T0: i64 = 1_900_000_000;

fn settings() -> Settings {
    Settings {
        source: Source::Operator,
        namespace: "gatehouse-system".into(),
        secret: "gatehouse-operator-tls".into(),
        dns_names: Settings::service_names("gatehouse-operator", "gatehouse-system"),
        validity: Duration::from_secs(90),
        ca_validity: Duration::from_secs(900),
        check_every: Duration::from_secs(5),
        webhook_configuration: Some("gatehouse-sidecar-injector".into()),
    }
}

fn fresh() -> Material {
    let (m, changes) = plan(&Material::default(), &settings(), T0, true)
        .unwrap()
        .unwrap();
    assert_eq!(changes, vec![Change::CreatedCa, Change::IssuedServing]);
    m
}

#[test]
fn an_empty_secret_gets_a_ca_and_a_serving_certificate_for_the_service() {
    let m = fresh();
    let (signer, serving) = (m.signer.clone().unwrap(), m.serving.clone().unwrap());
    assert!(signed_by(&serving.cert, &signer.cert));
    assert_eq!(m.bundle, vec![signer.cert.clone()]);
    let f = facts(&serving.cert).unwrap();
    assert!(!f.is_ca);
    assert_eq!(
        f.dns_names,
        vec![
            "gatehouse-operator",
            "gatehouse-operator.gatehouse-system",
            "gatehouse-operator.gatehouse-system.svc",
            "gatehouse-operator.gatehouse-system.svc.cluster.local",
        ]
    );
    assert_eq!(f.not_after, T0 + 90);
    assert!(facts(&signer.cert).unwrap().is_ca);
    // Nothing to do until a third of the lifetime is left.
    assert_eq!(plan(&m, &settings(), T0 + 59, true).unwrap(), None);
    // Round trip through a Secret.
    let secret = Secret {
        data: Some(m.data()),
        ..Secret::default()
    };
    assert_eq!(Material::from_secret(&secret), m);
    assert!(
        !format!("{m:?}").contains("PRIVATE KEY"),
        "keys stay out of Debug"
    );
}

#[test]
fn the_serving_certificate_is_reissued_before_expiry_from_the_same_ca() {
    let m = fresh();
    let (next, changes) = plan(&m, &settings(), T0 + 61, true).unwrap().unwrap();
    assert_eq!(changes, vec![Change::IssuedServing]);
    assert_eq!(next.signer, m.signer);
    assert_eq!(next.bundle, m.bundle);
    let serving = next.serving.unwrap();
    assert_ne!(Some(&serving), m.serving.as_ref());
    assert!(signed_by(&serving.cert, &m.signer.unwrap().cert));
    assert_eq!(facts(&serving.cert).unwrap().not_after, T0 + 61 + 90);
}

#[test]
fn a_certificate_for_other_names_or_from_another_ca_is_replaced() {
    let m = fresh();
    let mut other = settings();
    other.dns_names = Settings::service_names("renamed", "gatehouse-system");
    let (next, changes) = plan(&m, &other, T0, true).unwrap().unwrap();
    assert_eq!(changes, vec![Change::IssuedServing]);
    assert!(
        facts(&next.serving.unwrap().cert)
            .unwrap()
            .dns_names
            .contains(&"renamed.gatehouse-system.svc".to_string())
    );

    let stranger = fresh();
    let mut mixed = m.clone();
    mixed.serving = stranger.serving;
    let (next, changes) = plan(&mixed, &settings(), T0, true).unwrap().unwrap();
    assert_eq!(changes, vec![Change::IssuedServing]);
    assert!(signed_by(
        &next.serving.unwrap().cert,
        &m.signer.unwrap().cert
    ));
}

#[test]
fn the_ca_is_trusted_first_and_used_only_once_published() {
    let s = settings();
    let m = fresh();
    let old = m.signer.clone().unwrap();
    // A third of the CA's 900 s left: stage a new CA in the bundle; nothing else changes.
    let at = T0 + 601;
    let (staged, changes) = plan(&m, &s, at, true).unwrap().unwrap();
    assert!(changes.contains(&Change::StagedCa), "{changes:?}");
    let next = staged.next.clone().unwrap();
    assert_eq!(staged.signer.as_ref(), Some(&old));
    assert_eq!(staged.bundle, vec![old.cert.clone(), next.cert.clone()]);
    assert_eq!(staged.staged_at, Some(at));
    // Serving certs are still signed by the old CA until promotion.
    assert!(signed_by(&staged.serving.clone().unwrap().cert, &old.cert));

    // Not yet in the webhook configuration's caBundle: wait.
    let waiting = plan(&staged, &s, at + 10, false).unwrap();
    assert!(
        waiting
            .as_ref()
            .is_none_or(|(m, _)| m.signer.as_ref() == Some(&old)),
        "{waiting:?}"
    );
    // Published, but less than a check interval ago: wait.
    let early = plan(&staged, &s, at + 4, true).unwrap();
    assert!(
        early
            .as_ref()
            .is_none_or(|(m, _)| m.signer.as_ref() == Some(&old))
    );
    // Published and settled: the new CA signs, a new serving certificate, the old CA still trusted.
    let (promoted, changes) = plan(&staged, &s, at + 5, true).unwrap().unwrap();
    assert!(
        changes.contains(&Change::PromotedCa) && changes.contains(&Change::IssuedServing),
        "{changes:?}"
    );
    assert_eq!(promoted.signer.as_ref(), Some(&next));
    assert!(promoted.next.is_none());
    assert!(signed_by(
        &promoted.serving.clone().unwrap().cert,
        &next.cert
    ));
    assert_eq!(promoted.bundle, vec![next.cert.clone(), old.cert.clone()]);
    // The old CA leaves the bundle once expired.
    let (pruned, changes) = plan(&promoted, &s, T0 + 901, true).unwrap().unwrap();
    assert!(changes.contains(&Change::PrunedBundle), "{changes:?}");
    assert_eq!(pruned.bundle, vec![next.cert]);
}

#[test]
fn an_expired_or_broken_ca_starts_over() {
    let m = fresh();
    let (next, changes) = plan(&m, &settings(), T0 + 1000, true).unwrap().unwrap();
    assert_eq!(changes, vec![Change::CreatedCa, Change::IssuedServing]);
    assert_ne!(next.signer, m.signer);
    let mut broken = m.clone();
    broken.signer = Some(Pair {
        cert: "garbage".into(),
        key: "garbage".into(),
    });
    let (_, changes) = plan(&broken, &settings(), T0, true).unwrap().unwrap();
    assert_eq!(changes, vec![Change::CreatedCa, Change::IssuedServing]);
}

#[test]
fn split_pem_keeps_each_block() {
    let a = fresh().signer.unwrap().cert;
    let b = fresh().signer.unwrap().cert;
    assert_eq!(split_pem(&format!("{a}{b}")), vec![a, b]);
    assert!(split_pem("").is_empty());
}

/// A handshake against the live config after each `install` sees the new certificate: no
/// restart, no new listener.
#[tokio::test]
async fn installed_certificates_are_served_from_the_next_handshake() {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let now = now();
    let names = vec!["gatehouse-operator.gatehouse-system.svc".to_string()];
    let ca = new_ca(now, Duration::from_secs(3600)).unwrap();
    let first = new_serving(&ca, &names, now, Duration::from_secs(600)).unwrap();
    let second = new_serving(&ca, &names, now, Duration::from_secs(600)).unwrap();

    let cert = Arc::new(ServingCert::default());
    assert!(!cert.is_ready());
    let config = cert.server_config(&[b"http/1.1"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert.as_bytes()).unwrap())
        .unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    // A resumed session reports the certificate of the session it resumes.
    client.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let served = || async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(names[0].clone()).unwrap();
        let mut tls = connector.connect(name, stream).await?;
        let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        assert_eq!(buf, b"ok");
        Ok::<_, std::io::Error>(der)
    };
    assert!(served().await.is_err(), "no certificate, no handshake");

    let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert!(cert.install(&first.cert, &first.key).unwrap());
    assert!(
        !cert.install(&first.cert, &first.key).unwrap(),
        "same one again"
    );
    assert_eq!(served().await.unwrap(), der(&first.cert));
    assert!(cert.install(&second.cert, &second.key).unwrap());
    assert_eq!(served().await.unwrap(), der(&second.cert));
}
