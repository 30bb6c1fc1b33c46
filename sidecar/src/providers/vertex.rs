//! Vertex AI: Gemini models on Google Cloud. The bodies, streams and errors are the Gemini API's
//! (the `gemini` adapter does the translating); the URL is Vertex's,
//! `https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`
//! (`:streamGenerateContent?alt=sse` for streams; `aiplatform.googleapis.com` for the `global`
//! location), and the request carries `Authorization: Bearer` with a Google Cloud access token
//! from the provider's workload identity (`credentials::gcp`), never an API key.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::{Adapter, ChunkDecoder, Outgoing, gemini};
use crate::dialect::{Inbound, Operation};
use crate::error::{AuthFailure, DecodeError, TranslateError};
use crate::state::{Credentials, Provider};

/// The adapter of `vertexAI` providers.
#[derive(Debug)]
pub struct Vertex;

impl Adapter for Vertex {
    fn outgoing(
        &self,
        provider: &Provider,
        model: &str,
        inbound: &Inbound,
    ) -> Result<Outgoing, TranslateError> {
        match inbound.op {
            Operation::Chat => gemini::outgoing(provider, model, &inbound.openai, inbound.stream),
            // Vertex serves embeddings through `:predict` with bodies of its own.
            Operation::Embeddings => Err(TranslateError::Unsupported(
                "embeddings are not supported for vertexAI providers".to_string(),
            )),
        }
    }

    fn response(&self, op: Operation, model: &str, body: Value) -> Result<Value, DecodeError> {
        gemini::Gemini.response(op, model, body)
    }

    fn outgoing_from_body(
        &self,
        provider: &Provider,
        model: &str,
        body: &[u8],
        stream: bool,
    ) -> Result<Outgoing, TranslateError> {
        gemini::Gemini.outgoing_from_body(provider, model, body, stream)
    }

    fn stream_decoder(&self, model: &str) -> Box<dyn ChunkDecoder> {
        gemini::Gemini.stream_decoder(model)
    }

    fn name(&self) -> &'static str {
        "vertexAI"
    }

    /// The provider's key is a service-account key, exchanged for tokens by its credential
    /// source; it never goes upstream itself.
    fn credentials(&self, _key: &str) -> Credentials {
        Credentials::None
    }

    fn key_refused(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<AuthFailure> {
        gemini::Gemini.key_refused(status, headers, body)
    }

    fn delay_in_body(&self) -> bool {
        true
    }

    fn rate_limit_delay(&self, headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
        gemini::Gemini.rate_limit_delay(headers, body)
    }
}
