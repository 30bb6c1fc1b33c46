//! The ledger's listener: `POST /ledger/v1/sync` ([`SYNC_PATH`]), JSON both ways, on every
//! replica. The leader answers; a standby answers `not_leader` with the leader's URL when it
//! knows it, so a sidecar that reached it through a Service retries there.
//!
//! Checks, in order: the path and method; a bearer token present; this replica leads; the body
//! (at most [`MAX_BODY`], within [`BODY_TIMEOUT`]) is a valid [`SyncRequest`]; the token is a
//! ServiceAccount token for the ledger's audience (TokenReview); its namespace is the request's,
//! and a pod-bound token's pod is the instance's. Every refusal is a [`LedgerError`] body.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_crds::ledger::{LedgerError, SYNC_PATH, SyncRequest};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use k8s_openapi::jiff::Timestamp;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::Error;
use crate::ledger::auth::Denied;
use crate::ledger::book::SyncError;
use crate::ledger::{Ledger, Role};

/// Largest sync body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// How long a client may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most accounts in one sync.
const MAX_ACCOUNTS: usize = 256;

/// A refusal: status, code and message.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    leader: Option<String>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            leader: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    fn not_leader(leader: Option<String>) -> Self {
        let message = match &leader {
            Some(url) => format!("this replica is not the ledger's leader; the leader is {url}"),
            None => "this replica is not the ledger's leader, and no leader is known yet".into(),
        };
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_leader",
            message,
            leader,
        }
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn refuse(r: Refusal) -> Response<Full<Bytes>> {
    let body = LedgerError {
        code: r.code.to_string(),
        message: r.message,
        leader: r.leader,
    };
    json_response(r.status, serde_json::to_vec(&body).unwrap_or_default())
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let value = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

fn validate(req: &SyncRequest) -> Result<(), String> {
    let printable = |s: &str| s.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if req.instance.is_empty() || req.instance.len() > 253 || !printable(&req.instance) {
        return Err("instance must be 1 to 253 printable characters without spaces".into());
    }
    if req.namespace.is_empty() || req.namespace.len() > 63 || !printable(&req.namespace) {
        return Err("namespace must be a namespace name".into());
    }
    if req.accounts.len() > MAX_ACCOUNTS {
        return Err(format!("at most {MAX_ACCOUNTS} accounts per sync"));
    }
    let mut names = std::collections::HashSet::new();
    for a in &req.accounts {
        if a.name.is_empty() || a.name.len() > 253 || !printable(&a.name) {
            return Err("every account needs a name of 1 to 253 characters".into());
        }
        if !names.insert((a.kind, a.name.as_str())) {
            return Err(format!("account {:?} is listed twice", a.name));
        }
    }
    Ok(())
}

async fn sync(req: Request<Incoming>, ledger: &Ledger) -> Result<Vec<u8>, Refusal> {
    let now = Timestamp::now();
    if req.uri().path() != SYNC_PATH {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such path; the ledger serves POST {SYNC_PATH}"),
        ));
    }
    if req.method() != http::Method::POST {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            format!("{SYNC_PATH} takes POST"),
        ));
    }
    let Some(token) = bearer(&req) else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a bearer token (the sidecar's projected ServiceAccount token) is required",
        ));
    };
    let leading = match ledger.role() {
        Role::Leading(l) if !l.book.is_fenced() => l,
        Role::Starting => {
            return Err(Refusal::unavailable(
                "this replica just became the ledger's leader and is loading the books",
            ));
        }
        _ => return Err(Refusal::not_leader(ledger.leader_url())),
    };
    let body = Limited::new(req.into_body(), MAX_BODY);
    let body = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let too_large = e.is::<http_body_util::LengthLimitError>();
            return Err(if too_large {
                Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request",
                    format!("the body is larger than {MAX_BODY} bytes"),
                )
            } else {
                Refusal::invalid("failed to read the body")
            });
        }
        Err(_) => {
            return Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                format!("the body did not arrive within {BODY_TIMEOUT:?}"),
            ));
        }
    };
    let request: SyncRequest = serde_json::from_slice(&body)
        .map_err(|e| Refusal::invalid(format!("the body is not a sync request: {e}")))?;
    validate(&request).map_err(Refusal::invalid)?;
    let identity = match ledger.auth.authenticate(&token).await {
        Ok(i) => i,
        Err(Denied::Rejected(why)) => {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                why,
            ));
        }
        Err(Denied::Unavailable(why)) => return Err(Refusal::unavailable(why)),
    };
    if identity.namespace != request.namespace {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the token is for ServiceAccount {}/{}, which may not sync namespace {}",
                identity.namespace, identity.service_account, request.namespace
            ),
        ));
    }
    if let Some(pod) = &identity.pod
        && !request
            .instance
            .strip_prefix(pod.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token is bound to pod {pod}; the instance must be {pod}/<id>"),
        ));
    }
    let terms = leading.terms(&request);
    match leading.book.sync(&request, &terms, now).await {
        Ok(answer) => Ok(serde_json::to_vec(&answer).unwrap_or_default()),
        Err(SyncError::NotLeader) => Err(Refusal::not_leader(ledger.leader_url())),
        Err(e @ SyncError::Unavailable(_)) => Err(Refusal::unavailable(e.to_string())),
    }
}

async fn handle(req: Request<Incoming>, ledger: Arc<Ledger>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (response, result) = match sync(req, &ledger).await {
        Ok(body) => (json_response(StatusCode::OK, body), "ok"),
        Err(r) => {
            let code = r.code;
            (refuse(r), code)
        }
    };
    let m = &ledger.metrics.ledger;
    m.sync(match result {
        "ok" => "ok",
        "unauthenticated" => "unauthenticated",
        "forbidden" => "forbidden",
        "not_leader" => "not_leader",
        "unavailable" => "unavailable",
        "not_found" => "not_found",
        _ => "invalid_request",
    });
    m.sync_duration.observe(started.elapsed().as_secs_f64());
    response
}

/// A rustls server config from PEM files (certificate chain, private key), for HTTPS.
pub fn tls_config(cert_file: &str, key_file: &str) -> Result<rustls::ServerConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |what: String| Error::Config(what);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| {
            tls(format!(
                "failed to read the ledger certificate {cert_file}: {e}"
            ))
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            tls(format!(
                "failed to read the ledger certificate {cert_file}: {e}"
            ))
        })?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| tls(format!("failed to read the ledger key {key_file}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| tls(format!("failed to use the ledger certificate: {e}")))
}

/// Serve the ledger on `listener` until `stop` turns true: plain HTTP, or HTTPS with `tls`.
pub async fn serve(
    listener: TcpListener,
    ledger: Arc<Ledger>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let ledger = ledger.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let ledger = ledger.clone();
                async move { Ok::<_, Infallible>(handle(req, ledger).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            match acceptor {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_crds::ledger::AccountSync;

    #[test]
    fn requests_are_validated() {
        let ok = SyncRequest {
            instance: "web-0/ab12".into(),
            namespace: "team-a".into(),
            accounts: vec![AccountSync {
                name: "monthly".into(),
                ..AccountSync::default()
            }],
        };
        assert_eq!(validate(&ok), Ok(()));
        let mut twice = ok.clone();
        twice.accounts.push(twice.accounts[0].clone());
        assert!(validate(&twice).unwrap_err().contains("listed twice"));
        let mut spaced = ok.clone();
        spaced.instance = "web 0".into();
        assert!(validate(&spaced).is_err());
        let mut empty = ok;
        empty.namespace = String::new();
        assert!(validate(&empty).is_err());
    }
}
