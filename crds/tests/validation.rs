//! Offline admission checks: every object is validated the way the apiserver would, against the
//! OpenAPI schema (types, enums, patterns, bounds, required and unknown fields, list uniqueness) and
//! the CEL rules (`x-kubernetes-validations`, evaluated with kube-cel).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns: a failure should abort the test loudly"
)]

use std::collections::BTreeMap;
use std::path::Path;

use gatehouse_crds::{Budget, Inputs, ModelProvider, Route, SecretData, render};
use kube::CustomResourceExt;
use serde_json::{Value, json};

/// The openAPIV3Schema of each kind, from the types (the drift test ties them to the YAML).
fn schemas() -> BTreeMap<&'static str, Value> {
    let mut out = BTreeMap::new();
    for (kind, crd) in [
        ("ModelProvider", ModelProvider::crd()),
        ("Route", Route::crd()),
        ("Budget", Budget::crd()),
    ] {
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap();
        out.insert(kind, serde_json::to_value(schema).unwrap());
    }
    out
}

/// Validate one object; `Err` lists every violation.
fn validate(obj: &Value) -> Result<(), Vec<String>> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let schemas = schemas();
    let Some(schema) = schemas.get(kind) else {
        return Err(vec![format!("unknown kind {kind:?}")]);
    };
    let mut errors = Vec::new();
    assert_eq!(obj["apiVersion"], "gatehouse.dev/v1alpha1");
    let mut body = obj.clone();
    if let Some(map) = body.as_object_mut() {
        // Served by ObjectMeta / TypeMeta, not by the CRD schema.
        for k in ["apiVersion", "kind", "metadata"] {
            map.remove(k);
        }
    }
    check_schema(schema, &body, "", &mut errors);
    if let Err(cel) = kube_cel::Validator::new().validate(schema, obj, None) {
        errors.extend(cel.iter().map(|e| e.to_string()));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The subset of OpenAPI v3 validation Kubernetes applies to structural schemas.
fn check_schema(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let mut err = |m: String| errors.push(format!("{path}: {m}"));
    if value.is_null() {
        if schema["nullable"] != json!(true) {
            err("must not be null".into());
        }
        return;
    }
    // int-or-string (prices): no `type`; an integer or a string, as the apiserver checks it.
    let int_or_string = schema["x-kubernetes-int-or-string"] == json!(true);
    let ty = if int_or_string {
        "integer or string"
    } else {
        schema["type"].as_str().unwrap_or_default()
    };
    let type_ok = match ty {
        "integer or string" => value.is_i64() || value.is_u64() || value.is_string(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        other => panic!("{path}: schema node without a supported type: {other:?}"),
    };
    if !type_ok {
        err(format!("expected {ty}, got {value}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        err(format!(
            "unsupported value {value}: must be one of {allowed:?}"
        ));
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64().filter(|m| len < *m) {
            err(format!("must be at least {min} characters"));
        }
        if let Some(max) = schema["maxLength"].as_u64().filter(|m| len > *m) {
            err(format!("must be at most {max} characters"));
        }
        if let Some(p) = schema["pattern"].as_str()
            && !regex::Regex::new(p).unwrap().is_match(s)
        {
            err(format!("{s:?} does not match {p}"));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema["minimum"].as_f64().filter(|m| n < *m) {
            err(format!("must be >= {min}"));
        }
        if let Some(max) = schema["maximum"].as_f64().filter(|m| n > *m) {
            err(format!("must be <= {max}"));
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as u64;
        if let Some(min) = schema["minItems"].as_u64().filter(|m| len < *m) {
            err(format!("must have at least {min} items"));
        }
        if let Some(max) = schema["maxItems"].as_u64().filter(|m| len > *m) {
            err(format!("must have at most {max} items"));
        }
        match schema["x-kubernetes-list-type"].as_str() {
            Some("set") => {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        err(format!("duplicate value {item}"));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap())
                    .collect();
                let key_of = |v: &Value| keys.iter().map(|k| v[k].clone()).collect::<Vec<_>>();
                for (i, item) in items.iter().enumerate() {
                    if items[..i].iter().any(|o| key_of(o) == key_of(item)) {
                        err(format!("duplicate entry with key {:?}", key_of(item)));
                    }
                }
            }
            _ => {}
        }
        for (i, item) in items.iter().enumerate() {
            check_schema(&schema["items"], item, &format!("{path}[{i}]"), errors);
        }
        return;
    }
    if let Some(map) = value.as_object() {
        for req in schema["required"].as_array().into_iter().flatten() {
            let req = req.as_str().unwrap();
            if !map.contains_key(req) {
                err(format!("required field {req:?} is missing"));
            }
        }
        for (k, v) in map {
            let child = format!("{path}.{k}");
            if let Some(prop) = schema["properties"].get(k) {
                check_schema(prop, v, &child, errors);
            } else if let Some(extra) = schema.get("additionalProperties") {
                check_schema(extra, v, &child, errors);
            } else {
                // kubectl's default --validate=strict rejects unknown fields.
                errors.push(format!("{child}: unknown field"));
            }
        }
    }
}

/// Kubernetes refuses CRDs whose schema is not structural; check the rules that derive output
/// tends to break.
fn assert_structural(schema: &Value, path: &str) {
    let Some(map) = schema.as_object() else {
        return;
    };
    for banned in [
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "$ref",
        "definitions",
        "$defs",
    ] {
        assert!(
            !map.contains_key(banned),
            "{path}: {banned} makes the schema non-structural"
        );
    }
    assert!(
        map.contains_key("type")
            || map.contains_key("x-kubernetes-int-or-string")
            || map.contains_key("x-kubernetes-preserve-unknown-fields"),
        "{path}: every schema node needs a type"
    );
    assert!(
        !(map.contains_key("properties") && map.contains_key("additionalProperties")),
        "{path}: properties and additionalProperties are mutually exclusive"
    );
    if map.get("type") == Some(&json!("array")) {
        assert!(map.contains_key("items"), "{path}: arrays need items");
    }
    for (k, v) in map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        assert_structural(v, &format!("{path}.{k}"));
    }
    if let Some(items) = map.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(extra) = map.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(extra, &format!("{path}{{}}"));
    }
}

#[test]
fn schemas_are_structural_and_rules_compile() {
    for (kind, schema) in schemas() {
        assert_structural(&schema, kind);
        let compiled = kube_cel::compile_schema(&schema);
        assert!(
            !compiled.has_errors(),
            "{kind}: {:?}",
            compiled.compilation_errors()
        );
    }
}

fn object(kind: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "gatehouse.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x"},
        "spec": spec,
    })
}

