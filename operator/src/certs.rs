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
use std::time::Duration;

use arc_swap::ArcSwapOption;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::error::Error;
use crate::metrics::Metrics;

mod material;

use material::STAGED_ANNOTATION;
pub use material::{
    CA_CRT, Change, Facts, Material, Pair, TLS_CRT, TLS_KEY, facts, new_ca, new_serving, now, plan,
    signed_by, split_pem,
};

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
