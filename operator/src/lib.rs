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
use crate::leader::LeaderElection;
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
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(admin::serve(
        listener,
        metrics.clone(),
        health.clone(),
        stopped.clone(),
    ));
    tracing::info!(%admin_addr, "gatehouse-operator admin port listening");
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
    let task = tokio::spawn(operate(args, client, metrics.clone(), health, stopped));
    Ok(Running {
        admin_addr,
        metrics,
        webhook,
        stop,
        task,
    })
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
    let controller = bounded_after_stop(
        controller::run(
            client,
            scope,
            metrics.clone(),
            identity,
            || health.set(Phase::Leading),
            stopped(stop.clone()),
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
