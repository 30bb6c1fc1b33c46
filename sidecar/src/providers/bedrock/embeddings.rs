//! Bedrock embeddings through InvokeModel: `POST {endpoint}/model/{modelId}/invoke`, signed like
//! Converse. Each model family has its own body, so the family is read from the model id: a bare
//! id, one with a cross-region inference-profile prefix (`us.`, `eu.`, `apac.`, …), or an ARN whose
//! last path segment names the model (ARNs of application inference profiles or provisioned
//! throughput name no model and are refused).
//!
//! - Amazon Titan Text Embeddings V2 (`amazon.titan-embed-text-v2:0`): `{"inputText", "dimensions"?,
//!   "normalize": true}` → `{"embedding", "inputTextTokenCount", "embeddingsByType"}`. One text a
//!   call; `dimensions` 256, 512 or 1024 (default 1024).
//! - Titan Embeddings G1 - Text (`amazon.titan-embed-text-v1`, `amazon.titan-embed-g1-text-02`):
//!   `{"inputText"}` → `{"embedding", "inputTextTokenCount"}`. One text a call, 1536 dimensions.
//! - Cohere Embed v3 (`cohere.embed-english-v3`, `cohere.embed-multilingual-v3`): `{"texts",
//!   "input_type", "truncate"?}` → `{"embeddings": [[…]], "id", "response_type":
//!   "embeddings_floats", "texts"}`. At most 96 texts a call, 1024 dimensions. `input_type` is
//!   required upstream and has no OpenAI counterpart: `search_document` unless the client sends
//!   `input_type` itself (the OpenAI SDKs' `extra_body`), likewise `truncate`. The body carries no
//!   token count; Bedrock sends it in the `x-amzn-bedrock-input-token-count` response header (not in
//!   the InvokeModel API reference, but sent for these models), and usage is 0 without it.
//!
//! A list input takes several calls (one per text for Titan, one per 96 texts for Cohere): they are
//! returned as one [`Outgoing`] with further bodies, which the proxy sends concurrently within one
//! attempt; the answers are joined in input order.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::error::{DecodeError, TranslateError};
use crate::providers::Outgoing;
use crate::providers::chat::warn_unhandled;
use crate::state::Provider;

/// Most inputs one request may carry (OpenAI's own limit for `/v1/embeddings`).
pub const MAX_INPUTS: usize = 2048;

/// The embedding model families InvokeModel is spoken to, each with its own body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Amazon Titan Text Embeddings V2.
    TitanV2,
    /// Amazon Titan Embeddings G1 - Text.
    TitanV1,
    /// Cohere Embed v3 (English or multilingual).
    CohereV3,
}

impl Family {
    /// The family of `model` (an id, an inference-profile id or an ARN), if it is one of ours.
    pub fn of(model: &str) -> Option<Self> {
        let id = model.rsplit_once('/').map_or(model, |(_, last)| last);
        // Cross-region inference profiles put a geography in front of the provider name.
        let id = match id.split_once('.') {
            Some((_, rest)) if rest.starts_with("amazon.") || rest.starts_with("cohere.") => rest,
            _ => id,
        };
        if id.starts_with("amazon.titan-embed-text-v2") {
            Some(Self::TitanV2)
        } else if id.starts_with("amazon.titan-embed-text-v1")
            || id.starts_with("amazon.titan-embed-g1-text")
        {
            Some(Self::TitanV1)
        } else if id.starts_with("cohere.embed-english-v3")
            || id.starts_with("cohere.embed-multilingual-v3")
        {
            Some(Self::CohereV3)
        } else {
            None
        }
    }

    fn texts_per_call(self) -> usize {
        match self {
            Self::TitanV2 | Self::TitanV1 => 1,
            Self::CohereV3 => 96,
        }
    }

    /// `dimensions` values the family accepts.
    fn dimensions(self) -> &'static [u64] {
        match self {
            Self::TitanV2 => &[256, 512, 1024],
            Self::TitanV1 => &[1536],
            Self::CohereV3 => &[1024],
        }
    }
}

