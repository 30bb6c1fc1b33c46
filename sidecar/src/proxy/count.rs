//! `POST /v1/messages/count_tokens`, Anthropic's token counting, for every provider type. The
//! route's targets are tried in priority order (a count is free and quick: no weights, no
//! backoff), each through its provider's own counting API:
//!
//! - Anthropic: the client's body passes through to `/v1/messages/count_tokens` and the answer
//!   comes back byte for byte;
//! - Gemini: the request translated as for `generateContent`, sent to `:countTokens` inside a
//!   `generateContentRequest` (`totalTokens` back);
//! - Bedrock: the Converse translation's messages, system prompt and tools, sent to
//!   `/model/{id}/count-tokens` as a `converse` input (`inputTokens` back);
//! - OpenAI-wire providers have no counting API: the count is estimated locally with OpenAI's
//!   o200k tokenizer and marked (`"gatehouse_estimated": true`, and a warning header).
//!
//! Connect errors, timeouts, 429, 5xx and credential refusals move on to the next target; any
//! other refusal goes back to the client in Anthropic's shape. Nothing is metered: counting costs
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Request as HttpRequest, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{Answer, Settings};
use crate::dialect::{Dialect, messages};
use crate::error::{AttemptError, DecodeError, ProxyError, Refusal, StatusClass, TransportError};
use crate::limits::ResponseBudget;
use crate::request::Request;
use crate::stages::{AttemptRecord, Exchange};
use crate::state::{Provider, ServedRoute, Target};
use crate::upstream::UpstreamClient;
use gatehouse_crds::config::ProviderKind;

/// Count the tokens of `request` (an Anthropic Messages body) at the route's targets.
pub(super) async fn run(
    client: &UpstreamClient,
    settings: &Settings,
    x: &mut Exchange,
    route: &ServedRoute,
    request: &Request,
) -> Result<Answer, ProxyError> {
    let deadline = x.ctx.start + Duration::from_millis(route.config.timeouts.request_ms);
    let attempt_limit = Duration::from_millis(route.config.timeouts.attempt_ms);
    let max_attempts = route.config.retry.attempts.max(1) as usize;
    let mut failures = Vec::new();
    for index in route.groups.iter().flatten().take(max_attempts) {
        let Some(target) = route.resolved(*index) else {
            continue;
        };
        let limit = attempt_limit.min(deadline.saturating_duration_since(Instant::now()));
        if limit.is_zero() {
            break;
        }
        let started = Instant::now();
        let result =
            match tokio::time::timeout(limit, count(client, settings, target, request)).await {
                Ok(result) => result,
                Err(_) => Err(AttemptError::Timeout(limit.as_millis() as u64)),
            };
        x.ctx.attempts.push(AttemptRecord {
            target: target.clone(),
            outcome: result
                .as_ref()
                .map_or_else(AttemptError::metric_label, |_| "success"),
            elapsed: started.elapsed(),
            started,
        });
        match result {
            Ok(Counted { body, estimated }) => {
                x.ctx.answered_by = Some(target.clone());
                if let Some(tokenizer) = estimated {
                    x.ctx.warnings.extend(&[format!(
                        "input_tokens estimated with the {tokenizer} tokenizer: provider '{}' \
                         ({}) has no token-counting API",
                        target.provider.name,
                        target.provider.kind.as_str()
                    )]);
                }
                return Ok(Answer::Complete { body, usage: None });
            }
            Err(e) if !e.is_retryable() => {
                x.ctx.answered_by = Some(target.clone());
                return Ok(Answer::Final(e));
            }
            Err(e) => {
                let said = e.to_string();
                let said = target.provider.scrubber.scrub_str(&said);
                failures.push(format!("{}/{}: {said}", target.provider.name, target.model));
            }
        }
    }
    if failures.is_empty() {
        failures.push("the request timeout expired before the first attempt".to_string());
    }
    Err(ProxyError::Exhausted {
        route: route.name.to_string(),
        attempts: x.ctx.attempts.len() as u32,
        summary: failures.join("; "),
        status: StatusCode::BAD_GATEWAY,
        retry_after: None,
    })
}

