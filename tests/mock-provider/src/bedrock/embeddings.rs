//! Bedrock runtime's InvokeModel for embedding models: `POST /model/{modelId}/invoke`.
//!
//! Bodies follow the Bedrock user guide's model parameters: Titan Text Embeddings V2
//! (`{"inputText", "dimensions"?, "normalize"?, "embeddingTypes"?}` → `{"embedding",
//! "inputTextTokenCount", "embeddingsByType"}`), Titan Embeddings G1 - Text (`{"inputText"}` →
//! `{"embedding", "inputTextTokenCount"}`) and Cohere Embed v3 (`{"texts", "input_type",
//! "truncate"?, "embedding_types"?}` → `{"embeddings", "id", "response_type", "texts"}`). Keys the
//! model does not take, missing required keys and values out of range are 400
//! `ValidationException`s with Bedrock's "Malformed input request" wording. Every answer carries
//! the `x-amzn-bedrock-input-token-count` header (the only place Cohere's usage appears).
//!
//! Vectors are the mock's deterministic unit vectors of each text (shared with the other
//! flavours); tokens are whitespace-separated words.

use http::{HeaderValue, Response};
use serde_json::{Map, Value, json};

use super::error;
use crate::answer::{count_words, next_id};
use crate::behaviour::{Behaviour, Fault};
use crate::body::{self, Body};
use crate::openai::text_vector;

/// The embedding model families the mock answers, by model id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    TitanV2,
    TitanV1,
    CohereV3,
}

impl Family {
    /// A bare id, a cross-region inference-profile id (`us.…`) or an ARN ending in either.
    fn of(model: &str) -> Option<Self> {
        let id = model.rsplit_once('/').map_or(model, |(_, last)| last);
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
}

fn malformed(detail: &str) -> Response<Body> {
    error(
        400,
        None,
        Some(&format!(
            "Malformed input request: {detail}, please reformat your input and try again."
        )),
    )
}

fn extraneous(request: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match request.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("#: extraneous key [{k}] is not permitted")),
        None => Ok(()),
    }
}

/// `POST /model/{model}/invoke` (model already percent-decoded).
pub(crate) fn invoke(model: &str, body: &[u8], behaviour: &Behaviour) -> Response<Body> {
    let Some(family) = Family::of(model) else {
        return error(400, None, Some("The provided model identifier is invalid."));
    };
    let request = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        _ => return malformed("#: expected type: JSONObject"),
    };
    if let Fault::StreamError { status, .. } = behaviour.fault {
        return error(status, None, None);
    }
    let answer = match family {
        Family::TitanV2 | Family::TitanV1 => titan(family, &request),
        Family::CohereV3 => cohere(&request),
    };
    let (value, tokens) = match answer {
        Ok(answer) => answer,
        Err(detail) => return malformed(&detail),
    };
    let mut response = body::success_json(&value, &behaviour.fault);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&next_id("")) {
        headers.insert("x-amzn-requestid", v);
    }
    headers.insert(
        "x-amzn-bedrock-input-token-count",
        HeaderValue::from(tokens),
    );
    headers.insert(
        "x-amzn-bedrock-invocation-latency",
        HeaderValue::from(u64::try_from(behaviour.latency.as_millis()).unwrap_or(0) + 12),
    );
    response
}

/// The answer and its input tokens, or what is malformed about the request.
type Answer = Result<(Value, u64), String>;

