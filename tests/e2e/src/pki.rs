//! Key material for one control plane: a throwaway CA, the apiserver's serving certificate
//! and the ServiceAccount token signing key. Generated in-process so the harness needs no
//! openssl/cfssl on the machine.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files the apiserver is started with.
#[derive(Debug)]
pub(crate) struct Pki {
    pub ca_cert: String,
    pub serving_cert: String,
    pub serving_key: String,
    /// Signs ServiceAccount tokens (ES256); its public half verifies them.
    pub service_account_key: String,
    /// Public half of `service_account_key` (kube-apiserver reads no public key out of PKCS#8).
    pub service_account_pub: String,
}

impl Pki {
    pub(crate) fn generate() -> Result<Self> {
        let ca_key = KeyPair::generate().context("failed to generate CA key")?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "gatehouse-e2e-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).context("failed to self-sign CA")?;
        let issuer = Issuer::new(ca, ca_key);

        let serving_key = KeyPair::generate().context("failed to generate serving key")?;
        // Clients reach the apiserver as 127.0.0.1 or localhost; the in-cluster names are there
        // for tools that validate against `kubernetes.default.svc`.
        let mut serving = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let serving_cert = serving
            .signed_by(&serving_key, &issuer)
            .context("failed to sign serving certificate")?;

        let sa_key = KeyPair::generate().context("failed to generate service account key")?;
        Ok(Self {
            ca_cert: ca_cert.pem(),
            serving_cert: serving_cert.pem(),
            serving_key: serving_key.serialize_pem(),
            service_account_key: sa_key.serialize_pem(),
            service_account_pub: sa_key.public_key_pem(),
        })
    }
}
