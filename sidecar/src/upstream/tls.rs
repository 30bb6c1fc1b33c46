//! The rustls client config of a provider with `spec.tls`: its trust (a CA bundle, the system
//! store, or the compiled-in public roots), its client certificate, or, when asked for by name,
//! no verification at all.

use std::sync::Arc;

use gatehouse_crds::ProviderKeys;
use gatehouse_crds::config::TlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::EgressError;

/// The client config for `tls`, its material read from `keys`.
pub fn client_config(
    tls: &TlsConfig,
    keys: &ProviderKeys,
) -> Result<rustls::ClientConfig, EgressError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| EgressError::Tls(e.to_string()))?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    } else {
        builder.with_root_certificates(roots(tls, keys)?)
    };
    match (&tls.client_cert_key, &tls.client_key_key) {
        (Some(crt), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(material(keys, crt)?.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| EgressError::Tls("the client certificate is not valid PEM".into()))?;
            let key = PrivateKeyDer::from_pem_slice(material(keys, key)?.as_bytes())
                .map_err(|_| EgressError::Tls("the client key is not a PEM private key".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                // rustls's message names the problem, never the key.
                .map_err(|e| {
                    EgressError::Tls(format!("the client certificate cannot be used: {e}"))
                })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn material<'a>(keys: &'a ProviderKeys, entry: &str) -> Result<&'a str, EgressError> {
    keys.get(entry)
        .ok_or_else(|| EgressError::Missing(entry.to_string()))
}

/// The CA bundle and/or the system store; the compiled-in public roots when neither is set.
fn roots(tls: &TlsConfig, keys: &ProviderKeys) -> Result<rustls::RootCertStore, EgressError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(entry) = &tls.ca_key {
        let certs = CertificateDer::pem_slice_iter(material(keys, entry)?.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| EgressError::Tls("the CA bundle is not valid PEM".into()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(EgressError::Tls(
                "the CA bundle holds no usable certificate".into(),
            ));
        }
    }
    if tls.system_roots {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(error = %error, "failed to read part of the system trust store");
        }
        roots.add_parsable_certificates(found.certs);
    }
    if tls.ca_key.is_none() && !tls.system_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    Ok(roots)
}

/// `insecureSkipVerifyDangerous`: any certificate is accepted. Handshake signatures are still
/// checked (the peer holds the key of the certificate it sent), which says nothing about who it is.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
