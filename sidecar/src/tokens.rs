//! OpenAI's tokenizers (the BPE data ships in `tiktoken-rs`), built once on first use: token-id
//! embedding inputs are decoded to text for providers that take text, and token counts are
//! estimated where a provider has no counting API.

use std::sync::LazyLock;

use tiktoken_rs::CoreBPE;

/// A tokenizer could not be built or a token id is unknown to it.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer's data could not be loaded (a bug in the build, never the request).
    #[error("failed to load the {name} tokenizer: {reason}")]
    Load {
        /// Which tokenizer.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The ids are not tokens of the tokenizer.
    #[error("failed to decode token ids with {name}: {reason}")]
    Decode {
        /// Which tokenizer.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

static O200K: LazyLock<Result<CoreBPE, String>> =
    LazyLock::new(|| tiktoken_rs::o200k_base().map_err(|e| e.to_string()));
static CL100K: LazyLock<Result<CoreBPE, String>> =
    LazyLock::new(|| tiktoken_rs::cl100k_base().map_err(|e| e.to_string()));

fn get(
    cell: &'static LazyLock<Result<CoreBPE, String>>,
    name: &'static str,
) -> Result<&'static CoreBPE, TokenizerError> {
    cell.as_ref().map_err(|reason| TokenizerError::Load {
        name,
        reason: reason.clone(),
    })
}

/// `o200k_base`, the tokenizer of GPT-4o and later.
pub fn o200k() -> Result<&'static CoreBPE, TokenizerError> {
    get(&O200K, "o200k_base")
}

/// `cl100k_base`, the tokenizer of OpenAI's embedding models (`text-embedding-3-*`, `ada-002`):
/// what clients like LangChain's `OpenAIEmbeddings` tokenize embedding inputs with.
pub fn cl100k() -> Result<&'static CoreBPE, TokenizerError> {
    get(&CL100K, "cl100k_base")
}

/// The text of `ids`, tokens of `cl100k_base`.
pub fn decode_embedding_input(ids: &[u32]) -> Result<String, TokenizerError> {
    let bpe = cl100k()?;
    let bytes = bpe.decode_bytes(ids).map_err(|e| TokenizerError::Decode {
        name: "cl100k_base",
        reason: e.to_string(),
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// An embeddings `input` of token ids (one array of ids, or an array of them) replaced by its
/// text, for providers that take text. Returns whether anything was decoded.
pub fn decode_input(input: &mut serde_json::Value) -> Result<bool, TokenizerError> {
    use serde_json::Value;
    fn ids(v: &Value) -> Option<Vec<u32>> {
        let items = v.as_array()?;
        if items.is_empty() {
            return None;
        }
        items
            .iter()
            .map(|i| i.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    }
    if let Some(one) = ids(input) {
        *input = Value::String(decode_embedding_input(&one)?);
        return Ok(true);
    }
    let Some(items) = input.as_array_mut() else {
        return Ok(false);
    };
    let mut decoded = false;
    for item in items.iter_mut() {
        if let Some(one) = ids(item) {
            *item = Value::String(decode_embedding_input(&one)?);
            decoded = true;
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_decode_to_the_text_they_encode() {
        let ids = cl100k().unwrap().encode_ordinary("hello gateway world");
        assert_eq!(decode_embedding_input(&ids).unwrap(), "hello gateway world");
        assert!(decode_embedding_input(&[u32::MAX]).is_err());
        assert!(o200k().unwrap().encode_ordinary("hi there").len() >= 2);
        let mut input = serde_json::json!([ids.clone(), "text", ids]);
        assert!(decode_input(&mut input).unwrap());
        assert_eq!(
            input,
            serde_json::json!(["hello gateway world", "text", "hello gateway world"])
        );
        let mut text = serde_json::json!("already text");
        assert!(!decode_input(&mut text).unwrap());
    }
}
