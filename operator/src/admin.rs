//! The admin port: `/healthz` (process alive), `/readyz` (see [`Phase`]) and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What a replica is doing, and so what `/readyz` answers.
///
/// Ready means "doing its job": the leader once every cache has listed, a standby once the API
/// server answers its Lease attempts. A standby has to be Ready: a Deployment rollout
/// (`maxUnavailable: 0`, as the chart sets) waits for each new pod to be Ready before it stops an
/// old one, and a new pod stays a standby for as long as an old pod holds the Lease, so a standby
/// that reported NotReady would stall every rollout of two or more replicas. A standby does not
/// start its caches (that would double the watch load on the API server for a replica that does
/// nothing); it lists them when it takes over, and is NotReady ([`Phase::Syncing`]) until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started; the API server has not answered yet. Not ready.
    Starting,
    /// Not the leader, and the API server answered the last Lease attempt. Ready.
    Standby,
    /// The last Lease attempt of a standby failed (API server unreachable or refusing). Not ready.
    Unreachable,
    /// Leader (or leader election off), the caches still listing. Not ready: a reconcile now
    /// would wait for them.
    Syncing,
    /// Leader with every cache synced. Ready.
    Leading,
}

impl Phase {
    /// Whether `/readyz` answers 200.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Standby | Self::Leading)
    }

    /// The `/readyz` body.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Starting => "not ready: the API server has not answered yet\n",
            Self::Standby => "ok: standby, ready to take over\n",
            Self::Unreachable => "not ready: standby, the API server did not answer\n",
            Self::Syncing => "not ready: leader, waiting for the caches to sync\n",
            Self::Leading => "ok: leader, caches synced\n",
        }
    }
}

/// What the admin port reports: the replica's current [`Phase`], and whether the serving
/// certificate the webhook needs is loaded.
#[derive(Debug)]
pub struct Health {
    phase: watch::Sender<Phase>,
    serving: std::sync::OnceLock<Arc<crate::certs::ServingCert>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Starting),
            serving: std::sync::OnceLock::new(),
        }
    }
}

impl Health {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Move to `phase`.
    pub fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// From now on, not ready while `cert` has no certificate loaded: a replica that cannot
    /// complete a TLS handshake must not be a webhook endpoint.
    pub fn require_serving_cert(&self, cert: Arc<crate::certs::ServingCert>) {
        let _ = self.serving.set(cert);
    }

    /// The `/readyz` status and body.
    pub fn readiness(&self) -> (bool, &'static str) {
        let phase = self.phase();
        if phase.is_ready() && self.serving.get().is_some_and(|c| !c.is_ready()) {
            return (false, "not ready: no serving certificate loaded yet\n");
        }
        (phase.is_ready(), phase.describe())
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

fn handle(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ready, body) = health.readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, "text/plain", body.into())
        }
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serve the admin port until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = handle(&req, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_synced_leader_and_a_reachable_standby_are_ready() {
        let health = Health::default();
        assert_eq!(health.phase(), Phase::Starting);
        for phase in [
            Phase::Starting,
            Phase::Standby,
            Phase::Unreachable,
            Phase::Syncing,
            Phase::Leading,
        ] {
            health.set(phase);
            assert_eq!(health.phase(), phase);
            assert_eq!(
                phase.is_ready(),
                matches!(phase, Phase::Standby | Phase::Leading),
                "{phase:?}"
            );
            assert_eq!(
                phase.describe().starts_with("ok"),
                phase.is_ready(),
                "{phase:?}"
            );
        }
    }
}
