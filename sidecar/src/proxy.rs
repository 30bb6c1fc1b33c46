//! The request path. Every request the proxy port receives goes through [`Gateway::handle`]:
//!
//! 1. a per-request [`Context`] (request id, start time) inside an [`Exchange`], which runs the
//!    stages' end hook exactly once however the request ends;
//! 2. the stages' head hooks, on every request before its body is read (identity and the
//!    `x-gatehouse-tag`; a malformed tag is a 400);
//! 3. the config snapshot is loaded once (a reload never changes a request's rules), the body read
//!    within the size limit, parsed and validated in the client's dialect (4xx on bad input, before
//!    any upstream work), and the model alias resolved to a route;
//! 4. the stages' request hooks (they may answer early);
//! 5. the attempts ([`attempt`]): targets in the route's order, each through its provider's
//!    adapter, retried per the retry table (`AttemptError::is_retryable`);
//! 6. the answer: buffered JSON through the answer hooks, or a relayed stream (`body::SseRelay`)
//!    that takes the exchange over and runs the event hooks; the response head through the
//!    response hooks (the `x-gatehouse-*` headers).
//!
//! The stages and their order are in `stages::chain`; docs/architecture.md explains the order.

mod attempt;
mod count;
mod internal;

pub use internal::Embedder;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::time::Instant;

use crate::body::{ProxyBody, RelayGuard, SseRelay, StreamMeter};
use crate::dialect::{Dialect, Operation};
use crate::error::{AttemptError, ProxyError, Refusal};
use crate::metrics::Metrics;
use crate::providers::{self, Translate};
use crate::request::budget::BodyBudget;
use crate::request::{self, Request};
use crate::routing::health::TargetHandle;
use crate::scrub::Scrubber;
use crate::stages::{self, Chain, Context, End, Exchange, Flow};
use crate::state::{Store, Target};
use crate::upstream::UpstreamClient;
use crate::usage::Usage;
use crate::workload::Workload;

/// Settings of the request path that do not come from the custom resources.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Bytes of request bodies in flight at once, over all requests; beyond it requests are shed
    /// with 503.
    pub max_inflight_body_bytes: usize,
    /// Longest wait for the next piece of a request body before answering 408.
    pub body_read_timeout: Duration,
    /// Longest time for a whole request body to arrive before answering 408.
    pub body_deadline: Duration,
    /// Most bytes of upstream answers one attempt buffers (`limits`).
    pub max_response_bytes: usize,
    /// Most bytes held of one upstream stream event not complete yet (`limits`).
    pub max_event_bytes: usize,
    /// The workload every request is attributed to.
    pub workload: Arc<Workload>,
    /// Distinct `x-gatehouse-tag` values kept before new ones count as `other`.
    pub max_tags: usize,
    /// Whether metering is in the chain (`--metering`).
    pub metering: bool,
    /// Where Budgets are spent (`stages::budget::ledger`).
    pub ledger: Arc<dyn stages::budget::ledger::Ledger>,
    /// The budget stage's settings.
    pub budget: stages::budget::Settings,
    /// Where audit lines go; `None`: no audit stage.
    pub audit: Option<Arc<crate::audit::Sink>>,
    /// The response cache's own settings (its Redis).
    pub cache: crate::cache::Settings,
    /// The last requests' records (`--request-records`); `None`: none kept.
    pub records: Option<Arc<crate::records::Records>>,
    /// The trace exporter (`--otlp-endpoint`); `None`: tracing off.
    pub exporter: Option<Arc<crate::otlp::Exporter>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            max_inflight_body_bytes: 128 * 1024 * 1024,
            body_read_timeout: Duration::from_secs(10),
            body_deadline: Duration::from_secs(60),
            max_response_bytes: crate::limits::DEFAULT_MAX_RESPONSE_BYTES,
            max_event_bytes: crate::limits::DEFAULT_MAX_EVENT_BYTES,
            workload: Arc::new(Workload::default()),
            max_tags: stages::identity::DEFAULT_MAX_TAGS,
            metering: true,
            ledger: Arc::new(stages::budget::ledger::Local::new()),
            budget: stages::budget::Settings::default(),
            audit: None,
            cache: crate::cache::Settings::default(),
            records: None,
            exporter: None,
        }
    }
}

/// The proxy: config store, upstream client, the stages.
#[derive(Debug)]
pub struct Gateway {
    store: Arc<Store>,
    chain: Arc<Chain>,
    client: UpstreamClient,
    settings: Settings,
    budget: Arc<BodyBudget>,
}

