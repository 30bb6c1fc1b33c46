//! The request path. Every request the proxy port receives goes through [`Gateway::handle`], in this
//! order (docs/architecture.md explains why):
//!
//! 1. assign a request id and load the config snapshot once (a reload never changes a request's rules);
//! 2. read the body within the size limit, parse and validate it (4xx on bad input, before any
//!    upstream work);
//! 3. resolve the model alias to a route;
//! 4. attempt targets in the route's order (priority, then weight), each attempt bounded by the
//!    per-attempt or first-token timeout and all of them by the request timeout; connect errors,
//!    timeouts, credential refusals (401/403 and each provider's own, `providers::failure`), 429
//!    and 5xx move on to the next attempt, other 4xx go back to the client;
//!    Each attempt goes through the target provider's adapter (`providers`): OpenAI-wire providers
//!    get the body with `model` rewritten, the others a translated request;
//! 5. answer: buffered JSON with its cost, or a relayed stream once its first chunk arrived — from
//!    then on no retry, and an upstream failure becomes an SSE error event. Answers of translated
//!    providers come back in the client's dialect (OpenAI, or Anthropic on `/v1/messages`);
//! 6. add the `x-gatehouse-*` headers, record metrics and one access-log line.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use http::header::{ACCEPT, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;

use crate::body::{FirstEvent, FirstEventScan, ProxyBody, RelayGuard, SseRelay, StreamEnd};
use crate::error::{AttemptError, ProxyError, error_body};
use crate::limits::ResponseBudget;
use crate::metrics::{AttemptLabels, ErrorLabels, Metrics, RequestLabels, RouteLabels};
use crate::providers::{self, Dialect, Operation, StreamFraming, Translate, messages};
use crate::request::budget::BodyBudget;
use crate::request::{self, Request as Inbound};
use crate::routing::AttemptPlan;
use crate::scrub::Scrubber;
use crate::state::{Credentials, Provider, Store};
use crate::upstream::UpstreamClient;
use crate::usage::{self, Usage};
use crate::warnings::Warnings;

const USER_AGENT_VALUE: &str = concat!("gatehouse/", env!("CARGO_PKG_VERSION"));

/// Most calls of one attempt in flight at once, when a request takes several (Bedrock Titan
/// embeddings: one call per input). Small, so one big request does not eat the provider's
/// rate limit or the sidecar's connections.
const FAN_OUT: usize = 4;

/// Where Bedrock's InvokeModel reports the input tokens of an answer.
const BEDROCK_INPUT_TOKENS: &str = "x-amzn-bedrock-input-token-count";

/// Settings of the request path that do not come from the custom resources.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Most bytes of upstream answers one attempt buffers (`limits`).
    pub max_response_bytes: usize,
    /// Most bytes held of one upstream stream event not complete yet (`limits`).
    pub max_event_bytes: usize,
    /// Bytes of request bodies in flight at once, over all requests; beyond it requests are shed
    /// with 503.
    pub max_inflight_body_bytes: usize,
    /// Longest wait for the next piece of a request body before answering 408.
    pub body_read_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            max_response_bytes: crate::limits::DEFAULT_MAX_RESPONSE_BYTES,
            max_event_bytes: crate::limits::DEFAULT_MAX_EVENT_BYTES,
            max_inflight_body_bytes: 128 * 1024 * 1024,
            body_read_timeout: Duration::from_secs(10),
        }
    }
}

/// The proxy: config store, upstream client, metrics.
#[derive(Debug)]
pub struct Gateway {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    client: UpstreamClient,
    settings: Settings,
    budget: Arc<BodyBudget>,
}

/// Why one buffered call of an attempt gave no 2xx body: either stops the whole attempt.
enum Halt {
    /// The call failed; the attempt fails with it.
    Failed(AttemptError),
    /// The provider refused the request; that refusal is the attempt's answer.
    Refused(Answer),
}

impl From<AttemptError> for Halt {
    fn from(e: AttemptError) -> Self {
        Self::Failed(e)
    }
}

