//! Azure OpenAI: OpenAI's wire format on
//! `{endpoint}/openai/deployments/{deployment}/{chat/completions|embeddings}?api-version=…` with an
//! `api-key` header. The route target's `model` is the deployment name; the body passes through.
//! Streams go through the OpenAI decoder: Azure opens them with a prompt-filter chunk without
//! choices, which clients that read `choices[0]` trip over, and the decoder drops it.

use std::time::Duration;

use http::{HeaderMap, StatusCode, Uri};
use serde_json::{Map, Value};

use super::{Adapter, ChunkDecoder, Outgoing, openai};
use crate::dialect::{Dialect, Inbound, Operation};
use crate::error::{AuthFailure, DecodeError, TranslateError};
use crate::state::{Credentials, Provider};

/// The adapter of `azureOpenAI` providers.
#[derive(Debug)]
pub struct Azure;

impl Adapter for Azure {
    fn native(&self) -> Option<Dialect> {
        Some(Dialect::OpenAi)
    }

    fn speaks_responses(&self) -> bool {
        true
    }

    /// The v1 API (`{endpoint}/openai/v1/responses`): the deployment goes in the body's `model`,
    /// and the path takes no `api-version`.
    fn responses_uri(&self, provider: &Provider) -> Option<Result<Uri, TranslateError>> {
        Some(
            format!(
                "{}/openai/v1/responses",
                provider.base.trim_end_matches('/')
            )
            .parse()
            .map_err(|source| TranslateError::Url {
                what: "the provider endpoint".to_string(),
                source,
            }),
        )
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
        Box::new(openai::StreamDecoder::default())
    }

    fn decodes_native_streams(&self) -> bool {
        true
    }

    fn native_uri(
        &self,
        provider: &Provider,
        model: &str,
        op: Operation,
    ) -> Result<Uri, TranslateError> {
        uri(provider, model, op)
    }

    fn name(&self) -> &'static str {
        "azureOpenAI"
    }

    fn credentials(&self, key: &str) -> Credentials {
        Credentials::header("api-key", key.to_string())
    }

    fn key_refused(
        &self,
        status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Option<AuthFailure> {
        openai::key_refused(status, body)
    }

    fn billing_refused(
        &self,
        status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Option<AuthFailure> {
        openai::billing_refused(status, body)
    }

    fn reads_rate_limit_body(&self) -> bool {
        true
    }

    fn rate_limit_delay(&self, headers: &HeaderMap, _body: &[u8]) -> Option<Duration> {
        openai::openai_reset(headers)
    }
}

/// The deployment URL for `op`.
pub fn uri(provider: &Provider, deployment: &str, op: Operation) -> Result<Uri, TranslateError> {
    let path = match op {
        Operation::Chat => "chat/completions",
        Operation::Embeddings => "embeddings",
    };
    let version = provider
        .api_version
        .as_deref()
        // render writes the default into the config; a config rendered without it gets the same.
        .unwrap_or(gatehouse_crds::provider::AZURE_DEFAULT_API_VERSION);
    format!(
        "{}/openai/deployments/{}/{path}?api-version={}",
        provider.base,
        super::chat::path_segment(deployment),
        super::chat::path_segment(version)
    )
    .parse()
    .map_err(|source| TranslateError::Url {
        what: format!("deployment name '{deployment}'"),
        source,
    })
}

/// The request: the OpenAI body with `model` set to the deployment, sent to the deployment URL.
pub fn outgoing(
    provider: &Provider,
    deployment: &str,
    req: &Map<String, Value>,
    op: Operation,
) -> Result<Outgoing, TranslateError> {
    Ok(Outgoing::single(
        uri(provider, deployment, op)?,
        openai::encode_with_model(req, deployment)?,
        Vec::new(),
    ))
}