const COHERE_INPUT_TYPES: &[&str] = &[
    "search_document",
    "search_query",
    "classification",
    "clustering",
];
const COHERE_TRUNCATE: &[&str] = &["NONE", "START", "END"];

/// OpenAI embeddings request → the InvokeModel calls for `model` (same URL, one body per call).
pub fn outgoing(
    provider: &Provider,
    model: &str,
    req: &Map<String, Value>,
) -> Result<Outgoing, TranslateError> {
    let mut warnings = Vec::new();
    let mut bodies = requests(model, req, &mut warnings)?
        .into_iter()
        .map(|body| {
            serde_json::to_vec(&body)
                .map(Bytes::from)
                .map_err(TranslateError::Encode)
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let Some(body) = bodies.next() else {
        return Err(TranslateError::Invalid(
            "'input' must not be empty".to_string(),
        ));
    };
    let uri = super::model_uri(provider, model, "invoke")?;
    Ok(Outgoing {
        uri,
        body,
        more: bodies.collect(),
        warnings,
    })
}

/// The translation itself (pure; golden-tested): the body of each call, in input order.
pub fn requests(
    model: &str,
    req: &Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Value>, TranslateError> {
    let family = Family::of(model).ok_or_else(|| {
        TranslateError::Invalid(format!(
            "'{model}' is not an embedding model gatehouse can call on bedrock; use \
             amazon.titan-embed-text-v2:0, amazon.titan-embed-text-v1, cohere.embed-english-v3 or \
             cohere.embed-multilingual-v3 (bare, with an inference-profile prefix such as 'us.', \
             or as the last segment of an ARN)"
        ))
    })?;
    let texts = texts(req)?;
    match req.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "float" || f == "base64" => {}
        Some(_) => {
            return Err(TranslateError::Invalid(
                "'encoding_format' must be 'float' or 'base64'".to_string(),
            ));
        }
    }
    let dimensions = match req.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(d) => {
            let allowed = family.dimensions();
            match d.as_u64() {
                Some(d) if allowed.contains(&d) => Some(d),
                _ => {
                    let allowed: Vec<String> = allowed.iter().map(u64::to_string).collect();
                    return Err(TranslateError::Unsupported(format!(
                        "'{model}' takes 'dimensions' {} only, not {d}",
                        allowed.join(", ")
                    )));
                }
            }
        }
    };
    let mut handled = vec!["input", "dimensions", "encoding_format"];
    let bodies = match family {
        Family::TitanV2 => texts
            .iter()
            .map(|text| {
                let mut body = json!({"inputText": text, "normalize": true});
                if let (Some(d), Some(obj)) = (dimensions, body.as_object_mut()) {
                    obj.insert("dimensions".into(), json!(d));
                }
                body
            })
            .collect(),
        Family::TitanV1 => texts
            .iter()
            .map(|text| json!({"inputText": text}))
            .collect(),
        Family::CohereV3 => {
            handled.extend(["input_type", "truncate"]);
            let input_type = choice(req, "input_type", COHERE_INPUT_TYPES)?;
            let truncate = choice(req, "truncate", COHERE_TRUNCATE)?;
            texts
                .chunks(family.texts_per_call())
                .map(|chunk| {
                    let mut body = json!({
                        "texts": chunk,
                        "input_type": input_type.unwrap_or("search_document"),
                    });
                    if let (Some(t), Some(obj)) = (truncate, body.as_object_mut()) {
                        obj.insert("truncate".into(), json!(t));
                    }
                    body
                })
                .collect()
        }
    };
    warn_unhandled(req, &handled, "bedrock embeddings", warnings);
    Ok(bodies)
}

/// The texts of `input`: a string or a non-empty array of strings.
fn texts(req: &Map<String, Value>) -> Result<Vec<&str>, TranslateError> {
    let texts: Vec<&str> = match req.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).collect()
        }
        _ => {
            return Err(TranslateError::Invalid(
                "bedrock embeddings take 'input' as a string or an array of strings; token arrays \
                 cannot be sent (bedrock models tokenize the text themselves)"
                    .to_string(),
            ));
        }
    };
    if texts.is_empty() {
        return Err(TranslateError::Invalid(
            "'input' must not be empty".to_string(),
        ));
    }
    if texts.len() > MAX_INPUTS {
        return Err(TranslateError::Invalid(format!(
            "'input' has {} items; at most {MAX_INPUTS} are allowed",
            texts.len()
        )));
    }
    Ok(texts)
}

