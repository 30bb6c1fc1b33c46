//! gatehouse-sidecar: an OpenAI-compatible LLM proxy that runs next to each workload, routes by model
//! alias, fails over across providers and meters every call.
//!
//! The binary is thin: it parses [`Args`], starts telemetry and calls [`run`]. Tests call [`start`]
//! to get a running sidecar on ephemeral ports.

pub mod audit;
pub mod body;
pub mod cache;
pub mod dialect;
pub mod error;
pub mod genai;
pub mod limits;
pub mod metrics;
pub mod providers;
pub mod proxy;
pub mod redact;
pub mod request;
pub mod routing;
pub mod scrub;
pub mod server;
pub mod source;
pub mod sse;
pub mod stages;
pub mod state;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
pub mod usage;
pub mod warnings;
pub mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::proxy::{Gateway, Settings};
use crate::source::Sink;
use crate::source::manifests::Manifests;
use crate::state::Store;

/// How often a drain looks at the open connections.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Command-line flags; each is also read from a `GATEHOUSE_*` environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gatehouse-sidecar", version, about)]
pub struct Args {
    /// Address of the OpenAI-compatible proxy.
    #[arg(long, env = "GATEHOUSE_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// Address of the admin port (/healthz, /readyz, /metrics).
    #[arg(long, env = "GATEHOUSE_ADMIN_LISTEN", default_value = "127.0.0.1:4001")]
    pub admin_listen: SocketAddr,
    /// Standalone mode: YAML files or folders with ModelProvider, Route, Budget and Secret documents.
    /// Watched; changes apply live. Without it the sidecar runs in kube mode (as with `--kube`).
    #[arg(long, env = "GATEHOUSE_MANIFESTS", value_delimiter = ',', num_args = 1.., conflicts_with = "kube")]
    pub manifests: Vec<PathBuf>,
    /// Kube mode: watch the namespace's `gatehouse-config` ConfigMap through the API (in-cluster
    /// config or KUBECONFIG) and read provider keys from `--keys-dir`.
    #[arg(long, env = "GATEHOUSE_KUBE")]
    pub kube: bool,
    /// Kube mode: authenticate with the bearer token in this file (re-read when it changes).
    #[arg(long, env = "GATEHOUSE_KUBE_TOKEN_FILE")]
    pub kube_token_file: Option<PathBuf>,
    /// Kube mode: where the keys Secret is mounted (one file per key).
    #[arg(
        long,
        env = "GATEHOUSE_KEYS_DIR",
        default_value = "/var/run/gatehouse/keys"
    )]
    pub keys_dir: PathBuf,
    /// How changes to the keys directory (kube mode) or the manifests (standalone mode) are
    /// noticed: `auto` uses inotify and polls when inotify cannot be used (its per-user limits
    /// are shared by every container of a node running as the same UID); `inotify` fails to start
    /// instead; `poll` always polls.
    #[arg(long, env = "GATEHOUSE_FILE_WATCH", value_enum, default_value = "auto")]
    pub file_watch: source::files::Method,
    /// Milliseconds between two polls of the watched files when polling.
    #[arg(long, env = "GATEHOUSE_FILE_POLL_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub file_poll_interval_ms: u64,
    /// Namespace the sidecar serves; manifests in other namespaces are ignored. Also the
    /// namespace every request is attributed to (downward API `metadata.namespace`).
    #[arg(long, env = "GATEHOUSE_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Identity: the pod the sidecar serves (downward API `metadata.name`).
    #[arg(long, env = "GATEHOUSE_POD_NAME")]
    pub pod_name: Option<String>,
    /// Identity: the pod's ServiceAccount (downward API `spec.serviceAccountName`).
    #[arg(long, env = "GATEHOUSE_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// Identity: the `workload` label of spend metrics and the access line. Default: the pod's
    /// `app.kubernetes.io/name` label, else the pod name without its generated suffixes.
    #[arg(long, env = "GATEHOUSE_WORKLOAD")]
    pub workload: Option<String>,
    /// Identity: pod labels as `key=value`, comma-separated (downward API
    /// `metadata.labels['<key>']`; an empty value means the pod lacks the label). They win over
    /// `--pod-labels-file`.
    #[arg(long, env = "GATEHOUSE_POD_LABELS", value_delimiter = ',', value_parser = workload::parse_label)]
    pub pod_labels: Vec<(String, String)>,
    /// Identity: a downward-API labels file (`fieldPath: metadata.labels`), read at start.
    #[arg(long, env = "GATEHOUSE_POD_LABELS_FILE")]
    pub pod_labels_file: Option<PathBuf>,
    /// Identity: the pod labels carried with the workload identity (comma-separated keys).
    #[arg(long, env = "GATEHOUSE_WORKLOAD_LABELS", value_delimiter = ',', default_value = workload::DEFAULT_LABELS)]
    pub workload_labels: Vec<String>,
    /// Distinct `x-gatehouse-tag` values kept: the first this many seen are metric labels; later
    /// new ones are counted as `other`.
    #[arg(long, env = "GATEHOUSE_MAX_TAGS", default_value_t = stages::identity::DEFAULT_MAX_TAGS)]
    pub max_tags: usize,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "GATEHOUSE_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most bytes of upstream answers one attempt buffers: a 2xx body, a refusal relayed to the
    /// client, a 429 body read for its delay, all calls of a fanned-out attempt together. Over
    /// it, the attempt fails and the next target is tried. The default (256 MiB) is twice the
    /// largest real answer, 2048 embeddings of 3072 floats as JSON.
    #[arg(long, env = "GATEHOUSE_MAX_RESPONSE_BYTES", default_value_t = limits::DEFAULT_MAX_RESPONSE_BYTES)]
    pub max_response_bytes: usize,
    /// Most bytes held of one upstream stream event (SSE event or Bedrock frame) not complete
    /// yet. Over it, before the first event the attempt fails over; after, the stream ends with
    /// an `upstream_event_too_large` error event. The default (64 MiB) holds an inline 4K image.
    #[arg(long, env = "GATEHOUSE_MAX_EVENT_BYTES", default_value_t = limits::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Bytes of request bodies held at once over all requests (read, parsed, forwarded). A request
    /// that would go over it is shed with 503 and `Retry-After`. Default: 4 maximum-size bodies.
    #[arg(long, env = "GATEHOUSE_MAX_INFLIGHT_BODY_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_inflight_body_bytes: usize,
    /// Longest wait in milliseconds for the next piece of a request body; a client that stops
    /// sending mid-body gets 408 and its connection is closed.
    #[arg(long, env = "GATEHOUSE_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,
    /// Longest time in milliseconds for a whole request body to arrive. A client trickling its
    /// body just inside the progress timeout would otherwise hold its share of the in-flight
    /// budget (charged from the declared length) forever; past it, 408 and the connection is closed.
    #[arg(long, env = "GATEHOUSE_BODY_DEADLINE_MS", default_value_t = 60_000)]
    pub body_deadline_ms: u64,
    /// How long a client has to send a request's headers, in milliseconds, counted from the
    /// connection's accept or the request's first byte. The app is on the same host, so complete
    /// headers take microseconds; the default tolerates a stalled process and still closes a
    /// slowloris client quickly.
    #[arg(long, env = "GATEHOUSE_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
    /// How long a client connection with no request in flight stays open, in milliseconds. Above
    /// the idle expiry of common clients (httpx, used by the OpenAI and Anthropic Python SDKs: 5 s;
    /// Node's undici: 4 s; Go's net/http: 90 s) so the client retires a connection before the
    /// sidecar closes it and no request is sent onto a closing connection.
    #[arg(long, env = "GATEHOUSE_IDLE_TIMEOUT_MS", default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// Client connections the proxy port keeps open at once. At the cap the longest-idle
    /// connections are closed to make room; when none is idle, new connections wait. Default: half
    /// the open-file limit left after a reserve (each request may hold an upstream connection
    /// too), at most 8192.
    #[arg(long, env = "GATEHOUSE_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Upstream connect timeout in milliseconds.
    #[arg(long, env = "GATEHOUSE_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    /// Log format: json or text.
    #[arg(long, env = "GATEHOUSE_LOG_FORMAT", default_value = "json")]
    pub log_format: telemetry::LogFormat,
    /// Threads serving requests. 1 (the default) runs everything on one thread: a sidecar usually
    /// gets a fraction of a core, and one thread avoids cross-thread wake-ups on every hop
    /// (docs/benchmarks.md has the numbers). Raise it for a sidecar with several cores of its own.
    #[arg(long, env = "GATEHOUSE_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// Metering: `on` (the default) prices every answer and asks OpenAI providers for the usage
    /// of streams whose client did not; `off` leaves it out of the request path, so nothing is
    /// priced (`x-gatehouse-cost-usd: unknown`). Off exists for the bench to measure what
    /// metering costs; a production sidecar keeps it on.
    #[arg(long, env = "GATEHOUSE_METERING", default_value = "on", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub metering: bool,
    /// Budgets: the operator's budget ledger, one or more base URLs (comma-separated; the one
    /// that answers is kept, a `not_leader` answer is followed to the leader). Without it, a
    /// standalone sidecar is its own ledger, and a kube-mode one finds the ledger unreachable
    /// (each Budget's failMode decides).
    #[arg(long, env = "GATEHOUSE_LEDGER_URL", value_delimiter = ',')]
    pub ledger_url: Vec<String>,
    /// Budgets: the projected ServiceAccount token (audience `gatehouse-ledger`) sent to the
    /// ledger, re-read when it changes.
    #[arg(
        long,
        env = "GATEHOUSE_LEDGER_TOKEN_FILE",
        default_value = "/var/run/secrets/gatehouse/ledger/token"
    )]
    pub ledger_token_file: PathBuf,
    /// Budgets: PEM CA certificates an https ledger is verified against (default: the
    /// compiled-in web roots).
    #[arg(long, env = "GATEHOUSE_LEDGER_CA_FILE")]
    pub ledger_ca_file: Option<PathBuf>,
    /// Budgets: longest time in milliseconds one sync with the ledger may take (connect, send,
    /// answer).
    #[arg(long, env = "GATEHOUSE_LEDGER_TIMEOUT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ledger_timeout_ms: u64,
    /// Budgets: longest time in milliseconds a request waits for the ledger to grow its lease
    /// before it is refused (or served, per failMode).
    #[arg(long, env = "GATEHOUSE_BUDGET_WAIT_MS", default_value_t = stages::budget::DEFAULT_WAIT_MS)]
    pub budget_wait_ms: u64,
    /// Budgets: output tokens reserved for a chat request that sets no `max_tokens` or
    /// `max_completion_tokens`.
    #[arg(long, env = "GATEHOUSE_BUDGET_DEFAULT_OUTPUT_TOKENS", default_value_t = stages::budget::estimate::DEFAULT_OUTPUT_TOKENS)]
    pub budget_default_output_tokens: u64,
    /// Audit log: write one JSON line per request to stdout (`on`) or not (`off`).
    #[arg(long, env = "GATEHOUSE_AUDIT_STDOUT", default_value = "off", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub audit_stdout: bool,
    /// Audit log: write one JSON line per request to this file, rotated by size.
    #[arg(long, env = "GATEHOUSE_AUDIT_FILE")]
    pub audit_file: Option<PathBuf>,
    /// Audit log: rotate the file before it grows past this many bytes.
    #[arg(long, env = "GATEHOUSE_AUDIT_FILE_MAX_BYTES", default_value_t = 100 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub audit_file_max_bytes: u64,
    /// Audit log: rotated files kept besides the current one (`audit.log.1`, ...).
    #[arg(long, env = "GATEHOUSE_AUDIT_FILE_KEEP", default_value_t = 5)]
    pub audit_file_keep: u32,
    /// After SIGTERM, keep accepting and serving requests for at least this many milliseconds,
    /// and then for as long as a client connection is open, before shutting down. A sidecar that
    /// is stopped together with its app (a regular container) needs it, so the app's requests
    /// during its own shutdown still find it; the app's connections close when its process ends.
    /// 0 (the default): stop accepting at once and let in-flight requests finish. A second
    /// SIGTERM or Ctrl-C ends a drain at once.
    #[arg(long, env = "GATEHOUSE_DRAIN_MS", default_value_t = 0)]
    pub drain_ms: u64,
    /// Response cache: the Redis (`host:port`) of Routes with `cache.backend: redis`, shared by
    /// every sidecar pointed at it. Unset: those Routes bypass the cache.
    #[arg(long, env = "GATEHOUSE_CACHE_REDIS_ADDR")]
    pub cache_redis_addr: Option<String>,
    /// Response cache: Redis ACL user for `AUTH` (with the password file). Unset: the default
    /// user.
    #[arg(long, env = "GATEHOUSE_CACHE_REDIS_USERNAME")]
    pub cache_redis_username: Option<String>,
    /// Response cache: file holding the Redis password (a mounted Secret key; read at each new
    /// connection, never logged). Unset: no `AUTH`.
    #[arg(long, env = "GATEHOUSE_CACHE_REDIS_PASSWORD_FILE")]
    pub cache_redis_password_file: Option<PathBuf>,
    /// Response cache: Redis database number.
    #[arg(long, env = "GATEHOUSE_CACHE_REDIS_DB", default_value_t = 0)]
    pub cache_redis_db: u32,
    /// Response cache: longest a Redis lookup or store may take, connecting included; past it
    /// the request bypasses the cache and Redis is skipped for a second.
    #[arg(long, env = "GATEHOUSE_CACHE_REDIS_TIMEOUT_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_redis_timeout_ms: u64,
}

