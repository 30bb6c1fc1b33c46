//! The attempts of one request: targets in the route's order (`routing::AttemptPlan`), each
//! through its provider's adapter, each bounded by the attempt or first-token limit and all by
//! the request deadline. What happens after a failed attempt is the retry table
//! (`AttemptError::is_retryable`); every attempt is recorded in the request's context.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{Answer, Settings};
use crate::body::{FirstEvent, FirstEventScan};
use crate::error::{AttemptError, DecodeError, ProxyError, Refusal, StatusClass, TransportError};
use crate::limits::ResponseBudget;
use crate::providers::{Outgoing, Reply, Translate, credentials, failure};
use crate::request::Request as Inbound;
use crate::routing::AttemptPlan;
use crate::routing::health::{Admit, Outcome, RouteHealth};
use crate::scrub::Scrubber;
use crate::stages::{AttemptRecord, Exchange};
use crate::state::{Provider, ServedRoute};
use crate::upstream::UpstreamClient;

const USER_AGENT_VALUE: &str = concat!("gatehouse/", env!("CARGO_PKG_VERSION"));

/// Most calls of one attempt in flight at once, when a request takes several (Bedrock Titan
/// embeddings: one call per input). Small, so one big request does not eat the provider's
/// rate limit or the sidecar's connections.
const FAN_OUT: usize = 4;

/// Where Bedrock's InvokeModel reports the input tokens of an answer.
const BEDROCK_INPUT_TOKENS: &str = "x-amzn-bedrock-input-token-count";

