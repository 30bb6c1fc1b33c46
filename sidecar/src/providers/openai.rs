//! OpenAI and OpenAI-compatible servers (vLLM, Ollama, llama.cpp, TGI): the body passes through with
//! only `model` rewritten. Also the OpenAI stream decoder used when a client of another dialect is
//! served by an OpenAI-wire provider, and how OpenAI says a call failed (`error.code` of a key
//! refusal, `x-ratelimit-reset-*` of an exhausted limit), shared with Azure OpenAI.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri};
use serde_json::{Map, Value};

use super::{Adapter, ChunkDecoder, Outgoing, StreamItem, failure};
use crate::dialect::{Dialect, Inbound, Operation};
use crate::error::{AuthFailure, DecodeError, TranslateError};
use crate::sse::SseParser;
use crate::state::{Credentials, Provider};

/// The adapter of `openai` and `openaiCompatible` providers; they differ only in the Responses
/// API, which OpenAI serves and compatible servers (vLLM, Ollama…) mostly do not.
#[derive(Debug)]
pub struct OpenAi {
    responses: bool,
}

/// The adapter of `openai` providers.
pub static OPENAI: OpenAi = OpenAi { responses: true };
/// The adapter of `openaiCompatible` providers.
pub static COMPATIBLE: OpenAi = OpenAi { responses: false };

impl Adapter for OpenAi {
    fn native(&self) -> Option<Dialect> {
        Some(Dialect::OpenAi)
    }

    fn speaks_responses(&self) -> bool {
        self.responses
    }

    fn responses_uri(&self, provider: &Provider) -> Option<Result<Uri, TranslateError>> {
        self.responses.then(|| {
            format!("{}/responses", provider.base.trim_end_matches('/'))
                .parse()
                .map_err(|source| TranslateError::Url {
                    what: "the provider endpoint".to_string(),
                    source,
                })
        })
    }

    fn outgoing(
        &self,
        provider: &Provider,
        model: &str,
        inbound: &Inbound,
    ) -> Result<Outgoing, TranslateError> {
        outgoing(provider, model, &inbound.openai, inbound.op)
    }

    fn response(&self, _op: Operation, _model: &str, body: Value) -> Result<Value, DecodeError> {
        Ok(body)
    }

    fn stream_decoder(&self, _model: &str) -> Box<dyn ChunkDecoder> {
        Box::new(StreamDecoder::default())
    }

