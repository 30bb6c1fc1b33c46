//! Structured output (`response_format` `json_schema` / `json_object`) for providers whose chat API
//! has no `response_format`: Anthropic and Bedrock Converse.
//!
//! - A model with the provider's own structured outputs (Claude Opus 4.1, Sonnet/Opus/Haiku 4.5
//!   and later, on Anthropic and on Bedrock) gets the schema natively: Anthropic's
//!   `output_config.format`, Bedrock's `outputConfig.textFormat`. Its answer is the JSON text.
//! - Any other model, and `json_object` (which has no schema), gets a forced call of one extra
//!   tool, [`FORMAT_TOOL`], whose input schema is the requested schema (any object for
//!   `json_object`). Its arguments come back as the message's text and the call itself is never
//!   shown: the answer looks as if the provider had honoured `response_format` (finish reason
//!   `stop`, streams included), so the SDKs' `.parse()` helpers read it.

use serde_json::{Map, Value, json};

use crate::error::TranslateError;

/// The name of the tool a structured answer is forced through. Unusual enough not to collide
/// with an app's own tools; an answer's call of it becomes text.
pub const FORMAT_TOOL: &str = "gatehouse_json_response";

/// What the request's `response_format` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Format {
    /// The schema (`json_schema`), or none (`json_object`: any JSON object).
    pub schema: Option<Value>,
    /// The schema's name, for the forced tool's description.
    pub name: Option<String>,
}

/// The structured output `req` asks for, if any. A `json_schema` without a `schema` is a 400.
pub fn requested(req: &Map<String, Value>) -> Result<Option<Format>, TranslateError> {
    let Some(format) = req.get("response_format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Format {
            schema: None,
            name: None,
        })),
        Some("json_schema") => {
            let spec = format.get("json_schema").unwrap_or(&Value::Null);
            let schema = spec
                .get("schema")
                .filter(|s| s.is_object())
                .cloned()
                .ok_or_else(|| {
                    TranslateError::Invalid(
                        "'response_format.json_schema.schema' must be a JSON schema object"
                            .to_string(),
                    )
                })?;
            Ok(Some(Format {
                schema: Some(schema),
                name: spec.get("name").and_then(Value::as_str).map(str::to_string),
            }))
        }
        Some(other) => Err(TranslateError::Invalid(format!(
            "unknown 'response_format' type '{other}'; use text, json_object or json_schema"
        ))),
    }
}

/// Whether `model` (an Anthropic model name or a Bedrock model id, inference-profile prefixes
/// included) has the provider's own structured outputs: Claude Opus 4.1, Claude 4.5 and later.
pub fn native(model: &str) -> bool {
    let Some(at) = model.find("claude-") else {
        return false;
    };
    let mut parts = model[at + "claude-".len()..].split(['-', '.', '@', ':']);
    let (Some(family), Some(major), minor) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if !matches!(family, "opus" | "sonnet" | "haiku") {
        return false;
    }
    let Ok(major) = major.parse::<u32>() else {
        return false;
    };
    // A date (claude-sonnet-4-20250514) is not a minor version.
    let minor: u32 = minor
        .filter(|m| m.len() <= 2)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    major > 4 || (major == 4 && (minor >= 5 || (family == "opus" && minor >= 1)))
}

/// `schema` with `additionalProperties: false` on every object schema that does not say
/// otherwise: the providers' structured outputs require it (OpenAI's strict schemas, which the
/// SDKs send, already have it).
pub fn closed(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out: Map<String, Value> =
                map.iter().map(|(k, v)| (k.clone(), closed(v))).collect();
            let is_object =
                map.get("type") == Some(&json!("object")) || map.contains_key("properties");
            if is_object && !out.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), json!(false));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(closed).collect()),
        other => other.clone(),
    }
}

/// The forced tool's (name, description, input schema).
pub fn tool(format: &Format) -> (&'static str, String, Value) {
    let description = match &format.name {
        Some(name) => {
            format!("Respond with the '{name}' JSON object. Always call this tool to answer.")
        }
        None => "Respond with a JSON object. Always call this tool to answer.".to_string(),
    };
    let schema = format
        .schema
        .clone()
        .unwrap_or_else(|| json!({"type": "object"}));
    (FORMAT_TOOL, description, schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_claude_models_are_native() {
        for (model, native_) in [
            ("claude-sonnet-4-5", true),
            ("claude-sonnet-4-5-20250929", true),
            ("claude-opus-4-1-20250805", true),
            ("claude-haiku-4-5", true),
            ("claude-opus-4-6", true),
            ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", true),
            ("anthropic.claude-3-haiku-20240307-v1:0", false),
            ("claude-sonnet-4-20250514", false),
            ("claude-3-5-sonnet-latest", false),
            ("claude-opus-4-20250514", false),
            ("gpt-4o", false),
        ] {
            assert_eq!(native(model), native_, "{model}");
        }
    }

    #[test]
    fn formats_are_read_and_schemas_closed() {
        let req = |f: Value| json!({"response_format": f}).as_object().cloned().unwrap();
        assert_eq!(requested(&req(json!({"type": "text"}))).unwrap(), None);
        let f = requested(&req(json!({"type": "json_object"})))
            .unwrap()
            .unwrap();
        assert_eq!(tool(&f).2, json!({"type": "object"}));
        let f = requested(&req(
            json!({"type": "json_schema", "json_schema": {"name": "c",
            "schema": {"type": "object", "properties": {"a": {"type": "object"}}}}}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(f.name.as_deref(), Some("c"));
        let c = closed(f.schema.as_ref().unwrap());
        assert_eq!(c["additionalProperties"], false);
        assert_eq!(c["properties"]["a"]["additionalProperties"], false);
        assert!(requested(&req(json!({"type": "json_schema", "json_schema": {}}))).is_err());
        assert!(requested(&req(json!({"type": "yaml"}))).is_err());
    }
}
