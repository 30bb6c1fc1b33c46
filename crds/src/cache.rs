//! A Route's response cache (`Route.spec.cache`): exact answers by a hash of the normalized
//! request, and, optionally, semantic lookup after an exact miss.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The response cache of a Route. Present: exact caching is on for the Route.
///
/// An answer is stored only when it is a complete success; a later request with the same
/// normalized body (model resolved to the Route, messages, tools, sampling parameters; not
/// `stream`, `stream_options`, `user` or `metadata`) from the same scope is answered from it,
/// as a stream when it asks for one, costs $0 and says `x-gatehouse-cache: hit`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[x_kube(
    validation = Rule::new("!has(self.ttl) || duration(self.ttl) >= duration('1s')").message("cache.ttl must be at least 1s").field_path(".ttl")
)]
#[serde(rename_all = "camelCase")]
pub struct Cache {
    /// How long an answer is served from the cache after it was stored, as a duration such as
    /// `30s`, `10m` or `1h`. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(ms|s|m|h))+$"), length(max = 32))]
    pub ttl: Option<String>,
    /// Who shares entries: `namespace` (every workload of the namespace) or `workload` (only
    /// the calling workload). Tenants (namespaces) never share. Default namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<CacheScope>,
    /// Most bytes of this Route's entries one sidecar keeps in memory; the least recently used
    /// go first. Default 67108864 (64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 17179869184_i64))]
    pub max_bytes: Option<i64>,
    /// Whether requests that may get a different answer each time (`temperature` unset or
    /// above 0, `n` above 1) are cached too. Default false: they bypass the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_non_deterministic: Option<bool>,
    /// Where entries live: `memory` (each sidecar its own) or `redis` (shared by every sidecar
    /// pointed at the same Redis with `--cache-redis-url`; when Redis cannot be reached,
    /// requests bypass the cache). Default memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<CacheBackend>,
    /// Semantic lookup after an exact miss: a stored answer to a question that means the same
    /// is served. Unset: exact only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic: Option<SemanticCache>,
}

/// Who shares cache entries.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum CacheScope {
    #[allow(missing_docs)]
    #[default]
    Namespace,
    #[allow(missing_docs)]
    Workload,
}

/// Where cache entries live.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum CacheBackend {
    #[allow(missing_docs)]
    #[default]
    Memory,
    #[allow(missing_docs)]
    Redis,
}

/// Semantic lookup: the request's conversation is embedded through another Route and compared
/// with those of stored answers of the same scope, model and parameters.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SemanticCache {
    /// The model alias of a Route in this namespace that serves `/v1/embeddings`.
    #[schemars(length(min = 1, max = 256))]
    pub embedding_route: String,
    /// Least cosine similarity for a hit, as a decimal string in [0, 1] such as `"0.92"`.
    /// Default: the one chosen in docs/benchmarks.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?|\.[0-9]{1,6})$"),
        length(max = 8)
    )]
    pub threshold: Option<String>,
    /// Most entries of the semantic index per scope; the oldest go first. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_entries: Option<i64>,
    /// Longest wait for the embedding; past it the request bypasses the cache. Default 250ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(ms|s|m|h))+$"), length(max = 32))]
    pub timeout: Option<String>,
}
