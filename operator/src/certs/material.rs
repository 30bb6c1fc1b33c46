//! What the serving certificate's Secret holds and should hold: the certificates (issued with
//! rcgen, read with x509-parser) and [`plan`], the pure decision of what to renew when.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use super::Settings;
use crate::error::Error;

/// Secret key of the serving certificate (PEM), as cert-manager names it.
pub const TLS_CRT: &str = "tls.crt";
/// Secret key of the serving key (PEM).
pub const TLS_KEY: &str = "tls.key";
/// Secret key of the CA bundle clients trust (PEM, one or more certificates).
pub const CA_CRT: &str = "ca.crt";
/// Operator source: the CA that signs now.
pub(super) const SIGNER_CRT: &str = "signer.crt";
pub(super) const SIGNER_KEY: &str = "signer.key";
/// Operator source: a CA added to the bundle, not signing yet.
pub(super) const NEXT_CRT: &str = "next.crt";
pub(super) const NEXT_KEY: &str = "next.key";
/// When the next CA was staged (Unix seconds), on the Secret.
pub(super) const STAGED_ANNOTATION: &str = "gatehouse.dev/ca-staged-at";

/// Certificates are valid from this long before they are issued, for clocks a little behind.
pub(super) const BACKDATE: Duration = Duration::from_secs(60);

/// A certificate and its key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Pair {
    /// Certificate.
    pub cert: String,
    /// Private key.
    pub key: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("cert", &self.cert)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// What the Secret holds, operator source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Material {
    /// The serving certificate.
    pub serving: Option<Pair>,
    /// The CA that signs.
    pub signer: Option<Pair>,
    /// A CA in the bundle, not signing yet.
    pub next: Option<Pair>,
    /// When `next` was added (Unix seconds).
    pub staged_at: Option<i64>,
    /// The CAs clients trust, PEM each.
    pub bundle: Vec<String>,
}

impl Material {
    /// Read from a Secret's data and annotations.
    pub fn from_secret(secret: &Secret) -> Self {
        let data = secret.data.clone().unwrap_or_default();
        let text = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|s| !s.trim().is_empty())
        };
        let pair = |c: &str, k: &str| {
            Some(Pair {
                cert: text(c)?,
                key: text(k)?,
            })
        };
        Self {
            serving: pair(TLS_CRT, TLS_KEY),
            signer: pair(SIGNER_CRT, SIGNER_KEY),
            next: pair(NEXT_CRT, NEXT_KEY),
            staged_at: secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(STAGED_ANNOTATION))
                .and_then(|s| s.parse().ok()),
            bundle: text(CA_CRT).map(|b| split_pem(&b)).unwrap_or_default(),
        }
    }

    /// The bundle as one PEM text.
    pub fn bundle_pem(&self) -> String {
        self.bundle.concat()
    }

    /// The Secret's data for this material.
    pub(super) fn data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
        };
        for (pair, c, k) in [
            (&self.serving, TLS_CRT, TLS_KEY),
            (&self.signer, SIGNER_CRT, SIGNER_KEY),
            (&self.next, NEXT_CRT, NEXT_KEY),
        ] {
            if let Some(p) = pair {
                put(c, &p.cert);
                put(k, &p.key);
            }
        }
        put(CA_CRT, &self.bundle_pem());
        data
    }
}

/// The PEM blocks of `text`, each with its trailing newline.
pub fn split_pem(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END ") {
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

/// What one certificate says, as far as rotation cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Valid from (Unix seconds).
    pub not_before: i64,
    /// Valid until (Unix seconds).
    pub not_after: i64,
    /// A CA.
    pub is_ca: bool,
    /// DNS names.
    pub dns_names: Vec<String>,
}

/// Read the first certificate of `pem`.
pub fn facts(pem: &str) -> Option<Facts> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = block.parse_x509().ok()?;
    let mut dns_names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    dns_names.sort();
    Some(Facts {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        dns_names,
    })
}

/// Whether `cert` is signed by the CA `ca` (both PEM).
pub fn signed_by(cert: &str, ca: &str) -> bool {
    let parse = |pem: &str| {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .ok()
            .map(|(_, block)| block)
    };
    let (Some(leaf), Some(issuer)) = (parse(cert), parse(ca)) else {
        return false;
    };
    let (Ok(leaf), Ok(issuer)) = (leaf.parse_x509(), issuer.parse_x509()) else {
        return false;
    };
    leaf.issuer() == issuer.subject() && leaf.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn params(now: i64, validity: Duration) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|e| Error::Tls(format!("failed to set a certificate's validity: {e}")))
    };
    params.not_before = at(now - secs(BACKDATE))?;
    params.not_after = at(now.saturating_add(secs(validity)))?;
    params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
    Ok(params)
}

fn cert_error(e: rcgen::Error) -> Error {
    Error::Tls(format!("failed to issue a certificate: {e}"))
}

