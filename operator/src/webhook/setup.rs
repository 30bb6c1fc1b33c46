//! The webhook's flags and its start: the serving certificate's upkeep, the HTTPS listener, and
//! the CA bundle follower.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Webhook;
use crate::admin::Health;
use crate::certs::{self, ServingCert};
use crate::error::Error;
use crate::inject::{self, HostNetwork, Mode};
use crate::metrics::Metrics;

/// The port the budget ledger's listener takes on the operator Service (the default of
/// `--ledger-url`).
pub const LEDGER_PORT: u16 = 8444;

/// The sidecar's resources unless `--sidecar-resources` says otherwise.
pub const DEFAULT_SIDECAR_RESOURCES: &str =
    r#"{"requests":{"cpu":"20m","memory":"32Mi"},"limits":{"memory":"256Mi"}}"#;

/// How the sidecar is placed, as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// Native when the API server is 1.29 or newer (native sidecars on by default), else a
    /// regular container.
    Auto,
    /// Always an init container with `restartPolicy: Always`.
    Native,
    /// Always a regular container.
    Container,
}

/// Flags of the webhook and the serving certificate; each also from a `GATEHOUSE_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Serve the sidecar-injection webhook over HTTPS on this address (off when unset).
    #[arg(long, env = "GATEHOUSE_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// The operator's Service; the serving certificate is for its DNS names
    /// (`<service>.<namespace>.svc` and the shorter and longer forms).
    #[arg(
        long,
        env = "GATEHOUSE_SERVICE_NAME",
        default_value = "gatehouse-operator"
    )]
    pub service_name: String,
    /// Where the serving certificate comes from: `operator` (its own CA, rotated before expiry,
    /// `caBundle` written) or `secret` (read from `--tls-secret`, written by cert-manager).
    #[arg(
        long,
        env = "GATEHOUSE_TLS_SOURCE",
        value_enum,
        default_value = "operator"
    )]
    pub tls_source: certs::Source,
    /// The Secret, in the operator's namespace, holding the serving certificate and CA.
    #[arg(
        long,
        env = "GATEHOUSE_TLS_SECRET",
        default_value = "gatehouse-operator-tls"
    )]
    pub tls_secret: String,
    /// Lifetime of a serving certificate in seconds; re-issued when a third is left.
    #[arg(long, env = "GATEHOUSE_TLS_VALIDITY_SECONDS", default_value_t = 90 * 24 * 3600, value_parser = clap::value_parser!(u64).range(10..))]
    pub tls_validity_seconds: u64,
    /// Lifetime of the operator's CA in seconds; replaced (trust first, then use) when a third is
    /// left.
    #[arg(long, env = "GATEHOUSE_TLS_CA_VALIDITY_SECONDS", default_value_t = 10 * 365 * 24 * 3600, value_parser = clap::value_parser!(u64).range(10..))]
    pub tls_ca_validity_seconds: u64,
    /// How often the certificate Secret is read again, in milliseconds.
    #[arg(long, env = "GATEHOUSE_TLS_CHECK_INTERVAL_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub tls_check_interval_ms: u64,
    /// The MutatingWebhookConfiguration whose `caBundle` the operator writes (operator source),
    /// and which owns the CA ConfigMaps it writes. Empty: none.
    #[arg(
        long,
        env = "GATEHOUSE_WEBHOOK_CONFIGURATION",
        default_value = "gatehouse-sidecar-injector"
    )]
    pub webhook_configuration: String,
    /// The sidecar image injected.
    #[arg(long, env = "GATEHOUSE_SIDECAR_IMAGE", default_value = concat!("ghcr.io/gatehouse-dev/gatehouse-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// Its pull policy.
    #[arg(
        long,
        env = "GATEHOUSE_SIDECAR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub sidecar_image_pull_policy: String,
    /// The sidecar version recorded on injected pods. Default: the image's tag.
    #[arg(long, env = "GATEHOUSE_SIDECAR_VERSION")]
    pub sidecar_version: Option<String>,
    /// The sidecar's resources, as the JSON of a container's `resources`.
    #[arg(long, env = "GATEHOUSE_SIDECAR_RESOURCES", default_value = DEFAULT_SIDECAR_RESOURCES)]
    pub sidecar_resources: String,
    /// The sidecar's proxy port on the pod's loopback (the base URLs apps get point there).
    #[arg(long, env = "GATEHOUSE_SIDECAR_PORT", default_value_t = inject::DEFAULT_PROXY_PORT)]
    pub sidecar_port: u16,
    /// The sidecar's admin port (probes, metrics), on the pod's interfaces.
    #[arg(long, env = "GATEHOUSE_SIDECAR_ADMIN_PORT", default_value_t = inject::DEFAULT_ADMIN_PORT)]
    pub sidecar_admin_port: u16,
    /// The pod labels the sidecar carries with its identity (comma-separated keys).
    #[arg(
        long,
        env = "GATEHOUSE_SIDECAR_WORKLOAD_LABELS",
        default_value = "app.kubernetes.io/name,app.kubernetes.io/component,team"
    )]
    pub sidecar_workload_labels: String,
    /// Native sidecar (init container with `restartPolicy: Always`), regular container, or
    /// `auto`: native when the API server is 1.29 or newer.
    #[arg(
        long,
        env = "GATEHOUSE_SIDECAR_MODE",
        value_enum,
        default_value = "auto"
    )]
    pub sidecar_mode: SidecarMode,
    /// How long a regular-container sidecar keeps serving after SIGTERM, in milliseconds, since
    /// it is stopped together with the app (a native sidecar is stopped after the app).
    #[arg(long, env = "GATEHOUSE_SIDECAR_DRAIN_MS", default_value_t = 5_000)]
    pub sidecar_drain_ms: u64,
    /// The budget ledger's URL given to sidecars. Default:
    /// `https://<service>.<namespace>.svc:8444`.
    #[arg(long, env = "GATEHOUSE_LEDGER_URL")]
    pub ledger_url: Option<String>,
    /// `hostNetwork: true` pods: `skip` (admit without a sidecar, with a Warning Event) or
    /// `refuse`.
    #[arg(
        long,
        env = "GATEHOUSE_INJECT_HOST_NETWORK",
        value_enum,
        default_value = "skip"
    )]
    pub inject_host_network: HostNetwork,
    /// The Redis (`host:port`) injected sidecars use for Routes with `cache.backend: redis`
    /// (`GATEHOUSE_CACHE_REDIS_ADDR`). Unset: those Routes bypass the cache.
    #[arg(long, env = "GATEHOUSE_SIDECAR_CACHE_REDIS_ADDR")]
    pub sidecar_cache_redis_addr: Option<String>,
}