/// What is known about a request as it goes, for headers, metrics and the access log.
#[derive(Debug)]
struct Context {
    request_id: String,
    start: Instant,
    route: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    attempts: u32,
    upstream_wait: Duration,
    cost_usd: Option<f64>,
    stream: bool,
    dialect: Dialect,
    warnings: Warnings,
}

/// A successful or final upstream answer.
enum Answer {
    /// A complete 2xx body, in the client's dialect, and its usage.
    Complete { body: Bytes, usage: Option<Usage> },
    /// A 2xx event stream whose first event arrived (`first` in the client's dialect).
    Stream {
        first: Bytes,
        rest: Incoming,
        translate: Option<Translate>,
        /// The scrubber of the call that answered.
        scrub: Scrubber,
    },
    /// A 4xx other than 408/429 or a credential refusal: the request itself was refused; passed
    /// back, not retried.
    Refused {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
}

impl Gateway {
    /// A gateway serving from `store`.
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        client: UpstreamClient,
        settings: Settings,
    ) -> Self {
        Self {
            budget: BodyBudget::new(settings.max_inflight_body_bytes),
            store,
            metrics,
            client,
            settings,
        }
    }

    /// Answer one request. Never fails: every error becomes an OpenAI-style error response.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let mut ctx = Context {
            request_id: format!("{:032x}", rand::rng().random::<u128>()),
            start: Instant::now(),
            route: None,
            provider: None,
            model: None,
            attempts: 0,
            upstream_wait: Duration::ZERO,
            cost_usd: None,
            stream: false,
            dialect: Dialect::OpenAi,
            warnings: Warnings::default(),
        };
        let path = req.uri().path();
        let path = path.strip_prefix("/v1").unwrap_or(path);
        let result = match (req.method(), path) {
            (&Method::POST, "/chat/completions") => self.call(req, Operation::Chat, &mut ctx).await,
            (&Method::POST, "/embeddings") => self.call(req, Operation::Embeddings, &mut ctx).await,
            (&Method::POST, "/messages") => {
                ctx.dialect = Dialect::Anthropic;
                self.call(req, Operation::Chat, &mut ctx).await
            }
            (&Method::GET, "/models") => self.models(),
            (_, "/chat/completions" | "/embeddings" | "/models" | "/messages") => {
                Err(ProxyError::MethodNotAllowed {
                    method: req.method().to_string(),
                    path: req.uri().path().to_string(),
                })
            }
            _ => Err(ProxyError::NotFound(req.uri().path().to_string())),
        };
        self.finish(ctx, result)
    }

    fn models(&self) -> Result<Response<ProxyBody>, ProxyError> {
        let snapshot = self.store.load().ok_or(ProxyError::NotReady)?;
        let mut aliases: Vec<&String> = snapshot.aliases.keys().collect();
        aliases.sort();
        let data: Vec<Value> = aliases
            .into_iter()
            .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "gatehouse"}))
            .collect();
        let body = serde_json::json!({"object": "list", "data": data}).to_string();
        Ok(json_response(StatusCode::OK, Bytes::from(body)))
    }

    async fn call(
        &self,
        req: Request<Incoming>,
        op: Operation,
        ctx: &mut Context,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let snapshot = self.store.load().ok_or(ProxyError::NotReady)?;
        let anthropic_beta = req.headers().get("anthropic-beta").cloned();
        let limits = request::read::Limits {
            max_bytes: self.settings.max_body_bytes,
            progress_timeout: self.settings.body_read_timeout,
        };
        let body = request::read::body(req, limits, &self.budget).await?;
        let mut inbound = Inbound::parse(body, op, ctx.dialect, anthropic_beta).await?;
        ctx.stream = inbound.stream();
        let route = snapshot
            .aliases
            .get(&inbound.index.alias)
            .cloned()
            .ok_or_else(|| ProxyError::UnknownModel(inbound.alias_for_error()))?;
        ctx.route = Some(route.name.clone());
        if route.config.targets.is_empty() {
            let reason = if route.config.unavailable.is_empty() {
                "no targets are configured".to_string()
            } else {
                route.config.unavailable.join("; ")
            };
            return Err(ProxyError::NoTargets {
                route: route.name.clone(),
                reason,
            });
        }
        let retry = &route.config.retry;
        let timeouts = &route.config.timeouts;
        let deadline = ctx.start + Duration::from_millis(timeouts.request_ms);
        let max_attempts = retry.attempts.max(1);
        let mut plan = AttemptPlan::new(&route, &mut rand::rng());
        let mut failures: Vec<String> = Vec::new();
        let mut last: Option<AttemptError> = None;
        // The shortest delay a rate-limited target asked for: once it passes, that target (and so
        // the route) can serve again.
        let mut rate_limit_delay: Option<Duration> = None;
        while ctx.attempts < max_attempts {
            let Some(next) = plan.next(&route, retry, &mut rand::rng()) else {
                break;
            };
            if !next.backoff.is_zero() {
                if Instant::now() + next.backoff >= deadline {
                    break;
                }
                tokio::time::sleep(next.backoff).await;
            }
            let Some(target) = route.target(next.target) else {
                break;
            };
            let Some(provider) = snapshot.providers.get(&target.provider) else {
                // render() never emits such a target; if it did, the target is skipped, not fatal.
                failures.push(format!("{}: provider not configured", target.provider));
                continue;
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            // A request the target cannot express is the client's error: 400, not another attempt.
            let outgoing = inbound.outgoing(provider, &target.model).await?;
            ctx.attempts += 1;
            // The attempt limit covers the response headers (and a buffered body); a stream's
            // first event must also come within firstToken (default: the attempt limit).
            let attempt_limit = Duration::from_millis(timeouts.attempt_ms).min(remaining);
            let limit = match (ctx.stream, timeouts.first_token_ms) {
                (true, Some(ms)) => Duration::from_millis(ms).min(remaining),
                _ => attempt_limit,
            };
            let sent = Instant::now();
            let warnings = outgoing.warnings.clone();
            let result = tokio::time::timeout(
                limit,
                self.attempt(provider, &target.model, &inbound, outgoing, attempt_limit),
            )
            .await;
            ctx.upstream_wait += sent.elapsed();
            let outcome = match result {
                Ok(Ok(answer)) => {
                    self.count_attempt(&provider.name, "success");
                    ctx.provider = Some(provider.name.clone());
                    ctx.model = Some(target.model.clone());
                    ctx.warnings.extend(&warnings);
                    return Ok(self.answer(answer, provider, &target.model, ctx, deadline));
                }
                Ok(Err(e)) => e,
                Err(_) => AttemptError::Timeout(limit.as_millis() as u64),
            };
            self.count_attempt(&provider.name, outcome.metric_label());
            // What an upstream said may echo its key: scrubbed before the log and the answer.
            let said = outcome.to_string();
            let said = provider.scrubber.scrub_str(&said);
            tracing::debug!(request_id = %ctx.request_id, provider = %provider.name, error = %said, "attempt failed");
            failures.push(format!("{}/{}: {}", provider.name, target.model, said));
            if let AttemptError::Status {
                retry_after: Some(delay),
                ..
            } = &outcome
            {
                rate_limit_delay = Some(rate_limit_delay.map_or(*delay, |d| d.min(*delay)));
            }
            last = Some(outcome);
        }
        let (status, retry_after) = match &last {
            Some(AttemptError::Status { status, .. })
                if *status == StatusCode::TOO_MANY_REQUESTS =>
            {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    Some(rate_limit_delay.unwrap_or(providers::failure::DEFAULT_RETRY_AFTER)),
                )
            }
            // The last attempt ran out of time (its own limit or the request's): a timeout, as
            // README and docs/architecture.md promise, however many attempts came before.
            Some(AttemptError::Timeout(_)) => (StatusCode::GATEWAY_TIMEOUT, None),
            _ => (StatusCode::BAD_GATEWAY, None),
        };
        if failures.is_empty() {
            failures.push("the request timeout expired before the first attempt".to_string());
        }
        Err(ProxyError::Exhausted {
            route: route.name.clone(),
            attempts: ctx.attempts,
            summary: failures.join("; "),
            status,
            retry_after,
        })
    }

    /// One attempt: the upstream call (or, for a provider that takes fewer inputs per call than
    /// the client sent, the calls, at most [`FAN_OUT`] at a time), until the whole body (buffered)
    /// or the first event (stream) arrived.
    async fn attempt(
        &self,
        provider: &Provider,
        model: &str,
        inbound: &Inbound,
        outgoing: providers::Outgoing,
        headers_limit: Duration,
    ) -> Result<Answer, AttemptError> {
        let providers::Outgoing {
            uri, body, more, ..
        } = outgoing;
        let budget = ResponseBudget::new(self.settings.max_response_bytes);
        if inbound.stream() {
            let beta = inbound.beta_for(provider.kind);
            let sent = tokio::time::timeout(
                headers_limit,
                self.send(provider, uri, body, true, beta, &budget),
            )
            .await
            .map_err(|_| AttemptError::Timeout(headers_limit.as_millis() as u64))?;
            let (response, scrub) = match sent? {
                Ok(sent) => sent,
                Err(refused) => return Ok(refused),
            };
            let translate = inbound.translator(provider.kind, model);
            return first_chunk(
                response,
                providers::framing(provider.kind),
                inbound.dialect,
                translate,
                self.settings.max_event_bytes,
                scrub,
            )
            .await;
        }
        // Answers are joined in input order (`buffered`, not `buffer_unordered`); the first failure
        // or refusal ends the attempt and drops the calls still in flight.
        let calls = std::iter::once(body).chain(more).map(|body| {
            self.buffered_call(
                provider,
                uri.clone(),
                body,
                inbound.beta_for(provider.kind),
                &budget,
            )
        });
        let replies: Vec<providers::Reply> = match futures::stream::iter(calls)
            .buffered(FAN_OUT)
            .try_collect()
            .await
        {
            Ok(replies) => replies,
            Err(Halt::Failed(e)) => return Err(e),
            Err(Halt::Refused(refused)) => return Ok(refused),
        };
        complete(provider, model, inbound, replies)
    }

    /// One buffered call: its whole 2xx body, or why not.
    async fn buffered_call(
        &self,
        provider: &Provider,
        uri: http::Uri,
        body: Bytes,
        anthropic_beta: Option<&HeaderValue>,
        budget: &ResponseBudget,
    ) -> Result<providers::Reply, Halt> {
        let (response, scrub) = self
            .send(provider, uri, body, false, anthropic_beta, budget)
            .await?
            .map_err(Halt::Refused)?;
        let (parts, incoming) = response.into_parts();
        let input_tokens = parts
            .headers
            .get(BEDROCK_INPUT_TOKENS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        // Scrubbed as read, before any translation: a translated answer is built from clean text.
        let body = scrub.scrub_bytes(budget.read(&parts.headers, incoming).await?);
        Ok(providers::Reply { body, input_tokens })
    }

    /// Authorize and send one upstream request. A 2xx comes back as the response, with the
    /// scrubber for what this request carried; a credential refusal, 408, 429 (with the delay the
    /// provider asked for) and 5xx as the error that moves on to the next attempt; any other
    /// status as the [`Answer::Refused`] passed back to the client, scrubbed. Bodies read here
    /// count against `budget`.
    async fn send(
        &self,
        provider: &Provider,
        uri: http::Uri,
        body: Bytes,
        stream: bool,
        anthropic_beta: Option<&HeaderValue>,
        budget: &ResponseBudget,
    ) -> Result<Result<(Response<Incoming>, Scrubber), Answer>, AttemptError> {
        let mut builder = Request::post(uri)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(
                ACCEPT,
                match (stream, providers::framing(provider.kind)) {
                    (false, _) => "application/json",
                    (true, StreamFraming::Sse) => "text/event-stream",
                    (true, StreamFraming::AwsEventStream) => "application/vnd.amazon.eventstream",
                },
            );
        if provider.kind == gatehouse_crds::config::ProviderKind::Anthropic {
            builder = builder.header("anthropic-version", providers::anthropic::VERSION);
        }
        if let Some(beta) = anthropic_beta {
            builder = builder.header("anthropic-beta", beta.clone());
        }
        match &provider.credentials {
            Credentials::None | Credentials::Aws(_) => {}
            Credentials::Header(name, value) => builder = builder.header(name, value.clone()),
            Credentials::Invalid(reason) => {
                return Err(AttemptError::Invalid(format!(
                    "the provider's key cannot be used: {reason}"
                )));
            }
        }
        let mut request = builder
            .body(Full::new(body.clone()))
            .map_err(|e| AttemptError::Connect(format!("failed to build request: {e}")))?;
        if let Credentials::Aws(credentials) = &provider.credentials {
            providers::bedrock::sign(provider, credentials, &mut request, &body)
                .map_err(|e| AttemptError::Invalid(format!("failed to sign request: {e}")))?;
        }
        // A SigV4 signature is a secret of this request only.
        let scrub = provider.scrubber.for_request(request.headers());
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| AttemptError::Connect(error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Ok((response, scrub)));
        }
        let (parts, incoming) = response.into_parts();
        if status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
        {
            // Only a 429 from a provider that puts its delay in the body is read: a 5xx that
            // stalls after its head must not hold up the next attempt.
            let retry_after = if status != StatusCode::TOO_MANY_REQUESTS {
                None
            } else if providers::failure::delay_in_body(provider.kind) {
                let body = match budget.read(&parts.headers, incoming).await {
                    Ok(body) => body,
                    Err(e @ AttemptError::TooLarge { .. }) => return Err(e),
                    // A 429 whose body breaks off is still a 429, without a delay.
                    Err(_) => Bytes::new(),
                };
                providers::failure::retry_after(provider.kind, &parts.headers, &body)
            } else {
                providers::failure::retry_after(provider.kind, &parts.headers, &[])
            };
            return Err(AttemptError::Status {
                status,
                retry_after,
            });
        }
        let body = budget.read(&parts.headers, incoming).await?;
        // 401/403, and what the provider says is a key refusal under another status (Gemini's
        // 400 API_KEY_INVALID): the next target may work. The body may echo part of the key; it
        // is dropped, never relayed or logged (only a fixed reason name is kept).
        if let Some(auth) =
            providers::failure::auth_failure(provider.kind, status, &parts.headers, &body)
        {
            return Err(AttemptError::Auth(auth));
        }
        // The refusal reaches the client: scrubbed, and its content type dropped if it carries a
        // credential (the only upstream header relayed).
        Ok(Err(Answer::Refused {
            status,
            content_type: parts
                .headers
                .get(CONTENT_TYPE)
                .filter(|ct| !scrub.contains(ct.as_bytes()))
                .cloned(),
            body: scrub.scrub_bytes(body),
        }))
    }

    /// Turn the winning attempt's answer into the client's response.
    fn answer(
        &self,
        answer: Answer,
        provider: &Provider,
        model: &str,
        ctx: &mut Context,
        deadline: Instant,
    ) -> Response<ProxyBody> {
        match answer {
            Answer::Complete { body, usage } => {
                ctx.cost_usd = usage
                    .zip(provider.models.get(model))
                    .map(|(u, p)| u.cost(p));
                json_response(StatusCode::OK, body)
            }
            Answer::Stream {
                first,
                rest,
                translate,
                scrub,
            } => {
                let metrics = self.metrics.clone();
                let route = ctx.route.clone().unwrap_or_default();
                let request_id = ctx.request_id.clone();
                let pricing = provider.models.get(model).copied();
                let on_end: crate::body::OnEnd = Box::new(move |end, usage| {
                    if end == StreamEnd::Broken {
                        metrics
                            .streams_broken
                            .get_or_create(&RouteLabels {
                                route: route.clone(),
                            })
                            .inc();
                    }
                    let cost_usd = usage.zip(pricing).map(|(u, p)| u.cost(&p));
                    tracing::info!(
                        target: "gatehouse::access",
                        request_id = %request_id,
                        route = %route,
                        stream_end = ?end,
                        prompt_tokens = usage.map(|u| u.prompt_tokens),
                        completion_tokens = usage.map(|u| u.completion_tokens),
                        cost_usd,
                        "stream finished"
                    );
                });
                let guard = RelayGuard {
                    max_event_bytes: self.settings.max_event_bytes,
                    scrub,
                };
                let relay =
                    SseRelay::new(rest, first, deadline, on_end, ctx.dialect, translate, guard);
                let mut response = Response::new(ProxyBody::Stream(Box::pin(relay)));
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                response
            }
            Answer::Refused {
                status,
                content_type,
                body,
            } => {
                // The provider's own error body passes through when it is already in the
                // client's dialect; otherwise its message is carried over into that shape.
                let parsed = serde_json::from_slice::<Value>(&body).ok();
                let same_shape = match ctx.dialect {
                    Dialect::OpenAi => {
                        providers::is_openai_wire(provider.kind)
                            && parsed
                                .as_ref()
                                .is_some_and(|v| v.get("error").is_some_and(Value::is_object))
                    }
                    Dialect::Anthropic => {
                        provider.kind == gatehouse_crds::config::ProviderKind::Anthropic
                            && parsed.as_ref().is_some_and(|v| {
                                v.get("type").and_then(Value::as_str) == Some("error")
                            })
                    }
                };
                if same_shape {
                    let mut response = Response::new(ProxyBody::full(body));
                    *response.status_mut() = status;
                    if let Some(ct) = content_type {
                        response.headers_mut().insert(CONTENT_TYPE, ct);
                    }
                    response
                } else {
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
                    let body = match ctx.dialect {
                        Dialect::OpenAi => {
                            error_body(&message, "invalid_request_error", "upstream_refused")
                        }
                        Dialect::Anthropic => messages::error_body(status, &message),
                    };
                    json_response(status, body)
                }
            }
        }
    }

    fn count_attempt(&self, provider: &str, outcome: &'static str) {
        self.metrics
            .attempts
            .get_or_create(&AttemptLabels {
                provider: provider.to_string(),
                outcome,
            })
            .inc();
    }

    /// Add the `x-gatehouse-*` headers, record metrics and the access log.
    fn finish(
        &self,
        ctx: Context,
        result: Result<Response<ProxyBody>, ProxyError>,
    ) -> Response<ProxyBody> {
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                self.metrics
                    .errors
                    .get_or_create(&ErrorLabels { reason: e.code() })
                    .inc();
                if e.status().is_server_error() {
                    tracing::warn!(request_id = %ctx.request_id, code = e.code(), error = %e, "request failed");
                }
                let body = match ctx.dialect {
                    Dialect::OpenAi => e.body(),
                    Dialect::Anthropic => messages::error_body(e.status(), &e.to_string()),
                };
                let mut r = json_response(e.status(), body);
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
        let headers = response.headers_mut();
        insert_header(headers, "x-gatehouse-request-id", &ctx.request_id);
        if let Some(route) = &ctx.route {
            insert_header(headers, "x-gatehouse-route", route);
        }
        if let Some(provider) = &ctx.provider {
            insert_header(headers, "x-gatehouse-provider", provider);
        }
        if let Some(model) = &ctx.model {
            insert_header(headers, "x-gatehouse-model", model);
        }
        if ctx.attempts > 0 {
            insert_header(headers, "x-gatehouse-attempts", &ctx.attempts.to_string());
        }
        if let Some(cost) = ctx.cost_usd {
            insert_header(headers, "x-gatehouse-cost-usd", &format!("{cost:.8}"));
        }
        headers.insert("x-gatehouse-cache", HeaderValue::from_static("bypass"));
        if !ctx.warnings.is_empty() {
            insert_header(headers, "x-gatehouse-warning", &ctx.warnings.header_value());
        }

        let elapsed = ctx.start.elapsed();
        let route = ctx.route.clone().unwrap_or_default();
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                provider: ctx.provider.clone().unwrap_or_default(),
                model: ctx.model.clone().unwrap_or_default(),
                status: status.as_u16(),
            })
            .inc();
        if !route.is_empty() {
            self.metrics
                .request_duration
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                })
                .observe(elapsed.as_secs_f64());
        }
        if ctx.attempts > 0 {
            self.metrics
                .overhead
                .observe(elapsed.saturating_sub(ctx.upstream_wait).as_secs_f64());
        }
        tracing::info!(
            target: "gatehouse::access",
            request_id = %ctx.request_id,
            route = %route,
            provider = ctx.provider.as_deref().unwrap_or(""),
            model = ctx.model.as_deref().unwrap_or(""),
            status = status.as_u16(),
            attempts = ctx.attempts,
            stream = ctx.stream,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            cost_usd = ctx.cost_usd,
            "request"
        );
        response
    }
}

