//! gatehouse-operator: turns ModelProvider, Route and Budget resources into the per-namespace config
//! the sidecars read, a Secret with the provider keys, the sidecars' RBAC, and status and Events on
//! every resource.
//!
//! The binary is thin: it parses [`Args`], starts telemetry and calls [`run`]. Tests call [`start`]
//! to run an operator in-process.

pub mod admin;
pub mod certs;
pub mod controller;
pub mod error;
pub mod inject;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod namespace;
pub mod objects;
pub mod status;
pub mod telemetry;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::Error;

use crate::admin::{Health, Phase};
use crate::leader::{LeaderElection, Observed};
use crate::ledger::Ledger;
use crate::metrics::Metrics;

/// Command-line flags; each is also read from an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gatehouse-operator", version, about)]
pub struct Args {
    /// Address of the admin port (/healthz, /readyz, /metrics).
    #[arg(long, env = "GATEHOUSE_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// Elect a leader through a Lease so only one replica reconciles. Off only for a single replica.
    #[arg(long, env = "GATEHOUSE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// The operator's own namespace (in a pod, from the downward API): the leader Lease and the
    /// serving certificate's Secret live there, and the webhook never injects into it.
    #[arg(long, env = "POD_NAMESPACE", default_value = "gatehouse-system")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "GATEHOUSE_LEASE_NAME",
        default_value = "gatehouse-operator"
    )]
    pub lease_name: String,
    /// This replica's identity in the Lease and in Events (in a pod: its name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Watch only this namespace instead of the whole cluster (tests, single-tenant installs).
    #[arg(long, env = "GATEHOUSE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Log format: json or text.
    #[arg(long, env = "GATEHOUSE_LOG_FORMAT", default_value = "json")]
    pub log_format: telemetry::LogFormat,
    /// The sidecar-injection webhook and the serving certificate.
    #[command(flatten)]
    pub webhook: webhook::setup::WebhookArgs,
    /// Address of the budget ledger's listener (`POST /ledger/v1/sync`), on every replica: the
    /// leader answers, a standby points to the leader.
    #[arg(long, env = "GATEHOUSE_LEDGER_LISTEN", default_value = "0.0.0.0:8444")]
    pub ledger_listen: SocketAddr,
    /// The ledger URL the leader publishes for sidecars that reached a standby. Default:
    /// `http(s)://<POD_IP>:<ledger port>`, else the listen address when it is not a wildcard.
    #[arg(long, env = "GATEHOUSE_LEDGER_ADVERTISE_URL")]
    pub ledger_advertise_url: Option<String>,
    /// This replica's pod IP (in a pod: from the downward API), for the default advertise URL.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<String>,
    /// PEM certificate chain to serve the ledger over HTTPS (with `--ledger-tls-key-file`);
    /// plain HTTP without.
    #[arg(
        long,
        env = "GATEHOUSE_LEDGER_TLS_CERT_FILE",
        requires = "ledger_tls_key_file"
    )]
    pub ledger_tls_cert_file: Option<String>,
    /// The ledger's transport: `auto` serves HTTPS with `--ledger-tls-cert-file` when given,
    /// else with the operator's serving certificate when the webhook runs, else plain HTTP;
    /// `off` always serves plain HTTP (a demo on one machine: the sidecars' ServiceAccount
    /// tokens then cross the network in the clear).
    #[arg(long, env = "GATEHOUSE_LEDGER_TLS", default_value = "auto", value_parser = ["auto", "off"])]
    pub ledger_tls: String,
    /// PEM private key for `--ledger-tls-cert-file`.
    #[arg(
        long,
        env = "GATEHOUSE_LEDGER_TLS_KEY_FILE",
        requires = "ledger_tls_cert_file"
    )]
    pub ledger_tls_key_file: Option<String>,
    /// How long a sidecar's budget lease stays valid after it sent the sync that returned it;
    /// the ledger reclaims a silent sidecar's unspent lease a little after that.
    #[arg(long, env = "GATEHOUSE_LEDGER_LEASE_TTL_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub ledger_lease_ttl_ms: u64,
    /// How often a sidecar syncs with the ledger at least (sooner when its lease runs low).
    /// Budget status is current within about this plus one second.
    #[arg(long, env = "GATEHOUSE_LEDGER_SYNC_INTERVAL_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub ledger_sync_interval_ms: u64,
}