fn provider(spec: Value) -> Value {
    object("ModelProvider", spec)
}
fn route(spec: Value) -> Value {
    object("Route", spec)
}
fn budget(spec: Value) -> Value {
    object("Budget", spec)
}

fn key_ref() -> Value {
    json!({"name": "openai-key", "key": "api-key"})
}

/// Merge `patch` into `base` (JSON merge patch: `null` deletes a field).
fn with(mut base: Value, patch: Value) -> Value {
    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        merge(a.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b,
        }
    }
    merge(&mut base, patch);
    base
}

fn good_provider() -> Value {
    provider(json!({
        "type": "openai",
        "apiKeySecretRef": key_ref(),
        "models": [{"name": "gpt-4o-mini", "pricing": {"inputPerMillion": "0.15", "outputPerMillion": "0.60"}}],
    }))
}
fn good_route() -> Value {
    route(json!({
        "models": ["chat"],
        "targets": [{"provider": "openai", "model": "gpt-4o-mini"}],
        "retry": {"attempts": 3, "backoff": {"base": "100ms", "max": "2s"}},
        "timeouts": {"request": "1m30s", "attempt": "30s", "firstToken": "5s"},
    }))
}
fn good_budget() -> Value {
    budget(json!({"limit": {"usd": "12.50"}, "period": "monthly"}))
}