fn insert_header(headers: &mut http::HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Wait for the first complete event of a 2xx stream (translated into the client's dialect when
/// `translate` is set). Everything before it (keep-alives included) and any frame a translator
/// holds stay within `max_event` bytes, or the attempt fails.
async fn first_chunk(
    response: Response<Incoming>,
    framing: StreamFraming,
    dialect: Dialect,
    mut translate: Option<Translate>,
    max_event: usize,
    scrub: Scrubber,
) -> Result<Answer, AttemptError> {
    let expected = match framing {
        StreamFraming::Sse => "text/event-stream",
        StreamFraming::AwsEventStream => "application/vnd.amazon.eventstream",
    };
    let content_type_ok = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(expected));
    if !content_type_ok {
        return Err(AttemptError::Invalid(format!(
            "expected an event stream ({expected})"
        )));
    }
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    let mut scan = FirstEventScan::default();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    match translate.as_mut() {
                        None => buf.extend_from_slice(&data),
                        Some(t) => t.feed(&data, &mut buf).map_err(AttemptError::Invalid)?,
                    }
                    match scan.check(&buf, dialect) {
                        FirstEvent::Incomplete => {
                            let held = translate.as_ref().map_or(0, Translate::pending);
                            if buf.len() > max_event || held > max_event {
                                return Err(crate::limits::event_too_large(max_event));
                            }
                        }
                        FirstEvent::Valid => {
                            return Ok(Answer::Stream {
                                first: buf.freeze(),
                                rest: body,
                                translate,
                                scrub,
                            });
                        }
                        FirstEvent::Invalid(reason) => {
                            return Err(AttemptError::Invalid(reason.to_string()));
                        }
                    }
                }
            }
            Some(Err(e)) => {
                return Err(AttemptError::Connect(format!(
                    "stream broke before the first chunk: {}",
                    error_chain(&e)
                )));
            }
            None => {
                return Err(AttemptError::Invalid(
                    "stream ended before the first chunk".to_string(),
                ));
            }
        }
    }
}

