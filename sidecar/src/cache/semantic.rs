//! The semantic cache: after an exact miss, a request whose last user message means the same as
//! a cached one, in the same conversation, with the same model and parameters, is answered with
//! that one's answer, when the guards agree.
//!
//! - [`key`]: what must match exactly (hashed into a context) and the text that is embedded.
//! - [`guards`]: numbers, named entities, negations, relation order and language must match.
//! - [`index`]: the bounded approximate-nearest-neighbour index of one scope.
//! - [`Semantic`]: one index per (Route, scope), bounded by the Route's `maxEntries`.
//!
//! The embedding comes from the Route's `embeddingRoute`, called through the gateway's own
//! request path (see `proxy::Embedder`); failure or timeout bypasses the cache.

pub mod guards;
pub mod index;
pub mod key;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use serde_json::Value;

use guards::Features;
use index::Index;
pub use key::Key;

/// The default similarity threshold (`semantic.threshold`), chosen from the evaluation in
/// docs/benchmarks.md (all-MiniLM-L6-v2, guards on).
pub const DEFAULT_THRESHOLD: f32 = 0.90;

/// Default `semantic.maxEntries`: entries per scope.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// Candidates above the threshold checked against the guards, most similar first.
const CANDIDATES: usize = 4;

/// One cached prompt: its guard features and what the cache stage stored for it.
#[derive(Debug)]
struct Entry<V> {
    features: Features,
    value: V,
}

type Scoped<V> = Arc<RwLock<Index<Entry<V>>>>;

/// The semantic indexes of the Routes that have one, by (Route, scope).
#[derive(Debug)]
pub struct Semantic<V> {
    indexes: Mutex<HashMap<(Arc<str>, Arc<str>), Scoped<V>>>,
}

impl<V> Default for Semantic<V> {
    fn default() -> Self {
        Self {
            indexes: Mutex::new(HashMap::new()),
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<V> {
    /// A cached prompt close enough whose guards agree: its value and similarity.
    Hit(V, f32),
    /// Nothing above the threshold.
    Miss,
    /// Something above the threshold, refused by a guard (the most similar one's reason).
    Guarded(guards::Mismatch, f32),
}

impl<V: Clone> Semantic<V> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self, route: &str, scope: &str, dim: usize, max_entries: usize) -> Option<Scoped<V>> {
        let mut map = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        let key = (Arc::<str>::from(route), Arc::<str>::from(scope));
        let idx = map
            .entry(key)
            .or_insert_with(|| Arc::new(RwLock::new(Index::new(dim, max_entries))))
            .clone();
        // An index of another dimension (the embedding route changed models): start over.
        let stale = idx.read().map(|i| i.dim() != dim).unwrap_or(true);
        if stale {
            let fresh = Arc::new(RwLock::new(Index::new(dim, max_entries)));
            map.insert(
                (Arc::<str>::from(route), Arc::<str>::from(scope)),
                fresh.clone(),
            );
            return Some(fresh);
        }
        Some(idx)
    }

    /// The best cached value for `key` (embedded as `embedding`, unit length) in `route`'s
    /// `scope` with a similarity of at least `threshold` whose guards agree.
    pub fn lookup(
        &self,
        route: &str,
        scope: &str,
        key: &Key,
        embedding: &[f32],
        threshold: f32,
    ) -> Lookup<V> {
        let Some(idx) = self.existing(route, scope) else {
            return Lookup::Miss;
        };
        let idx = idx.read().unwrap_or_else(|e| e.into_inner());
        let found = idx.search(key.context, embedding, CANDIDATES, threshold);
        if found.is_empty() {
            return Lookup::Miss;
        }
        let features = Features::of(&key.text);
        let mut refused = None;
        for f in &found {
            match features.compatible(&f.value.features) {
                Ok(()) => return Lookup::Hit(f.value.value.clone(), f.similarity),
                Err(why) => {
                    refused.get_or_insert((why, f.similarity));
                }
            }
        }
        match refused {
            Some((why, sim)) => Lookup::Guarded(why, sim),
            None => Lookup::Miss,
        }
    }

    /// Files `value` under `key` (embedded as `embedding`, unit length) in `route`'s `scope`,
    /// evicting that scope's oldest entries past `max_entries`.
    pub fn insert(
        &self,
        route: &str,
        scope: &str,
        max_entries: usize,
        key: &Key,
        embedding: &[f32],
        value: V,
    ) {
        let Some(idx) = self.index(route, scope, embedding.len(), max_entries) else {
            return;
        };
        let entry = Entry {
            features: Features::of(&key.text),
            value,
        };
        let mut idx = idx.write().unwrap_or_else(|e| e.into_inner());
        idx.insert(key.context, embedding, entry);
    }

    /// Entries held for `route` in `scope`.
    pub fn len(&self, route: &str, scope: &str) -> usize {
        self.existing(route, scope)
            .map(|i| i.read().unwrap_or_else(|e| e.into_inner()).len())
            .unwrap_or(0)
    }

    /// Drops the indexes of Routes not in `keep` (a Route deleted or its semantic block removed).
    pub fn retain_routes(&self, keep: impl Fn(&str) -> bool) {
        let mut map = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(route, _), _| keep(route));
    }

