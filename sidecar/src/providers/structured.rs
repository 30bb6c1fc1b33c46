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
//!
//! Claude's structured outputs take a subset of JSON Schema (Anthropic's structured-outputs
//! guide, "JSON Schema limitations", and what Anthropic's own SDKs do to a schema before sending
//! it): [`for_claude`] reduces a schema to that subset, moving value constraints it refuses
//! (`minimum`, `maxLength`, `pattern`, …) into the description, and says when the schema cannot
//! be reduced without changing what it accepts (open maps, recursion, tuples, …): such a
//! schema takes the forced tool instead, whose input schema is not restricted.

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

/// Types Claude's structured outputs take.
const CLAUDE_TYPES: &[&str] = &[
    "object", "array", "string", "integer", "number", "boolean", "null",
];
/// String `format`s Claude's structured outputs take; others become description text.
const CLAUDE_FORMATS: &[&str] = &[
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "uri",
    "ipv4",
    "ipv6",
    "uuid",
];
/// Keywords whose loss would change the shape of what the schema accepts and that Claude's
/// structured outputs cannot express: a schema using them takes the forced tool.
const SHAPE_KEYWORDS: &[&str] = &[
    "patternProperties",
    "prefixItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentSchemas",
    "propertyNames",
    "if",
    "then",
    "else",
    "not",
    "contains",
    "$dynamicRef",
    "$recursiveRef",
];
/// Annotations with no meaning for the answer, dropped.
const DROPPED: &[&str] = &["$schema", "$id", "$comment"];
/// Anthropic refuses structured-output schemas with more optional properties than this, all
/// objects counted together.
const MAX_OPTIONAL: usize = 24;
/// … or with more properties whose schema is a union (`anyOf`, or a list of types).
const MAX_UNIONS: usize = 16;

/// `schema` as Claude's structured outputs (Anthropic `output_config.format`, Bedrock
/// `outputConfig.textFormat`) take it, or `None` when it cannot be said there without
/// accepting something else:
///
/// - kept: `type` (one of the seven basic types, or a list of them), `properties`, `required`,
///   `items` (one schema), `enum` and `const` of primitives, `anyOf` (`oneOf` becomes `anyOf`),
///   `allOf`, local `$ref` with `$defs` / `definitions`, `title`, `description`, `minItems` 0 or
///   1, the string formats of [`CLAUDE_FORMATS`]; every object gets `additionalProperties:
///   false`, which it requires;
/// - moved into the description, as `(constraints: {...})` so the model still reads them: the
///   value constraints it refuses (`minimum`, `maximum`, `exclusiveMinimum`, `multipleOf`,
///   `minLength`, `maxLength`, `pattern`, `maxItems`, `minItems` above 1, `uniqueItems`,
///   `minProperties`, other formats, …) and annotations (`default`, `examples`, …);
/// - `None`: `additionalProperties` other than `false` (an open map would become an empty
///   object), recursive or non-local `$ref`s, tuple `items`, enums of objects or arrays, the
///   keywords of [`SHAPE_KEYWORDS`], unknown types, and more than [`MAX_OPTIONAL`] optional or
///   [`MAX_UNIONS`] union-typed properties.
pub fn for_claude(schema: &Value) -> Option<Value> {
    if recursive(schema) {
        return None;
    }
    let mut counts = Counts::default();
    let out = reduce(schema, &mut counts)?;
    (counts.optional <= MAX_OPTIONAL && counts.unions <= MAX_UNIONS).then_some(out)
}

#[derive(Default)]
struct Counts {
    optional: usize,
    unions: usize,
}