/// Reads the token count out of a provider's counting answer.
type ReadCount = fn(&Value) -> Option<u64>;

/// A count, in Anthropic's shape.
struct Counted {
    body: Bytes,
    /// The tokenizer of a local estimate.
    estimated: Option<&'static str>,
}

async fn count(
    client: &UpstreamClient,
    settings: &Settings,
    target: &Target,
    request: &Request,
) -> Result<Counted, AttemptError> {
    let provider = &target.provider;
    let model = &*target.model;
    let refuse = |message: String| {
        AttemptError::Refused(Refusal {
            status: StatusCode::BAD_REQUEST,
            content_type: None,
            body: messages::error_body(StatusCode::BAD_REQUEST, &message),
        })
    };
    let translated = |model: &str| {
        let (openai, _) = Dialect::Anthropic
            .openai_body(Bytes::copy_from_slice(request.body()), model)
            .map_err(|e| refuse(e.to_string()))?;
        Ok::<_, AttemptError>(openai)
    };
    let (uri, body, answer): (http::Uri, Bytes, ReadCount) = match provider.kind {
        ProviderKind::Anthropic => {
            let uri = format!(
                "{}/v1/messages/count_tokens",
                provider.base.trim_end_matches("/v1")
            );
            let body = request
                .index
                .with_model(request.body(), model)
                .map_err(|e| refuse(e.to_string()))?;
            (parse_uri(&uri)?, body, |v| {
                v.get("input_tokens").and_then(Value::as_u64)
            })
        }
        ProviderKind::Gemini => {
            let out = provider
                .adapter
                .outgoing_from_body(provider, model, &translated(model)?, false)
                .map_err(|e| refuse(e.to_string()))?;
            let mut inner: Map<String, Value> =
                serde_json::from_slice(&out.body).map_err(DecodeError::BodyNotJson)?;
            inner.insert("model".into(), json!(format!("models/{model}")));
            let body = json!({"generateContentRequest": inner}).to_string();
            let uri = out
                .uri
                .to_string()
                .replace(":generateContent", ":countTokens");
            (parse_uri(&uri)?, Bytes::from(body), |v| {
                v.get("totalTokens").and_then(Value::as_u64)
            })
        }
        ProviderKind::Bedrock => {
            let out = provider
                .adapter
                .outgoing_from_body(provider, model, &translated(model)?, false)
                .map_err(|e| refuse(e.to_string()))?;
            let converse: Map<String, Value> =
                serde_json::from_slice(&out.body).map_err(DecodeError::BodyNotJson)?;
            let converse: Map<String, Value> = converse
                .into_iter()
                .filter(|(k, _)| matches!(k.as_str(), "messages" | "system" | "toolConfig"))
                .collect();
            let body = json!({"input": {"converse": converse}}).to_string();
            let uri = out.uri.to_string();
            let uri = match uri.rsplit_once("/converse") {
                Some((model_path, _)) => format!("{model_path}/count-tokens"),
                None => uri,
            };
            (parse_uri(&uri)?, Bytes::from(body), |v| {
                v.get("inputTokens").and_then(Value::as_u64)
            })
        }
        ProviderKind::Openai
        | ProviderKind::OpenaiCompatible
        | ProviderKind::AzureOpenAI
        | ProviderKind::VertexAI => {
            let openai = translated(model)?;
            let tokens = estimate(&openai);
            return Ok(Counted {
                body: Bytes::from(
                    json!({"input_tokens": tokens, "gatehouse_estimated": true}).to_string(),
                ),
                estimated: Some("o200k_base"),
            });
        }
    };
    let body = call(client, settings, provider, uri, body, request).await?;
    if provider.kind == ProviderKind::Anthropic {
        serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(DecodeError::BodyNotJson)?;
        return Ok(Counted {
            body,
            estimated: None,
        });
    }
    let value: Value = serde_json::from_slice(&body).map_err(DecodeError::BodyNotJson)?;
    let tokens = answer(&value).ok_or(DecodeError::Shape(
        "the token count answer has no token count",
    ))?;
    Ok(Counted {
        body: Bytes::from(json!({"input_tokens": tokens}).to_string()),
        estimated: None,
    })
}