    fn name(&self) -> &'static str {
        "openai"
    }

    fn credentials(&self, key: &str) -> Credentials {
        Credentials::header("authorization", format!("Bearer {key}"))
    }

    fn key_refused(
        &self,
        status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Option<AuthFailure> {
        key_refused(status, body)
    }

    fn billing_refused(
        &self,
        status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Option<AuthFailure> {
        billing_refused(status, body)
    }

    fn reads_rate_limit_body(&self) -> bool {
        true
    }

    fn rate_limit_delay(&self, headers: &HeaderMap, _body: &[u8]) -> Option<Duration> {
        openai_reset(headers)
    }
}

/// OpenAI's (and Azure OpenAI's) billing refusal: 402, or a 429 whose `error.code` (or `type`)
/// is `insufficient_quota` (the account is out of credit: waiting will not help, another target
/// may).
pub(crate) fn billing_refused(status: StatusCode, body: &[u8]) -> Option<AuthFailure> {
    if status == StatusCode::PAYMENT_REQUIRED {
        return Some(AuthFailure {
            status,
            reason: None,
        });
    }
    let error = failure::error_object(body)?;
    let reason = failure::known(error.get("code"), &["insufficient_quota"])
        .or_else(|| failure::known(error.get("type"), &["insufficient_quota"]))?;
    Some(AuthFailure {
        status,
        reason: Some(reason),
    })
}

/// OpenAI's (and Azure OpenAI's) credentials refusal: 401/403, named by `error.code`.
pub(crate) fn key_refused(status: StatusCode, body: &[u8]) -> Option<AuthFailure> {
    let error = failure::error_object(body);
    let reason = error
        .as_ref()
        .and_then(|e| failure::known(e.get("code"), OPENAI_AUTH_CODES));
    failure::always_auth(status, reason, false)
}

/// The request for an OpenAI-wire provider: the client's body, `model` rewritten.
pub fn outgoing(
    provider: &Provider,
    model: &str,
    req: &Map<String, Value>,
    op: Operation,
) -> Result<Outgoing, TranslateError> {
    let uri = match op {
        Operation::Chat => provider.chat_url.clone(),
        Operation::Embeddings => provider.embeddings_url.clone(),
    };
    Ok(Outgoing::single(
        uri,
        encode_with_model(req, model)?,
        Vec::new(),
    ))
}

/// `req` as JSON with `model` set to `model`.
pub(crate) fn encode_with_model(
    req: &Map<String, Value>,
    model: &str,
) -> Result<Bytes, TranslateError> {
    use serde::ser::{SerializeMap, Serializer};
    // Written entry by entry rather than from a modified clone: a big request is not copied as a
    // tree. `model` keeps its sorted place, as if it had been inserted.
    let encode = || -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut out);
        let mut map = ser.serialize_map(None)?;
        let mut model_written = false;
        for (key, value) in req {
            if !model_written && key.as_str() >= "model" {
                map.serialize_entry("model", model)?;
                model_written = true;
            }
            if key != "model" {
                map.serialize_entry(key, value)?;
            }
        }
        if !model_written {
            map.serialize_entry("model", model)?;
        }
        map.end()?;
        Ok(out)
    };
    encode().map(Bytes::from).map_err(TranslateError::Encode)
}

/// Parses an OpenAI SSE stream into chunks.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    sse: SseParser,
}

impl ChunkDecoder for StreamDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamItem>) -> Result<(), DecodeError> {
        for event in self.sse.push(bytes)? {
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                out.push(StreamItem::Done);
                continue;
            }
            let value = crate::sse::json_object(data)?;
            if let Some(error) = value.get("error") {
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the upstream reported an error")
                    .to_string();
                out.push(StreamItem::Error { message });
                continue;
            }
            if carries_nothing(&value) {
                continue;
            }
            out.push(StreamItem::Chunk(value));
        }
        Ok(())
    }

    fn buffered(&self) -> usize {
        self.sse.buffered()
    }

    fn finish(&mut self, _out: &mut Vec<StreamItem>) -> Result<(), DecodeError> {
        if self.sse.has_partial() {
            return Err(DecodeError::CutInEvent);
        }
        Ok(())
    }
}

/// A chunk with no choices and no usage, like the prompt-filter chunk Azure opens its streams with.
fn carries_nothing(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && chunk.get("usage").is_none_or(Value::is_null)
}

/// OpenAI (and Azure OpenAI) `error.code` values of a credentials refusal.
const OPENAI_AUTH_CODES: &[&str] = &[
    "invalid_api_key",
    "invalid_organization",
    "unsupported_country_region_territory",
];

/// OpenAI's `x-ratelimit-reset-requests` / `-tokens` (`"1s"`, `"6m0s"`, `"20ms"`) of each limit
/// whose `x-ratelimit-remaining-*` is 0; the longer one when both are.
pub(crate) fn openai_reset(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    ["requests", "tokens"]
        .into_iter()
        .filter(|limit| header(&format!("x-ratelimit-remaining-{limit}")) == Some("0"))
        .filter_map(|limit| header(&format!("x-ratelimit-reset-{limit}")).and_then(go_duration))
        .max()
}

/// A Go-style duration (`1h2m3.5s`, `20ms`, `6m0s`) or plain seconds.
pub(crate) fn go_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return failure::seconds(secs);
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let (scale, unit_len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else {
            return None;
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    failure::seconds(total)
}
