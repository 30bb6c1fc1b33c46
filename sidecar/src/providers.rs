//! Provider adapters: how a request in the gateway's lingua franca (an OpenAI Chat Completions or
//! Embeddings body, see [`crate::dialect`]) becomes each provider's native request, how it is
//! authorized and sent, how the native answer (JSON or a stream) comes back as OpenAI JSON and
//! OpenAI chunks, and how a provider says that a call failed.
//!
//! Each provider type has one [`Adapter`] in its own module; [`adapter`] is the registry, the one
//! place that maps a [`ProviderKind`] to its adapter. `openai`, `openaiCompatible` and
//! `azureOpenAI` speak OpenAI's wire format and are passed through (only `model` rewritten);
//! `anthropic` speaks Anthropic Messages natively; `gemini` and `bedrock` are always translated.
//!
//! Streams are translated event by event by a [`Translate`]: the adapter's [`ChunkDecoder`] turns
//! the upstream bytes into OpenAI chunks, the client dialect's encoder writes them in the client's
//! dialect. The relay in `body.rs` validates what comes out exactly as it validates a pass-through
//! stream, so the guarantees (no silent truncation, error event on garbage) hold for every
//! provider.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod chat;
pub(crate) mod chat_body;
pub mod credentials;
pub mod failure;
pub mod gemini;
pub mod openai;
pub mod structured;
pub mod vertex;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gatehouse_crds::config::ProviderKind;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde_json::Value;

use crate::dialect::{ChunkEncoder, Dialect, Inbound, Operation};
use crate::error::{AuthFailure, CredentialsError, DecodeError, TranslateError};
use crate::state::{Credentials, Provider};
use crate::usage::Usage;

/// How a provider frames its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFraming {
    /// `text/event-stream`.
    Sse,
    /// AWS event stream (`application/vnd.amazon.eventstream`), binary frames with CRCs.
    AwsEventStream,
}

impl StreamFraming {
    /// The content type of such a stream.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Sse => "text/event-stream",
            Self::AwsEventStream => "application/vnd.amazon.eventstream",
        }
    }
}

/// One upstream request, ready to be authorized and sent.
#[derive(Debug)]
pub struct Outgoing {
    /// Full URL.
    pub uri: Uri,
    /// JSON body.
    pub body: Bytes,
    /// Bodies of further calls to `uri` in the same attempt, for a provider that takes fewer
    /// inputs per call than the client sent (Bedrock embeddings). Empty for everything else.
    pub more: Vec<Bytes>,
    /// Parameters dropped on the way, for the `x-gatehouse-warning` header.
    pub warnings: Vec<String>,
}

impl Outgoing {
    /// One call (every provider but Bedrock embeddings), with the parameters dropped on the way.
    pub fn single(uri: Uri, body: Bytes, warnings: Vec<String>) -> Self {
        Self {
            uri,
            body,
            more: Vec::new(),
            warnings,
        }
    }
}

/// One 2xx answer to one upstream call.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The body.
    pub body: Bytes,
    /// The `x-amzn-bedrock-input-token-count` response header: InvokeModel answers (Bedrock
    /// embeddings) may carry their usage only there.
    pub input_tokens: Option<u64>,
}

/// Everything the request path needs to know about one provider type. Implemented once per
/// provider module; reached through [`adapter`] (or `Provider::adapter`).
pub trait Adapter: Send + Sync + std::fmt::Debug {
    /// The client dialect this provider speaks natively, if any: a client of that dialect is
    /// passed through (only `model` rewritten) and its answers come back byte for byte.
    fn native(&self) -> Option<Dialect> {
        None
    }

    /// Where a Responses API request goes when the provider serves that API itself (OpenAI and
    /// Azure OpenAI; not OpenAI-compatible servers, which get it translated to chat).
    fn responses_uri(&self, _provider: &Provider) -> Option<Result<Uri, TranslateError>> {
        None
    }

    /// Whether the provider serves the Responses API itself ([`Adapter::responses_uri`]).
    fn speaks_responses(&self) -> bool {
        false
    }

    /// How the provider frames its streams.
    fn framing(&self) -> StreamFraming {
        StreamFraming::Sse
    }

    /// The upstream request(s) for one attempt at `model`, from the request in OpenAI shape, for
    /// a client that does not speak the provider's native dialect (a native client's body goes to
    /// [`Adapter::native_uri`] as it is). A request the provider cannot express is a
    /// [`TranslateError`] (a 400, not another attempt).
    fn outgoing(
        &self,
        provider: &Provider,
        model: &str,
        inbound: &Inbound,
    ) -> Result<Outgoing, TranslateError>;

