//! Rate limits (`Route.spec.rateLimits`): requests and tokens per minute, per route, for every
//! caller or for the workloads a limit selects (ServiceAccounts, pod label selector).
//!
//! Every limit that applies to the caller must admit a request: one request from its requests
//! allowance, and its token estimate from its tokens allowance (the body's bytes / 4 for the
//! prompt, plus its `max_tokens` / `max_completion_tokens` / `max_output_tokens`). A refused request gets 429
//! `rate_limit_exceeded` in the client's dialect with `Retry-After`; what it took from other
//! limits is given back. When the request ends, the token estimate is corrected with the usage
//! (metered, or estimated for a cut stream; nothing for a request that got no answer).
//! Answers of a limited route carry OpenAI's headers for the most constrained limit of each
//! unit: `x-ratelimit-limit-requests`, `-remaining-requests`, `-reset-requests` (time until the
//! allowance is whole again, e.g. `6s`, `1m0s`) and the same for `-tokens`.
//!
//! Where an allowance is kept is behind [`Pool`]: a local limit is a token bucket in this sidecar
//! ([`bucket`]); a cluster-wide limit would be a lease on the budget ledger, handed out by a
//! [`Ledger`]. Without one (this version: the ledger is not available yet), a cluster limit is
//! kept locally and render says so on the Route.

pub mod bucket;
pub mod selector;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gatehouse_crds::config::{RateLimitConfig, RateLimitScopeConfig};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::{Context, End, Flow, Hooks, Stage};
use crate::error::ProxyError;
use crate::metrics::{Metrics, RateLimitLabels};
use crate::request::Request;
use crate::state::ServedRoute;
use crate::workload::Workload;

/// What an allowance says about itself, for the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The limit per minute.
    pub limit: u64,
    /// What is left now.
    pub remaining: u64,
    /// Until the allowance is whole again.
    pub reset: Duration,
}

/// The answer of an allowance to a request.
#[derive(Debug, Clone, Copy)]
pub enum Take {
    /// Taken; the status after it.
    Granted(Status),
    /// Not enough: when it would be, and the status now.
    Refused {
        /// When the amount would fit.
        retry_after: Duration,
        /// The allowance now.
        status: Status,
    },
}

/// Where one unit (requests or tokens) of one limit is kept.
pub trait Pool: Send + Sync + std::fmt::Debug {
    /// Take `amount`, or say when it would fit.
    fn take(&self, amount: u64, now: Instant) -> Take;
    /// Correct what was taken: `delta` more (positive) or back (negative); never refuses.
    fn adjust(&self, delta: i64, now: Instant);
    /// The allowance now.
    fn status(&self, now: Instant) -> Status;
}

/// The unit of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

impl Unit {
    /// The name in OpenAI's headers and error `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
        }
    }
}

/// Hands out the pools of cluster-wide limits: leases on the budget ledger, shared by every
/// sidecar the limit applies to.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// The pool of `unit` of limit `limit` of route `route` (`limit_value` per minute).
    fn pool(&self, route: &str, limit: &str, unit: Unit, limit_value: u64) -> Arc<dyn Pool>;
}

/// One configured limit: its pools, shared by every request of its route and kept across config
/// reloads while the route, the limit's name and its numbers stay the same.
#[derive(Debug)]
pub struct Limiter {
    /// The limit's name.
    pub name: Arc<str>,
    /// Where it is counted.
    pub scope: RateLimitScopeConfig,
    requests: Option<(u64, Arc<dyn Pool>)>,
    tokens: Option<(u64, Arc<dyn Pool>)>,
}

/// Identifies a limiter across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    route: Arc<str>,
    name: String,
    requests: Option<u64>,
    tokens: Option<u64>,
    scope: RateLimitScopeConfig,
}

/// The rate-limit decision of one request, for the headers, the audit line and the correction
/// at the end.
#[derive(Debug, Default)]
pub struct Decision {
    /// The limits that took something from this request.
    charged: Vec<Arc<Limiter>>,
    /// The token estimate each of them took.
    estimate: u64,
    /// The most constrained requests allowance after this request.
    pub requests: Option<Status>,
    /// The most constrained tokens allowance after this request.
    pub tokens: Option<Status>,
    /// The limit that refused the request, if one did.
    pub refused_by: Option<Arc<str>>,
    /// Names of the limits that applied.
    pub applied: Vec<Arc<str>>,
}