/// Try the route's targets until one answers, a refusal ends the request, the attempts run out
/// or the deadline passes.
pub(super) async fn run(
    client: &UpstreamClient,
    settings: &Settings,
    x: &mut Exchange,
    route: &ServedRoute,
    health: &std::sync::Arc<RouteHealth>,
    subset: Option<Vec<usize>>,
    inbound: &mut Inbound,
) -> Result<Answer, ProxyError> {
    let retry = &route.config.retry;
    let timeouts = &route.config.timeouts;
    let deadline = x.ctx.start + Duration::from_millis(timeouts.request_ms);
    let max_attempts = retry.attempts.max(1) as usize;
    let mut plan = AttemptPlan::with(route, Some(health), subset, &mut rand::rng());
    // Targets skipped in a row for their health (ejected, or another request is testing it).
    let mut skipped = 0;
    let mut failures: Vec<String> = Vec::new();
    let mut last: Option<AttemptError> = None;
    // The shortest delay a rate-limited target asked for: once it passes, that target (and so
    // the route) can serve again.
    let mut rate_limit_delay: Option<Duration> = None;
    while x.ctx.attempts.len() < max_attempts {
        let Some(next) = plan.next(route, Some(health), retry, &mut rand::rng()) else {
            break;
        };
        let admit = health.admit(next.target, health.now_ms(), next.forced);
        if admit == Admit::No {
            skipped += 1;
            if skipped >= plan.pass_len().max(1) {
                // A whole pass had nothing to try: serve degraded rather than not at all.
                plan.force();
            }
            continue;
        }
        skipped = 0;
        // Held from here: a test request claimed above is released if this attempt never goes
        // out (a request the target cannot express, the deadline).
        let held = health.begin(next.target, admit);
        if !next.backoff.is_zero() {
            if Instant::now() + next.backoff >= deadline {
                break;
            }
            tokio::time::sleep(next.backoff).await;
        }
        let Some(target) = route.resolved(next.target) else {
            break;
        };
        let mut target = target.clone();
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        x.before_attempt(&mut target, inbound);
        let provider = &*target.provider;
        // A request the target cannot express is the client's error: 400, not another attempt.
        let outgoing = inbound.outgoing(&target.provider, &target.model).await?;
        // The attempt limit covers the response headers (and a buffered body); a stream's
        // first event must also come within firstToken (default: the attempt limit).
        let attempt_limit = Duration::from_millis(timeouts.attempt_ms).min(remaining);
        let limit = match (inbound.stream(), timeouts.first_token_ms) {
            (true, Some(ms)) => Duration::from_millis(ms).min(remaining),
            _ => attempt_limit,
        };
        let sent = Instant::now();
        let warnings = outgoing.warnings.clone();
        let result = tokio::time::timeout(
            limit,
            attempt(
                client,
                settings,
                provider,
                &target.model,
                inbound,
                outgoing,
                attempt_limit,
                deadline,
            ),
        )
        .await;
        let elapsed = sent.elapsed();
        x.ctx.upstream_wait += elapsed;
        let mut result = match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AttemptError::Timeout(limit.as_millis() as u64)),
        };
        // A relayed stream keeps reporting to its target's health, and `timeouts.idle` bounds it.
        if let Ok(Answer::Stream { idle, health, .. }) = &mut result {
            *idle = timeouts.idle_ms.map(Duration::from_millis);
            *health = Some(held.handle());
        }
        match &result {
            Ok(Answer::Stream { .. }) => held.finish_stream_start(elapsed),
            Ok(_) => held.finish(Outcome::Success, elapsed),
            Err(e) => held.finish(e.health_outcome(), elapsed),
        }
        x.ctx.attempts.push(AttemptRecord {
            target: target.clone(),
            outcome: result
                .as_ref()
                .map_or_else(AttemptError::metric_label, |_| "success"),
            elapsed,
            started: sent,
        });
        let error = match result {
            Ok(answer) => {
                x.ctx.answered_by = Some(target);
                x.ctx.warnings.extend(&warnings);
                return Ok(answer);
            }
            Err(e) if !e.is_retryable() => {
                x.ctx.answered_by = Some(target);
                x.ctx.warnings.extend(&warnings);
                return Ok(Answer::Final(e));
            }
            Err(e) => e,
        };
        // What an upstream said may echo its key: scrubbed before the log and the answer.
        let said = error.to_string();
        let said = provider.scrubber.scrub_str(&said);
        tracing::debug!(request_id = %x.ctx.request_id, provider = %provider.name, error = %said, "attempt failed");
        failures.push(format!("{}/{}: {}", provider.name, target.model, said));
        if let AttemptError::Status {
            retry_after: Some(delay),
            ..
        } = &error
        {
            rate_limit_delay = Some(rate_limit_delay.map_or(*delay, |d| d.min(*delay)));
        }
        last = Some(error);
    }
    let (status, retry_after) = match &last {
        Some(AttemptError::Status { status, .. }) if *status == StatusCode::TOO_MANY_REQUESTS => (
            StatusCode::TOO_MANY_REQUESTS,
            Some(rate_limit_delay.unwrap_or(failure::DEFAULT_RETRY_AFTER)),
        ),
        // The last attempt ran out of time (its own limit or the request's): a timeout, as
        // README and docs/architecture.md promise, however many attempts came before.
        Some(AttemptError::Timeout(_)) => (StatusCode::GATEWAY_TIMEOUT, None),
        _ => (StatusCode::BAD_GATEWAY, None),
    };
    if failures.is_empty() {
        failures.push("the request timeout expired before the first attempt".to_string());
    }
    Err(ProxyError::Exhausted {
        route: route.name.to_string(),
        attempts: x.ctx.attempts.len() as u32,
        summary: failures.join("; "),
        status,
        retry_after,
    })
}

