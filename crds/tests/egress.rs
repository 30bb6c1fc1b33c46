//! Rendering `spec.tls`, `spec.proxy` and `spec.headers`: material into the keys Secret under
//! the provider's entries, problems (never content) when a Secret, a ConfigMap or a PEM is wrong.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns: a failure should abort the test loudly"
)]

use gatehouse_crds::{Inputs, ModelProvider, Rendered, SecretData, render};
use serde_json::{Value, json};

fn provider(spec: Value) -> ModelProvider {
    let mut base = json!({
        "type": "openaiCompatible",
        "endpoint": "https://llm.corp.test/v1",
    });
    for (k, v) in spec.as_object().unwrap() {
        base[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "gatehouse.dev/v1alpha1", "kind": "ModelProvider",
        "metadata": {"name": "corp", "namespace": "ns"},
        "spec": base,
    }))
    .unwrap()
}

fn run(spec: Value, secrets: &SecretData) -> Rendered {
    render(&Inputs {
        namespace: "ns",
        providers: &[provider(spec)],
        routes: &[],
        budgets: &[],
        secrets,
    })
}

struct Pki {
    ca: String,
    crt: String,
    key: String,
    other_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let crt = CertificateParams::new(vec!["gatehouse".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Pki {
        ca: ca_cert.pem(),
        crt: crt.pem(),
        key: key.serialize_pem(),
        other_key: KeyPair::generate().unwrap().serialize_pem(),
    }
}

fn problems(r: &Rendered) -> Vec<(String, String)> {
    r.problems
        .iter()
        .map(|p| (p.reason.clone(), p.message.clone()))
        .collect()
}

#[test]
fn tls_proxy_and_header_material_ride_the_keys_secret() {
    let pki = pki();
    let mut secrets = SecretData::new();
    secrets.insert_key("client-tls", "tls.crt", pki.crt.clone());
    secrets.insert_key("client-tls", "tls.key", pki.key.clone());
    secrets.insert_key("proxy-auth", "username", "gatehouse");
    secrets.insert_key("proxy-auth", "password", "pw-secret\n");
    secrets.insert_key("token", "value", "tok-secret");
    secrets.insert_config_map_key("bundle", "ca.pem", pki.ca.clone());
    let r = run(
        json!({
            "tls": {"caBundle": {"configMapRef": {"name": "bundle", "key": "ca.pem"}},
                    "clientCertificateSecretRef": {"name": "client-tls"}, "serverName": "llm.internal"},
            "proxy": {"url": "http://proxy.corp:3128/", "authSecretRef": {"name": "proxy-auth"}},
            "headers": [{"name": "OpenAI-Project", "value": "proj-1"},
                        {"name": "X-Token", "valueFrom": {"secretKeyRef": {"name": "token", "key": "value"}}}],
        }),
        &secrets,
    );
    assert_eq!(problems(&r), []);
    let cfg = &r.config.providers["corp"];
    let tls = cfg.tls.as_ref().unwrap();
    assert_eq!(tls.ca_key.as_deref(), Some("corp_tls-ca"));
    assert_eq!(tls.client_cert_key.as_deref(), Some("corp_tls-crt"));
    assert_eq!(tls.client_key_key.as_deref(), Some("corp_tls-key"));
    assert_eq!(tls.server_name.as_deref(), Some("llm.internal"));
    assert!(!tls.insecure_skip_verify && !tls.system_roots);
    let proxy = cfg.proxy.as_ref().unwrap();
    assert_eq!(proxy.url.as_deref(), Some("http://proxy.corp:3128"));
    assert_eq!(proxy.auth_key.as_deref(), Some("corp_proxy-auth"));
    assert!(!proxy.from_environment);
    assert_eq!(cfg.headers[0].name, "openai-project");
    assert_eq!(cfg.headers[0].value.as_deref(), Some("proj-1"));
    assert_eq!(cfg.headers[1].key.as_deref(), Some("corp_header-1"));
    assert_eq!(r.keys.get("corp_tls-ca"), Some(pki.ca.trim()));
    assert_eq!(r.keys.get("corp_tls-key"), Some(pki.key.trim()));
    assert_eq!(r.keys.get("corp_proxy-auth"), Some("gatehouse:pw-secret"));
    assert_eq!(r.keys.get("corp_header-1"), Some("tok-secret"));
    // The rendered config (a ConfigMap) names entries, never material.
    let config = serde_json::to_string(&r.config).unwrap();
    for secret in [
        "pw-secret",
        "tok-secret",
        "PRIVATE KEY",
        "BEGIN CERTIFICATE",
    ] {
        assert!(!config.contains(secret), "{secret} in the config");
    }
    assert!(r.insecure_tls.is_empty());
}

#[test]
fn wrong_material_is_a_problem_that_names_it_without_its_content() {
    let pki = pki();
    let cases: Vec<(Value, SecretData, &str, &str)> = vec![
        (
            json!({"tls": {"caBundle": {"secretRef": {"name": "ca", "key": "ca.crt"}}}}),
            SecretData::new(),
            "SecretNotFound",
            "secret \"ca\" not found",
        ),
        (
            json!({"tls": {"caBundle": {"configMapRef": {"name": "bundle", "key": "ca.pem"}}}}),
            SecretData::new(),
            "ConfigMapNotFound",
            "configmap \"bundle\" not found",
        ),
        (
            json!({"tls": {"caBundle": {"secretRef": {"name": "ca", "key": "ca.crt"}}}}),
            {
                let mut s = SecretData::new();
                s.insert_key("ca", "ca.crt", "-----BEGIN CERTIFICATE-----\nnot-base64-SECRETISH\n-----END CERTIFICATE-----\n");
                s
            },
            "InvalidCertificate",
            "key \"ca.crt\" of secret \"ca\"",
        ),
        (
            json!({"tls": {"caBundle": {"secretRef": {"name": "ca", "key": "ca.crt"}}}}),
            {
                let mut s = SecretData::new();
                s.insert_key("ca", "ca.crt", "just text SECRETISH");
                s
            },
            "InvalidCertificate",
            "holds no PEM certificate",
        ),
        (
            json!({"tls": {"clientCertificateSecretRef": {"name": "client-tls"}}}),
            {
                let mut s = SecretData::new();
                s.insert_key("client-tls", "tls.crt", pki.crt.clone());
                s.insert_key("client-tls", "tls.key", pki.other_key.clone());
                s
            },
            "InvalidCertificate",
            "does not match the certificate",
        ),
        (
            json!({"tls": {"clientCertificateSecretRef": {"name": "client-tls"}}}),
            {
                let mut s = SecretData::new();
                s.insert_key("client-tls", "tls.crt", pki.crt.clone());
                s
            },
            "KeyNotFound",
            "needs keys \"tls.crt\" and \"tls.key\"",
        ),
        (
            json!({"proxy": {"url": "http://proxy:3128", "authSecretRef": {"name": "proxy-auth"}}}),
            {
                let mut s = SecretData::new();
                s.insert_key("proxy-auth", "username", "a:b");
                s.insert_key("proxy-auth", "password", "SECRETISH");
                s
            },
            "InvalidKey",
            "contains ':'",
        ),
        (
            json!({"headers": [{"name": "X-Token", "valueFrom": {"secretKeyRef": {"name": "token", "key": "v"}}}]}),
            {
                let mut s = SecretData::new();
                s.insert_key("token", "v", "SECRETISH\r\nX-Injected: 1");
                s
            },
            "InvalidKey",
            "key \"v\" of secret \"token\"",
        ),
        (
            json!({"headers": [{"name": "Authorization", "value": "Bearer SECRETISH"}]}),
            SecretData::new(),
            "InvalidSpec",
            "set by Gatehouse itself",
        ),
    ];
    for (spec, secrets, reason, message) in cases {
        let r = run(spec.clone(), &secrets);
        let found = problems(&r);
        assert!(
            found
                .iter()
                .any(|(r, m)| r == reason && m.contains(message)),
            "{spec}: {found:?}"
        );
        assert!(
            found
                .iter()
                .all(|(_, m)| !m.contains("SECRETISH") && !m.contains("PRIVATE")),
            "{spec}: {found:?}"
        );
        // The provider is left out, like one whose key is missing.
        assert!(r.config.providers.is_empty(), "{spec}");
        assert!(r.keys.is_empty(), "{spec}");
    }
}

#[test]
fn skipping_verification_is_rendered_and_called_out() {
    let r = run(
        json!({"tls": {"insecureSkipVerifyDangerous": true}}),
        &SecretData::new(),
    );
    assert_eq!(problems(&r), []);
    assert!(
        r.config.providers["corp"]
            .tls
            .as_ref()
            .unwrap()
            .insecure_skip_verify
    );
    assert!(r.insecure_tls.contains("corp"));
}
