//! Accept loops for the proxy and admin ports, with graceful shutdown: on shutdown the listeners
//! close, in-flight requests get a grace period to finish, then connections are dropped.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::ProxyBody;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::state::Store;

/// How long in-flight requests may run on after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serve `handler` on `listener` until `shutdown` turns true.
pub async fn serve<H, F>(listener: TcpListener, handler: H, mut shutdown: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, _peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "failed to accept connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the shutdown grace period");
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

/// The admin port's handler: `/healthz`, `/readyz`, `/metrics`.
pub fn admin_handler(
    store: Arc<Store>,
    metrics: Arc<Metrics>,
) -> impl Fn(Request<Incoming>) -> std::future::Ready<Response<ProxyBody>> + Clone + Send + Sync + 'static
{
    move |req| {
        let (status, content_type, body) = match req.uri().path() {
            "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
            "/readyz" if store.is_ready() => {
                (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n"))
            }
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from_static(b"no configuration loaded yet\n"),
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
        };
        let mut response = Response::new(ProxyBody::full(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        std::future::ready(response)
    }
}
