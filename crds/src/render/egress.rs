//! `spec.tls`, `spec.proxy` and `spec.headers` of a ModelProvider: resolved into the rendered
//! provider plus entries of the keys Secret, checked here so that a missing Secret or ConfigMap,
//! a PEM that does not parse or a key that does not match its certificate is a problem on the
//! ModelProvider (its `Ready` condition and an Event) rather than a failing connection.
//!
//! Messages name Secrets, ConfigMaps and keys, never their content (not even a line of a PEM
//! that failed to parse).

use crate::config::{HeaderConfig, ProxyConfig, TlsConfig};
use crate::keys::SecretData;
use crate::provider::{ModelProviderSpec, is_reserved_header};

use super::{ObjectKind, Problems};

/// What one provider's egress settings render to.
#[derive(Debug, Default)]
pub(super) struct Egress {
    pub tls: Option<TlsConfig>,
    pub proxy: Option<ProxyConfig>,
    pub headers: Vec<HeaderConfig>,
    /// Keys Secret entries: `(entry name, value)`. Values are secret; never logged.
    pub keys: Vec<(String, String)>,
}

/// Name of a keys Secret entry of `provider`. `_` never occurs in a Kubernetes object name, so
/// these cannot collide with a provider's own key entry (named after the provider).
pub fn entry(provider: &str, what: &str) -> String {
    format!("{provider}_{what}")
}

/// Render `spec`'s egress settings, or push the problems and return `None` (the provider is
/// then left out, like one whose key is missing).
pub(super) fn render(
    name: &str,
    spec: &ModelProviderSpec,
    secrets: &SecretData,
    problems: &mut Problems,
) -> Option<Egress> {
    let mut out = Egress::default();
    let mut ok = true;
    let mut problem = |reason: &str, message: String| {
        problems.push(ObjectKind::ModelProvider, name, reason, message);
    };
    if let Some(tls) = &spec.tls {
        let mut cfg = TlsConfig {
            system_roots: tls.system_roots.unwrap_or(false),
            server_name: tls.server_name.clone(),
            insecure_skip_verify: tls.insecure_skip_verify_dangerous.unwrap_or(false),
            ..TlsConfig::default()
        };
        if let Some(ca) = &tls.ca_bundle {
            let found = match (&ca.secret_ref, &ca.config_map_ref) {
                (Some(r), _) => lookup(
                    secrets.get(&r.name),
                    "secret",
                    &r.name,
                    &r.key,
                    &mut problem,
                ),
                (None, Some(r)) => lookup(
                    secrets.config_map(&r.name),
                    "configmap",
                    &r.name,
                    &r.key,
                    &mut problem,
                ),
                (None, None) => {
                    problem(
                        "InvalidSpec",
                        "spec.tls.caBundle needs secretRef or configMapRef".into(),
                    );
                    None
                }
            };
            match found.map(|(bytes, what)| (check_ca(bytes), what)) {
                Some((Ok(pem), _)) => {
                    let key = entry(name, "tls-ca");
                    out.keys.push((key.clone(), pem));
                    cfg.ca_key = Some(key);
                }
                Some((Err(why), what)) => {
                    problem("InvalidCertificate", format!("{what}: {why}"));
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(r) = &tls.client_certificate_secret_ref {
            let what = format!("secret {:?}", r.name);
            match secrets.get(&r.name) {
                None => {
                    problem("SecretNotFound", format!("{what} not found"));
                    ok = false;
                }
                Some(data) => match (data.get("tls.crt"), data.get("tls.key")) {
                    (Some(crt), Some(key)) => match check_client(crt, key) {
                        Ok((crt, key)) => {
                            let (c, k) = (entry(name, "tls-crt"), entry(name, "tls-key"));
                            out.keys.push((c.clone(), crt));
                            out.keys.push((k.clone(), key));
                            cfg.client_cert_key = Some(c);
                            cfg.client_key_key = Some(k);
                        }
                        Err(why) => {
                            problem("InvalidCertificate", format!("{what}: {why}"));
                            ok = false;
                        }
                    },
                    _ => {
                        problem(
                            "KeyNotFound",
                            format!("{what} needs keys \"tls.crt\" and \"tls.key\""),
                        );
                        ok = false;
                    }
                },
            }
        }
        out.tls = Some(cfg);
    }
    if let Some(proxy) = &spec.proxy {
        let mut cfg = ProxyConfig {
            url: proxy
                .url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
            auth_key: None,
            from_environment: proxy.url.is_none() && proxy.from_environment.unwrap_or(true),
        };
        if let Some(r) = &proxy.auth_secret_ref {
            let what = format!("secret {:?}", r.name);
            match secrets.get(&r.name) {
                None => {
                    problem("SecretNotFound", format!("{what} not found"));
                    ok = false;
                }
                Some(data) => match (data.get("username"), data.get("password")) {
                    (Some(user), Some(password)) => match check_basic(user, password) {
                        Ok(value) => {
                            let key = entry(name, "proxy-auth");
                            out.keys.push((key.clone(), value));
                            cfg.auth_key = Some(key);
                        }
                        Err(why) => {
                            problem("InvalidKey", format!("{what}: {why}"));
                            ok = false;
                        }
                    },
                    _ => {
                        problem(
                            "KeyNotFound",
                            format!("{what} needs keys \"username\" and \"password\""),
                        );
                        ok = false;
                    }
                },
            }
        }
        out.proxy = Some(cfg);
    }
    for (i, header) in spec.headers.iter().enumerate() {
        if is_reserved_header(&header.name) {
            problem(
                "InvalidSpec",
                format!("spec.headers: {:?} is set by Gatehouse itself", header.name),
            );
            ok = false;
            continue;
        }
        let mut cfg = HeaderConfig {
            name: header.name.to_ascii_lowercase(),
            value: None,
            key: None,
        };
        match (&header.value, &header.value_from) {
            (Some(value), _) => {
                if !valid_header_value(value) {
                    problem(
                        "InvalidSpec",
                        format!(
                            "spec.headers: the value of {:?} is not a valid header value",
                            header.name
                        ),
                    );
                    ok = false;
                    continue;
                }
                cfg.value = Some(value.clone());
            }
            (None, Some(from)) => {
                let r = &from.secret_key_ref;
                let Some((bytes, what)) = lookup(
                    secrets.get(&r.name),
                    "secret",
                    &r.name,
                    &r.key,
                    &mut problem,
                ) else {
                    ok = false;
                    continue;
                };
                let value = std::str::from_utf8(bytes).ok().map(strip_newline);
                match value {
                    Some(v) if !v.is_empty() && v.trim() == v && valid_header_value(v) => {
                        let key = entry(name, &format!("header-{i}"));
                        out.keys.push((key.clone(), v.to_string()));
                        cfg.key = Some(key);
                    }
                    _ => {
                        problem(
                            "InvalidKey",
                            format!(
                                "{what} (header {:?}) is empty, has surrounding whitespace or \
                                 characters a header value cannot carry",
                                header.name
                            ),
                        );
                        ok = false;
                        continue;
                    }
                }
            }
            (None, None) => {
                problem(
                    "InvalidSpec",
                    format!("spec.headers: {:?} needs value or valueFrom", header.name),
                );
                ok = false;
                continue;
            }
        }
        out.headers.push(cfg);
    }
    ok.then_some(out)
}

/// The bytes of `key` in the Secret or ConfigMap `data`, and how to name it in a message.
fn lookup<'a>(
    data: Option<&'a std::collections::BTreeMap<String, Vec<u8>>>,
    kind: &str,
    object: &str,
    key: &str,
    problem: &mut impl FnMut(&str, String),
) -> Option<(&'a [u8], String)> {
    let (not_found, title) = match kind {
        "configmap" => ("ConfigMapNotFound", "configmap"),
        _ => ("SecretNotFound", "secret"),
    };
    let Some(data) = data else {
        problem(not_found, format!("{title} {object:?} not found"));
        return None;
    };
    let Some(bytes) = data.get(key) else {
        problem(
            "KeyNotFound",
            format!("{title} {object:?} has no key {key:?}"),
        );
        return None;
    };
    Some((
        bytes.as_slice(),
        format!("key {key:?} of {title} {object:?}"),
    ))
}

fn strip_newline(value: &str) -> &str {
    value
        .strip_suffix("\r\n")
        .or_else(|| value.strip_suffix('\n'))
        .unwrap_or(value)
}

/// Visible ASCII, spaces and tabs: what `http::HeaderValue` accepts and a proxy passes on.
fn valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// The PEM bundle, checked: at least one certificate, every one usable as a trust anchor.
fn check_ca(bytes: &[u8]) -> Result<String, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let text = std::str::from_utf8(bytes).map_err(|_| "is not PEM text".to_string())?;
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "is not a valid PEM bundle".to_string())?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(certs);
    if ignored > 0 {
        return Err(format!(
            "holds {ignored} certificate(s) that cannot be parsed as a CA certificate"
        ));
    }
    Ok(text.trim().to_string())
}

