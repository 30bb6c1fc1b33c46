//! gemini adapter (in progress).

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
        "provider '{}' (gemini) is not supported yet",
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

/// Embeddings request.
pub fn embeddings(
    provider: &Provider,
    _model: &str,
    _req: &Map<String, Value>,
) -> Result<Outgoing, ProxyError> {
    Err(ProxyError::InvalidRequest(format!(
        "provider '{}' (gemini) is not supported yet",
        provider.name
    )))
}

/// Embeddings response.
pub fn embeddings_response(_value: &Value, _model: &str) -> Result<Value, String> {
    Err("not supported yet".to_string())
}
