//! Gemini embeddings: `batchEmbedContents`, one request for every input.

use serde_json::{Map, Value, json};

use super::{encode, uri};
use crate::error::{DecodeError, TranslateError};
use crate::providers::Outgoing;
use crate::state::Provider;

/// OpenAI embeddings request → `batchEmbedContents`.
pub fn embeddings(
    provider: &Provider,
    model: &str,
    req: &Map<String, Value>,
) -> Result<Outgoing, TranslateError> {
    Ok(Outgoing::single(
        uri(provider, model, "batchEmbedContents")?,
        encode(&embeddings_request(model, req)?)?,
        Vec::new(),
    ))
}

/// The embeddings translation (pure; golden-tested). The requested `encoding_format` is kept in
/// the body under a private key so the answer can honour it.
pub fn embeddings_request(model: &str, req: &Map<String, Value>) -> Result<Value, TranslateError> {
    let inputs: Vec<&str> = match req.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).collect()
        }
        _ => {
            return Err(TranslateError::Invalid(
                "gemini embeddings take 'input' as a string or an array of strings (not tokens)"
                    .to_string(),
            ));
        }
    };
    let model = model.strip_prefix("models/").unwrap_or(model);
    let requests: Vec<Value> = inputs
        .into_iter()
        .map(|text| {
            let mut r =
                json!({"model": format!("models/{model}"), "content": {"parts": [{"text": text}]}});
            if let (Some(d), Some(obj)) = (req.get("dimensions"), r.as_object_mut()) {
                obj.insert("outputDimensionality".into(), d.clone());
            }
            r
        })
        .collect();
    Ok(json!({"requests": requests}))
}

/// `{"embeddings":[{"values":[…]}]}` → OpenAI embeddings list (floats; see
/// [`crate::dialect::openai::base64_embeddings`] for `encoding_format: base64`).
pub fn embeddings_response(value: &Value, model: &str) -> Result<Value, DecodeError> {
    let list = value
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or(DecodeError::Shape(
            "gemini embeddings response has no 'embeddings' array",
        ))?;
    let data: Vec<Value> = list
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({"object": "embedding", "index": i,
                   "embedding": e.get("values").cloned().unwrap_or(json!([]))})
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }))
}
