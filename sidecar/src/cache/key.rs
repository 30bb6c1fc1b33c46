//! Cache keys: SHA-256 of the normalized request and where it may be shared.
//!
//! The key covers, in this order and each length-prefixed so no two inputs run together:
//! a version tag; the namespace, and with `scope: workload` the workload's name (tenants never
//! share: a namespace is part of every key); the route (so the model after alias resolution:
//! two aliases of one Route share, two Routes never do); the client's dialect and the operation
//! (an OpenAI and an Anthropic client never share an entry: each gets its own dialect's answer,
//! never bytes rendered for another); the request headers the route's rules read (they choose
//! the targets); and the body as it leaves the cluster (after request redaction), canonical:
//! object keys sorted, `model` left out, and the fields that do not change the answer left out:
//! `stream`, `stream_options` (the hit is rendered as the client asks), `user`, `metadata`,
//! `store`, `safety_identifier`, `prompt_cache_key` (who asks, not what).

use std::sync::Arc;

use gatehouse_crds::config::{CacheConfig, CacheScopeConfig};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::request::Request;
use crate::stages::Context;

/// Top-level body fields left out of the key: they say who asks or how the answer is
/// delivered, not what it is.
const IGNORED: [&str; 8] = [
    "model",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "safety_identifier",
    "prompt_cache_key",
];

/// The key of one request: the SHA-256 of its normalized form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.hex())
    }
}

impl Key {
    /// Lower-case hex.
    pub fn hex(&self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// The key of `request` as `ctx` sees it (identity and route known); `None` when the body
    /// is not a JSON object (the request then bypasses the cache; the provider judges it).
    pub fn of(ctx: &Context, request: &Request, config: &CacheConfig) -> Option<Self> {
        let body: Value = serde_json::from_slice(request.body()).ok()?;
        let Value::Object(map) = &body else {
            return None;
        };
        let mut h = Sha256::new();
        field(&mut h, b"gatehouse-cache-v1");
        let workload = ctx.identity.workload.as_deref();
        let namespace = workload.map_or("", |w| &*w.namespace);
        field(&mut h, namespace.as_bytes());
        match config.scope {
            CacheScopeConfig::Namespace => field(&mut h, b"namespace"),
            CacheScopeConfig::Workload => {
                field(&mut h, b"workload");
                field(&mut h, workload.map_or("", |w| &*w.name).as_bytes());
            }
        }
        field(&mut h, route_name(ctx).as_bytes());
        field(
            &mut h,
            format!("{:?}/{:?}", ctx.dialect, request.op).as_bytes(),
        );
        for (name, value) in &ctx.rule_headers {
            field(&mut h, name.as_str().as_bytes());
            field(&mut h, value.as_bytes());
        }
        let mut keys: Vec<&String> = map
            .keys()
            .filter(|k| !IGNORED.contains(&k.as_str()))
            .collect();
        keys.sort();
        let mut out = Vec::with_capacity(request.body().len());
        out.push(b'{');
        for (i, k) in keys.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            canonical(&mut out, &Value::String(k.clone()));
            out.push(b':');
            if let Some(v) = map.get(k) {
                canonical(&mut out, v);
            }
        }
        out.push(b'}');
        field(&mut h, &out);
        Some(Self(h.finalize().into()))
    }
}

fn route_name(ctx: &Context) -> Arc<str> {
    ctx.route
        .as_deref()
        .map_or_else(|| Arc::from(""), |r| r.name.clone())
}

/// One length-prefixed part of the key.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// `v` as JSON with every object's keys sorted.
fn canonical(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(out, &Value::String(k.clone()));
                out.push(b':');
                canonical(out, v);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(out, v);
            }
            out.push(b']');
        }
        // Scalars have one serialization each.
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// Whether a chat body asks for a reproducible answer: `temperature` set to 0 and `n` at most
/// 1. An unset temperature is the provider's default (1 for OpenAI and Anthropic), so it is not.
pub fn deterministic(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Sampling {
        #[serde(default)]
        temperature: Option<Value>,
        #[serde(default)]
        n: Option<Value>,
    }
    let Ok(s) = serde_json::from_slice::<Sampling>(body) else {
        return false;
    };
    let zero_temperature = s
        .temperature
        .as_ref()
        .and_then(Value::as_f64)
        .is_some_and(|t| t == 0.0);
    let single = match s.n.as_ref() {
        None | Some(Value::Null) => true,
        Some(n) => n.as_u64().is_some_and(|n| n <= 1),
    };
    zero_temperature && single
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_zero_temperature_and_one_choice_are_deterministic() {
        assert!(deterministic(br#"{"temperature":0}"#));
        assert!(deterministic(br#"{"temperature":0.0,"n":1}"#));
        assert!(!deterministic(br#"{}"#));
        assert!(!deterministic(br#"{"temperature":0.2}"#));
        assert!(!deterministic(br#"{"temperature":0,"n":2}"#));
        assert!(!deterministic(br#"{"temperature":"0"}"#));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"z":0,"y":"x"}],"c":null}}"#).unwrap();
        let mut out = Vec::new();
        canonical(&mut out, &a);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"c":null,"d":[1,{"y":"x","z":0}]},"b":1}"#
        );
    }
}