    /// [`Adapter::outgoing`] for a chat request, from the bytes of its OpenAI body, translated
    /// message by message with no tree of the request or of the translation (`chat_body`). Only
    /// translating adapters have it; the request path never asks a provider that speaks OpenAI.
    fn outgoing_from_body(
        &self,
        provider: &Provider,
        _model: &str,
        _body: &[u8],
        _stream: bool,
    ) -> Result<Outgoing, TranslateError> {
        Err(TranslateError::Internal(format!(
            "failed to translate request: provider '{}' speaks openai",
            provider.name
        )))
    }

    /// One 2xx buffered answer (a JSON object) as OpenAI JSON.
    fn response(&self, op: Operation, model: &str, body: Value) -> Result<Value, DecodeError>;

    /// The 2xx answers of every call of an attempt ([`Outgoing::more`]) as one OpenAI answer.
    /// Only adapters that fan out take more than one.
    fn responses(
        &self,
        op: Operation,
        model: &str,
        replies: &[Reply],
    ) -> Result<Value, DecodeError> {
        match replies {
            [one] => self.response(op, model, json_object(&one.body)?),
            _ => Err(DecodeError::Join {
                count: replies.len(),
                kind: self.name(),
            }),
        }
    }

    /// The decoder of the provider's streams into OpenAI chunks.
    fn stream_decoder(&self, model: &str) -> Box<dyn ChunkDecoder>;

    /// Whether a native stream still goes through the decoder (Azure: its leading prompt-filter
    /// chunk trips up clients).
    fn decodes_native_streams(&self) -> bool {
        false
    }

    /// The provider type's name, for messages.
    fn name(&self) -> &'static str;

    /// Credentials from a (trimmed, non-empty) key.
    fn credentials(&self, key: &str) -> Credentials;

    /// Authorize one request (its body already final) with `credentials` (the provider's key, or
    /// what its workload identity currently holds). By default the credentials' header.
    fn authorize(
        &self,
        _provider: &Provider,
        credentials: &Credentials,
        request: &mut http::Request<http_body_util::Full<Bytes>>,
        _body: &[u8],
    ) -> Result<(), CredentialsError> {
        match credentials {
            Credentials::None | Credentials::Aws(_) => Ok(()),
            Credentials::Header(name, value) => {
                request.headers_mut().insert(name.clone(), value.clone());
                Ok(())
            }
            Credentials::Invalid(reason) => Err(CredentialsError::Unusable(reason.clone())),
        }
    }

    /// Headers the provider wants on every request besides content type, accept and
    /// credentials (`anthropic-version`), and the client headers of its native dialect it
    /// understands (an Anthropic client's `anthropic-beta`; `None` for every other client).
    fn extra_headers(&self, _anthropic_beta: Option<&HeaderValue>, _headers: &mut HeaderMap) {}

    /// Where a request in the provider's native dialect goes (the client's body with `model`
    /// rewritten). By default the provider's chat or embeddings URL.
    fn native_uri(
        &self,
        provider: &Provider,
        _model: &str,
        op: Operation,
    ) -> Result<Uri, TranslateError> {
        Ok(match op {
            Operation::Chat => provider.chat_url.clone(),
            Operation::Embeddings => provider.embeddings_url.clone(),
        })
    }

    /// Whether an error answer is a refusal of the gateway's credentials (401 and 403 always
    /// are), and the provider's name for it. `body` may be empty when it was not read.
    fn key_refused(
        &self,
        status: StatusCode,
        _headers: &HeaderMap,
        _body: &[u8],
    ) -> Option<AuthFailure> {
        failure::always_auth(status, None, false)
    }

    /// Whether an error answer is a billing refusal (the account cannot pay: another target may
    /// still work). 402 Payment Required always is.
    fn billing_refused(
        &self,
        status: StatusCode,
        _headers: &HeaderMap,
        _body: &[u8],
    ) -> Option<AuthFailure> {
        (status == StatusCode::PAYMENT_REQUIRED).then_some(AuthFailure {
            status,
            reason: None,
        })
    }

    /// Whether reading the delay of a 429 needs its body (Gemini puts it there).
    fn delay_in_body(&self) -> bool {
        false
    }

