//! The HTTP server: accept loop, per-connection tasks, and the request path.
//!
//! Request path, in order (each step says why it sits there):
//! 1. `/__mock/…` goes to the control API: it must work whatever faults are queued.
//! 2. Read the body, count the request and (if recording) log it: tests assert on what was
//!    *sent*, including requests the mock then fails.
//! 3. Take the next behaviour (queue first, else the default): one queued behaviour is consumed
//!    per API request, whatever the request turns out to be, so "the next 2 requests fail"
//!    holds.
//! 4. Connection faults (drop, hang) before anything else: they model a dead upstream.
//! 5. Latency: time before response headers.
//! 6. The flavour (OpenAI, Azure, Anthropic, Gemini, Bedrock) from the path, then its
//!    credential check, like each provider does before looking at the body.
//! 7. Status faults in the flavour's error shape, then the endpoint itself (which applies
//!    garbage/cut/stream knobs).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::behaviour::{Behaviour, Fault};
use crate::body::{self, Body};
use crate::control;
use crate::flavor::Flavor;
use crate::log::{RecordedRequest, RequestLog};
use crate::openai::{self, ApiError};
use crate::{anthropic, azure, bedrock, gemini};

/// Configuration fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) api_key: Option<String>,
    pub(crate) record: bool,
    pub(crate) models: Vec<String>,
    pub(crate) aws: Option<bedrock::AwsCredentials>,
    pub(crate) credential_check: Option<Check>,
}

/// A [`crate::identity::CredentialCheck`] with a `Debug` of its own.
#[derive(Clone)]
pub(crate) struct Check(pub(crate) crate::identity::CredentialCheck);

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialCheck")
    }
}

/// The default behaviour and the queue of one-shot behaviours.
#[derive(Debug, Default)]
pub(crate) struct Behaviours {
    default: Mutex<Arc<Behaviour>>,
    queue: Mutex<VecDeque<Arc<Behaviour>>>,
}

impl Behaviours {
    pub(crate) fn new(default: Behaviour) -> Self {
        Self {
            default: Mutex::new(Arc::new(default)),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn next(&self) -> Arc<Behaviour> {
        if let Ok(mut queue) = self.queue.lock()
            && let Some(b) = queue.pop_front()
        {
            return b;
        }
        self.default()
    }

    pub(crate) fn default(&self) -> Arc<Behaviour> {
        self.default
            .lock()
            .map(|d| Arc::clone(&d))
            .unwrap_or_default()
    }

    pub(crate) fn push(&self, behaviour: Behaviour) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.push_back(Arc::new(behaviour));
        }
    }

    pub(crate) fn set_default(&self, behaviour: Behaviour) {
        if let Ok(mut default) = self.default.lock() {
            *default = Arc::new(behaviour);
        }
    }

    pub(crate) fn clear_queue(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.clear();
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }
}

/// State shared by every connection of one mock.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) behaviours: Behaviours,
    pub(crate) log: RequestLog,
}

/// Returned by the service to make hyper close the connection without a response.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock dropped the connection")
    }
}

impl std::error::Error for DropConnection {}

/// Accept connections on `listener` until `stop_accepting` turns true; each connection runs
/// until it ends or `kill` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop_accepting: watch::Receiver<bool>,
    kill: watch::Receiver<bool>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop_accepting.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "failed to accept a connection");
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // SSE chunks must leave as soon as they are written, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let builder = Arc::clone(&builder);
        let mut kill = kill.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { handle(shared, peer, req).await }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = kill.wait_for(|k| *k) => {}
            }
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let started = Instant::now();
    let (parts, incoming) = req.into_parts();
    let body = match incoming.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(DropConnection),
    };

    if let Some(rest) = parts.uri.path().strip_prefix("/__mock/") {
        return Ok(control::handle(&shared, &parts.method, rest, &body));
    }

    shared.log.count_one();
    if shared.config.record {
        shared.log.push(record(&parts, &body));
    }
    let behaviour = shared.behaviours.next();

    let response = respond(&shared, &parts, &body, &behaviour).await;
    match &response {
        Ok(r) => tracing::info!(
            target: "gatehouse_mock_provider::access",
            %peer,
            method = %parts.method,
            path = parts.uri.path(),
            status = r.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        ),
        Err(_) => tracing::info!(
            target: "gatehouse_mock_provider::access",
            %peer,
            method = %parts.method,
            path = parts.uri.path(),
            "request dropped"
        ),
    }
    response
}

async fn respond(
    shared: &Shared,
    parts: &http::request::Parts,
    body: &Bytes,
    behaviour: &Behaviour,
) -> Result<Response<Body>, DropConnection> {
    match &behaviour.fault {
        Fault::DropConnection => return Err(DropConnection),
        // Held until the client gives up or the mock is stopped (the connection task is dropped).
        Fault::Hang => std::future::pending::<()>().await,
        _ => {}
    }
    if !behaviour.latency.is_zero() {
        tokio::time::sleep(behaviour.latency).await;
    }
    let mut response = api_response(shared, parts, body, behaviour);
    response.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(&format!("req_mock{:08x}", shared.log.count()))
            .unwrap_or(HeaderValue::from_static("req_mock")),
    );
    Ok(response)
}