/// What the attempts (or an early stage) produced for the client.
enum Answer {
    /// A complete 2xx body, in the client's dialect, and its usage.
    Complete { body: Bytes, usage: Option<Usage> },
    /// A 2xx event stream whose first event arrived (`first` in the client's dialect), to be
    /// relayed until `deadline`.
    Stream {
        first: Bytes,
        rest: Incoming,
        translate: Option<Translate>,
        deadline: Instant,
        /// The scrubber of the call that answered.
        scrub: Scrubber,
        /// Longest upstream silence once relayed (`timeouts.idle`).
        idle: Option<Duration>,
        /// The target that answered, told when its stream stalls or breaks.
        health: Option<TargetHandle>,
        /// What the relay does for metering.
        meter: StreamMeter,
    },
    /// An answer from the cache: JSON, or a whole stream of events (`stream`).
    Cached { body: Bytes, stream: bool },
    /// An attempt failed in a way no other attempt can help (`!AttemptError::is_retryable`):
    /// today, the provider refused the request itself; passed back to the client.
    Final(AttemptError),
}

impl Gateway {
    /// A gateway serving from `store`, recording into `metrics`.
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        client: UpstreamClient,
        settings: Settings,
    ) -> Self {
        // The semantic cache asks its embeddings through this gateway's own request path.
        let budget = BodyBudget::new(settings.max_inflight_body_bytes);
        let embedder = Arc::new(Embedder::new(
            store.clone(),
            client.clone(),
            settings.clone(),
            budget.clone(),
        ));
        let cache = Arc::new(crate::cache::Cache::new(&settings.cache, metrics.clone()));
        cache.bind_embedder(embedder.clone());
        let chain = Arc::new(stages::chain(
            metrics.clone(),
            settings.workload.clone(),
            settings.max_tags,
            settings.metering,
            stages::budget::stages(
                settings.ledger.clone(),
                metrics.clone(),
                settings.budget.clone(),
            ),
            cache,
            (
                settings.audit.clone(),
                stages::record::RecordStage::new(
                    settings.records.clone(),
                    settings.exporter.clone(),
                ),
            ),
        ));
        embedder.bind(&chain);
        Self {
            budget,
            store,
            chain,
            client,
            settings,
        }
    }

    /// Answer one request. Never fails: every error becomes an error response in the client's
    /// dialect.
    pub async fn handle(&self, req: http::Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path();
        let path = path.strip_prefix("/v1").unwrap_or(path);
        let call = match (req.method(), path) {
            (&Method::POST, "/chat/completions") => Some((Operation::Chat, Dialect::OpenAi)),
            (&Method::POST, "/embeddings") => Some((Operation::Embeddings, Dialect::OpenAi)),
            (&Method::POST, "/messages") => Some((Operation::Chat, Dialect::Anthropic)),
            (&Method::POST, "/responses") => Some((Operation::Chat, Dialect::Responses)),
            _ => None,
        };
        // Every `/v1/messages*` path, and a model lookup by an Anthropic client, answers in
        // Anthropic's shape, errors included.
        let anthropic = path == "/messages"
            || path.starts_with("/messages/")
            || (path.starts_with("/models") && req.headers().contains_key("anthropic-version"));
        let dialect = match call {
            Some((_, d)) => d,
            None if anthropic => Dialect::Anthropic,
            None => Dialect::OpenAi,
        };
        // Dropped with this future if the client goes away: the end hook still runs.
        let mut x = Exchange::new(self.chain.clone(), Context::new(dialect));
        x.ctx.operation = call.map(|(op, _)| op);
        // The head hooks (identity and its tag) see every request, before its body is read.
        let result = match (x.head(req.headers()), call, req.method(), path) {
            (Err(e), ..) => Err(e),
            (Ok(()), Some((op, _)), _, _) => self.call(req, op, &mut x).await,
            (Ok(()), None, &Method::POST, "/messages/count_tokens") => {
                self.count_tokens(req, &mut x).await
            }
            (Ok(()), None, &Method::GET, "/models") => self.models(dialect),
            (Ok(()), None, &Method::GET, p) if p.starts_with("/models/") => {
                self.model(dialect, &p["/models/".len()..])
            }
            (
                Ok(()),
                None,
                _,
                "/chat/completions"
                | "/embeddings"
                | "/models"
                | "/messages"
                | "/responses"
                | "/messages/count_tokens",
            ) => Err(ProxyError::MethodNotAllowed {
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
            }),
            (Ok(()), None, _, _) => Err(ProxyError::NotFound(req.uri().path().to_string())),
        };
        self.respond(x, result)
    }

    fn models(&self, dialect: Dialect) -> Result<Answer, ProxyError> {
        let snapshot = self.store.load().ok_or(ProxyError::NotReady)?;
        let mut aliases: Vec<&String> = snapshot.aliases.keys().collect();
        aliases.sort();
        let data: Vec<Value> = aliases.iter().map(|id| model_object(dialect, id)).collect();
        let body = match dialect {
            // Anthropic's list: one page, with its cursors.
            Dialect::Anthropic => serde_json::json!({
                "data": data,
                "has_more": false,
                "first_id": aliases.first(),
                "last_id": aliases.last(),
            }),
            _ => serde_json::json!({"object": "list", "data": data}),
        };
        Ok(Answer::Complete {
            body: Bytes::from(body.to_string()),
            usage: None,
        })
    }

    /// `GET /v1/models/{id}`: a route alias, in the client's dialect.
    fn model(&self, dialect: Dialect, id: &str) -> Result<Answer, ProxyError> {
        let snapshot = self.store.load().ok_or(ProxyError::NotReady)?;
        // The id is a path segment: `%2F` and the like stand for the characters of an alias.
        let id = percent_decode(id);
        if !snapshot.aliases.contains_key(&id) {
            return Err(ProxyError::UnknownModel(request::quote(&id)));
        }
        Ok(Answer::Complete {
            body: Bytes::from(model_object(dialect, &id).to_string()),
            usage: None,
        })
    }

    /// `POST /v1/messages/count_tokens` (`count`).
    async fn count_tokens(
        &self,
        req: http::Request<Incoming>,
        x: &mut Exchange,
    ) -> Result<Answer, ProxyError> {
        let snapshot = self.store.load().ok_or(ProxyError::NotReady)?;
        let anthropic_beta = req.headers().get("anthropic-beta").cloned();
        let limits = request::read::Limits {
            max_bytes: self.settings.max_body_bytes,
            progress_timeout: self.settings.body_read_timeout,
            deadline: self.settings.body_deadline,
        };
        let body = request::read::body(req, limits, &self.budget).await?;
        let inbound =
            Request::parse(body, Operation::Chat, Dialect::Anthropic, anthropic_beta).await?;
        let route = snapshot
            .aliases
            .get(&inbound.index.alias)
            .cloned()
            .ok_or_else(|| ProxyError::UnknownModel(inbound.alias_for_error()))?;
        x.ctx.route = Some(route.clone());
        if route.targets.is_empty() {
            return Err(ProxyError::NoTargets {
                route: route.name.to_string(),
                reason: route.config.unavailable.join("; "),
            });
        }
        count::run(&self.client, &self.settings, x, &route, &inbound).await
    }

    async fn call(
        &self,
        req: http::Request<Incoming>,
        op: Operation,
        x: &mut Exchange,
    ) -> Result<Answer, ProxyError> {
        let snapshot = self.store.load().ok_or(ProxyError::NotReady)?;
        x.ctx.snapshot = Some(snapshot.clone());
        let anthropic_beta = req.headers().get("anthropic-beta").cloned();
        // Only the headers some routing rule names are kept (none without rules).
        x.ctx.rule_headers = snapshot
            .rule_headers
            .iter()
            .filter_map(|n| req.headers().get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        let limits = request::read::Limits {
            max_bytes: self.settings.max_body_bytes,
            progress_timeout: self.settings.body_read_timeout,
            deadline: self.settings.body_deadline,
        };
        let body = request::read::body(req, limits, &self.budget).await?;
        let mut inbound = Request::parse(body, op, x.ctx.dialect, anthropic_beta).await?;
        x.ctx.stream = inbound.stream();
        inbound.metering = x.metered();
        x.ctx.measured.request_bytes = inbound.body_len() as u64;
        let route = snapshot
            .aliases
            .get(&inbound.index.alias)
            .cloned()
            .ok_or_else(|| ProxyError::UnknownModel(inbound.alias_for_error()))?;
        x.ctx.route = Some(route.clone());
        if route.targets.is_empty() {
            let reason = if route.config.unavailable.is_empty() {
                "no targets are configured".to_string()
            } else {
                route.config.unavailable.join("; ")
            };
            return Err(ProxyError::NoTargets {
                route: route.name.to_string(),
                reason,
            });
        }
        match x.request(&mut inbound).await? {
            Flow::Answer(body) => return Ok(Answer::Complete { body, usage: None }),
            Flow::Cached(hit) => {
                return Ok(Answer::Cached {
                    body: hit.body,
                    stream: hit.stream,
                });
            }
            Flow::Continue | Flow::Wait(_) => {}
        }
        // A budget past its downgrade threshold sends the request to another Route's targets
        // (with that Route's retry and timeouts); `ctx.route` stays the one asked for.
        let route = x.ctx.downgraded_to.clone().unwrap_or(route);
        let health = self.store.health().route(&route);
        let subset = x.ctx.rule_targets.clone();
        attempt::run(
            &self.client,
            &self.settings,
            x,
            &route,
            &health,
            subset,
            &mut inbound,
        )
        .await
    }

    /// Turn the outcome into the client's response, run the answer and response hooks, and end
    /// the exchange (a stream's relay ends it when the stream ends).
    fn respond(&self, mut x: Exchange, result: Result<Answer, ProxyError>) -> Response<ProxyBody> {
        let mut response = match result {
            Ok(Answer::Complete { mut body, usage }) => {
                x.ctx.usage = usage;
                x.answer(&mut body);
                json_response(StatusCode::OK, body)
            }
            Ok(Answer::Stream {
                first,
                rest,
                translate,
                deadline,
                scrub,
                idle,
                health,
                meter,
            }) => {
                x.ctx.streaming = true;
                let mut response = Response::new(ProxyBody::empty());
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                x.respond(StatusCode::OK, response.headers_mut());
                let guard = RelayGuard {
                    max_event_bytes: self.settings.max_event_bytes,
                    scrub,
                    idle,
                    health,
                    meter,
                };
                let relay = SseRelay::new(rest, first, deadline, x, translate, guard);
                *response.body_mut() = ProxyBody::Stream(Box::pin(relay));
                return response;
            }
            // Stored as the answer hooks left it: none runs again.
            Ok(Answer::Cached { body, stream }) => {
                let mut response = json_response(StatusCode::OK, body);
                if stream {
                    let headers = response.headers_mut();
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                }
                response
            }
            Ok(Answer::Final(e)) => final_response(&x.ctx, e),
            Err(e) => {
                x.ctx.error = Some(e.code());
                if e.status().is_server_error() {
                    tracing::warn!(request_id = %x.ctx.request_id, code = e.code(), error = %e, "request failed");
                }
                let mut r = json_response(e.status(), x.ctx.dialect.error_body(&e));
                if let Some(delay) = e.retry_after() {
                    r.headers_mut().insert(
                        RETRY_AFTER,
                        HeaderValue::from(providers::failure::header_seconds(delay)),
                    );
                }
                // The rest of a stalled body will never be read: the connection goes with it.
                if let ProxyError::BodyTimeout { .. } = &e {
                    r.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                r
            }
        };
        let status = response.status();
        x.respond(status, response.headers_mut());
        x.end(End::Answered);
        response
    }
}

/// The response to an attempt that ended the request without an answer.
fn final_response(ctx: &Context, e: AttemptError) -> Response<ProxyBody> {
    match (e, &ctx.answered_by) {
        (AttemptError::Refused(refusal), Some(target)) => refused(ctx.dialect, target, refusal),
        (e, _) => {
            // Nothing but a refusal is final today (the retry table); answer any other as a
            // failed upstream rather than guess.
            let e = ProxyError::Exhausted {
                route: ctx.route_name().to_string(),
                attempts: ctx.attempts.len() as u32,
                summary: e.to_string(),
                status: StatusCode::BAD_GATEWAY,
                retry_after: None,
            };
            json_response(e.status(), ctx.dialect.error_body(&e))
        }
    }
}

/// A provider's refusal of the request, in the client's dialect: its own error body passes
/// through when the provider speaks the client's dialect; otherwise its message is carried over.
fn refused(dialect: Dialect, target: &Target, refusal: Refusal) -> Response<ProxyBody> {
    let Refusal {
        status,
        content_type,
        body,
    } = refusal;
    let provider = &target.provider;
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let same_shape = providers::is_native(provider.adapter, dialect)
        && parsed.as_ref().is_some_and(|v| dialect.is_error_body(v));
    if same_shape {
        let mut response = Response::new(ProxyBody::full(body));
        *response.status_mut() = status;
        if let Some(ct) = content_type {
            response.headers_mut().insert(CONTENT_TYPE, ct);
        }
        return response;
    }
    let message = match providers::error_message(&body) {
        Some(m) => format!(
            "provider '{}' refused the request ({}): {m}",
            provider.name,
            status.as_u16()
        ),
        None => format!(
            "provider '{}' refused the request with status {}",
            provider.name,
            status.as_u16()
        ),
    };
    json_response(status, dialect.refusal_body(status, &message))
}

/// One route alias as a model object of `dialect`'s model list.
fn model_object(dialect: Dialect, id: &str) -> Value {
    match dialect {
        Dialect::Anthropic => serde_json::json!({
            "type": "model",
            "id": id,
            "display_name": id,
            "created_at": "1970-01-01T00:00:00Z",
        }),
        _ => {
            serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "gatehouse"})
        }
    }
}

/// `%XX` escapes of a path segment decoded (invalid ones kept as they are).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    while i < bytes.len() {
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