/// A new CA, valid for `validity` from `now`.
pub fn new_ca(now: i64, validity: Duration) -> Result<Pair, Error> {
    let key = KeyPair::generate().map_err(cert_error)?;
    let mut params = params(now, validity)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("gatehouse-operator-ca-{now}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(cert_error)?;
    Ok(Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A serving certificate for `dns_names`, signed by `ca`.
pub fn new_serving(
    ca: &Pair,
    dns_names: &[String],
    now: i64,
    validity: Duration,
) -> Result<Pair, Error> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(cert_error)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(cert_error)?;
    let key = KeyPair::generate().map_err(cert_error)?;
    let mut params = params(now, validity)?;
    // Never valid past its CA: the chain would break before the renewal is due.
    if let Some(ca_end) = facts(&ca.cert).map(|f| f.not_after)
        && let Ok(end) = time::OffsetDateTime::from_unix_timestamp(ca_end)
        && end < params.not_after
    {
        params.not_after = end;
    }
    params.subject_alt_names = CertificateParams::new(dns_names.to_vec())
        .map_err(cert_error)?
        .subject_alt_names;
    if let Some(first) = dns_names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params.signed_by(&key, &issuer).map_err(cert_error)?;
    Ok(Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Why [`plan`] changed the material (a metric label and a log message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// No usable CA: a new one, and everything issued from it.
    CreatedCa,
    /// A new CA added to the bundle, not signing yet.
    StagedCa,
    /// The staged CA signs from now on.
    PromotedCa,
    /// A new serving certificate.
    IssuedServing,
    /// Expired CAs left the bundle.
    PrunedBundle,
}

impl Change {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::CreatedCa => "created_ca",
            Self::StagedCa => "staged_ca",
            Self::PromotedCa => "promoted_ca",
            Self::IssuedServing => "issued_serving",
            Self::PrunedBundle => "pruned_bundle",
        }
    }
}

/// The material the Secret should hold at `now`, and what changed, or `None` when it is fine as
/// it is. `published` says whether the webhook configuration's `caBundle` already holds the
/// staged CA (true when there is no webhook configuration to wait for).
pub fn plan(
    material: &Material,
    settings: &Settings,
    now: i64,
    published: bool,
) -> Result<Option<(Material, Vec<Change>)>, Error> {
    let mut m = material.clone();
    let mut changes = Vec::new();
    let usable_ca = |p: &Option<Pair>| -> Option<Facts> {
        let p = p.as_ref()?;
        facts(&p.cert).filter(|f| f.is_ca && f.not_after > now && KeyPair::from_pem(&p.key).is_ok())
    };
    let third = |d: Duration| secs(d) / 3;

    match usable_ca(&m.signer) {
        None => {
            let ca = new_ca(now, settings.ca_validity)?;
            m.bundle = vec![ca.cert.clone()];
            m.signer = Some(ca);
            m.next = None;
            m.staged_at = None;
            m.serving = None;
            changes.push(Change::CreatedCa);
        }
        Some(signer) => {
            if usable_ca(&m.next).is_none() {
                m.next = None;
                m.staged_at = None;
            }
            if m.next.is_none() && signer.not_after - now < third(settings.ca_validity) {
                let next = new_ca(now, settings.ca_validity)?;
                m.bundle.push(next.cert.clone());
                m.next = Some(next);
                m.staged_at = Some(now);
                changes.push(Change::StagedCa);
            } else if m.next.is_some()
                && published
                && m.staged_at
                    .is_some_and(|t| now - t >= secs(settings.check_every))
            {
                m.signer = m.next.take();
                m.staged_at = None;
                m.serving = None;
                changes.push(Change::PromotedCa);
            }
        }
    }
    // Every CA that signs or is about to stays trusted; the others until they expire.
    let mut bundle: Vec<String> = Vec::new();
    for pem in m
        .signer
        .iter()
        .chain(m.next.iter())
        .map(|p| p.cert.clone())
        .chain(m.bundle.iter().cloned())
    {
        let live = facts(&pem).is_some_and(|f| f.not_after > now);
        if live && !bundle.contains(&pem) {
            bundle.push(pem);
        }
    }
    if bundle.len() < m.bundle.len() && !changes.contains(&Change::CreatedCa) {
        changes.push(Change::PrunedBundle);
    }
    m.bundle = bundle;

    let mut wanted = settings.dns_names.clone();
    wanted.sort();
    let serving_ok = match (&m.serving, &m.signer) {
        (Some(s), Some(ca)) => {
            facts(&s.cert).is_some_and(|f| {
                f.dns_names == wanted && f.not_after - now >= third(settings.validity)
            }) && signed_by(&s.cert, &ca.cert)
                && KeyPair::from_pem(&s.key).is_ok()
        }
        _ => false,
    };
    if !serving_ok && let Some(ca) = &m.signer {
        m.serving = Some(new_serving(
            ca,
            &settings.dns_names,
            now,
            settings.validity,
        )?);
        changes.push(Change::IssuedServing);
    }
    Ok((m != *material).then_some((m, changes)))
}
