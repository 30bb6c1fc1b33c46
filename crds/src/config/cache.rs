//! A route's response cache as the sidecar reads it.

use serde::{Deserialize, Serialize};

/// Default time an entry is served, in milliseconds (5m).
pub const DEFAULT_TTL_MS: u64 = 300_000;
/// Default bytes of one route's entries per sidecar (64 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default least similarity of a semantic hit (`semantic.threshold`), chosen from the
/// evaluation in docs/benchmarks.md.
pub const DEFAULT_SEMANTIC_THRESHOLD: f64 = 0.90;
/// Default entries of a semantic index per scope.
pub const DEFAULT_SEMANTIC_MAX_ENTRIES: u64 = 10_000;
/// Default bound of the embedding call, in milliseconds.
pub const DEFAULT_SEMANTIC_TIMEOUT_MS: u64 = 250;

/// The response cache of a route.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an entry is served after it was stored, in milliseconds.
    pub ttl_ms: u64,
    /// Who shares entries.
    pub scope: CacheScopeConfig,
    /// Most bytes of this route's entries one sidecar keeps (memory backend).
    pub max_bytes: u64,
    /// Whether requests that may get another answer each time are cached too.
    pub allow_non_deterministic: bool,
    /// Where entries live.
    pub backend: CacheBackendConfig,
    /// Semantic lookup after an exact miss; `None`: exact only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic: Option<SemanticCacheConfig>,
}

/// Who shares cache entries.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum CacheScopeConfig {
    /// Every workload of the namespace.
    Namespace,
    /// Only the calling workload.
    Workload,
}

impl CacheScopeConfig {
    /// The name used in the CRD and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "namespace",
            Self::Workload => "workload",
        }
    }
}

/// Where cache entries live.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum CacheBackendConfig {
    /// In the sidecar's memory.
    Memory,
    /// In the Redis the sidecar is pointed at (`--cache-redis-url`).
    Redis,
}

impl CacheBackendConfig {
    /// The name used in the CRD, metrics and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
        }
    }
}

/// Semantic lookup settings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SemanticCacheConfig {
    /// Model alias of the route that serves the embeddings.
    pub embedding_route: String,
    /// Least cosine similarity of a hit, in [0, 1].
    pub threshold: f64,
    /// Most entries of the index per scope.
    pub max_entries: u64,
    /// Longest wait for the embedding, in milliseconds; past it the request bypasses the cache.
    pub timeout_ms: u64,
}