/// The running webhook.
#[derive(Debug)]
pub struct Started {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The serving certificate (shared with any other TLS listener of the operator).
    pub cert: Arc<ServingCert>,
}

/// Everything [`start`] needs from the operator's flags.
#[derive(Debug, Clone)]
pub struct Context {
    /// The operator's namespace (never injected; holds the certificate Secret).
    pub namespace: String,
    /// The namespace the operator watches, if only one.
    pub scope: Option<String>,
    /// This replica's identity, for Events.
    pub identity: String,
}

impl WebhookArgs {
    /// The certificate upkeep's settings.
    pub fn cert_settings(&self, namespace: &str) -> certs::Settings {
        certs::Settings {
            source: self.tls_source,
            namespace: namespace.to_string(),
            secret: self.tls_secret.clone(),
            dns_names: certs::Settings::service_names(&self.service_name, namespace),
            validity: Duration::from_secs(self.tls_validity_seconds),
            ca_validity: Duration::from_secs(self.tls_ca_validity_seconds),
            check_every: Duration::from_millis(self.tls_check_interval_ms),
            webhook_configuration: (!self.webhook_configuration.is_empty())
                .then(|| self.webhook_configuration.clone()),
        }
    }

    /// The injection settings, given the sidecar mode decided for this cluster.
    pub fn inject_settings(&self, namespace: &str, mode: Mode) -> Result<inject::Settings, Error> {
        let resources: ResourceRequirements = serde_json::from_str(&self.sidecar_resources)
            .map_err(|e| {
                Error::Config(format!(
                    "--sidecar-resources is not a container's resources: {e}"
                ))
            })?;
        let version = self.sidecar_version.clone().unwrap_or_else(|| {
            // The tag, when the image has one (a registry port is not a tag).
            match self.sidecar_image.rsplit_once(':') {
                Some((_, tag)) if !tag.contains('/') => tag.to_string(),
                _ => env!("CARGO_PKG_VERSION").to_string(),
            }
        });
        Ok(inject::Settings {
            image: self.sidecar_image.clone(),
            image_pull_policy: self.sidecar_image_pull_policy.clone(),
            version,
            resources: Some(resources),
            port: self.sidecar_port,
            admin_port: self.sidecar_admin_port,
            workload_labels: self.sidecar_workload_labels.clone(),
            mode,
            ledger_url: self.ledger_url.clone().unwrap_or_else(|| {
                format!(
                    "https://{}.{namespace}.svc:{LEDGER_PORT}",
                    self.service_name
                )
            }),
            drain_ms: self.sidecar_drain_ms,
            host_network: self.inject_host_network,
            excluded_namespaces: vec!["kube-system".into(), namespace.to_string()],
            cache_redis_addr: self.sidecar_cache_redis_addr.clone(),
        })
    }
}