fn titan(family: Family, request: &Map<String, Value>) -> Answer {
    let allowed: &[&str] = match family {
        Family::TitanV2 => &["inputText", "dimensions", "normalize", "embeddingTypes"],
        _ => &["inputText"],
    };
    extraneous(request, allowed)?;
    let text = match request.get("inputText") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) => {
            return Err("#/inputText: expected minLength: 1, actual: 0".to_owned());
        }
        Some(_) => return Err("#/inputText: expected type: String".to_owned()),
        None => return Err("#: required key [inputText] not found".to_owned()),
    };
    let dimensions = match request.get("dimensions") {
        None => 1024,
        Some(d) => match d.as_u64() {
            Some(d @ (256 | 512 | 1024)) => d,
            _ => {
                return Err(format!("#/dimensions: {d} is not a valid enum value"));
            }
        },
    };
    if request.get("normalize").is_some_and(|n| !n.is_boolean()) {
        return Err("#/normalize: expected type: Boolean".to_owned());
    }
    let tokens = count_words(text);
    if family == Family::TitanV1 {
        return Ok((
            json!({"embedding": text_vector(text, 1536), "inputTextTokenCount": tokens}),
            tokens,
        ));
    }
    let types: Vec<&str> = match request.get("embeddingTypes") {
        None => vec!["float"],
        Some(Value::Array(types)) => {
            let mut out = Vec::new();
            for t in types {
                match t.as_str() {
                    Some(t @ ("float" | "binary")) => out.push(t),
                    _ => {
                        return Err(format!("#/embeddingTypes: {t} is not a valid enum value"));
                    }
                }
            }
            out
        }
        Some(_) => return Err("#/embeddingTypes: expected type: JSONArray".to_owned()),
    };
    let vector = text_vector(text, usize::try_from(dimensions).unwrap_or(1024));
    let mut by_type = Map::new();
    for t in types {
        let value = match t {
            "binary" => json!(
                vector
                    .iter()
                    .map(|x| u8::from(*x > 0.0))
                    .collect::<Vec<_>>()
            ),
            _ => json!(vector),
        };
        by_type.insert(t.to_owned(), value);
    }
    Ok((
        json!({"embedding": vector, "inputTextTokenCount": tokens, "embeddingsByType": by_type}),
        tokens,
    ))
}

fn cohere(request: &Map<String, Value>) -> Answer {
    extraneous(
        request,
        &[
            "texts",
            "input_type",
            "truncate",
            "embedding_types",
            "images",
        ],
    )?;
    let texts: Vec<&str> = match request.get("texts") {
        Some(Value::Array(items)) => {
            let texts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            if texts.len() != items.len() {
                return Err("#/texts: expected type: String".to_owned());
            }
            texts
        }
        Some(_) => return Err("#/texts: expected type: JSONArray".to_owned()),
        None => return Err("#: required key [texts] not found".to_owned()),
    };
    if texts.len() > 96 {
        return Err(format!(
            "#/texts: expected maxItems: 96, actual: {}",
            texts.len()
        ));
    }
    match request.get("input_type").and_then(Value::as_str) {
        Some("search_document" | "search_query" | "classification" | "clustering") => {}
        Some(other) => {
            return Err(format!("#/input_type: {other} is not a valid enum value"));
        }
        None => return Err("#: required key [input_type] not found".to_owned()),
    }
    if let Some(t) = request.get("truncate")
        && !matches!(t.as_str(), Some("NONE" | "START" | "END"))
    {
        return Err(format!("#/truncate: {t} is not a valid enum value"));
    }
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| text_vector(t, 1024)).collect();
    let tokens = texts.iter().map(|t| count_words(t)).sum();
    let (response_type, embeddings) = match request.get("embedding_types") {
        None => ("embeddings_floats", json!(vectors)),
        Some(Value::Array(types)) if types.iter().all(|t| t == "float") => {
            ("embeddings_by_type", json!({"float": vectors}))
        }
        Some(other) => {
            // int8/uint8/binary/ubinary are real options; the mock models floats only.
            return Err(format!(
                "#/embedding_types: {other} is not supported by the mock (float only)"
            ));
        }
    };
    Ok((
        json!({
            "id": next_id("mock-embed-"),
            "embeddings": embeddings,
            "response_type": response_type,
            "texts": texts,
        }),
        tokens,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_by_model_id() {
        assert_eq!(
            Family::of("amazon.titan-embed-text-v2:0"),
            Some(Family::TitanV2)
        );
        assert_eq!(
            Family::of("us.amazon.titan-embed-text-v2:0"),
            Some(Family::TitanV2)
        );
        assert_eq!(
            Family::of("arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v1"),
            Some(Family::TitanV1)
        );
        assert_eq!(
            Family::of("cohere.embed-multilingual-v3"),
            Some(Family::CohereV3)
        );
        assert_eq!(Family::of("anthropic.claude-3-haiku-20240307-v1:0"), None);
    }
}