/// One attempt: the upstream call (or, for a provider that takes fewer inputs per call than
/// the client sent, the calls, at most [`FAN_OUT`] at a time), until the whole body (buffered)
/// or the first event (stream) arrived.
#[expect(
    clippy::too_many_arguments,
    reason = "one attempt's inputs, passed down once"
)]
async fn attempt(
    client: &UpstreamClient,
    settings: &Settings,
    provider: &Provider,
    model: &str,
    inbound: &Inbound,
    outgoing: Outgoing,
    headers_limit: Duration,
    deadline: Instant,
) -> Result<Answer, AttemptError> {
    let Outgoing {
        uri, body, more, ..
    } = outgoing;
    let budget = ResponseBudget::new(settings.max_response_bytes);
    if inbound.stream() {
        let (response, scrub) = tokio::time::timeout(
            headers_limit,
            send(client, provider, uri, body, true, inbound, &budget),
        )
        .await
        .map_err(|_| AttemptError::Timeout(headers_limit.as_millis() as u64))??;
        let translate = inbound.translator(provider.adapter, model);
        let (first, rest, translate) = first_chunk(
            response,
            provider,
            inbound,
            translate,
            settings.max_event_bytes,
        )
        .await?;
        let meter = inbound.stream_meter(translate.is_some());
        return Ok(Answer::Stream {
            first,
            rest,
            translate,
            deadline,
            scrub,
            idle: None,
            health: None,
            meter,
        });
    }
    // Answers are joined in input order (`buffered`, not `buffer_unordered`); the first failure
    // or refusal ends the attempt and drops the calls still in flight.
    let calls = std::iter::once(body)
        .chain(more)
        .map(|body| buffered_call(client, provider, uri.clone(), body, inbound, &budget));
    let replies: Vec<Reply> = futures::stream::iter(calls)
        .buffered(FAN_OUT)
        .try_collect()
        .await?;
    let (body, usage) = complete(provider, model, inbound, replies)?;
    Ok(Answer::Complete { body, usage })
}

/// One buffered call: its whole 2xx body, or why not.
async fn buffered_call(
    client: &UpstreamClient,
    provider: &Provider,
    uri: http::Uri,
    body: Bytes,
    inbound: &Inbound,
    budget: &ResponseBudget,
) -> Result<Reply, AttemptError> {
    let (response, scrub) = send(client, provider, uri, body, false, inbound, budget).await?;
    let (parts, incoming) = response.into_parts();
    let input_tokens = parts
        .headers
        .get(BEDROCK_INPUT_TOKENS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    // Scrubbed as read, before any translation: a translated answer is built from clean text.
    let body = scrub.scrub_bytes(budget.read(&parts.headers, incoming).await?);
    Ok(Reply { body, input_tokens })
}

/// Authorize and send one upstream request. A 2xx comes back as the response, with the scrubber
/// for what this request carried; anything else as the error the retry table judges: 408, 429
/// (with the delay the provider asked for) and 5xx, a refusal of the key or for billing, or a
/// refusal of the request itself (scrubbed: it reaches the client). Bodies read here count
/// against `budget`.
async fn send(
    client: &UpstreamClient,
    provider: &Provider,
    uri: http::Uri,
    body: Bytes,
    stream: bool,
    inbound: &Inbound,
    budget: &ResponseBudget,
) -> Result<(Response<Incoming>, Scrubber), AttemptError> {
    let adapter = provider.adapter;
    let accept = if stream {
        adapter.framing().content_type()
    } else {
        "application/json"
    };
    let mut request = Request::post(uri)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(ACCEPT, accept)
        .body(Full::new(body.clone()))
        .map_err(TransportError::Build)?;
    adapter.extra_headers(inbound.anthropic_beta.as_ref(), request.headers_mut());
    let client = crate::upstream::prepare(client, provider, request.headers_mut())?;
    let auth = credentials::authorization(provider).await?;
    adapter.authorize(provider, auth.credentials(), &mut request, &body)?;
    // A SigV4 signature is a secret of this request only.
    let scrub = auth.scrubber().for_request(request.headers());
    let response = client
        .request(request)
        .await
        .map_err(TransportError::Request)?;
    let status = response.status();
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        return Err(TransportError::ProxyAuth.into());
    }
    let class = StatusClass::of(status);
    if class == StatusClass::Success {
        return Ok((response, scrub));
    }
    let (parts, incoming) = response.into_parts();
    if class == StatusClass::Retry {
        // Only a 429 from a provider that puts its delay in the body is read: a 5xx that
        // stalls after its head must not hold up the next attempt.
        let retry_after = if status != StatusCode::TOO_MANY_REQUESTS {
            None
        } else if adapter.reads_rate_limit_body() {
            let body = match budget.read(&parts.headers, incoming).await {
                Ok(body) => body,
                Err(e @ AttemptError::TooLarge { .. }) => return Err(e),
                // A 429 whose body breaks off is still a 429, without a delay.
                Err(_) => Bytes::new(),
            };
            // A 429 that says the account is out of quota is a billing refusal, not a rate
            // limit: no delay to honour, and the answer, if every target fails, is not a 429.
            if let Some(billing) = adapter.billing_refused(status, &parts.headers, &body) {
                return Err(AttemptError::Billing(billing));
            }
            failure::delay(adapter, &parts.headers, &body)
        } else {
            failure::delay(adapter, &parts.headers, &[])
        };
        return Err(AttemptError::Status {
            status,
            retry_after,
        });
    }
    let body = budget.read(&parts.headers, incoming).await?;
    // A refusal of the key (401/403, and what the provider says is one under another status,
    // like Gemini's 400 API_KEY_INVALID) or for billing: the next target may work. The body may
    // echo part of the key; it is dropped, never relayed or logged (only a fixed reason name is
    // kept).
    if let Some(auth) = adapter.key_refused(status, &parts.headers, &body) {
        return Err(AttemptError::Auth(auth));
    }
    if let Some(billing) = adapter.billing_refused(status, &parts.headers, &body) {
        return Err(AttemptError::Billing(billing));
    }
    // The refusal reaches the client: scrubbed, and its content type dropped if it carries a
    // credential (the only upstream header relayed).
    Err(AttemptError::Refused(Refusal {
        status,
        content_type: parts
            .headers
            .get(CONTENT_TYPE)
            .filter(|ct| !scrub.contains(ct.as_bytes()))
            .cloned(),
        body: scrub.scrub_bytes(body),
    }))
}

