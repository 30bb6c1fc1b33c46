//! Azure OpenAI: OpenAI's wire format on
//! `{endpoint}/openai/deployments/{deployment}/{chat/completions|embeddings}?api-version=…` with an
//! `api-key` header. The route target's `model` is the deployment name; the body passes through.

use http::Uri;
use serde_json::{Map, Value};

use super::{Inbound, Operation, Outgoing};
use crate::error::ProxyError;
use crate::state::Provider;

/// The deployment URL for `op`.
pub fn uri(provider: &Provider, deployment: &str, op: Operation) -> Result<Uri, ProxyError> {
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
        super::path_segment(deployment),
        super::path_segment(version)
    )
    .parse()
    .map_err(|_| {
        ProxyError::InvalidRequest(format!(
            "deployment name '{deployment}' does not make a valid URL"
        ))
    })
}

/// The request: the OpenAI body with `model` set to the deployment, sent to the deployment URL.
pub fn outgoing(
    provider: &Provider,
    deployment: &str,
    req: &Map<String, Value>,
    op: Operation,
    _inbound: &Inbound,
) -> Result<Outgoing, ProxyError> {
    Ok(Outgoing {
        uri: uri(provider, deployment, op)?,
        body: super::openai::encode_with_model(req, deployment)?,
        more: Vec::new(),
        warnings: Vec::new(),
    })
}