/// `on` or `off`.
fn parse_switch(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected 'on' or 'off', got '{other}'")),
    }
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// I/O error.
        source: std::io::Error,
    },
    /// The keys directory or the manifests could not be watched with inotify, and
    /// `--file-watch=inotify` forbids polling.
    #[error(transparent)]
    Watch(#[from] source::files::WatchError),
    /// Kube mode: the API client could not be configured.
    #[error(transparent)]
    Kube(#[from] source::kube::ClientError),
    /// The workload identity could not be built (the pod labels file).
    #[error(transparent)]
    Identity(#[from] workload::WorkloadError),
    /// The budget ledger client could not be set up (`--ledger-url`, `--ledger-ca-file`).
    #[error(transparent)]
    Ledger(#[from] stages::budget::client::ClientError),
    /// The audit log file could not be opened.
    #[error(transparent)]
    Audit(#[from] audit::OpenError),
}

impl Args {
    /// The workload identity these flags describe (reads `--pod-labels-file`).
    pub fn workload(&self) -> Result<workload::Workload, workload::WorkloadError> {
        workload::Workload::build(&workload::Sources {
            namespace: &self.namespace,
            pod: self.pod_name.as_deref(),
            service_account: self.service_account.as_deref(),
            workload: self.workload.as_deref(),
            labels: &self.pod_labels,
            labels_file: self.pod_labels_file.as_deref(),
            allowed: &self.workload_labels,
        })
    }
}

/// A running sidecar.
#[derive(Debug)]
pub struct Running {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin port listens.
    pub admin_addr: SocketAddr,
    /// The live config store.
    pub store: Arc<Store>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Where Budgets are spent; flushed after the last request.
    ledger: Arc<dyn stages::budget::ledger::Ledger>,
    ledger_task: Option<JoinHandle<()>>,
    _files: source::files::Watch,
    _kube: Option<source::kube::Watching>,
}

impl Running {
    /// Stop accepting, let in-flight requests finish (within the grace period), report what the
    /// ledger has not heard yet (bounded), then return.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(flush) = self.ledger.flush() {
            let _ = tokio::time::timeout(LEDGER_FLUSH_TIMEOUT, flush).await;
        }
        if let Some(task) = self.ledger_task {
            task.abort();
        }
    }

    /// The ledger Budgets are spent against.
    pub fn ledger(&self) -> &Arc<dyn stages::budget::ledger::Ledger> {
        &self.ledger
    }

    /// Client connections open on the proxy port.
    pub fn open_connections(&self) -> i64 {
        self.metrics
            .connections
            .get_or_create(&metrics::ListenerLabels { listener: "proxy" })
            .get()
    }

    /// Keep serving, new connections included, until at least `min` has passed and no client
    /// connection is open on the proxy port, or until `interrupt` resolves. An app's connections
    /// close when its process ends, so with the app stopping after the sidecar's SIGTERM this
    /// lasts until the app has stopped (or until the kubelet's grace period ends).
    pub async fn drain(&self, min: Duration, interrupt: impl std::future::Future<Output = ()>) {
        let started = tokio::time::Instant::now();
        tokio::pin!(interrupt);
        tracing::info!(
            drain_ms = u64::try_from(min.as_millis()).unwrap_or(u64::MAX),
            open_connections = self.open_connections(),
            "draining: serving until the app's connections are closed"
        );
        loop {
            let open = self.open_connections();
            if started.elapsed() >= min && open <= 0 {
                tracing::info!("drained: no client connection left");
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(DRAIN_POLL) => {}
                () = &mut interrupt => {
                    tracing::info!(open_connections = open, "interrupted: stopping without waiting");
                    return;
                }
            }
        }
    }

    /// Wait until a config has been loaded, up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.store.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

/// The ledger Budgets are spent against, shared by the stages and the metrics.
type SharedLedger = Arc<dyn stages::budget::ledger::Ledger>;

/// Longest wait at shutdown for the last report to the ledger.
const LEDGER_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// The ledger for these flags: the operator's when `--ledger-url` is set or in kube mode, the
/// sidecar itself in standalone mode.
fn ledger(
    args: &Args,
    workload: &workload::Workload,
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
) -> Result<(SharedLedger, Option<JoinHandle<()>>), StartError> {
    use stages::budget::{client, ledger::Local, remote};
    let kube = args.kube || args.manifests.is_empty();
    if args.ledger_url.is_empty() && !kube {
        return Ok((Arc::new(Local::new()), None));
    }
    let pod = if workload.pod.is_empty() {
        "sidecar"
    } else {
        &workload.pod
    };
    let settings = remote::Settings {
        instance: format!("{pod}/{:016x}", rand::random::<u64>()),
        namespace: workload.namespace.to_string(),
        client: client::Settings {
            urls: args.ledger_url.clone(),
            token_file: args.ledger_token_file.clone(),
            ca_file: args.ledger_ca_file.clone(),
            timeout: Duration::from_millis(args.ledger_timeout_ms),
        },
    };
    let (ledger, task) = remote::Remote::start(settings, store.clone(), metrics.clone())?;
    Ok((ledger, Some(task)))
}

/// Bind the ports, start the config source and serve in the background.
pub async fn start(args: &Args) -> Result<Running, StartError> {
    // Built once, before anything listens: every request is attributed to it.
    let workload = Arc::new(args.workload()?);
    let proxy_listener =
        TcpListener::bind(args.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: args.listen,
                source,
            })?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.admin_listen,
            source,
        })?;
    let proxy_addr = proxy_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: args.listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: args.admin_listen,
            source,
        })?;
    let store = Arc::new(Store::default());
    let mut metrics = Metrics::new();
    metrics.register_collector(Box::new(routing::health::HealthCollector(
        store.health().clone(),
    )));
    // The ledger's degraded gauge reads the ledger, which records its syncs into the metrics:
    // registered through a slot filled once both exist.
    let ledger_slot = Arc::new(std::sync::OnceLock::new());
    metrics.register_collector(Box::new(stages::budget::DegradedCollector(
        ledger_slot.clone(),
    )));
    let metrics = Arc::new(metrics);
    let (ledger, ledger_task) = ledger(args, &workload, &store, &metrics)?;
    let _ = ledger_slot.set(ledger.clone());
    let audit_settings = audit::Settings {
        stdout: args.audit_stdout,
        file: args.audit_file.clone(),
        max_bytes: args.audit_file_max_bytes,
        keep: args.audit_file_keep,
    };
    let audit = if audit_settings.enabled() {
        Some(Arc::new(audit::Sink::start(
            audit_settings,
            metrics.audit_dropped.clone(),
        )?))
    } else {
        None
    };
    let sink = Sink {
        store: store.clone(),
        metrics: metrics.clone(),
    };
    // Every file the sidecar watches goes into this one watch: one inotify instance per sidecar.
    let watch_settings = source::files::Settings {
        method: args.file_watch,
        poll_interval: Duration::from_millis(args.file_poll_interval_ms),
    };
    let (files, kube) = if args.kube || args.manifests.is_empty() {
        let client = source::kube::client(args.kube_token_file.as_deref()).await?;
        let keys = source::keys::KeysDir::new(args.keys_dir.clone());
        let (files, rx) = source::files::watch(
            format!("the keys directory {}", args.keys_dir.display()),
            vec![source::files::Target::dir(&args.keys_dir)],
            watch_settings,
            &metrics,
        )?;
        let watching = source::kube::watch(client, &args.namespace, keys, rx, sink);
        (files, Some(watching))
    } else {
        let manifests = Manifests::new(args.manifests.clone(), args.namespace.clone());
        let (files, rx) = source::files::watch(
            manifests.describe(),
            manifests.targets(),
            watch_settings,
            &metrics,
        )?;
        manifests.watch(sink, rx);
        (files, None)
    };
    let gateway = Arc::new(Gateway::new(
        store.clone(),
        metrics.clone(),
        upstream::client(Duration::from_millis(args.connect_timeout_ms)),
        Settings {
            max_body_bytes: args.max_body_bytes,
            max_response_bytes: args.max_response_bytes,
            max_event_bytes: args.max_event_bytes,
            max_inflight_body_bytes: args.max_inflight_body_bytes,
            body_read_timeout: Duration::from_millis(args.body_read_timeout_ms),
            body_deadline: Duration::from_millis(args.body_deadline_ms),
            workload: workload.clone(),
            max_tags: args.max_tags,
            metering: args.metering,
            ledger: ledger.clone(),
            budget: stages::budget::Settings {
                wait: Duration::from_millis(args.budget_wait_ms),
                default_output_tokens: args.budget_default_output_tokens,
                carried_labels: args.workload_labels.clone(),
            },
            audit,
            cache: cache::Settings {
                redis: args
                    .cache_redis_addr
                    .clone()
                    .map(|addr| cache::redis::Settings {
                        addr,
                        username: args.cache_redis_username.clone(),
                        password_file: args.cache_redis_password_file.clone(),
                        db: args.cache_redis_db,
                        timeout: Duration::from_millis(args.cache_redis_timeout_ms),
                    }),
            },
        },
    ));
    let timeouts = server::connection::Timeouts {
        header_read: Duration::from_millis(args.header_read_timeout_ms),
        idle: Duration::from_millis(args.idle_timeout_ms),
    };
    let nofile = server::fds::nofile();
    let max_connections = args.max_connections.map_or_else(
        || server::fds::default_max_connections(nofile),
        |max| usize::try_from(max).unwrap_or(usize::MAX),
    );
    let (shutdown, rx) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(server::serve(
            "proxy",
            proxy_listener,
            server::proxy_handler(gateway),
            server::Limits {
                timeouts,
                max_connections,
            },
            metrics.clone(),
            rx.clone(),
        )),
        tokio::spawn(server::serve(
            "admin",
            admin_listener,
            server::admin_handler(store.clone(), metrics.clone()),
            server::Limits {
                timeouts,
                max_connections: server::fds::ADMIN_MAX_CONNECTIONS,
            },
            metrics.clone(),
            rx,
        )),
    ];
    tracing::info!(
        %proxy_addr,
        %admin_addr,
        max_connections,
        open_file_limit = nofile,
        namespace = %workload.namespace,
        workload = %workload.name,
        budget_ledger = ledger.mode(),
        service_account = %workload.service_account,
        pod = %workload.pod,
        labels = ?workload.labels,
        "gatehouse-sidecar listening"
    );
    Ok(Running {
        proxy_addr,
        admin_addr,
        store,
        metrics,
        shutdown,
        tasks,
        ledger,
        ledger_task,
        _files: files,
        _kube: kube,
    })
}

/// Run until SIGTERM or Ctrl-C, then shut down gracefully.
pub async fn run(args: Args) -> Result<(), StartError> {
    // Before `start` derives the connection cap from it. Only the binary does this: it changes
    // the whole process.
    server::fds::raise_nofile();
    let running = start(&args).await?;
    telemetry::shutdown_signal().await;
    if args.drain_ms > 0 {
        running
            .drain(
                Duration::from_millis(args.drain_ms),
                telemetry::shutdown_signal(),
            )
            .await;
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Args;

    #[test]
    fn metering_is_on_unless_switched_off() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["gatehouse-sidecar", "--manifests", "m.yaml"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
        };
        assert!(parse(&[]).unwrap().metering);
        assert!(parse(&["--metering", "on"]).unwrap().metering);
        assert!(!parse(&["--metering", "off"]).unwrap().metering);
        assert!(!parse(&["--metering=off"]).unwrap().metering);
        assert!(parse(&["--metering", "maybe"]).is_err());
    }
}
