//! Mock LLM providers for Gatehouse's tests and benchmarks.
//!
//! [`MockProvider`] serves every provider's wire format on one loopback port, picked by path
//! ([`Flavor`]): OpenAI (and compatible), Azure OpenAI, Anthropic Messages, Gemini and Bedrock
//! (Converse, and InvokeModel for embedding models), JSON and streaming (SSE, event-stream
//! frames), with each one's error bodies. It
//! records what it receives and misbehaves on request: a default [`Behaviour`] plus a FIFO queue
//! of one-shot behaviours for the next requests, applied to whatever flavour the request speaks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gatehouse_mock_provider::Error> {
//! use gatehouse_mock_provider::{Behaviour, MockProvider};
//!
//! let mock = MockProvider::start().await?;
//! mock.push(Behaviour::status(503));
//! mock.push(Behaviour::status(503));
//! // point the client at mock.base_url(): two 503s, then normal answers
//! # Ok(()) }
//! ```

mod answer;
mod anthropic;
mod azure;
mod bedrock;
mod behaviour;
mod body;
mod control;
mod flavor;
mod gemini;
pub mod identity;
mod log;
pub mod openai;
mod server;
pub mod tls;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use bedrock::AwsCredentials;
pub use behaviour::{Behaviour, DEFAULT_CHUNKS, Fault, StreamGate, ToolCall};
pub use flavor::Flavor;
pub use log::RecordedRequest;

use server::{Behaviours, Config, Shared};

/// Models listed by `GET /v1/models` unless the builder sets others.
pub const DEFAULT_MODELS: [&str; 4] = [
    "gpt-4o",
    "gpt-4o-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
];

/// Failures to start a mock.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The bound address could not be read back.
    #[error("failed to read the local address: {0}")]
    LocalAddr(std::io::Error),
}

/// Configures a [`MockProvider`] before it starts.
#[derive(Clone)]
pub struct MockProviderBuilder {
    api_key: Option<String>,
    record: bool,
    default: Behaviour,
    models: Vec<String>,
    aws: Option<AwsCredentials>,
    credential_check: Option<identity::CredentialCheck>,
}

impl std::fmt::Debug for MockProviderBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockProviderBuilder")
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("record", &self.record)
            .field("models", &self.models)
            .field("aws", &self.aws.is_some())
            .field("credential_check", &self.credential_check.is_some())
            .finish()
    }
}

impl Default for MockProviderBuilder {
    fn default() -> Self {
        Self {
            api_key: None,
            record: true,
            default: Behaviour::default(),
            models: DEFAULT_MODELS.iter().map(|m| (*m).to_owned()).collect(),
            aws: None,
            credential_check: None,
        }
    }
}

impl MockProviderBuilder {
    /// Require `authorization: Bearer <key>` on every API request (401 otherwise).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Bedrock: require SigV4 signatures made with `access_key_id` (403
    /// `UnrecognizedClientException` otherwise). Without it any well-formed signature passes.
    pub fn aws_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        let region = self.aws.take().and_then(|a| a.region);
        self.aws = Some(AwsCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            region,
        });
        self
    }

    /// Bedrock: require the SigV4 credential scope's region to be `region` (needs
    /// [`aws_credentials`](Self::aws_credentials) first).
    pub fn aws_region(mut self, region: impl Into<String>) -> Self {
        if let Some(aws) = &mut self.aws {
            aws.region = Some(region.into());
        }
        self
    }

    /// Check every API request's credentials with `check` (an `Err` is the flavour's 401/403),
    /// in place of the key checks: see [`identity::MockIdentity::credential_check`].
    pub fn credential_check(mut self, check: identity::CredentialCheck) -> Self {
        self.credential_check = Some(check);
        self
    }

    /// Keep the request log (default true). Off is the fast path for benchmarks;
    /// [`MockProvider::request_count`] still counts.
    pub fn record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }

    /// The behaviour used when the queue is empty.
    pub fn default_behaviour(mut self, behaviour: Behaviour) -> Self {
        self.default = behaviour;
        self
    }

    /// The models `GET /v1/models` lists and `GET /v1/models/{id}` knows.
    pub fn models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// Start on `127.0.0.1:0`.
    pub async fn start(self) -> Result<MockProvider, Error> {
        self.start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Start on `addr`.
    pub async fn start_on(self, addr: SocketAddr) -> Result<MockProvider, Error> {
        let shared = Arc::new(Shared {
            config: Config {
                api_key: self.api_key,
                record: self.record,
                models: self.models,
                aws: self.aws,
                credential_check: self.credential_check.map(server::Check),
            },
            behaviours: Behaviours::new(self.default),
            log: log::RequestLog::default(),
        });
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(Error::LocalAddr)?;
        let generation = Generation::spawn(listener, Arc::clone(&shared));
        Ok(MockProvider {
            addr,
            shared,
            generation: Mutex::new(Some(generation)),
        })
    }
}