/// The complete 2xx bodies of an attempt (one, unless the adapter fanned out): checked, translated
/// into the client's dialect, their usage read.
fn complete(
    provider: &Provider,
    model: &str,
    inbound: &Inbound,
    mut replies: Vec<providers::Reply>,
) -> Result<Answer, AttemptError> {
    if inbound.is_native(provider.kind) {
        // Native requests never fan out: one call, one body.
        let body = match (replies.pop(), replies.is_empty()) {
            (Some(reply), true) => reply.body,
            _ => {
                return Err(AttemptError::Invalid(
                    "a pass-through request got several answers".to_string(),
                ));
            }
        };
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return Err(AttemptError::Invalid(
                "response body is not valid JSON".to_string(),
            ));
        }
        let usage = match inbound.dialect {
            Dialect::OpenAi => usage::of_body(&body),
            Dialect::Anthropic => usage::of_anthropic_body(&body),
        };
        return Ok(Answer::Complete { body, usage });
    }
    let openai = providers::responses(provider.kind, inbound.op, model, &replies)
        .map_err(AttemptError::Invalid)?;
    let usage = openai
        .get("usage")
        .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok());
    let out = match inbound.dialect {
        Dialect::OpenAi => {
            let mut openai = openai;
            if inbound.op == Operation::Embeddings && inbound.base64_embeddings() {
                providers::base64_embeddings(&mut openai);
            }
            openai
        }
        Dialect::Anthropic => messages::response(&openai),
    };
    let body = serde_json::to_vec(&out)
        .map_err(|e| AttemptError::Invalid(format!("failed to encode response: {e}")))?;
    Ok(Answer::Complete {
        body: Bytes::from(body),
        usage,
    })
}

/// An error with its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
