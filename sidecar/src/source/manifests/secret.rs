//! Reading a Secret document's `data` and `stringData` by hand.
//!
//! serde's errors quote the value they choke on ("invalid type: string \"sk-…\", expected a map"),
//! and in a Secret that value is the key. So a Secret is never handed to serde: its fields are
//! walked here, and every error names the field, the entry's position and the shape that was
//! expected and found, never a value and never a key name (a key pasted where a key name belongs
//! would otherwise be logged).

use std::collections::BTreeMap;

use base64::Engine;
use serde_yaml::Value;

/// What is wrong with a Secret document. Holds no text from the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// `data` or `stringData` is not a map.
    #[error("{field} must be a map from key names to {expected}, found {found}")]
    NotAMap {
        /// `data` or `stringData`.
        field: &'static str,
        /// What its values must be.
        expected: &'static str,
        /// The shape found instead.
        found: &'static str,
    },
    /// An entry's key name is not a string.
    #[error("{field} entry {position}: the key name must be a string, found {found}")]
    KeyName {
        /// `data` or `stringData`.
        field: &'static str,
        /// 1-based position of the entry.
        position: usize,
        /// The shape found instead.
        found: &'static str,
    },
    /// An entry's value has the wrong shape.
    #[error("{field} entry {position}: the value must be {expected}, found {found}")]
    Value {
        /// `data` or `stringData`.
        field: &'static str,
        /// 1-based position of the entry.
        position: usize,
        /// What it must be.
        expected: &'static str,
        /// The shape found instead.
        found: &'static str,
    },
    /// A `data` value is not base64.
    #[error("data entry {position}: the value is not valid base64")]
    Base64 {
        /// 1-based position of the entry.
        position: usize,
    },
}

/// The key names and raw values of a Secret document: `data` base64-decoded, then `stringData` on
/// top (it wins, as the API server merges it).
pub fn data(document: &Value) -> Result<BTreeMap<String, Vec<u8>>, SecretError> {
    let mut out = BTreeMap::new();
    for (position, key, value) in entries(document.get("data"), "data", "base64 strings")? {
        let Value::String(text) = value else {
            return Err(SecretError::Value {
                field: "data",
                position,
                expected: "a base64 string",
                found: shape(value),
            });
        };
        // Go's decoder, which the API server uses, skips line breaks (`base64` wraps at 76).
        let text: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| SecretError::Base64 { position })?;
        out.insert(key, bytes);
    }
    for (position, key, value) in entries(document.get("stringData"), "stringData", "strings")? {
        let Value::String(text) = value else {
            return Err(SecretError::Value {
                field: "stringData",
                position,
                expected: "a string",
                found: shape(value),
            });
        };
        out.insert(key, text.as_bytes().to_vec());
    }
    Ok(out)
}

/// The entries of a map field as (1-based position, key name, value); absent or null is empty.
fn entries<'a>(
    field_value: Option<&'a Value>,
    field: &'static str,
    expected: &'static str,
) -> Result<Vec<(usize, String, &'a Value)>, SecretError> {
    let map = match field_value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Mapping(map)) => map,
        Some(other) => {
            return Err(SecretError::NotAMap {
                field,
                expected,
                found: shape(other),
            });
        }
    };
    map.iter()
        .enumerate()
        .map(|(i, (key, value))| match key {
            Value::String(key) => Ok((i + 1, key.clone(), value)),
            other => Err(SecretError::KeyName {
                field,
                position: i + 1,
                found: shape(other),
            }),
        })
        .collect()
}

/// The shape of a YAML value, in words, without any of its content.
pub fn shape(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-live-0123456789abcdef";

    fn doc(yaml: &str) -> Value {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn err(yaml: &str) -> String {
        let e = data(&doc(yaml)).unwrap_err().to_string();
        assert!(!e.contains(KEY), "the error quotes the key: {e}");
        assert!(
            !e.contains("c2stbGl2ZS"),
            "the error quotes the base64 key: {e}"
        );
        e
    }

    #[test]
    fn data_and_string_data_are_read_and_string_data_wins() {
        let got = data(&doc(
            "kind: Secret\ndata:\n  a: aGVsbG8=\n  b: eA==\n  d: |\n    d29y\n    bGQ=\nstringData:\n  b: over\n  c: ''\n",
        ))
        .unwrap();
        assert_eq!(got["a"], b"hello");
        assert_eq!(got["b"], b"over");
        assert_eq!(got["c"], b"");
        // A wrapped base64 value (a literal block) decodes as the API server would.
        assert_eq!(got["d"], b"world");
        assert!(data(&doc("kind: Secret\ndata: null\n")).unwrap().is_empty());
        assert!(data(&doc("kind: Secret\n")).unwrap().is_empty());
    }

    #[test]
    fn non_utf8_data_is_kept_as_bytes() {
        let got = data(&doc("data:\n  k: //79\n")).unwrap();
        assert_eq!(got["k"], vec![0xff, 0xfe, 0xfd]);
    }

    #[test]
    fn a_scalar_string_data_names_the_field_not_the_value() {
        assert_eq!(
            err(&format!("stringData: {KEY}\n")),
            "stringData must be a map from key names to strings, found a string"
        );
        assert_eq!(
            err(&format!("data: {KEY}\n")),
            "data must be a map from key names to base64 strings, found a string"
        );
        assert_eq!(
            err("stringData: 12345678901234567890\n"),
            "stringData must be a map from key names to strings, found a number"
        );
    }

    #[test]
    fn lists_and_nested_maps_name_the_shape() {
        assert_eq!(
            err(&format!("stringData:\n  - {KEY}\n")),
            "stringData must be a map from key names to strings, found a list"
        );
        assert_eq!(
            err(&format!("stringData:\n  openai:\n    apiKey: {KEY}\n")),
            "stringData entry 1: the value must be a string, found a map"
        );
        assert_eq!(
            err(&format!("data:\n  ok: aGk=\n  openai: [{KEY}]\n")),
            "data entry 2: the value must be a base64 string, found a list"
        );
        assert_eq!(
            err("stringData:\n  apiKey: 42\n"),
            "stringData entry 1: the value must be a string, found a number"
        );
        assert_eq!(
            err("stringData:\n  apiKey:\n"),
            "stringData entry 1: the value must be a string, found null"
        );
        assert_eq!(
            err(&format!("stringData:\n  apiKey: !custom {KEY}\n")),
            "stringData entry 1: the value must be a string, found a tagged value"
        );
    }

    #[test]
    fn a_key_pasted_as_a_key_name_is_not_named() {
        assert_eq!(
            err(&format!("stringData:\n  {KEY}:\n")),
            "stringData entry 1: the value must be a string, found null"
        );
        assert_eq!(
            err(&format!("stringData:\n  ? [{KEY}]\n  : x\n")),
            "stringData entry 1: the key name must be a string, found a list"
        );
    }

    #[test]
    fn bad_base64_is_reported_without_the_text() {
        assert_eq!(
            err(&format!("data:\n  apiKey: {KEY}\n")),
            "data entry 1: the value is not valid base64"
        );
        // A valid-looking prefix of the real key's base64 must not leak either.
        assert_eq!(
            err("data:\n  apiKey: c2stbGl2ZS0wMTIzNDU2Nzg5YWJjZGVm!\n"),
            "data entry 1: the value is not valid base64"
        );
    }
}