/// One run of the accept loop and the connections it accepted.
#[derive(Debug)]
struct Generation {
    stop_accepting: watch::Sender<bool>,
    kill: watch::Sender<bool>,
    /// Taken by whoever stops the loop, to await it.
    task: Option<JoinHandle<()>>,
}

impl Generation {
    fn spawn(listener: TcpListener, shared: Arc<Shared>) -> Self {
        let (stop_accepting, stop_rx) = watch::channel(false);
        let (kill, kill_rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, shared, stop_rx, kill_rx));
        Self {
            stop_accepting,
            kill,
            task: Some(task),
        }
    }
}

/// A mock provider (every flavour) on a local port. Stops when dropped.
#[derive(Debug)]
pub struct MockProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    generation: Mutex<Option<Generation>>,
}

impl MockProvider {
    /// Start with defaults on `127.0.0.1:0`.
    pub async fn start() -> Result<Self, Error> {
        Self::builder().start().await
    }

    /// Start with defaults on `addr`.
    pub async fn start_on(addr: SocketAddr) -> Result<Self, Error> {
        Self::builder().start_on(addr).await
    }

    /// Configure before starting.
    pub fn builder() -> MockProviderBuilder {
        MockProviderBuilder::default()
    }

    /// Shortcut for `builder().api_key(key)`.
    pub fn with_api_key(key: impl Into<String>) -> MockProviderBuilder {
        Self::builder().api_key(key)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, the base URL an OpenAI client takes.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://ADDR`, without the `/v1`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queue a one-shot behaviour for the next request (FIFO).
    pub fn push(&self, behaviour: Behaviour) {
        self.shared.behaviours.push(behaviour);
    }

    /// Queue `behaviour` for the next `times` requests.
    pub fn push_n(&self, behaviour: Behaviour, times: usize) {
        for _ in 0..times {
            self.shared.behaviours.push(behaviour.clone());
        }
    }

    /// Replace the behaviour used when the queue is empty.
    pub fn set_default(&self, behaviour: Behaviour) {
        self.shared.behaviours.set_default(behaviour);
    }

    /// Drop every queued behaviour.
    pub fn clear_behaviours(&self) {
        self.shared.behaviours.clear_queue();
    }

    /// Queued behaviours not yet consumed.
    pub fn queued(&self) -> usize {
        self.shared.behaviours.queued()
    }

    /// Every API request received since start or [`clear`](Self::clear), oldest first. Empty
    /// when recording is off. Control-API requests are not included.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log.snapshot()
    }

    /// The most recent recorded request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.log.snapshot().pop()
    }

    /// API requests received (counted even when recording is off).
    pub fn request_count(&self) -> u64 {
        self.shared.log.count()
    }

    /// Forget recorded requests and reset the counter.
    pub fn clear(&self) {
        self.shared.log.clear();
    }

    /// Wait until at least `n` requests arrived; false on timeout.
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.request_count() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Tell the current accept loop to stop (and its connections to die if `kill`), handing
    /// back the loop's task to await.
    fn signal(&self, kill: bool) -> Option<JoinHandle<()>> {
        let mut slot = self.generation.lock().ok()?;
        let generation = slot.as_mut()?;
        generation.stop_accepting.send_replace(true);
        if kill {
            generation.kill.send_replace(true);
        }
        generation.task.take()
    }

    /// Stop accepting: new connections are refused once this returns. Open (keep-alive)
    /// connections keep being served; use [`stop`](Self::stop) to cut them too.
    pub async fn close_listener(&self) {
        if let Some(task) = self.signal(false) {
            let _ = task.await;
        }
    }

    /// Refuse new connections and reset open ones (in-flight requests and streams end
    /// abruptly). [`reopen`](Self::reopen) serves again on the same port.
    pub async fn stop(&self) {
        if let Some(task) = self.signal(true) {
            let _ = task.await;
        }
    }

    /// Serve again on the same address after [`stop`](Self::stop) or
    /// [`close_listener`](Self::close_listener), keeping behaviours and the log.
    pub async fn reopen(&self) -> Result<(), Error> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: self.addr,
                source,
            })?;
        let generation = Generation::spawn(listener, Arc::clone(&self.shared));
        if let Ok(mut slot) = self.generation.lock() {
            *slot = Some(generation);
        }
        Ok(())
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        let _ = self.signal(true);
    }
}

/// A loopback address where nothing listens, so connecting is refused (a port that was just
/// bound and released; another process could take it, which is unlikely within a test).
pub fn refusing_addr() -> Result<SocketAddr, Error> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = StdTcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    listener.local_addr().map_err(Error::LocalAddr)
}

/// `http://ADDR/v1` for a [`refusing_addr`].
pub fn refusing_base_url() -> Result<String, Error> {
    Ok(format!("http://{}/v1", refusing_addr()?))
}