impl Args {
    fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "gatehouse-operator".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Run until `shutdown` resolves or leadership is lost, with a client from the environment
/// (in-cluster config, or `KUBECONFIG`).
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut running = start(args, client).await?;
    tokio::select! {
        () = shutdown => running.shutdown().await,
        result = &mut running.task => result.unwrap_or(Ok(())),
    }
}

/// A running operator (admin port bound, electing or reconciling in the background).
#[derive(Debug)]
pub struct Running {
    /// Where the admin port listens.
    pub admin_addr: SocketAddr,
    /// Where the budget ledger listens.
    pub ledger_addr: SocketAddr,
    /// The budget ledger.
    pub ledger: Arc<Ledger>,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// The webhook, when `--webhook-listen` is set.
    pub webhook: Option<webhook::setup::Started>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Stop reconciling (letting a reconcile in progress finish), release the Lease, and return.
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Bind the admin port and start electing and reconciling in the background.
pub async fn start(args: Args, client: kube::Client) -> Result<Running, Error> {
    let listener = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.admin_listen,
            source,
        })?;
    let admin_addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: args.admin_listen,
        source,
    })?;
    if args.ledger_sync_interval_ms >= args.ledger_lease_ttl_ms {
        return Err(Error::Config(format!(
            "--ledger-sync-interval-ms ({}) must be shorter than --ledger-lease-ttl-ms ({}): a \
             sidecar must sync before its lease expires",
            args.ledger_sync_interval_ms, args.ledger_lease_ttl_ms
        )));
    }
    let ledger_listener = TcpListener::bind(args.ledger_listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.ledger_listen,
            source,
        })?;
    let ledger_addr = ledger_listener.local_addr().map_err(|source| Error::Bind {
        addr: args.ledger_listen,
        source,
    })?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let (stop, stopped) = watch::channel(false);
    let webhook = match args.webhook.webhook_listen {
        Some(addr) => Some(
            webhook::setup::start(
                &args.webhook,
                addr,
                webhook::setup::Context {
                    namespace: args.lease_namespace.clone(),
                    scope: args.watch_namespace.clone(),
                    identity: args.identity(),
                },
                client.clone(),
                metrics.clone(),
                health.clone(),
                stopped.clone(),
            )
            .await?,
        ),
        None => None,
    };
    // The ledger speaks HTTPS with its own certificate files when given, else with the
    // operator's serving certificate (the webhook's, renewed in place) when the webhook runs,
    // else plain HTTP.
    let tls = match (
        &args.ledger_tls_cert_file,
        &args.ledger_tls_key_file,
        &webhook,
    ) {
        (Some(cert), Some(key), _) => Some(Arc::new(ledger::server::tls_config(cert, key)?)),
        (_, _, Some(started)) => Some(started.cert.server_config(&[b"http/1.1"])?),
        _ => None,
    };
    let advertise = advertise_url(&args, ledger_addr, tls.is_some());
    let observed = Arc::new(Observed::default());
    let ledger = Arc::new(Ledger::new(
        client.clone(),
        ledger::Settings {
            policy: ledger::account::Policy::for_ttl(args.ledger_lease_ttl_ms),
            sync_after_ms: args.ledger_sync_interval_ms,
            namespace: args.lease_namespace.clone(),
        },
        metrics.clone(),
        observed.clone(),
    ));
    tokio::spawn(admin::serve(
        listener,
        metrics.clone(),
        health.clone(),
        stopped.clone(),
    ));
    tokio::spawn(ledger::server::serve(
        ledger_listener,
        ledger.clone(),
        tls,
        stopped.clone(),
    ));
    tracing::info!(%admin_addr, %ledger_addr, advertise = advertise.as_deref().unwrap_or("none"), "gatehouse-operator listening");
    // Parsed here, once, rather than in the first reconcile; and said where operators look.
    match gatehouse_crds::catalog::source() {
        Some(s) => tracing::info!(
            source = %s.package,
            version = %s.version,
            as_of = %s.as_of,
            "built-in pricing catalog loaded"
        ),
        None => tracing::error!(
            "the built-in pricing catalog does not parse: models without a \
             spec.models[].pricing override are unpriced"
        ),
    }
    let task = tokio::spawn(operate(
        args,
        client,
        metrics.clone(),
        health,
        Leading {
            ledger: ledger.clone(),
            observed,
            advertise,
        },
        stopped,
    ));
    Ok(Running {
        admin_addr,
        ledger_addr,
        ledger,
        metrics,
        webhook,
        stop,
        task,
    })
}