/// Native sidecars are on by default from Kubernetes 1.29 (beta); 1.28 had them behind a gate.
async fn native_sidecars(client: &Client) -> Mode {
    match client.apiserver_version().await {
        Ok(v) => {
            let minor: u32 = v
                .minor
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap_or(0);
            let major: u32 = v.major.parse().unwrap_or(0);
            let mode = if (major, minor) >= (1, 29) {
                Mode::Native
            } else {
                Mode::Container
            };
            tracing::info!(version = %v.git_version, ?mode, "sidecar mode chosen from the API server's version");
            mode
        }
        Err(e) => {
            tracing::warn!(error = %e, "failed to read the API server's version; injecting native sidecars");
            Mode::Native
        }
    }
}

/// Bind the webhook's port, start the certificate upkeep, and serve.
pub async fn start(
    args: &WebhookArgs,
    addr: SocketAddr,
    context: Context,
    client: Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
) -> Result<Started, Error> {
    let mode = match args.sidecar_mode {
        SidecarMode::Auto => native_sidecars(&client).await,
        SidecarMode::Native => Mode::Native,
        SidecarMode::Container => Mode::Container,
    };
    let settings = args.inject_settings(&context.namespace, mode)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let cert = Arc::new(ServingCert::default());
    let tls = cert.server_config(&[b"h2", b"http/1.1"])?;
    health.require_serving_cert(cert.clone());
    tokio::spawn(certs::maintain(
        client.clone(),
        args.cert_settings(&context.namespace),
        cert.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "gatehouse-operator".into(),
            instance: Some(context.identity),
        },
    );
    let webhook = Arc::new(Webhook::new(
        settings,
        client,
        recorder,
        metrics,
        cert.published(),
        context.scope,
    ));
    tokio::spawn(webhook.clone().follow_bundle(stop.clone()));
    tokio::spawn(super::serve(listener, webhook, tls, stop));
    tracing::info!(%addr, ?mode, "sidecar-injection webhook listening");
    Ok(Started { addr, cert })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_flags_parse_and_default_to_a_webhook_that_is_off() {
        crate::Args::command().debug_assert();
        let args = crate::Args::try_parse_from(["gatehouse-operator"]).unwrap();
        assert!(args.webhook.webhook_listen.is_none());
        let settings = args
            .webhook
            .inject_settings("gatehouse-system", Mode::Native)
            .unwrap();
        assert_eq!(settings.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            settings.ledger_url,
            "https://gatehouse-operator.gatehouse-system.svc:8444"
        );
        assert_eq!(
            settings.excluded_namespaces,
            vec!["kube-system", "gatehouse-system"]
        );
        let bad = crate::Args::try_parse_from([
            "gatehouse-operator",
            "--sidecar-resources",
            "{\"requests\": 5}",
        ])
        .unwrap();
        assert!(bad.webhook.inject_settings("ns", Mode::Native).is_err());
        let tagged = crate::Args::try_parse_from([
            "gatehouse-operator",
            "--sidecar-image",
            "registry:5000/gatehouse-sidecar:1.4.2",
        ])
        .unwrap();
        assert_eq!(
            tagged
                .webhook
                .inject_settings("ns", Mode::Native)
                .unwrap()
                .version,
            "1.4.2"
        );
    }
}
