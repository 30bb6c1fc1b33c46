//! Rendering a Route's response cache.

use std::collections::BTreeMap;

use crate::cache::{Cache, CacheBackend, CacheScope};
use crate::config::{
    CacheBackendConfig, CacheConfig, CacheScopeConfig, DEFAULT_MAX_BYTES,
    DEFAULT_SEMANTIC_MAX_ENTRIES, DEFAULT_SEMANTIC_THRESHOLD, DEFAULT_SEMANTIC_TIMEOUT_MS,
    DEFAULT_TTL_MS, RouteConfig, SemanticCacheConfig,
};

use super::{ObjectKind, Problems, parse_duration_ms};

/// Reason of a problem with a Route's cache settings.
pub const INVALID_CACHE: &str = "InvalidCache";

/// The cache of Route `name`. A setting that cannot be used is a problem and falls back to its
/// default (a cache that is too lenient is never the fallback: an unusable threshold turns the
/// semantic lookup off, not down).
pub(super) fn cache(name: &str, cache: &Cache, problems: &mut Problems) -> CacheConfig {
    let mut duration = |field: &str, value: Option<&String>, default: u64| -> u64 {
        let Some(value) = value else { return default };
        match parse_duration_ms(value) {
            Ok(ms) => ms,
            Err(e) => {
                problems.push(
                    ObjectKind::Route,
                    name,
                    "InvalidDuration",
                    format!("{field}: {e}"),
                );
                default
            }
        }
    };
    let ttl_ms = duration("spec.cache.ttl", cache.ttl.as_ref(), DEFAULT_TTL_MS).max(1);
    let semantic_timeout = cache.semantic.as_ref().map(|s| {
        duration(
            "spec.cache.semantic.timeout",
            s.timeout.as_ref(),
            DEFAULT_SEMANTIC_TIMEOUT_MS,
        )
    });
    let max_bytes = match cache.max_bytes.map(u64::try_from) {
        None => DEFAULT_MAX_BYTES,
        Some(Ok(b)) if b > 0 => b,
        Some(_) => {
            problems.push(
                ObjectKind::Route,
                name,
                INVALID_CACHE,
                "spec.cache.maxBytes must be positive".to_string(),
            );
            DEFAULT_MAX_BYTES
        }
    };
    let semantic = cache.semantic.as_ref().and_then(|s| {
        let threshold = match s.threshold.as_deref().map(str::parse::<f64>) {
            None => DEFAULT_SEMANTIC_THRESHOLD,
            Some(Ok(t)) if (0.0..=1.0).contains(&t) => t,
            Some(_) => {
                problems.push(
                    ObjectKind::Route,
                    name,
                    INVALID_CACHE,
                    format!(
                        "spec.cache.semantic.threshold {:?} must be a decimal in [0, 1]; \
                         semantic lookup is off",
                        s.threshold.as_deref().unwrap_or_default()
                    ),
                );
                return None;
            }
        };
        let max_entries = s
            .max_entries
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_SEMANTIC_MAX_ENTRIES);
        let timeout_ms = semantic_timeout.unwrap_or(DEFAULT_SEMANTIC_TIMEOUT_MS);
        Some(SemanticCacheConfig {
            embedding_route: s.embedding_route.clone(),
            threshold,
            max_entries,
            timeout_ms,
        })
    });
    CacheConfig {
        ttl_ms,
        scope: match cache.scope.unwrap_or_default() {
            CacheScope::Namespace => CacheScopeConfig::Namespace,
            CacheScope::Workload => CacheScopeConfig::Workload,
        },
        max_bytes,
        allow_non_deterministic: cache.allow_non_deterministic.unwrap_or(false),
        backend: match cache.backend.unwrap_or_default() {
            CacheBackend::Memory => CacheBackendConfig::Memory,
            CacheBackend::Redis => CacheBackendConfig::Redis,
        },
        semantic,
    }
}

/// Once every Route is rendered: a semantic cache whose embedding alias no Route serves is a
/// problem (its lookups bypass the cache until one does).
pub(super) fn check_embedding_routes(
    routes: &BTreeMap<String, RouteConfig>,
    problems: &mut Problems,
) {
    for (name, route) in routes {
        let Some(semantic) = route.cache.as_ref().and_then(|c| c.semantic.as_ref()) else {
            continue;
        };
        let served = routes
            .values()
            .any(|r| r.aliases.contains(&semantic.embedding_route));
        if !served {
            problems.push(
                ObjectKind::Route,
                name,
                INVALID_CACHE,
                format!(
                    "spec.cache.semantic.embeddingRoute {:?} is not a model alias of any Route; \
                     semantic lookups bypass the cache",
                    semantic.embedding_route
                ),
            );
        }
    }
}
