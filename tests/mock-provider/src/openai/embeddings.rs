//! `POST /v1/embeddings`: deterministic unit vectors, as floats or base64 little-endian f32.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use http::Response;
use serde::{Deserialize, Serialize};

use super::{ApiError, count_words, parse_error, success_json};
use crate::behaviour::Behaviour;
use crate::body::Body;

#[derive(Deserialize)]
struct EmbeddingsRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    input: Option<serde_json::Value>,
    #[serde(borrow, default)]
    encoding_format: Option<Cow<'a, str>>,
    #[serde(default)]
    dimensions: Option<usize>,
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: EmbeddingVector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// Default vector length for `model` when the request sets no `dimensions`.
fn default_dimensions(model: &str) -> usize {
    if model.contains("large") { 3072 } else { 1536 }
}

/// One input of an embeddings request, by what it hashes and how many tokens it counts.
enum EmbeddingInput<'a> {
    Text(&'a str),
    Tokens(&'a [serde_json::Value]),
}

fn embedding_inputs(input: &serde_json::Value) -> Option<Vec<EmbeddingInput<'_>>> {
    use serde_json::Value;
    match input {
        Value::String(s) => Some(vec![EmbeddingInput::Text(s)]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if items.iter().all(Value::is_number) => {
            Some(vec![EmbeddingInput::Tokens(items)])
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some(EmbeddingInput::Text(s)),
                Value::Array(tokens) if tokens.iter().all(Value::is_number) => {
                    Some(EmbeddingInput::Tokens(tokens))
                }
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// A deterministic unit vector derived from the input (FNV-1a seed, xorshift stream).
fn embedding_vector(input: &EmbeddingInput<'_>, dimensions: usize) -> Vec<f32> {
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |byte: u8| {
        seed ^= u64::from(byte);
        seed = seed.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match input {
        EmbeddingInput::Text(text) => text.bytes().for_each(&mut feed),
        EmbeddingInput::Tokens(tokens) => tokens
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .for_each(|t| t.to_le_bytes().into_iter().for_each(&mut feed)),
    }
    let mut state = seed | 1;
    let mut v: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Top 24 bits to a float in [-1, 1).
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The deterministic unit vector the mock gives `text` (shared by every flavour).
pub(crate) fn text_vector(text: &str, dimensions: usize) -> Vec<f32> {
    embedding_vector(&EmbeddingInput::Text(text), dimensions)
}

/// `POST /v1/embeddings`.
pub(crate) fn embeddings(body: &[u8], behaviour: &Behaviour) -> Response<Body> {
    let request: EmbeddingsRequest<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return parse_error(&e).into_response(),
    };
    let Some(model) = request.model.as_deref() else {
        return ApiError::missing("model").into_response();
    };
    let Some(input) = request.input.as_ref() else {
        return ApiError::missing("input").into_response();
    };
    let Some(inputs) = embedding_inputs(input) else {
        return ApiError::invalid_request(
            "'$.input' is invalid. Please check the API reference: \
             https://platform.openai.com/docs/api-reference.",
        )
        .param("input")
        .into_response();
    };
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return ApiError::invalid_request(
                "Invalid value for 'encoding_format': expected one of 'float' or 'base64'.",
            )
            .param("encoding_format")
            .code("invalid_value")
            .into_response();
        }
    };
    let dimensions = request
        .dimensions
        .unwrap_or_else(|| default_dimensions(model));

    let mut prompt_tokens = 0;
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += match input {
                EmbeddingInput::Text(text) => count_words(text),
                EmbeddingInput::Tokens(tokens) => tokens.len() as u64,
            };
            let vector = embedding_vector(input, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingVector::Float(vector)
            };
            Embedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let list = EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    let json = Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
    success_json(json, &behaviour.fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_vectors_are_deterministic_unit_vectors() {
        let a = embedding_vector(&EmbeddingInput::Text("hello"), 16);
        let b = embedding_vector(&EmbeddingInput::Text("hello"), 16);
        let c = embedding_vector(&EmbeddingInput::Text("world"), 16);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