fn primitive(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

fn union(schema: &Value) -> bool {
    schema.get("anyOf").is_some()
        || schema.get("oneOf").is_some()
        || schema
            .get("type")
            .and_then(Value::as_array)
            .is_some_and(|t| t.len() > 1)
}

/// One (sub)schema reduced; `None` when it cannot be (see [`for_claude`]).
fn reduce(schema: &Value, counts: &mut Counts) -> Option<Value> {
    let map = schema.as_object()?;
    if let Some(r) = map.get("$ref") {
        // A reference stands alone (its siblings are dropped, as Anthropic's SDKs do).
        let r = r.as_str().filter(|r| r.starts_with('#'))?;
        let mut out = Map::new();
        out.insert("$ref".into(), json!(r));
        for key in ["$defs", "definitions"] {
            if let Some(defs) = map.get(key) {
                out.insert(key.into(), reduce_all(defs, counts)?);
            }
        }
        return Some(Value::Object(out));
    }
    let types: Vec<&str> = match map.get("type") {
        None => Vec::new(),
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().map(Value::as_str).collect::<Option<_>>()?,
        Some(_) => return None,
    };
    if types.iter().any(|t| !CLAUDE_TYPES.contains(t)) {
        return None;
    }
    let is_object = types.contains(&"object") || map.contains_key("properties");
    let mut out = Map::new();
    let mut moved = Map::new();
    for (key, value) in map {
        let key = key.as_str();
        match key {
            "type" | "title" | "description" | "required" => {
                out.insert(key.into(), value.clone());
            }
            "$defs" | "definitions" => {
                out.insert(key.into(), reduce_all(value, counts)?);
            }
            "enum" => {
                if !value.as_array()?.iter().all(primitive) {
                    return None;
                }
                out.insert(key.into(), value.clone());
            }
            "const" => {
                if !primitive(value) {
                    return None;
                }
                out.insert(key.into(), value.clone());
            }
            "anyOf" | "oneOf" | "allOf" => {
                let target = if key == "allOf" { "allOf" } else { "anyOf" };
                if out.contains_key(target) {
                    return None;
                }
                let variants = value
                    .as_array()?
                    .iter()
                    .map(|v| reduce(v, counts))
                    .collect::<Option<Vec<_>>>()?;
                out.insert(target.into(), Value::Array(variants));
            }
            "properties" => {
                let properties = value.as_object()?;
                let required: Vec<&str> = map
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut reduced = Map::new();
                for (name, property) in properties {
                    if !required.contains(&name.as_str()) {
                        counts.optional += 1;
                    }
                    if union(property) {
                        counts.unions += 1;
                    }
                    reduced.insert(name.clone(), reduce(property, counts)?);
                }
                out.insert(key.into(), Value::Object(reduced));
            }
            "additionalProperties" => {
                if value != &Value::Bool(false) {
                    return None;
                }
                out.insert(key.into(), value.clone());
            }
            "items" => {
                // A list of schemas is a tuple (draft 4–2019); `true` and `false` say nothing
                // Claude can take either.
                if !value.is_object() {
                    return None;
                }
                out.insert(key.into(), reduce(value, counts)?);
            }
            "minItems" if matches!(value.as_u64(), Some(0 | 1)) => {
                out.insert(key.into(), value.clone());
            }
            "format"
                if types.contains(&"string")
                    && value.as_str().is_some_and(|f| CLAUDE_FORMATS.contains(&f)) =>
            {
                out.insert(key.into(), value.clone());
            }
            k if SHAPE_KEYWORDS.contains(&k) => return None,
            k if DROPPED.contains(&k) => {}
            _ => {
                moved.insert(key.into(), value.clone());
            }
        }
    }
    if is_object && !out.contains_key("additionalProperties") {
        out.insert("additionalProperties".into(), json!(false));
    }
    if !moved.is_empty() {
        let note = format!("(constraints: {})", Value::Object(moved));
        let description = match out.get("description").and_then(Value::as_str) {
            Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
            _ => note,
        };
        out.insert("description".into(), json!(description));
    }
    Some(Value::Object(out))
}

/// Every schema of a `$defs` / `definitions` object reduced.
fn reduce_all(defs: &Value, counts: &mut Counts) -> Option<Value> {
    let reduced = defs
        .as_object()?
        .iter()
        .map(|(name, def)| Some((name.clone(), reduce(def, counts)?)))
        .collect::<Option<Map<_, _>>>()?;
    Some(Value::Object(reduced))
}

/// Whether a `$ref` of `root` leads back to a schema it is inside of (a recursive schema), or
/// cannot be resolved in `root`.
fn recursive(root: &Value) -> bool {
    // `expanding`: the references being followed; `done`: those known to end.
    fn walk<'a>(
        node: &'a Value,
        root: &'a Value,
        expanding: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> bool {
        match node {
            Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                    if expanding.contains(&r) {
                        return true;
                    }
                    if !done.contains(&r) {
                        let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p)) else {
                            return true;
                        };
                        expanding.push(r);
                        // Nesting is bounded by the request parser; refs by `done`.
                        if expanding.len() > 64 || walk(target, root, expanding, done) {
                            return true;
                        }
                        expanding.pop();
                        done.push(r);
                    }
                }
                map.iter()
                    // Definitions are reached through the references to them.
                    .filter(|(k, _)| k.as_str() != "$defs" && k.as_str() != "definitions")
                    .any(|(_, v)| walk(v, root, expanding, done))
            }
            Value::Array(items) => items.iter().any(|v| walk(v, root, expanding, done)),
            _ => false,
        }
    }
    walk(root, root, &mut vec!["#"], &mut Vec::new())
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
    fn formats_are_read() {
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
        assert!(requested(&req(json!({"type": "json_schema", "json_schema": {}}))).is_err());
        assert!(requested(&req(json!({"type": "yaml"}))).is_err());
    }

    #[test]
    fn claude_schemas_keep_what_it_takes_and_describe_the_rest() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "title": "Person",
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 40, "description": "Full name"},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "email": {"type": "string", "format": "email"},
                "code": {"type": "string", "format": "regex", "pattern": "^[A-Z]+$"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
                "pair": {"type": "array", "items": {"type": "number"}, "minItems": 2},
                "kind": {"oneOf": [{"const": "a"}, {"const": "b"}]},
                "note": {"type": ["string", "null"], "default": null},
                "home": {"$ref": "#/$defs/Address", "description": "dropped beside a $ref"},
            },
            "required": ["name", "age", "email", "code", "tags", "pair", "kind", "home"],
            "$defs": {"Address": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["zip"]}},
        });
        let out = for_claude(&schema).unwrap();
        assert_eq!(
            out,
            json!({
                "title": "Person",
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "Full name\n\n(constraints: {\"maxLength\":40,\"minLength\":1})"},
                    "age": {"type": "integer", "description": "(constraints: {\"maximum\":150,\"minimum\":0})"},
                    "email": {"type": "string", "format": "email"},
                    "code": {"type": "string", "description": "(constraints: {\"format\":\"regex\",\"pattern\":\"^[A-Z]+$\"})"},
                    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "(constraints: {\"maxItems\":3})"},
                    "pair": {"type": "array", "items": {"type": "number"}, "description": "(constraints: {\"minItems\":2})"},
                    "kind": {"anyOf": [{"const": "a"}, {"const": "b"}]},
                    "note": {"type": ["string", "null"], "description": "(constraints: {\"default\":null})"},
                    "home": {"$ref": "#/$defs/Address"},
                },
                "required": ["name", "age", "email", "code", "tags", "pair", "kind", "home"],
                "additionalProperties": false,
                "$defs": {"Address": {"type": "object", "properties": {"zip": {"type": "string", "description": "(constraints: {\"pattern\":\"^[0-9]{5}$\"})"}}, "required": ["zip"], "additionalProperties": false}},
            })
        );
        // Objects nested anywhere are closed.
        let nested =
            json!({"type": "object", "properties": {"a": {"type": "object", "properties": {}}}});
        assert_eq!(
            for_claude(&nested).unwrap()["properties"]["a"]["additionalProperties"],
            false
        );
        // A reference reached twice is no recursion.
        let shared = json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/X"}, "b": {"$ref": "#/$defs/X"}},
            "required": ["a", "b"], "$defs": {"X": {"type": "string"}}});
        assert!(for_claude(&shared).is_some());
    }

    #[test]
    fn claude_schemas_that_would_accept_something_else_go_the_tool_way() {
        let object = |properties: Value| json!({"type": "object", "properties": properties});
        for (what, schema) in [
            (
                "open map",
                object(
                    json!({"m": {"type": "object", "additionalProperties": {"type": "integer"}}}),
                ),
            ),
            (
                "additional properties allowed",
                json!({"type": "object", "additionalProperties": true}),
            ),
            (
                "recursion through $defs",
                json!({"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}},
                "$defs": {"Node": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}}}}),
            ),
            (
                "recursion to the root",
                object(json!({"children": {"type": "array", "items": {"$ref": "#"}}})),
            ),
            (
                "remote reference",
                object(json!({"a": {"$ref": "https://example.com/s.json"}})),
            ),
            (
                "dangling reference",
                object(json!({"a": {"$ref": "#/$defs/Missing"}})),
            ),
            (
                "tuple items",
                object(
                    json!({"t": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]}}),
                ),
            ),
            (
                "prefixItems",
                object(json!({"t": {"type": "array", "prefixItems": [{"type": "string"}]}})),
            ),
            (
                "patternProperties",
                object(
                    json!({"p": {"type": "object", "patternProperties": {"^x": {"type": "string"}}}}),
                ),
            ),
            ("not", object(json!({"n": {"not": {"type": "string"}}}))),
            (
                "enum of objects",
                object(json!({"e": {"enum": [{"a": 1}]}})),
            ),
            ("unknown type", object(json!({"d": {"type": "decimal"}}))),
        ] {
            assert_eq!(for_claude(&schema), None, "{what}");
        }
        let many = |n: usize, property: Value| {
            let properties: Map<String, Value> = (0..n)
                .map(|i| (format!("p{i}"), property.clone()))
                .collect();
            json!({"type": "object", "properties": properties})
        };
        assert!(for_claude(&many(MAX_OPTIONAL, json!({"type": "string"}))).is_some());
        assert_eq!(
            for_claude(&many(MAX_OPTIONAL + 1, json!({"type": "string"}))),
            None
        );
        let mut unions = many(MAX_UNIONS + 1, json!({"type": ["string", "null"]}));
        let names: Vec<Value> = (0..=MAX_UNIONS).map(|i| json!(format!("p{i}"))).collect();
        unions["required"] = json!(names);
        assert_eq!(for_claude(&unions), None);
        unions["properties"].as_object_mut().unwrap().remove("p0");
        assert!(for_claude(&unions).is_some());
    }
}