fn parse_uri(uri: &str) -> Result<http::Uri, AttemptError> {
    uri.parse().map_err(|source| {
        AttemptError::Refused(Refusal {
            status: StatusCode::BAD_REQUEST,
            content_type: None,
            body: messages::error_body(
                StatusCode::BAD_REQUEST,
                &format!("the model name does not make a valid URL: {source}"),
            ),
        })
    })
}

/// One upstream call: its 2xx body, or the failure the retry table judges.
async fn call(
    client: &UpstreamClient,
    settings: &Settings,
    provider: &Arc<Provider>,
    uri: http::Uri,
    body: Bytes,
    request: &Request,
) -> Result<Bytes, AttemptError> {
    let adapter = provider.adapter;
    let mut upstream = HttpRequest::post(uri)
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json")
        .body(Full::new(body.clone()))
        .map_err(TransportError::Build)?;
    adapter.extra_headers(request.anthropic_beta.as_ref(), upstream.headers_mut());
    let client = crate::upstream::prepare(client, provider, upstream.headers_mut())?;
    let auth = crate::providers::credentials::authorization(provider).await?;
    adapter.authorize(provider, auth.credentials(), &mut upstream, &body)?;
    let scrub = auth.scrubber().for_request(upstream.headers());
    let response = client
        .request(upstream)
        .await
        .map_err(TransportError::Request)?;
    let status = response.status();
    if status == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        return Err(TransportError::ProxyAuth.into());
    }
    let (parts, incoming) = response.into_parts();
    let budget = ResponseBudget::new(settings.max_response_bytes);
    match StatusClass::of(status) {
        StatusClass::Success => Ok(scrub.scrub_bytes(budget.read(&parts.headers, incoming).await?)),
        StatusClass::Retry => Err(AttemptError::Status {
            status,
            retry_after: None,
        }),
        _ => {
            let body = budget.read(&parts.headers, incoming).await?;
            if let Some(auth) = adapter.key_refused(status, &parts.headers, &body) {
                return Err(AttemptError::Auth(auth));
            }
            if let Some(billing) = adapter.billing_refused(status, &parts.headers, &body) {
                return Err(AttemptError::Billing(billing));
            }
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
    }
}

/// The prompt tokens of an OpenAI chat body by OpenAI's o200k tokenizer: every message's text
/// plus the tool definitions, with OpenAI's per-message overhead (3 tokens each, 3 more to
/// prime the answer). Provider tokenizers differ: it is an estimate.
fn estimate(openai: &[u8]) -> u64 {
    let Ok(req) = serde_json::from_slice::<Value>(openai) else {
        return 0;
    };
    let Ok(bpe) = crate::tokens::o200k() else {
        // Without the tokenizer: OpenAI's rule of thumb.
        return crate::usage::estimate_tokens(openai.len() as u64);
    };
    let mut total = 3u64;
    for message in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        total += 3;
        let mut text = String::new();
        collect_text(message, &mut text);
        total += bpe.encode_ordinary(&text).len() as u64;
    }
    if let Some(tools) = req.get("tools") {
        total += bpe.encode_ordinary(&tools.to_string()).len() as u64;
    }
    total
}

/// Every string under `value` but the keys that are not text (roles, ids, types, image data).
fn collect_text(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push_str(s);
            out.push(' ');
        }
        Value::Array(items) => items.iter().for_each(|v| collect_text(v, out)),
        Value::Object(map) => {
            for (key, v) in map {
                if !matches!(
                    key.as_str(),
                    "role" | "type" | "tool_call_id" | "id" | "image_url"
                ) {
                    collect_text(v, out);
                }
            }
        }
        _ => {}
    }
}