impl Decision {
    /// `allowed` or `limited`, for the audit line.
    pub fn outcome(&self) -> &'static str {
        if self.refused_by.is_some() {
            "limited"
        } else {
            "allowed"
        }
    }
}

/// The rate-limit stage.
#[derive(Debug)]
pub struct RateLimit {
    metrics: Arc<Metrics>,
    workload: Arc<Workload>,
    limiters: Mutex<HashMap<Key, Arc<Limiter>>>,
    ledger: Option<Arc<dyn Ledger>>,
    warned_cluster: std::sync::atomic::AtomicBool,
}

impl RateLimit {
    /// Rate limits for requests of `workload`; cluster-wide limits through `ledger` when there
    /// is one.
    pub fn new(
        metrics: Arc<Metrics>,
        workload: Arc<Workload>,
        ledger: Option<Arc<dyn Ledger>>,
    ) -> Self {
        Self {
            metrics,
            workload,
            limiters: Mutex::new(HashMap::new()),
            ledger,
            warned_cluster: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The limiters of `route` that apply to this sidecar's workload, created on first use.
    fn limiters<'r>(&self, route: &'r ServedRoute) -> &'r [Arc<Limiter>] {
        route.rate_limits.get_or_init(|| {
            let mut registry = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
            route
                .config
                .rate_limits
                .iter()
                .filter(|l| selector::applies(l, &self.workload))
                .map(|l| {
                    let key = Key {
                        route: route.name.clone(),
                        name: l.name.clone(),
                        requests: l.requests_per_minute,
                        tokens: l.tokens_per_minute,
                        scope: l.scope,
                    };
                    registry
                        .entry(key)
                        .or_insert_with(|| Arc::new(self.limiter(&route.name, l)))
                        .clone()
                })
                .collect()
        })
    }

    fn limiter(&self, route: &str, l: &RateLimitConfig) -> Limiter {
        let now = Instant::now();
        let pool = |unit: Unit, limit: u64| -> Arc<dyn Pool> {
            match (l.scope, &self.ledger) {
                (RateLimitScopeConfig::Cluster, Some(ledger)) => {
                    ledger.pool(route, &l.name, unit, limit)
                }
                (RateLimitScopeConfig::Cluster, None) => {
                    if !self
                        .warned_cluster
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::warn!(route, limit = %l.name, "cluster-wide rate limits are not available in this version: enforced by each sidecar on its own");
                    }
                    Arc::new(bucket::Bucket::new(limit, now))
                }
                (RateLimitScopeConfig::Local, _) => Arc::new(bucket::Bucket::new(limit, now)),
            }
        };
        Limiter {
            name: Arc::from(l.name.as_str()),
            scope: l.scope,
            requests: l.requests_per_minute.map(|n| (n, pool(Unit::Requests, n))),
            tokens: l.tokens_per_minute.map(|n| (n, pool(Unit::Tokens, n))),
        }
    }
}

/// The token estimate of a request before it is sent: its body's bytes / 4 (the prompt, the
/// JSON around it included, so a little high) plus the most output it allows.
pub fn estimate(request: &Request) -> u64 {
    (request.body_len() as u64).div_ceil(4) + request.index.max_tokens.unwrap_or(0)
}

/// The more constrained of two statuses (less left; on a tie, the longer reset).
fn tighter(a: Option<Status>, b: Status) -> Status {
    match a {
        Some(a)
            if (a.remaining, std::cmp::Reverse(a.reset))
                <= (b.remaining, std::cmp::Reverse(b.reset)) =>
        {
            a
        }
        _ => b,
    }
}

