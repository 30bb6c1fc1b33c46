//! Accept loops for the proxy and admin ports, with graceful shutdown: on shutdown the listeners
//! close, in-flight requests get a grace period to finish, then connections are dropped.
//!
//! Each listener bounds its connections in time and number (see docs/architecture.md,
//! "Connections"): a header read timeout, an idle timeout, and a cap at which idle connections are
//! evicted to make room. The admin port has its own small cap, so probes are answered however many
//! connections the app holds on the proxy port.

pub mod connection;
pub mod fds;
pub mod registry;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::metrics::{ClosedLabels, ListenerLabels, Metrics};
use crate::proxy::Gateway;
use crate::state::Store;
use connection::{Expired, Phase, Timeouts, Tracked, Watched};
use registry::Registry;

/// How long in-flight requests may run on after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// HTTP/2 streams one connection may have open at once (the RFC's recommended minimum; the
/// connection cap bounds the total).
pub const H2_MAX_STREAMS: u32 = 100;

/// Largest HTTP/2 header block accepted (h2's default is 16 MiB; HTTP/1's limit is hyper's
/// ~400 KiB read buffer).
pub const H2_MAX_HEADER_LIST: u32 = 256 * 1024;

/// How often an HTTP/2 connection with a request in flight is pinged, and how long the ping may
/// go unanswered before the connection is dropped: a vanished client must not hold a stream open.
pub const H2_KEEPALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(20));

/// First and longest wait after a failed accept; doubles in between, reset by a success.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// At most one accept-error log line per listener in this interval; the rest are counted.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// How one listener treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Header read and idle timeouts.
    pub timeouts: Timeouts,
    /// Open connections at most.
    pub max_connections: usize,
}

/// Serve `handler` on `listener` (called `name` in logs and metrics) until `shutdown` turns true.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout is ours (see `connection`): hyper's would also close idle keep-alive
    // connections after the header timeout instead of the idle one.
    builder.http1().header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .keep_alive_interval(H2_KEEPALIVE.0)
        .keep_alive_timeout(H2_KEEPALIVE.1);
    let registry = Arc::new(Registry::new(limits.max_connections));
    let listener_labels = ListenerLabels { listener: name };
    let open = metrics.connections.get_or_create(&listener_labels).clone();
    let accept_errors = metrics
        .accept_errors
        .get_or_create(&listener_labels)
        .clone();
    // Evict in batches of ~1.5% of the cap: a flood then scans the table once per batch, not per
    // accept, and a single eviction still happens when only one slot is needed.
    let batch = (registry.max() / 64).max(1);
    let mut backoff = ACCEPT_BACKOFF.0;
    let mut accept_log = RateLimited::new(ACCEPT_LOG_EVERY);
    'accept: loop {
        // Make room first; while every connection is busy, leave new ones in the backlog.
        while registry.full() {
            let asked = registry.make_room(batch);
            if asked > 0 {
                tracing::debug!(
                    listener = name,
                    asked,
                    "at the connection cap, closing idle connections"
                );
            }
            tokio::select! {
                () = registry.room() => {}
                _ = shutdown.wait_for(|stop| *stop) => break 'accept,
            }
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => {
                backoff = ACCEPT_BACKOFF.0;
                stream
            }
            Err(e) => {
                accept_errors.inc();
                let exhausted = fds::is_exhaustion(&e);
                let shed = if exhausted { registry.shed_idle() } else { 0 };
                if let Some(suppressed) = accept_log.allow(Instant::now()) {
                    tracing::warn!(
                        listener = name,
                        error = %e,
                        suppressed,
                        open = registry.len(),
                        shed,
                        "failed to accept connection"
                    );
                }
                // The failed connection stays in the backlog, so accepting again at once would
                // spin; wait, longer each time, for descriptors to free.
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, conn) = registry.insert();
        open.inc();
        let handler = handler.clone();
        let service_conn = conn.clone();
        let service = service_fn(move |req| {
            let guard = service_conn.begin_request();
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await.map(|b| Tracked::new(b, guard))) }
        });
        let serving = builder
            .serve_connection(TokioIo::new(Watched::new(stream, conn.clone())), service)
            .into_owned();
        let registry = registry.clone();
        let metrics = metrics.clone();
        let open = open.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let serving = std::pin::pin!(serving);
            let closed = drive(
                serving,
                |c| c.graceful_shutdown(),
                &conn,
                limits.timeouts,
                shutdown,
            )
            .await;
            if let Some(reason) = closed {
                metrics
                    .connections_closed
                    .get_or_create(&ClosedLabels {
                        listener: name,
                        reason,
                    })
                    .inc();
            }
            registry.remove(id);
            open.dec();
        });
    }
    drop(listener);
    let drained = async {
        while !registry.is_empty() {
            registry.room().await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        tracing::warn!(
            listener = name,
            "in-flight requests did not finish within the shutdown grace period"
        );
    }
}