/// The ledger URL to publish: the flag; else the pod IP with the listener's port; else the
/// listen address itself when it is a specific one (tests, a single host).
fn advertise_url(args: &Args, bound: SocketAddr, tls: bool) -> Option<String> {
    if let Some(url) = &args.ledger_advertise_url {
        return Some(url.trim_end_matches('/').to_string());
    }
    let scheme = if tls { "https" } else { "http" };
    let host = match &args.pod_ip {
        Some(ip) if ip.contains(':') => format!("[{ip}]"),
        Some(ip) => ip.clone(),
        None if !bound.ip().is_unspecified() => return Some(format!("{scheme}://{bound}")),
        None => return None,
    };
    Some(format!("{scheme}://{host}:{}", bound.port()))
}

/// What the leader needs for the budget ledger.
struct Leading {
    ledger: Arc<Ledger>,
    observed: Arc<Observed>,
    advertise: Option<String>,
}

/// How long in-flight reconciles (and the lease release) may take once shutdown starts.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Run `work` (which shuts down gracefully when `stop` fires) but give it at most
/// [`SHUTDOWN_GRACE`] after the stop signal: a reconcile stuck on the API must not keep the
/// process, or the Lease, from being released.
async fn bounded_after_stop(work: impl Future<Output = ()>, stop: watch::Receiver<bool>) {
    tokio::pin!(work);
    tokio::select! {
        () = &mut work => {}
        () = stopped(stop) => {
            if tokio::time::timeout(SHUTDOWN_GRACE, work).await.is_err() {
                tracing::warn!("reconciles did not finish within the shutdown grace period");
            }
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn operate(
    args: Args,
    client: kube::Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    leading: Leading,
    stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let identity = args.identity();
    let election = args.leader_election.then(|| {
        LeaderElection::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
        )
        .with_ledger(leading.advertise.clone(), leading.observed.clone())
    });
    // A standby is ready while the API server answers (see `admin::Phase` for why); the leader
    // only once its caches have synced.
    if let Some(election) = &election {
        tokio::select! {
            () = election.acquire(&health) => {}
            () = stopped(stop.clone()) => return Ok(()),
        }
    }
    metrics.leader.set(1);
    health.set(Phase::Syncing);

    let scope = match &args.watch_namespace {
        Some(ns) => controller::Scope::Namespace(ns.clone()),
        None => controller::Scope::Cluster,
    };
    // The fencing term of the ledger's records: the Lease's acquireTime; without an election
    // (one replica) the start of this leadership.
    let term = match &election {
        Some(e) => e.term(),
        None => k8s_openapi::jiff::Timestamp::now().as_microsecond(),
    };
    let ledger = leading.ledger.clone();
    let lead_client = client.clone();
    let lead_scope = scope.clone();
    let lead_identity = identity.clone();
    let lead_stop = stop.clone();
    let controller = bounded_after_stop(
        controller::run(
            client,
            scope,
            metrics.clone(),
            identity,
            || health.set(Phase::Leading),
            stopped(stop.clone()),
            move |budgets, routes| async move {
                ledger
                    .lead(
                        lead_client,
                        ledger::Caches { budgets, routes },
                        lead_scope,
                        lead_identity,
                        term,
                        lead_stop,
                    )
                    .await;
            },
        ),
        stop.clone(),
    );
    let result = match &election {
        Some(election) => {
            tokio::select! {
                () = controller => Ok(()),
                e = election.hold() => Err(e),
            }
        }
        None => {
            controller.await;
            Ok(())
        }
    };
    metrics.leader.set(0);
    if let Some(election) = &election
        && result.is_ok()
        && tokio::time::timeout(SHUTDOWN_GRACE, election.release())
            .await
            .is_err()
    {
        tracing::warn!("could not release the leader lease in time; it expires on its own");
    }
    tracing::info!("stopped");
    result
}
