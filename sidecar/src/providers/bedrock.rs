//! bedrock adapter (in progress).

use serde_json::{Map, Value};

use super::{ChunkDecoder, Outgoing, StreamItem};
use crate::error::ProxyError;
use crate::state::Provider;

/// Chat request.
pub fn outgoing(
    provider: &Provider,
    _model: &str,
    _req: &Map<String, Value>,
    _stream: bool,
) -> Result<Outgoing, ProxyError> {
    Err(ProxyError::InvalidRequest(format!(
        "provider '{}' (bedrock) is not supported yet",
        provider.name
    )))
}

/// Chat response.
pub fn response(_value: &Value, _model: &str) -> Result<Value, String> {
    Err("not supported yet".to_string())
}

/// Stream decoder.
#[derive(Debug)]
pub struct StreamDecoder;

impl StreamDecoder {
    /// New.
    pub fn new(_model: &str) -> Self {
        Self
    }
}

impl ChunkDecoder for StreamDecoder {
    fn feed(&mut self, _bytes: &[u8], _out: &mut Vec<StreamItem>) -> Result<(), String> {
        Err("not supported yet".to_string())
    }
    fn finish(&mut self, _out: &mut Vec<StreamItem>) -> Result<(), String> {
        Err("not supported yet".to_string())
    }
}

/// Credentials from the key.
pub fn credentials(_key: &str) -> Result<aws_credential_types::Credentials, String> {
    Err("not supported yet".to_string())
}

/// Sign `request` with SigV4 for the `bedrock` service.
pub fn sign(
    provider: &Provider,
    credentials: &aws_credential_types::Credentials,
    request: &mut http::Request<http_body_util::Full<bytes::Bytes>>,
    body: &[u8],
) -> Result<(), String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let region = provider
        .region
        .clone()
        .unwrap_or_else(|| "us-east-1".to_string());
    let identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&region)
        .name("bedrock")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let uri = request.uri().to_string();
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        uri.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}