/// Wait for the first complete event of a 2xx stream (translated into the client's dialect when
/// `translate` is set). Everything before it (keep-alives included) and any frame a translator
/// holds stay within `max_event` bytes, or the attempt fails.
async fn first_chunk(
    response: Response<Incoming>,
    provider: &Provider,
    inbound: &Inbound,
    mut translate: Option<Translate>,
    max_event: usize,
) -> Result<(Bytes, Incoming, Option<Translate>), AttemptError> {
    let expected = provider.adapter.framing().content_type();
    let content_type_ok = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(expected));
    if !content_type_ok {
        return Err(DecodeError::ContentType(expected).into());
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
                        Some(t) => t.feed(&data, &mut buf)?,
                    }
                    match scan.check(&buf, inbound.dialect) {
                        FirstEvent::Incomplete => {
                            let held = translate.as_ref().map_or(0, Translate::pending);
                            if buf.len() > max_event || held > max_event {
                                return Err(crate::limits::event_too_large(max_event));
                            }
                        }
                        FirstEvent::Valid => return Ok((buf.freeze(), body, translate)),
                        FirstEvent::Invalid(reason) => return Err(reason.into()),
                    }
                }
            }
            Some(Err(e)) => return Err(TransportError::FirstChunk(e).into()),
            None => return Err(DecodeError::NoFirstEvent.into()),
        }
    }
}

/// The complete 2xx bodies of an attempt (one, unless the adapter fanned out): checked, translated
/// into the client's dialect, their usage read.
fn complete(
    provider: &Provider,
    model: &str,
    inbound: &Inbound,
    mut replies: Vec<Reply>,
) -> Result<(Bytes, Option<crate::usage::Usage>), AttemptError> {
    if inbound.is_native(provider.adapter) {
        // Native requests never fan out: one call, one body.
        let body = match (replies.pop(), replies.is_empty()) {
            (Some(reply), true) => reply.body,
            _ => return Err(DecodeError::SeveralAnswers.into()),
        };
        serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(DecodeError::BodyNotJson)?;
        let usage = inbound.dialect.usage(&body);
        return Ok((body, usage));
    }
    let mut openai = provider.adapter.responses(inbound.op, model, &replies)?;
    if inbound.op == crate::dialect::Operation::Embeddings {
        crate::usage::estimate_embedding_prompt(&mut openai, inbound.body());
    }
    let usage = openai
        .get("usage")
        .and_then(|u| serde_json::from_value::<crate::usage::Usage>(u.clone()).ok());
    let out = inbound
        .dialect
        .answer(inbound.op, inbound.base64_embeddings(), openai);
    let body = serde_json::to_vec(&out).map_err(DecodeError::Encode)?;
    Ok((Bytes::from(body), usage))
}