#[test]
fn valid_objects_are_accepted() {
    let valid = [
        with(
            good_route(),
            json!({"spec": {"cache": {"ttl": "10m", "scope": "workload", "maxBytes": 67108864,
                "allowNonDeterministic": false, "backend": "redis",
                "semantic": {"embeddingRoute": "embed", "threshold": "0.92",
                             "maxEntries": 10000, "timeout": "250ms"}}}}),
        ),
        with(good_route(), json!({"spec": {"cache": {}}})),
        good_provider(),
        provider(json!({"type": "anthropic", "apiKeySecretRef": key_ref()})),
        provider(
            json!({"type": "gemini", "apiKeySecretRef": key_ref(), "endpoint": "https://example.com/"}),
        ),
        provider(json!({"type": "openaiCompatible", "endpoint": "http://127.0.0.1:9100/v1"})),
        provider(
            json!({"type": "azureOpenAI", "endpoint": "https://acme.openai.azure.com", "apiKeySecretRef": key_ref(), "azure": {"apiVersion": "2024-10-21"}}),
        ),
        provider(
            json!({"type": "bedrock", "apiKeySecretRef": key_ref(), "bedrock": {"region": "us-east-1"}}),
        ),
        // Prices as whole numbers or decimal strings (int-or-string), every rate, and models
        // listed without prices (the catalog prices them).
        provider(
            json!({"type": "anthropic", "apiKeySecretRef": key_ref(), "models": [
            {"name": "claude-sonnet-4-5", "pricing": {"inputPerMillion": 3, "outputPerMillion": 15,
                "cachedInputPerMillion": "0.30", "cacheWritePerMillion": "3.75", "reasoningPerMillion": 15,
                "longContext": {"aboveInputTokens": 200000, "inputPerMillion": 6, "outputPerMillion": "22.50",
                    "cachedInputPerMillion": "0.60", "cacheWritePerMillion": "7.50"}}},
            {"name": "claude-haiku-4-5"}]}),
        ),
        provider(
            json!({"type": "openai", "apiKeySecretRef": key_ref(), "models": [{"name": "m", "pricing": {"inputPerMillion": 0, "outputPerMillion": "5"}}]}),
        ),
        good_route(),
        route(json!({"targets": [{"provider": "a", "model": "m", "priority": 1, "weight": 0}]})),
        // Outlier settings, the idle timeout and routing rules naming targets.
        route(json!({
            "targets": [{"name": "big", "provider": "a", "model": "m"},
                        {"name": "small", "provider": "b", "model": "n", "priority": 1}],
            "timeouts": {"attempt": "30s", "idle": "20s"},
            "outlier": {"consecutiveFailures": 3, "consecutiveTimeouts": 1, "failureRatePercent": 40,
                        "failureRateMinRequests": 10, "window": "30s", "baseEjection": "10s", "maxEjection": "5m"},
            "rules": [
                {"name": "cheap", "match": {"maxInputTokens": 1000, "tools": false,
                    "headers": {"x-gatehouse-tier": "cheap"}, "workloadLabels": {"team": "search"}},
                 "targets": ["small"]},
                {"name": "json", "match": {"jsonMode": true, "images": false, "minInputTokens": 10}, "targets": ["big", "small"]}
            ]
        })),
        // Guardrails: rate limits of both scopes and selectors, redaction, audit content.
        route(json!({
            "targets": [{"provider": "a", "model": "m"}],
            "rateLimits": [
                {"name": "per-pod", "requestsPerMinute": 60, "tokensPerMinute": 100000},
                {"name": "team", "tokensPerMinute": 5000, "scope": "cluster",
                 "serviceAccounts": ["web"], "workloadSelector": {"matchLabels": {"team": "search"},
                 "matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]}}
            ],
            "redact": {"action": "maskAndRestore", "detectors": ["email", "creditCard", "iban"],
                       "custom": [{"name": "employee-id", "pattern": "EMP-[0-9]{6}"}]},
            "audit": {"prompt": true, "answer": false}
        })),
        route(json!({"targets": [{"provider": "a", "model": "m"}], "redact": {}})),
        good_budget(),
        budget(
            json!({"limit": {"tokens": 1000000}, "period": "none", "enforcement": "soft", "failMode": "closed",
            "scope": {"routes": ["chat"], "serviceAccounts": ["web"], "workloadSelector": {"matchLabels": {"team": "search"}}}}),
        ),
        budget(json!({"limit": {"usd": "0.01"}, "period": "hourly"})),
        // Both units, a custom period, thresholds and a downgrade.
        budget(
            json!({"limit": {"usd": "5", "tokens": 100000}, "period": "custom", "periodSeconds": 60,
            "thresholds": [50, 80], "downgrade": {"atPercent": 90, "route": "cheap"}}),
        ),
    ];
    for obj in valid {
        if let Err(e) = validate(&obj) {
            panic!("valid object rejected: {e:?}\n{obj:#}");
        }
    }
}

#[test]
fn invalid_objects_are_rejected_with_a_clear_message() {
    let p = good_provider;
    let r = good_route;
    let b = good_budget;
    // (what is wrong, object, text the rejection must contain)
    let table: Vec<(&str, Value, &str)> = vec![
        (
            "cache ttl under a second",
            with(r(), json!({"spec": {"cache": {"ttl": "500ms"}}})),
            "cache.ttl must be at least 1s",
        ),
        (
            "cache scope unknown",
            with(r(), json!({"spec": {"cache": {"scope": "cluster"}}})),
            "cluster",
        ),
        (
            "cache backend unknown",
            with(r(), json!({"spec": {"cache": {"backend": "memcached"}}})),
            "memcached",
        ),
        (
            "cache maxBytes too small",
            with(r(), json!({"spec": {"cache": {"maxBytes": 10}}})),
            "maxBytes",
        ),
        (
            "semantic threshold above 1",
            with(
                r(),
                json!({"spec": {"cache": {"semantic": {"embeddingRoute": "e", "threshold": "1.5"}}}}),
            ),
            "threshold",
        ),
        (
            "semantic cache without its embedding route",
            with(
                r(),
                json!({"spec": {"cache": {"semantic": {"threshold": "0.9"}}}}),
            ),
            "embeddingRoute",
        ),
        (
            "rule naming a target that does not exist",
            with(
                r(),
                json!({"spec": {"rules": [{"name": "x", "targets": ["nope"]}]}}),
            ),
            "must name a target in spec.targets",
        ),
        (
            "two targets with one name",
            route(
                json!({"targets": [{"name": "a", "provider": "p", "model": "m"},
                                     {"name": "a", "provider": "q", "model": "m"}]}),
            ),
            "spec.targets[].name must be unique",
        ),
        (
            "two rules with one name",
            route(
                json!({"targets": [{"name": "a", "provider": "p", "model": "m"}],
                         "rules": [{"name": "r", "targets": ["a"]}, {"name": "r", "targets": ["a"]}]}),
            ),
            "spec.rules[].name must be unique",
        ),
        (
            "token range upside down",
            route(
                json!({"targets": [{"name": "a", "provider": "p", "model": "m"}],
                         "rules": [{"name": "r", "match": {"minInputTokens": 10, "maxInputTokens": 5}, "targets": ["a"]}]}),
            ),
            "minInputTokens must not be larger",
        ),
        (
            "base ejection longer than the max",
            with(
                r(),
                json!({"spec": {"outlier": {"baseEjection": "10m", "maxEjection": "1m"}}}),
            ),
            "outlier.baseEjection must not be longer",
        ),
        (
            "failure rate over 100",
            with(
                r(),
                json!({"spec": {"outlier": {"failureRatePercent": 150}}}),
            ),
            "must be <= 100",
        ),
        (
            "idle not a duration",
            with(r(), json!({"spec": {"timeouts": {"idle": "soon"}}})),
            "does not match",
        ),
        (
            "unknown provider type",
            with(p(), json!({"spec": {"type": "cohere"}})),
            "unsupported value",
        ),
        (
            "missing type",
            with(p(), json!({"spec": {"type": null}})),
            "required field \"type\"",
        ),
        (
            "endpoint not a URL",
            with(p(), json!({"spec": {"endpoint": "api.openai.com"}})),
            "does not match",
        ),
        (
            "openaiCompatible without endpoint",
            provider(json!({"type": "openaiCompatible"})),
            "spec.endpoint is required",
        ),
        (
            "azureOpenAI without endpoint",
            provider(json!({"type": "azureOpenAI", "apiKeySecretRef": key_ref()})),
            "spec.endpoint is required",
        ),
        (
            "openai without key ref",
            with(p(), json!({"spec": {"apiKeySecretRef": null}})),
            "spec.apiKeySecretRef is required",
        ),
        (
            "key ref with empty name",
            with(p(), json!({"spec": {"apiKeySecretRef": {"name": ""}}})),
            "at least 1 characters",
        ),
        (
            "key ref without key",
            with(p(), json!({"spec": {"apiKeySecretRef": {"key": null}}})),
            "required field \"key\"",
        ),
        (
            "negative price",
            with(
                p(),
                json!({"spec": {"models": [{"name": "m", "pricing": {"inputPerMillion": "-1", "outputPerMillion": "1"}}]}}),
            ),
            "does not match",
        ),
        (
            "price as a bare decimal number",
            with(
                p(),
                json!({"spec": {"models": [{"name": "m", "pricing": {"inputPerMillion": 1.5, "outputPerMillion": "1"}}]}}),
            ),
            "expected integer or string",
        ),
        (
            "negative whole price",
            with(
                p(),
                json!({"spec": {"models": [{"name": "m", "pricing": {"inputPerMillion": 1, "outputPerMillion": -5}}]}}),
            ),
            "must be >= 0",
        ),
        (
            "price with an exponent",
            with(
                p(),
                json!({"spec": {"models": [{"name": "m", "pricing": {"inputPerMillion": "1e3", "outputPerMillion": 1}}]}}),
            ),
            "does not match",
        ),
        (
            "long-context tier without a threshold",
            with(
                p(),
                json!({"spec": {"models": [{"name": "m", "pricing": {"inputPerMillion": 1, "outputPerMillion": 2,
                    "longContext": {"aboveInputTokens": 0, "inputPerMillion": 2, "outputPerMillion": 4}}}]}}),
            ),
            "must be >= 1",
        ),
        (
            "duplicate model names",
            with(
                p(),
                json!({"spec": {"models": [
            {"name": "m", "pricing": {"inputPerMillion": "1", "outputPerMillion": "1"}},
            {"name": "m", "pricing": {"inputPerMillion": "2", "outputPerMillion": "2"}}]}}),
            ),
            "duplicate entry",
        ),
        (
            "bedrock without region",
            provider(json!({"type": "bedrock", "apiKeySecretRef": key_ref()})),
            "spec.bedrock.region",
        ),
        (
            "azure block on openai",
            with(
                p(),
                json!({"spec": {"azure": {"apiVersion": "2024-10-21"}}}),
            ),
            "spec.azure is only allowed",
        ),
        (
            "bedrock block on openai",
            with(p(), json!({"spec": {"bedrock": {"region": "us-east-1"}}})),
            "spec.bedrock is only allowed",
        ),
        (
            "unknown provider field",
            with(p(), json!({"spec": {"apiKey": "sk-123"}})),
            "unknown field",
        ),
        (
            "rate limit without a number",
            with(r(), json!({"spec": {"rateLimits": [{"name": "x"}]}})),
            "needs requestsPerMinute, tokensPerMinute or both",
        ),
        (
            "two rate limits with one name",
            with(
                r(),
                json!({"spec": {"rateLimits": [{"name": "x", "requestsPerMinute": 1},
                                              {"name": "x", "tokensPerMinute": 1}]}}),
            ),
            "spec.rateLimits[].name must be unique",
        ),
        (
            "rate limit of zero",
            with(
                r(),
                json!({"spec": {"rateLimits": [{"name": "x", "requestsPerMinute": 0}]}}),
            ),
            "must be >= 1",
        ),
        (
            "rate limit scope that does not exist",
            with(
                r(),
                json!({"spec": {"rateLimits": [{"name": "x", "requestsPerMinute": 1, "scope": "global"}]}}),
            ),
            "unsupported value",
        ),
        (
            "rate limit name not a DNS label",
            with(
                r(),
                json!({"spec": {"rateLimits": [{"name": "Per Pod", "requestsPerMinute": 1}]}}),
            ),
            "does not match",
        ),
        (
            "unknown redaction action",
            with(r(), json!({"spec": {"redact": {"action": "hash"}}})),
            "unsupported value",
        ),
        (
            "unknown detector",
            with(
                r(),
                json!({"spec": {"redact": {"detectors": ["passport"]}}}),
            ),
            "unsupported value",
        ),
        (
            "a detector listed twice",
            with(
                r(),
                json!({"spec": {"redact": {"detectors": ["email", "email"]}}}),
            ),
            "duplicate value",
        ),
        (
            "two custom detectors with one name",
            with(
                r(),
                json!({"spec": {"redact": {"custom": [{"name": "id", "pattern": "a"},
                                                     {"name": "id", "pattern": "b"}]}}}),
            ),
            "redact.custom[].name must be unique",
        ),
        (
            "a custom detector named like a built-in one",
            with(
                r(),
                json!({"spec": {"redact": {"custom": [{"name": "email", "pattern": "a"}]}}}),
            ),
            "must not be the name of a built-in detector",
        ),
        (
            "custom detector without a pattern",
            with(
                r(),
                json!({"spec": {"redact": {"custom": [{"name": "id"}]}}}),
            ),
            "required field \"pattern\"",
        ),
        (
            "route without targets",
            with(r(), json!({"spec": {"targets": []}})),
            "at least 1 items",
        ),
        (
            "target without provider",
            with(r(), json!({"spec": {"targets": [{"model": "m"}]}})),
            "required field \"provider\"",
        ),
        (
            "target with empty model",
            with(
                r(),
                json!({"spec": {"targets": [{"provider": "p", "model": ""}]}}),
            ),
            "at least 1 characters",
        ),
        (
            "negative weight",
            with(
                r(),
                json!({"spec": {"targets": [{"provider": "p", "model": "m", "weight": -1}]}}),
            ),
            "must be >= 0",
        ),
        (
            "empty alias",
            with(r(), json!({"spec": {"models": [""]}})),
            "at least 1 characters",
        ),
        (
            "duplicate alias",
            with(r(), json!({"spec": {"models": ["chat", "chat"]}})),
            "duplicate value",
        ),
        (
            "zero attempts",
            with(r(), json!({"spec": {"retry": {"attempts": 0}}})),
            "must be >= 1",
        ),
        (
            "eleven attempts",
            with(r(), json!({"spec": {"retry": {"attempts": 11}}})),
            "must be <= 10",
        ),
        (
            "duration without unit",
            with(r(), json!({"spec": {"timeouts": {"request": "30"}}})),
            "does not match",
        ),
        (
            "duration with bad unit",
            with(r(), json!({"spec": {"retry": {"backoff": {"base": "1d"}}}})),
            "does not match",
        ),
        (
            "backoff base above max",
            with(
                r(),
                json!({"spec": {"retry": {"backoff": {"base": "5s", "max": "1s"}}}}),
            ),
            "retry.backoff.base must not be longer",
        ),
        (
            "attempt timeout above request",
            with(
                r(),
                json!({"spec": {"timeouts": {"request": "10s", "attempt": "1m"}}}),
            ),
            "timeouts.attempt must not be longer",
        ),
        (
            "neither usd nor tokens",
            with(b(), json!({"spec": {"limit": {"usd": null}}})),
            "at least one of limit.usd and limit.tokens",
        ),
        (
            "custom period without its length",
            with(b(), json!({"spec": {"period": "custom"}})),
            "spec.periodSeconds must be set with period custom",
        ),
        (
            "a length without the custom period",
            with(b(), json!({"spec": {"periodSeconds": 60}})),
            "spec.periodSeconds must be set with period custom",
        ),
        (
            "custom period too short",
            with(
                b(),
                json!({"spec": {"period": "custom", "periodSeconds": 5}}),
            ),
            "must be >= 10",
        ),
        (
            "threshold of 100 percent",
            with(b(), json!({"spec": {"thresholds": [80, 100]}})),
            "must be <= 99",
        ),
        (
            "repeated threshold",
            with(b(), json!({"spec": {"thresholds": [80, 80]}})),
            "duplicate",
        ),
        (
            "downgrade without a route",
            with(b(), json!({"spec": {"downgrade": {"atPercent": 80}}})),
            "required field \"route\"",
        ),
        (
            "downgrade at 0 percent",
            with(
                b(),
                json!({"spec": {"downgrade": {"atPercent": 0, "route": "cheap"}}}),
            ),
            "must be >= 1",
        ),
        (
            "zero usd",
            with(b(), json!({"spec": {"limit": {"usd": "0.00"}}})),
            "limit.usd must be greater than 0",
        ),
        (
            "usd not a decimal",
            with(b(), json!({"spec": {"limit": {"usd": "$5"}}})),
            "does not match",
        ),
        (
            "zero tokens",
            budget(json!({"limit": {"tokens": 0}, "period": "daily"})),
            "must be >= 1",
        ),
        (
            "unknown period",
            with(b(), json!({"spec": {"period": "yearly"}})),
            "unsupported value",
        ),
        (
            "missing period",
            with(b(), json!({"spec": {"period": null}})),
            "required field \"period\"",
        ),
        (
            "unknown enforcement",
            with(b(), json!({"spec": {"enforcement": "strict"}})),
            "unsupported value",
        ),
        (
            "unknown failMode",
            with(b(), json!({"spec": {"failMode": "maybe"}})),
            "unsupported value",
        ),
    ];
    assert!(table.len() >= 15);
    for (what, obj, expected) in table {
        match validate(&obj) {
            Ok(()) => panic!("{what}: accepted\n{obj:#}"),
            Err(errors) => assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{what}: expected an error containing {expected:?}, got {errors:?}"
            ),
        }
    }
}

/// Every document of every `examples/*.yaml` file.
fn example_documents() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !value.is_null() {
                docs.push((file.display().to_string(), value));
            }
        }
    }
    docs
}