/// Poll one connection to its end, closing it when its deadline passes, when it is evicted or
/// when the server shuts down. Returns why the sidecar closed it, if it did.
async fn drive<C, E>(
    mut serving: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    conn: &connection::Connection,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) -> Option<&'static str>
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut closing: Option<(&'static str, Instant)> = None;
    loop {
        // While closing gracefully the connection gets the shutdown grace to finish what it
        // serves; otherwise the phase's deadline applies.
        let deadline = match closing {
            Some((_, until)) => Some((until, None)),
            None => conn.deadline(&timeouts).map(|(at, why)| (at, Some(why))),
        };
        let sleep = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = serving.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return closing.map(|(reason, _)| reason);
            }
            () = sleep => match deadline.and_then(|(_, why)| why) {
                // The phase may have moved on since the deadline was taken; look again.
                Some(why) if conn.deadline(&timeouts).is_some_and(|(at, _)| at <= Instant::now()) => {
                    let reason = match why {
                        Expired::HeaderRead => "header_timeout",
                        Expired::Idle => "idle_timeout",
                    };
                    tracing::debug!(reason, "closing connection");
                    if let Some(reason) = close(serving.as_mut(), &graceful, conn, reason) {
                        return Some(reason);
                    }
                    closing = Some((reason, Instant::now() + SHUTDOWN_GRACE));
                }
                Some(_) => {}
                // The graceful close did not finish in time.
                None => return closing.map(|(reason, _)| reason),
            },
            () = conn.changed(), if closing.is_none() => {
                if conn.evicting() {
                    if let Some(reason) = close(serving.as_mut(), &graceful, conn, "evicted") {
                        return Some(reason);
                    }
                    closing = Some(("evicted", Instant::now() + SHUTDOWN_GRACE));
                }
            }
            _ = shutdown.wait_for(|stop| *stop), if closing.is_none() => {
                graceful(serving.as_mut());
                closing = Some(("shutdown", Instant::now() + SHUTDOWN_GRACE));
            }
        }
    }
}

/// Close a connection: drop it at once when nothing is in flight on HTTP/1 (there is nothing to
/// finish, and a stalled client would never let a graceful close complete), otherwise start a
/// graceful close (HTTP/2 GOAWAY, or finish the request that raced in). Returns the reason when
/// the connection is to be dropped now.
fn close<C>(
    serving: Pin<&mut C>,
    graceful: &impl Fn(Pin<&mut C>),
    conn: &connection::Connection,
    reason: &'static str,
) -> Option<&'static str> {
    if !conn.is_h2() && !matches!(conn.phase(), Phase::Busy(_)) {
        return Some(reason);
    }
    graceful(serving);
    None
}

/// Lets one event through per interval and counts the ones it held back.
#[derive(Debug)]
struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(events held back since the last one let through)` when this one may go through.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now < last + self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The proxy port's handler.
pub fn proxy_handler(
    gateway: Arc<Gateway>,
) -> impl Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |req| {
        let gateway = gateway.clone();
        Box::pin(async move { gateway.handle(req).await })
    }
}

/// The admin port's handler: `GET`/`HEAD` of `/healthz`, `/readyz`, `/metrics`, `/targets`; other methods get
/// 405 with `Allow`. HEAD is answered with GET's headers and no body (hyper omits a HEAD
/// response's body).
pub fn admin_handler(
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    records: Option<Arc<crate::records::Records>>,
) -> impl Fn(Request<Incoming>) -> std::future::Ready<Response<ProxyBody>> + Clone + Send + Sync + 'static
{
    move |req| {
        let path = req.uri().path();
        // The last requests' records (`records`): `/v1/requests`, `/v1/requests/{id}`.
        if path == "/v1/requests" || path.starts_with("/v1/requests/") {
            return std::future::ready(records_answer(
                req.method(),
                path,
                req.uri().query(),
                records.as_deref(),
            ));
        }
        std::future::ready(admin_answer(req.method(), path, &store, &metrics))
    }
}

/// The admin port's answer under `/v1/requests` (JSON).
pub fn records_answer(
    method: &Method,
    path: &str,
    query: Option<&str>,
    records: Option<&crate::records::Records>,
) -> Response<ProxyBody> {
    let (status, body) = if method != Method::GET && method != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method not allowed: the admin port answers GET and HEAD"}),
        )
    } else {
        match records {
            Some(records) => records.answer(path, query),
            None => (
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "request records are off (--request-records 0)"}),
            ),
        }
    };
    let mut response = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
    }
    response
}

/// The admin port's answer to `method path`.
pub fn admin_answer(
    method: &Method,
    path: &str,
    store: &Store,
    metrics: &Metrics,
) -> Response<ProxyBody> {
    let (status, content_type, body) = if method != Method::GET && method != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"method not allowed: the admin port answers GET and HEAD\n"),
        )
    } else {
        match path {
            "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
            "/readyz" if store.is_ready() => {
                (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n"))
            }
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from_static(b"no configuration loaded yet\n"),
            ),
            // Every target's health: ejections, cooldowns, latency, in flight.
            "/targets" => (
                StatusCode::OK,
                "application/json",
                Bytes::from(store.health().report().to_string()),
            ),
            "/metrics" => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                Bytes::from(metrics.encode()),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                Bytes::from_static(b"not found\n"),
            ),
        }
    };
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_port_answers_get_and_head_and_refuses_the_rest() {
        let store = Store::default();
        let metrics = Metrics::new();
        for method in [Method::GET, Method::HEAD] {
            let r = admin_answer(&method, "/healthz", &store, &metrics);
            assert_eq!(r.status(), StatusCode::OK, "{method}");
            assert!(r.headers().get(http::header::ALLOW).is_none());
        }
        for method in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ] {
            for path in ["/healthz", "/metrics", "/nope"] {
                let r = admin_answer(&method, path, &store, &metrics);
                assert_eq!(
                    r.status(),
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}"
                );
                assert_eq!(r.headers()[http::header::ALLOW], "GET, HEAD");
            }
        }
        assert_eq!(
            admin_answer(&Method::GET, "/readyz", &store, &metrics).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn accept_errors_are_logged_once_per_interval_with_a_count() {
        let mut log = RateLimited::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        for i in 1..=20 {
            assert_eq!(log.allow(t0 + Duration::from_millis(i * 50)), None);
        }
        assert_eq!(log.allow(t0 + Duration::from_secs(10)), Some(20));
        assert_eq!(log.allow(t0 + Duration::from_secs(11)), None);
    }
}