/// An optional string parameter that must be one of `allowed`.
fn choice<'a>(
    req: &'a Map<String, Value>,
    key: &str,
    allowed: &[&str],
) -> Result<Option<&'a str>, TranslateError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(Some(s.as_str())),
        Some(_) => Err(TranslateError::Invalid(format!(
            "'{key}' must be one of {}",
            allowed.join(", ")
        ))),
    }
}

/// The answers of the calls, in order (each body with the token count of its
/// `x-amzn-bedrock-input-token-count` header) → one OpenAI embeddings list.
pub fn response(model: &str, answers: &[(Value, Option<u64>)]) -> Result<Value, DecodeError> {
    let family =
        Family::of(model).ok_or_else(|| DecodeError::UnknownEmbeddingModel(model.to_string()))?;
    let mut vectors: Vec<Value> = Vec::new();
    let mut tokens: u64 = 0;
    for (body, header_tokens) in answers {
        match family {
            Family::TitanV2 | Family::TitanV1 => {
                let embedding =
                    body.get("embedding")
                        .filter(|e| e.is_array())
                        .ok_or(DecodeError::Shape(
                            "bedrock titan response has no 'embedding' array",
                        ))?;
                vectors.push(embedding.clone());
                // Counts come from the upstream: saturate rather than overflow.
                tokens = tokens.saturating_add(
                    body.get("inputTextTokenCount")
                        .and_then(Value::as_u64)
                        .or(*header_tokens)
                        .unwrap_or(0),
                );
            }
            Family::CohereV3 => {
                // `embeddings_floats` is a list of vectors; `embeddings_by_type` (asked for with
                // `embedding_types`) keys the lists by type.
                let embeddings = body.get("embeddings");
                let list = embeddings
                    .and_then(Value::as_array)
                    .or_else(|| embeddings?.get("float")?.as_array())
                    .ok_or(DecodeError::Shape(
                        "bedrock cohere response has no 'embeddings' list of floats",
                    ))?;
                if let Some(texts) = body.get("texts").and_then(Value::as_array)
                    && texts.len() != list.len()
                {
                    return Err(DecodeError::CountMismatch {
                        got: list.len(),
                        expected: texts.len(),
                    });
                }
                vectors.extend(list.iter().cloned());
                // Counts come from the upstream: saturate rather than overflow.
                tokens = tokens.saturating_add(header_tokens.unwrap_or(0));
            }
        }
    }
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, embedding)| json!({"object": "embedding", "index": i, "embedding": embedding}))
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_read_from_ids_profiles_and_arns() {
        for (model, family) in [
            ("amazon.titan-embed-text-v2:0", Some(Family::TitanV2)),
            ("us.amazon.titan-embed-text-v2:0", Some(Family::TitanV2)),
            (
                "arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0",
                Some(Family::TitanV2),
            ),
            ("amazon.titan-embed-text-v1", Some(Family::TitanV1)),
            ("amazon.titan-embed-g1-text-02", Some(Family::TitanV1)),
            ("cohere.embed-english-v3", Some(Family::CohereV3)),
            ("eu.cohere.embed-multilingual-v3", Some(Family::CohereV3)),
            (
                "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.cohere.embed-english-v3",
                Some(Family::CohereV3),
            ),
            ("cohere.embed-english-light-v3", None),
            ("amazon.titan-embed-image-v1", None),
            (
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3",
                None,
            ),
            ("anthropic.claude-3-haiku-20240307-v1:0", None),
        ] {
            assert_eq!(Family::of(model), family, "{model}");
        }
    }
}