#[test]
fn examples_pass_validation_and_render_without_spec_problems() {
    let mut providers = Vec::new();
    let mut routes = Vec::new();
    let mut budgets = Vec::new();
    let mut secrets = SecretData::new();
    for (file, doc) in example_documents() {
        assert!(
            doc["metadata"].get("namespace").is_none(),
            "{file}: leave metadata.namespace unset"
        );
        match doc["kind"].as_str().unwrap() {
            "Secret" => {
                let name = doc["metadata"]["name"].as_str().unwrap().to_string();
                let data = doc["stringData"].as_object().unwrap();
                let data = data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().as_bytes().to_vec()))
                    .collect();
                secrets.insert(name, data);
                continue;
            }
            "ModelProvider" => {
                providers.push(serde_json::from_value::<ModelProvider>(doc.clone()).unwrap())
            }
            "Route" => routes.push(serde_json::from_value::<Route>(doc.clone()).unwrap()),
            "Budget" => budgets.push(serde_json::from_value::<Budget>(doc.clone()).unwrap()),
            other => panic!("{file}: unexpected kind {other}"),
        }
        if let Err(e) = validate(&doc) {
            panic!("{file}: {} rejected: {e:?}", doc["metadata"]["name"]);
        }
    }
    assert!(
        !providers.is_empty() && !routes.is_empty() && !budgets.is_empty() && !secrets.is_empty()
    );
    let rendered = render(&Inputs {
        namespace: "demo",
        providers: &providers,
        routes: &routes,
        budgets: &budgets,
        secrets: &secrets,
    });
    // No problems: every example is valid and usable as written.
    let problems: Vec<(&str, &str)> = rendered
        .problems
        .iter()
        .map(|p| (p.name.as_str(), p.reason.as_str()))
        .collect();
    assert_eq!(problems, []);
    let chat = &rendered.config.routes["chat"];
    assert_eq!(chat.aliases, ["gpt-4o-mini", "chat"]);
    assert_eq!(chat.targets.len(), 2);
    assert_eq!(
        rendered.config.providers["local"].endpoint,
        "http://127.0.0.1:9100/v1"
    );
}