impl Stage for RateLimit {
    fn name(&self) -> &'static str {
        "ratelimit"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            response: true,
            end: true,
            ..Hooks::default()
        }
    }

    fn on_request(&self, ctx: &mut Context, request: &mut Request) -> Result<Flow, ProxyError> {
        let Some(route) = ctx.route.clone() else {
            return Ok(Flow::Continue);
        };
        if route.config.rate_limits.is_empty() {
            return Ok(Flow::Continue);
        }
        let limiters = self.limiters(&route);
        if limiters.is_empty() {
            return Ok(Flow::Continue);
        }
        let now = Instant::now();
        let estimate = estimate(request);
        let mut decision = Decision {
            estimate,
            ..Decision::default()
        };
        let mut refused: Option<(Arc<str>, Unit, u64, Duration)> = None;
        for limiter in limiters {
            decision.applied.push(limiter.name.clone());
            let mut took_request = false;
            if let Some((limit, pool)) = &limiter.requests {
                match pool.take(1, now) {
                    Take::Granted(s) => {
                        decision.requests = Some(tighter(decision.requests, s));
                        took_request = true;
                    }
                    Take::Refused {
                        retry_after,
                        status,
                    } => {
                        decision.requests = Some(status);
                        refused = Some((limiter.name.clone(), Unit::Requests, *limit, retry_after));
                        break;
                    }
                }
            }
            if let Some((limit, pool)) = &limiter.tokens {
                match pool.take(estimate, now) {
                    Take::Granted(s) => decision.tokens = Some(tighter(decision.tokens, s)),
                    Take::Refused {
                        retry_after,
                        status,
                    } => {
                        decision.tokens = Some(status);
                        if took_request && let Some((_, p)) = &limiter.requests {
                            p.adjust(-1, now);
                        }
                        refused = Some((limiter.name.clone(), Unit::Tokens, *limit, retry_after));
                        break;
                    }
                }
            }
            decision.charged.push(limiter.clone());
        }
        let Some((limit, unit, limit_value, retry_after)) = refused else {
            ctx.rate_limit = Some(Box::new(decision));
            return Ok(Flow::Continue);
        };
        // Refused: what the limits before took goes back.
        for l in decision.charged.drain(..) {
            if let Some((_, p)) = &l.requests {
                p.adjust(-1, now);
            }
            if let Some((_, p)) = &l.tokens {
                p.adjust(-(estimate.min(i64::MAX as u64) as i64), now);
            }
        }
        self.metrics
            .rate_limited
            .get_or_create(&RateLimitLabels {
                route: route.name.clone(),
                limit: limit.clone(),
                unit: unit.as_str(),
            })
            .inc();
        decision.refused_by = Some(limit.clone());
        ctx.rate_limit = Some(Box::new(decision));
        Err(ProxyError::RateLimited {
            route: route.name.to_string(),
            limit: limit.to_string(),
            unit: unit.as_str(),
            limit_value,
            retry_after: retry_after.max(Duration::from_millis(1)),
        })
    }

    fn on_response(&self, ctx: &Context, _status: StatusCode, headers: &mut HeaderMap) {
        let Some(decision) = &ctx.rate_limit else {
            return;
        };
        for (unit, status) in [("requests", decision.requests), ("tokens", decision.tokens)] {
            let Some(s) = status else { continue };
            let name = |what: &str| format!("x-ratelimit-{what}-{unit}");
            for (what, value) in [
                ("limit", s.limit.to_string()),
                ("remaining", s.remaining.to_string()),
                ("reset", go_duration(s.reset)),
            ] {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::try_from(name(what)),
                    HeaderValue::try_from(value),
                ) {
                    headers.insert(n, v);
                }
            }
        }
    }

    fn on_end(&self, ctx: &mut Context, _end: End) {
        let Some(decision) = ctx.rate_limit.as_mut() else {
            return;
        };
        if decision.charged.is_empty() {
            return;
        }
        // What the request really used: its usage (a stream cut before its report: what was
        // measured); nothing if no answer came.
        let used = if ctx.answered_by.is_some() {
            let usage = if ctx.streaming && !ctx.measured.final_usage {
                Some(ctx.measured.estimate(ctx.usage))
            } else {
                ctx.usage
            };
            usage.map_or(0, |u| u.prompt_tokens.saturating_add(u.completion_tokens))
        } else {
            0
        };
        let delta = i64::try_from(used).unwrap_or(i64::MAX)
            - i64::try_from(decision.estimate).unwrap_or(i64::MAX);
        if delta == 0 {
            return;
        }
        let now = Instant::now();
        for l in decision.charged.drain(..) {
            if let Some((_, p)) = &l.tokens {
                p.adjust(delta, now);
            }
        }
    }
}

/// A duration as OpenAI writes its `x-ratelimit-reset-*` headers (Go's format): `250ms`, `6s`,
/// `1.5s`, `1m0s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let s = format!("{secs:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_headers_read_like_openai() {
        assert_eq!(go_duration(Duration::from_millis(17)), "17ms");
        assert_eq!(go_duration(Duration::from_secs(6)), "6s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(Duration::from_secs(3725)), "1h2m5s");
    }
}
