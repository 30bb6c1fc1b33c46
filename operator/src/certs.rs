//! The operator's serving certificate, for every TLS listener it runs: the admission webhook
//! today, the budget ledger next. One [`ServingCert`] per process hands out a rustls
//! [`ServerConfig`] whose certificate is swapped in place, so a rotation needs no restart and no
//! listener change; [`maintain`] keeps it current.
//!
//! Where the certificate comes from ([`Source`]):
//! - **operator** (default): the operator is its own CA. The CA and the serving certificate live in
//!   one Secret in the operator's namespace, so every replica serves the same certificate; the
//!   first replica to find it empty fills it, the others read it (writes carry the
//!   `resourceVersion` they read, so two replicas never both win). The CA bundle is written into
//!   the `caBundle` of the MutatingWebhookConfiguration. Before expiry ([`plan`]): the serving
//!   certificate is re-issued when a third of its lifetime is left; the CA is replaced in two
//!   steps, *trust then use*: a new CA is first added to the bundle, and only once the webhook
//!   configuration carries it (and a check interval has passed, for the API server to pick it up)
//!   does it start signing. The old CA stays in the bundle until it expires.
//! - **secret**: someone else (cert-manager, from the chart's Certificate) writes the Secret
//!   (`tls.crt`, `tls.key`, `ca.crt`) and the `caBundle` (cert-manager's CA injector); the operator
//!   only reads it and follows its renewals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::error::Error;
use crate::metrics::Metrics;

/// Secret key of the serving certificate (PEM), as cert-manager names it.
pub const TLS_CRT: &str = "tls.crt";
/// Secret key of the serving key (PEM).
pub const TLS_KEY: &str = "tls.key";
/// Secret key of the CA bundle clients trust (PEM, one or more certificates).
pub const CA_CRT: &str = "ca.crt";
/// Operator source: the CA that signs now.
const SIGNER_CRT: &str = "signer.crt";
const SIGNER_KEY: &str = "signer.key";
/// Operator source: a CA added to the bundle, not signing yet.
const NEXT_CRT: &str = "next.crt";
const NEXT_KEY: &str = "next.key";
/// When the next CA was staged (Unix seconds), on the Secret.
const STAGED_ANNOTATION: &str = "gatehouse.dev/ca-staged-at";

/// Certificates are valid from this long before they are issued, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(60);

/// Where the serving certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The operator issues it from a CA of its own and writes the `caBundle`.
    Operator,
    /// Read from the Secret, written by someone else (cert-manager).
    Secret,
}

/// How [`maintain`] keeps the certificate.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Operator or secret.
    pub source: Source,
    /// The operator's namespace, where the Secret lives.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The names the serving certificate is for (the operator Service's DNS names).
    pub dns_names: Vec<String>,
    /// Lifetime of a serving certificate.
    pub validity: Duration,
    /// Lifetime of a CA.
    pub ca_validity: Duration,
    /// How often the Secret is read again (and rotation considered).
    pub check_every: Duration,
    /// The MutatingWebhookConfiguration whose `caBundle` holds the bundle.
    pub webhook_configuration: Option<String>,
}

impl Settings {
    /// The DNS names of Service `service` in `namespace`.
    pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
        vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            format!("{service}.{namespace}"),
            service.to_string(),
        ]
    }
}

/// What the rest of the operator sees of the certificates: the bundle that signs the serving
/// certificate, and the webhook configuration to own objects that exist for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    /// PEM of every CA to trust.
    pub bundle: Option<Arc<str>>,
    /// An owner reference to the webhook configuration, when it exists.
    pub owner: Option<OwnerReference>,
}

/// The serving certificate of this process, swapped in place on rotation.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwapOption<CertifiedKey>,
    current_pem: std::sync::Mutex<Option<String>>,
    published: watch::Sender<Published>,
    provider: Arc<CryptoProvider>,
}