fn api_response(
    shared: &Shared,
    parts: &http::request::Parts,
    body: &Bytes,
    behaviour: &Behaviour,
) -> Response<Body> {
    let flavor = Flavor::of_path(parts.uri.path());
    let key = shared.config.api_key.as_deref();
    if let Some(Check(check)) = &shared.config.credential_check
        && let Err(why) = check(flavor, &parts.headers)
    {
        // The refusal each provider gives credentials it does not (or no longer) accept.
        return match flavor {
            Flavor::Bedrock => bedrock::error(403, Some("ExpiredTokenException"), Some(&why)),
            Flavor::Gemini => gemini::error(401, Some("UNAUTHENTICATED"), Some(&why), None),
            _ => openai::json_response(
                StatusCode::UNAUTHORIZED,
                Bytes::from(
                    serde_json::json!({"error": {"code": "401", "message": why}}).to_string(),
                ),
            ),
        };
    }
    let rejected = match flavor {
        Flavor::OpenAi => openai_authenticate(key, &parts.headers),
        Flavor::Anthropic => anthropic::authenticate(key, &parts.headers),
        Flavor::AzureOpenAi => azure::authenticate(key, &parts.headers),
        Flavor::Gemini => gemini::authenticate(key, &parts.headers, parts.uri.query()),
        Flavor::Bedrock => bedrock::authenticate(shared.config.aws.as_ref(), &parts.headers),
    };
    if let Some(response) = rejected {
        return response;
    }
    match &behaviour.fault {
        Fault::Status {
            status,
            message,
            error_type,
            code,
            param,
            retry_after_secs,
        } => {
            return match flavor {
                // Bedrock has no way to say how long to wait: `retry_after_secs` is not sent.
                Flavor::Bedrock => {
                    bedrock::error(*status, error_type.as_deref(), message.as_deref())
                }
                Flavor::Gemini => gemini::error(
                    *status,
                    error_type.as_deref(),
                    message.as_deref(),
                    *retry_after_secs,
                ),
                Flavor::Anthropic => anthropic::error(
                    *status,
                    error_type.as_deref(),
                    message.as_deref(),
                    *retry_after_secs,
                ),
                _ => ApiError::from_fault(
                    *status,
                    message.as_deref(),
                    error_type.as_deref(),
                    code.as_deref(),
                    param.as_deref(),
                    *retry_after_secs,
                )
                .into_response(),
            };
        }
        Fault::WrongContentType => {
            let mut response = Response::new(body::full(Bytes::from_static(
                b"<html><head><title>502 Bad Gateway</title></head>\
                  <body><h1>Bad Gateway</h1></body></html>",
            )));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            return response;
        }
        _ => {}
    }
    let path = parts.uri.path();
    match flavor {
        Flavor::Anthropic => anthropic::handle(&parts.method, path, body, behaviour),
        Flavor::Gemini => gemini::handle(&parts.method, path, parts.uri.query(), body, behaviour),
        Flavor::Bedrock => bedrock::handle(&parts.method, path, body, behaviour),
        Flavor::AzureOpenAi => {
            if let Fault::StreamError { status, .. } = behaviour.fault
                && !path.ends_with("/chat/completions")
                && !path.ends_with("/responses")
            {
                return ApiError::from_fault(status, None, None, None, None, None).into_response();
            }
            azure::handle(&parts.method, path, parts.uri.query(), body, behaviour)
        }
        _ => openai_endpoint(shared, &parts.method, path, body, behaviour),
    }
}

fn openai_authenticate(
    expected: Option<&str>,
    headers: &http::HeaderMap,
) -> Option<Response<Body>> {
    let expected = expected?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Some(ApiError::missing_api_key().into_response()),
        Some(key) if key != expected => Some(ApiError::invalid_api_key(key).into_response()),
        Some(_) => None,
    }
}

fn openai_endpoint(
    shared: &Shared,
    method: &Method,
    path: &str,
    body: &Bytes,
    behaviour: &Behaviour,
) -> Response<Body> {
    if let Fault::StreamError { status, .. } = behaviour.fault
        && !path.ends_with("/chat/completions")
        && !path.ends_with("/responses")
    {
        return ApiError::from_fault(status, None, None, None, None, None).into_response();
    }
    match (method, path) {
        (&Method::POST, "/v1/chat/completions") => openai::chat_completions(body, behaviour),
        (&Method::POST, "/v1/embeddings") => openai::embeddings(body, behaviour),
        (&Method::POST, "/v1/responses") => openai::responses(body, behaviour, None),
        (&Method::GET, "/v1/models") => openai::list_models(&shared.config.models, behaviour),
        (&Method::GET, p) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            openai::retrieve_model(&shared.config.models, id, behaviour)
        }
        (method, path) => ApiError::invalid_url(method, path).into_response(),
    }
}

fn record(parts: &http::request::Parts, body: &Bytes) -> RecordedRequest {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body: serde_json::from_slice(body).ok(),
        body_text: String::from_utf8_lossy(body).into_owned(),
    }
}

/// A JSON response for the control API.
pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    openai::json_response(
        status,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}