    fn existing(&self, route: &str, scope: &str) -> Option<Scoped<V>> {
        let map = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(Arc::<str>::from(route), Arc::<str>::from(scope)))
            .cloned()
    }
}

/// The first embedding of an OpenAI-shaped embeddings answer (`data[0].embedding`, floats or
/// base64 little-endian f32), scaled to unit length; `None` for anything else.
pub fn parse_embedding(body: &[u8]) -> Option<Vec<f32>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("data")?.get(0)?.get("embedding")?;
    let raw: Vec<f32> = match e {
        Value::Array(xs) => xs
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<_>>()?,
        Value::String(s) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
            if bytes.len() % 4 != 0 {
                return None;
            }
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        _ => return None,
    };
    if raw.is_empty() {
        return None;
    }
    index::normalized(&raw)
}

/// The body of the embeddings request for `text` on the embedding Route `alias`.
pub fn embedding_request(alias: &str, text: &str) -> Vec<u8> {
    serde_json::json!({"model": alias, "input": text})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Dialect;

    fn key(text: &str, ctx: u64) -> Key {
        Key {
            context: ctx,
            text: text.to_string(),
        }
    }

    #[test]
    fn hit_miss_and_guarded() {
        let s: Semantic<u32> = Semantic::new();
        let e = |x: f32| index::normalized(&[1.0, x, 0.0, 0.0]).unwrap();
        s.insert("r", "ns", 10, &key("convert 30 USD to EUR", 1), &e(0.0), 1);
        // Close and compatible: a hit.
        assert!(matches!(
            s.lookup(
                "r",
                "ns",
                &key("please convert 30 USD to EUR", 1),
                &e(0.05),
                0.9
            ),
            Lookup::Hit(1, _)
        ));
        // Close but another number: guarded.
        assert!(matches!(
            s.lookup("r", "ns", &key("convert 40 USD to EUR", 1), &e(0.05), 0.9),
            Lookup::Guarded(guards::Mismatch::Numbers, _)
        ));
        // Far: a miss. Another scope, route or context: a miss.
        assert_eq!(
            s.lookup("r", "ns", &key("x", 1), &e(5.0), 0.9),
            Lookup::Miss
        );
        assert_eq!(
            s.lookup("r", "other", &key("convert 30 USD to EUR", 1), &e(0.0), 0.9),
            Lookup::Miss
        );
        assert_eq!(
            s.lookup("r2", "ns", &key("convert 30 USD to EUR", 1), &e(0.0), 0.9),
            Lookup::Miss
        );
        assert_eq!(
            s.lookup("r", "ns", &key("convert 30 USD to EUR", 2), &e(0.0), 0.9),
            Lookup::Miss
        );
    }

    #[test]
    fn a_guarded_best_candidate_falls_back_to_a_compatible_one() {
        let s: Semantic<u32> = Semantic::new();
        let e = |x: f32| index::normalized(&[1.0, x]).unwrap();
        s.insert("r", "ns", 10, &key("what is 2 plus 3", 0), &e(0.0), 23);
        s.insert("r", "ns", 10, &key("what is 2 plus 4", 0), &e(0.1), 24);
        assert!(matches!(
            s.lookup("r", "ns", &key("what's 2 plus 4", 0), &e(0.0), 0.9),
            Lookup::Hit(24, _)
        ));
    }

    #[test]
    fn bounded_per_scope_and_a_new_dimension_starts_over() {
        let s: Semantic<u32> = Semantic::new();
        for i in 0..30u32 {
            let v = index::normalized(&[1.0, i as f32]).unwrap();
            s.insert("r", "a", 10, &key("q", 0), &v, i);
        }
        s.insert("r", "b", 10, &key("q", 0), &[1.0, 0.0], 0);
        assert_eq!(s.len("r", "a"), 10);
        assert_eq!(s.len("r", "b"), 1);
        s.insert("r", "a", 10, &key("q", 0), &[1.0, 0.0, 0.0], 0);
        assert_eq!(s.len("r", "a"), 1);
        s.retain_routes(|r| r != "r");
        assert_eq!(s.len("r", "b"), 0);
    }

    #[test]
    fn parses_float_and_base64_embeddings() {
        let f = br#"{"data":[{"embedding":[3.0,4.0]}]}"#;
        assert_eq!(parse_embedding(f).unwrap(), vec![0.6, 0.8]);
        let raw: Vec<u8> = [3.0f32, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let body = format!(r#"{{"data":[{{"embedding":"{b64}"}}]}}"#);
        assert_eq!(parse_embedding(body.as_bytes()).unwrap(), vec![0.6, 0.8]);
        for bad in [
            &b"{}"[..],
            b"nope",
            br#"{"data":[]}"#,
            br#"{"data":[{"embedding":[]}]}"#,
            br#"{"data":[{"embedding":[0,0]}]}"#,
            br#"{"data":[{"embedding":"***"}]}"#,
            br#"{"data":[{"embedding":["a"]}]}"#,
        ] {
            assert!(parse_embedding(bad).is_none());
        }
        let req = embedding_request("embed", "hi \"x\"");
        let v: Value = serde_json::from_slice(&req).unwrap();
        assert_eq!(v["input"], "hi \"x\"");
        let _ = Dialect::OpenAi;
    }
}