impl Default for ServingCert {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            current_pem: std::sync::Mutex::new(None),
            published: watch::Sender::new(Published::default()),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl ServingCert {
    /// A rustls server configuration that serves whatever certificate is current at each
    /// handshake, offering `alpn` (e.g. `h2`, `http/1.1`).
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(format!("failed to build the TLS configuration: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Whether a certificate is loaded (handshakes fail until then).
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// The PEM of the certificate being served.
    pub fn certificate_pem(&self) -> Option<String> {
        self.current_pem.lock().ok().and_then(|g| g.clone())
    }

    /// Follow the CA bundle (and the webhook configuration owning objects made for it).
    pub fn published(&self) -> watch::Receiver<Published> {
        self.published.subscribe()
    }

    /// Serve `cert_pem`/`key_pem` from the next handshake on. Returns whether it changed.
    pub fn install(&self, cert_pem: &str, key_pem: &str) -> Result<bool, Error> {
        if self.certificate_pem().as_deref() == Some(cert_pem) {
            return Ok(false);
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("failed to parse the serving certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("failed to parse the serving key: {e}")))?;
        let key = CertifiedKey::from_der(chain, key, &self.provider)
            .map_err(|e| Error::Tls(format!("failed to load the serving certificate: {e}")))?;
        self.current.store(Some(Arc::new(key)));
        if let Ok(mut pem) = self.current_pem.lock() {
            *pem = Some(cert_pem.to_string());
        }
        Ok(true)
    }

    fn publish(&self, published: Published) {
        self.published.send_if_modified(|p| {
            let changed = *p != published;
            *p = published;
            changed
        });
    }
}

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

    fn data(&self) -> BTreeMap<String, ByteString> {
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

/// Keep `cert` current until `stop` turns true: read the Secret every
/// [`Settings::check_every`], rotate what needs it (operator source), keep the webhook
/// configuration's `caBundle` in step, and install the serving certificate.
pub async fn maintain(
    client: Client,
    settings: Settings,
    cert: Arc<ServingCert>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        let wait = match step(&client, &settings, &cert, &metrics).await {
            Ok(()) => {
                failures = 0;
                settings.check_every
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics.cert_error(e.metric_label());
                tracing::warn!(error = %e, "failed to maintain the serving certificate; retrying");
                // Quickly while nothing is served yet, then at the usual pace.
                let retry = Duration::from_millis(250) * 2u32.pow(failures.min(5));
                if cert.is_ready() {
                    settings.check_every.min(retry.max(Duration::from_secs(1)))
                } else {
                    retry.min(settings.check_every)
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass of [`maintain`].
pub async fn step(
    client: &Client,
    settings: &Settings,
    cert: &ServingCert,
    metrics: &Metrics,
) -> Result<(), Error> {
    let secrets = Api::<Secret>::namespaced(client.clone(), &settings.namespace);
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let name = &settings.secret;
    let webhook = match &settings.webhook_configuration {
        Some(w) => webhooks
            .get_opt(w)
            .await
            .map_err(|e| Error::kube(format!("get mutatingwebhookconfiguration {w}"), e))?,
        None => None,
    };
    let (serving, bundle) = match settings.source {
        Source::Secret => {
            let secret = secrets
                .get(name)
                .await
                .map_err(|e| Error::kube(format!("get secret {name}"), e))?;
            let material = Material::from_secret(&secret);
            let serving = material.serving.ok_or_else(|| {
                Error::Tls(format!("secret {name} has no {TLS_CRT} and {TLS_KEY} yet"))
            })?;
            (serving, material.bundle.concat())
        }
        Source::Operator => {
            let material = rotate(&secrets, settings, webhook.as_ref(), metrics).await?;
            if let (Some(w), Some(config)) = (&settings.webhook_configuration, &webhook) {
                write_ca_bundle(&webhooks, w, config, &material.bundle_pem(), metrics).await?;
            }
            let serving = material
                .serving
                .clone()
                .ok_or_else(|| Error::Tls("no serving certificate was issued".into()))?;
            (serving, material.bundle_pem())
        }
    };
    if cert.install(&serving.cert, &serving.key)? {
        let expiry = facts(&serving.cert).map(|f| f.not_after).unwrap_or(0);
        metrics.cert_expiry.set(expiry);
        tracing::info!(
            secret = %name,
            not_after = expiry,
            "serving certificate loaded"
        );
    }
    cert.publish(Published {
        bundle: (!bundle.is_empty()).then(|| Arc::from(bundle)),
        owner: webhook.as_ref().and_then(owner_of),
    });
    Ok(())
}

fn owner_of(config: &MutatingWebhookConfiguration) -> Option<OwnerReference> {
    let mut owner = config.controller_owner_ref(&())?;
    owner.controller = None;
    owner.block_owner_deletion = None;
    Some(owner)
}

/// Read the Secret, plan, write; on a conflict (another replica wrote first) read it again.
async fn rotate(
    secrets: &Api<Secret>,
    settings: &Settings,
    webhook: Option<&MutatingWebhookConfiguration>,
    metrics: &Metrics,
) -> Result<Material, Error> {
    let name = &settings.secret;
    for _ in 0..5 {
        let live = secrets
            .get_opt(name)
            .await
            .map_err(|e| Error::kube(format!("get secret {name}"), e))?;
        let material = live.as_ref().map(Material::from_secret).unwrap_or_default();
        let published = match (&material.next, webhook) {
            (Some(next), Some(config)) => ca_bundles(config)
                .iter()
                .all(|bundle| split_pem(bundle).contains(&next.cert)),
            _ => true,
        };
        let Some((next, changes)) = plan(&material, settings, now(), published)? else {
            return Ok(material);
        };
        let mut secret = live.clone().unwrap_or_else(|| Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            ..Secret::default()
        });
        secret.data = Some(next.data());
        secret.string_data = None;
        let annotations = secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        match next.staged_at {
            Some(t) => annotations.insert(STAGED_ANNOTATION.into(), t.to_string()),
            None => annotations.remove(STAGED_ANNOTATION),
        };
        let written = match &live {
            Some(_) => secrets.replace(name, &PostParams::default(), &secret).await,
            None => secrets.create(&PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => {
                for change in &changes {
                    metrics.cert_change(change.label());
                }
                let labels: Vec<&str> = changes.iter().map(|c| c.label()).collect();
                tracing::info!(secret = %name, changes = ?labels, "serving certificate material updated");
                return Ok(next);
            }
            // Another replica wrote first: read what it wrote.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(Error::kube(format!("write secret {name}"), e)),
        }
    }
    Err(Error::Tls(format!(
        "secret {name} kept changing under this replica's writes"
    )))
}

/// The `caBundle` of each webhook of `config`, as text.
pub fn ca_bundles(config: &MutatingWebhookConfiguration) -> Vec<String> {
    config
        .webhooks
        .iter()
        .flatten()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// Set every webhook's `caBundle` of `config` to `bundle`, if one differs: a strategic merge
/// patch keyed by webhook name, so nothing else of the configuration (the chart's) is touched.
async fn write_ca_bundle(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    config: &MutatingWebhookConfiguration,
    bundle: &str,
    metrics: &Metrics,
) -> Result<(), Error> {
    let stale: Vec<serde_json::Value> = config
        .webhooks
        .iter()
        .flatten()
        .filter(|w| {
            w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(bundle.as_bytes())
        })
        .map(|w| {
            serde_json::json!({
                "name": w.name,
                "clientConfig": {"caBundle": ByteString(bundle.as_bytes().to_vec())},
            })
        })
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let patch = serde_json::json!({ "webhooks": stale });
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map_err(|e| {
            Error::kube(
                format!("patch the caBundle of mutatingwebhookconfiguration {name}"),
                e,
            )
        })?;
    metrics.write("mutatingwebhookconfiguration", "patch");
    tracing::info!(webhook_configuration = %name, "caBundle written");
    Ok(())
}

#[cfg(test)]
mod tests;