    /// Whether a 429's body is read to tell a billing refusal from a rate limit (OpenAI's
    /// `insufficient_quota`).
    fn reads_rate_limit_body(&self) -> bool {
        self.delay_in_body()
    }

    /// The delay a 429 asks for in the provider's own way, when the common `retry-after-ms` and
    /// `retry-after` headers are absent. `body` is empty unless [`Adapter::delay_in_body`].
    fn rate_limit_delay(&self, _headers: &HeaderMap, _body: &[u8]) -> Option<Duration> {
        None
    }
}

/// The registry: the adapter of each provider type. The only `match` on [`ProviderKind`].
pub fn adapter(kind: ProviderKind) -> &'static dyn Adapter {
    match kind {
        ProviderKind::Openai => &openai::OPENAI,
        ProviderKind::OpenaiCompatible => &openai::COMPATIBLE,
        ProviderKind::AzureOpenAI => &azure::Azure,
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::Gemini => &gemini::Gemini,
        ProviderKind::Bedrock => &bedrock::Bedrock,
        ProviderKind::VertexAI => &vertex::Vertex,
    }
}

/// Whether an attempt at `provider` sends the client's bytes natively (no translation either way).
pub fn is_native(adapter: &dyn Adapter, dialect: Dialect) -> bool {
    match dialect {
        Dialect::Responses => adapter.speaks_responses(),
        _ => adapter.native() == Some(dialect),
    }
}

/// Build the upstream request for one attempt at `provider` with upstream model `model`.
/// A request the provider cannot express is a 400 naming the parameter.
pub fn outgoing(
    provider: &Provider,
    model: &str,
    inbound: &Inbound,
) -> Result<Outgoing, TranslateError> {
    let adapter = provider.adapter;
    if is_native(adapter, inbound.dialect) {
        // The client's own body, only `model` rewritten.
        let body = inbound.native.as_ref().unwrap_or(&inbound.openai);
        return Ok(Outgoing::single(
            adapter.native_uri(provider, model, inbound.op)?,
            openai::encode_with_model(body, model)?,
            Vec::new(),
        ));
    }
    let mut out = adapter.outgoing(provider, model, inbound)?;
    // Client headers of a dialect reach only providers that speak that dialect natively.
    if inbound.anthropic_beta.is_some() {
        out.warnings.push(beta_not_forwarded(provider));
    }
    Ok(out)
}

/// The warning for an Anthropic client's `anthropic-beta` header that `provider` does not get
/// (it does not speak Anthropic Messages natively).
pub fn beta_not_forwarded(provider: &Provider) -> String {
    format!(
        "anthropic-beta not forwarded: provider '{}' is {}, not anthropic",
        provider.name,
        provider.kind.as_str()
    )
}

/// A buffered body as a JSON object, or why not.
pub fn json_object(body: &[u8]) -> Result<Value, DecodeError> {
    let value: Value = serde_json::from_slice(body).map_err(DecodeError::BodyNotJson)?;
    if !value.is_object() {
        return Err(DecodeError::BodyNotObject);
    }
    Ok(value)
}

/// Translate a 2xx non-stream body of a provider of `kind` into OpenAI JSON (chat completion or
/// embeddings list). `Err` means the provider answered something that is not its documented shape.
pub fn response(
    kind: ProviderKind,
    op: Operation,
    model: &str,
    body: &[u8],
) -> Result<Value, DecodeError> {
    adapter(kind).response(op, model, json_object(body)?)
}

/// [`response`] for the answers of every call of an attempt, joined in order.
pub fn responses(
    kind: ProviderKind,
    op: Operation,
    model: &str,
    replies: &[Reply],
) -> Result<Value, DecodeError> {
    adapter(kind).responses(op, model, replies)
}

/// The translator for a stream from `kind` to a client speaking `inbound.dialect`, or `None` when
/// the stream passes through untouched.
pub fn translate(kind: ProviderKind, model: &str, inbound: &Inbound) -> Option<Translate> {
    translator(
        adapter(kind),
        model,
        inbound.dialect,
        inbound.include_usage(),
    )
}

/// [`translate`] from what it reads of the request: the adapter of the target, the client's
/// dialect, and whether an OpenAI client asked for the usage chunk.
pub fn translator(
    adapter: &dyn Adapter,
    model: &str,
    dialect: Dialect,
    include_usage: bool,
) -> Option<Translate> {
    // A native Responses stream is events, not chunks: it passes through as it is.
    if is_native(adapter, dialect)
        && (dialect == Dialect::Responses || !adapter.decodes_native_streams())
    {
        return None;
    }
    Some(Translate::new(
        adapter.stream_decoder(model),
        dialect.encoder(include_usage),
    ))
}