/// The client certificate chain and key, checked: they parse, and the key is the certificate's.
fn check_client(crt: &[u8], key: &[u8]) -> Result<(String, String), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "tls.crt is not a valid PEM certificate chain".to_string())?;
    if chain.is_empty() {
        return Err("tls.crt holds no PEM certificate".into());
    }
    let der = PrivateKeyDer::from_pem_slice(key)
        .map_err(|_| "tls.key is not a PEM private key".to_string())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|_| {
        "tls.key is not a supported private key (RSA, ECDSA P-256/P-384, Ed25519)".to_string()
    })?;
    rustls::sign::CertifiedKey::new(chain, signer)
        .keys_match()
        .map_err(|_| "tls.key does not match the certificate in tls.crt".to_string())?;
    let text = |b: &[u8], what: &str| {
        std::str::from_utf8(b)
            .map(|s| s.trim().to_string())
            .map_err(|_| format!("{what} is not PEM text"))
    };
    Ok((text(crt, "tls.crt")?, text(key, "tls.key")?))
}

/// `username:password` for Basic proxy authorization, checked.
fn check_basic(user: &[u8], password: &[u8]) -> Result<String, String> {
    let (Ok(user), Ok(password)) = (std::str::from_utf8(user), std::str::from_utf8(password))
    else {
        return Err("username and password must be UTF-8".into());
    };
    let (user, password) = (strip_newline(user), strip_newline(password));
    if user.is_empty() || user.contains(':') {
        return Err("the username is empty or contains ':'".into());
    }
    for v in [user, password] {
        if v.trim() != v || v.chars().any(char::is_control) {
            return Err(
                "the username or password has surrounding whitespace or control characters".into(),
            );
        }
    }
    Ok(format!("{user}:{password}"))
}