/// One item of a translated stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// An OpenAI `chat.completion.chunk` object.
    Chunk(Value),
    /// The provider signalled a complete answer.
    Done,
    /// The provider sent an in-band error.
    Error {
        /// Message (never key material: providers' stream errors carry none).
        message: String,
    },
}

/// Turns a provider's stream bytes into OpenAI chunks.
pub trait ChunkDecoder: Send + Sync {
    /// Consume `bytes` (any split), pushing complete items.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamItem>) -> Result<(), DecodeError>;
    /// The upstream ended; `Err` when it ended inside a frame.
    fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), DecodeError>;
    /// Bytes held of an event or frame not complete yet (checked against `--max-event-bytes`).
    fn buffered(&self) -> usize;
}

/// A provider decoder plus a client encoder, with the usage seen on the way.
pub struct Translate {
    decoder: Box<dyn ChunkDecoder>,
    encoder: Box<dyn ChunkEncoder>,
    items: Vec<StreamItem>,
    usage: Option<Usage>,
}

impl std::fmt::Debug for Translate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translate")
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

impl Translate {
    /// Combine a decoder and an encoder.
    pub fn new(decoder: Box<dyn ChunkDecoder>, encoder: Box<dyn ChunkEncoder>) -> Self {
        Self {
            decoder,
            encoder,
            items: Vec::new(),
            usage: None,
        }
    }

    /// Translate `bytes`, appending client-dialect events to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), DecodeError> {
        let result = self.decoder.feed(bytes, &mut self.items);
        self.flush(out);
        result
    }

    /// The upstream ended.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), DecodeError> {
        let result = self.decoder.finish(&mut self.items);
        self.flush(out);
        result
    }

    /// Bytes the decoder holds of an upstream event not complete yet.
    pub fn pending(&self) -> usize {
        self.decoder.buffered()
    }

    /// The usage the provider reported, whether or not the client asked to see it.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn flush(&mut self, out: &mut BytesMut) {
        for item in self.items.drain(..) {
            if let StreamItem::Chunk(chunk) = &item
                && let Some(u) = chunk.get("usage").filter(|u| u.is_object())
                && let Ok(u) = serde_json::from_value::<Usage>(u.clone())
            {
                self.usage = Some(u);
            }
            self.encoder.encode(item, out);
        }
    }
}

/// The message a provider put in its error body, whatever its shape (OpenAI, Anthropic and Gemini
/// `error.message`, Bedrock `message`), cut to a sane length.
pub fn error_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value
        .get("error")
        .and_then(|e| e.get("message").or(Some(e)))
        .and_then(Value::as_str)
        .or_else(|| value.get("message").and_then(Value::as_str))
        .or_else(|| value.get("Message").and_then(Value::as_str))?;
    Some(message.chars().take(2_000).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_reads_every_provider_shape() {
        assert_eq!(
            error_message(br#"{"error":{"message":"bad","type":"x"}}"#).as_deref(),
            Some("bad")
        );
        assert_eq!(
            error_message(
                br#"{"type":"error","error":{"type":"invalid_request_error","message":"m"}}"#
            )
            .as_deref(),
            Some("m")
        );
        assert_eq!(error_message(br#"{"message":"b"}"#).as_deref(), Some("b"));
        assert_eq!(error_message(b"<html>"), None);
    }

    #[test]
    fn the_registry_knows_each_kind() {
        for (kind, native, framing) in [
            (
                ProviderKind::Openai,
                Some(Dialect::OpenAi),
                StreamFraming::Sse,
            ),
            (
                ProviderKind::OpenaiCompatible,
                Some(Dialect::OpenAi),
                StreamFraming::Sse,
            ),
            (
                ProviderKind::AzureOpenAI,
                Some(Dialect::OpenAi),
                StreamFraming::Sse,
            ),
            (
                ProviderKind::Anthropic,
                Some(Dialect::Anthropic),
                StreamFraming::Sse,
            ),
            (ProviderKind::Gemini, None, StreamFraming::Sse),
            (ProviderKind::Bedrock, None, StreamFraming::AwsEventStream),
        ] {
            assert_eq!(adapter(kind).native(), native, "{kind:?}");
            assert_eq!(adapter(kind).framing(), framing, "{kind:?}");
        }
    }
}
