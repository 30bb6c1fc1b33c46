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
//! A local limit is a token bucket in this sidecar ([`bucket`], behind [`Pool`]). A
//! `scope: cluster` limit is an account on the operator's budget ledger (kind `rateLimit`, named
//! `<route>/<limit>`, fixed minute windows from the epoch): the request reserves one request and
//! its token estimate in the sidecar's lease before it is sent (waiting up to [`CLUSTER_WAIT`]
//! for a sync when the lease has no room), and settles the request and its used tokens when it
//! ends. Its `x-ratelimit-*` headers are the ledger's view (every sidecar's use as of the last
//! sync, plus this sidecar's since), reset at the window's end. Without a remote ledger
//! (`--manifests` without `--ledger-url`: one sidecar is the whole cluster) a cluster limit is a
//! bucket here too.

pub mod bucket;
pub mod selector;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gatehouse_crds::config::{RateLimitConfig, RateLimitScopeConfig};
use gatehouse_crds::ledger::Amount;
use http::{HeaderMap, HeaderValue, StatusCode};
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::budget::ledger::{Admission, Ledger, Ticket};
use super::budget::policy::Policy;

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

/// How long a request waits in all for the ledger to grant its cluster limits room, before it
/// is refused (or, while the ledger cannot be reached, let through: cluster limits fail open).
pub const CLUSTER_WAIT: Duration = Duration::from_secs(2);

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
    /// A cluster limit's account on the ledger (then no local pools).
    cluster: Option<Arc<Policy>>,
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
    /// The reservation in the cluster limits' ledger accounts, settled when the request ends.
    ticket: Option<Ticket>,
    /// Waiting for the ledger until then.
    waiting: Option<Instant>,
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
}

impl RateLimit {
    /// Rate limits for requests of `workload`; cluster-wide limits on `ledger` (the remote
    /// budget ledger) when there is one, else in this sidecar.
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
        if l.scope == RateLimitScopeConfig::Cluster && self.ledger.is_some() {
            return Limiter {
                name: Arc::from(l.name.as_str()),
                scope: l.scope,
                requests: None,
                tokens: None,
                cluster: Some(Arc::new(Policy::rate_limit(
                    route,
                    &l.name,
                    l.requests_per_minute,
                    l.tokens_per_minute,
                ))),
            };
        }
        let pool = |limit: u64| -> Arc<dyn Pool> { Arc::new(bucket::Bucket::new(limit, now)) };
        Limiter {
            name: Arc::from(l.name.as_str()),
            scope: l.scope,
            requests: l.requests_per_minute.map(|n| (n, pool(n))),
            tokens: l.tokens_per_minute.map(|n| (n, pool(n))),
            cluster: None,
        }
    }

    /// Reserve in the cluster limits' accounts. `Ok(None)`: reserved (or none applies);
    /// `Ok(Some(flow))`: wait for the ledger; `Err`: refused.
    fn reserve_cluster(
        &self,
        route: &ServedRoute,
        limiters: &[Arc<Limiter>],
        decision: &mut Decision,
    ) -> Result<Option<Flow>, ProxyError> {
        let Some(ledger) = &self.ledger else {
            return Ok(None);
        };
        let cluster: Vec<Arc<Policy>> = limiters.iter().filter_map(|l| l.cluster.clone()).collect();
        if cluster.is_empty() || decision.ticket.is_some() {
            return Ok(None);
        }
        let may_wait = decision.waiting.is_none_or(|d| Instant::now() < d);
        let amount = Amount {
            nano_usd: 1,
            tokens: decision.estimate,
        };
        let refused = match ledger.reserve(&cluster, amount, may_wait) {
            Admission::Reserved(ticket) => {
                decision.ticket = Some(ticket);
                decision.waiting = None;
                None
            }
            Admission::Wait(wait) => {
                let deadline = *decision
                    .waiting
                    .get_or_insert_with(|| Instant::now() + CLUSTER_WAIT);
                return Ok(Some(Flow::Wait(Box::pin(async move {
                    let _ = tokio::time::timeout_at(deadline, wait).await;
                }))));
            }
            Admission::Exceeded { budget, resets } => Some((budget, resets)),
            // Cluster limits fail open: never refused for an unreachable ledger.
            Admission::Unavailable { .. } => None,
        };
        decision.waiting = None;
        for p in &cluster {
            let (requests, tokens) = cluster_status(ledger.as_ref(), p);
            if let Some(s) = requests {
                decision.requests = Some(tighter(decision.requests, s));
            }
            if let Some(s) = tokens {
                decision.tokens = Some(tighter(decision.tokens, s));
            }
        }
        let Some((account, resets)) = refused else {
            return Ok(None);
        };
        let limiter = limiters
            .iter()
            .find(|l| l.cluster.as_ref().is_some_and(|p| p.name == account));
        let (name, policy) = match limiter {
            Some(l) => (l.name.clone(), l.cluster.clone()),
            None => (account.clone(), None),
        };
        let (unit, limit_value) = match policy.as_deref() {
            Some(p) => {
                let used = ledger.account_view(p).map(|(u, _)| u).unwrap_or_default();
                match (p.limit.nano_usd, p.limit.tokens) {
                    (Some(rpm), _) if used.nano_usd.saturating_add(1) > rpm => {
                        (Unit::Requests, rpm)
                    }
                    (_, Some(tpm)) => (Unit::Tokens, tpm),
                    (Some(rpm), None) => (Unit::Requests, rpm),
                    (None, None) => (Unit::Requests, 0),
                }
            }
            None => (Unit::Requests, 0),
        };
        decision.applied = limiters.iter().map(|l| l.name.clone()).collect();
        Err(self.refuse(
            route,
            decision,
            name,
            unit,
            limit_value,
            resets.map_or(Duration::from_secs(1), until),
        ))
    }

    fn refuse(
        &self,
        route: &ServedRoute,
        decision: &mut Decision,
        limit: Arc<str>,
        unit: Unit,
        limit_value: u64,
        retry_after: Duration,
    ) -> ProxyError {
        self.metrics
            .rate_limited
            .get_or_create(&RateLimitLabels {
                route: route.name.clone(),
                limit: limit.clone(),
                unit: unit.as_str(),
            })
            .inc();
        decision.refused_by = Some(limit.clone());
        ProxyError::RateLimited {
            route: route.name.to_string(),
            limit: limit.to_string(),
            unit: unit.as_str(),
            limit_value,
            retry_after: retry_after.max(Duration::from_millis(1)),
        }
    }
}

/// The headers' statuses of a cluster limit, from what this sidecar knows of the ledger.
fn cluster_status(ledger: &dyn Ledger, policy: &Policy) -> (Option<Status>, Option<Status>) {
    let (used, end) = ledger.account_view(policy).unwrap_or_default();
    let reset = end.map_or(Duration::ZERO, until);
    let status = |limit: Option<u64>, used: u64| {
        limit.map(|limit| Status {
            limit,
            remaining: limit.saturating_sub(used),
            reset,
        })
    };
    (
        status(policy.limit.nano_usd, used.nano_usd),
        status(policy.limit.tokens, used.tokens),
    )
}

/// Time from now until `t` (zero when it passed).
fn until(t: Timestamp) -> Duration {
    let ms = t
        .as_millisecond()
        .saturating_sub(Timestamp::now().as_millisecond());
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
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
        let estimate = estimate(request);
        let mut decision = match ctx.rate_limit.take() {
            // Asked again after waiting for the ledger.
            Some(d) if d.waiting.is_some() => d,
            _ => Box::new(Decision {
                estimate,
                ..Decision::default()
            }),
        };
        // Cluster limits first: a wait for the ledger holds nothing of the local ones.
        match self.reserve_cluster(&route, limiters, &mut decision) {
            Ok(None) => {}
            Ok(Some(flow)) => {
                ctx.rate_limit = Some(decision);
                return Ok(flow);
            }
            Err(e) => {
                ctx.rate_limit = Some(decision);
                return Err(e);
            }
        }
        let now = Instant::now();
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
            ctx.rate_limit = Some(decision);
            return Ok(Flow::Continue);
        };
        // Refused here: the cluster reservation goes back unspent.
        if let (Some(ticket), Some(ledger)) = (decision.ticket.take(), &self.ledger) {
            ledger.settle(ticket, Amount::default());
        }
        // Refused: what the limits before took goes back.
        for l in decision.charged.drain(..) {
            if let Some((_, p)) = &l.requests {
                p.adjust(-1, now);
            }
            if let Some((_, p)) = &l.tokens {
                p.adjust(-(estimate.min(i64::MAX as u64) as i64), now);
            }
        }
        let e = self.refuse(&route, &mut decision, limit, unit, limit_value, retry_after);
        ctx.rate_limit = Some(decision);
        Err(e)
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
        let ticket = decision.ticket.take();
        if decision.charged.is_empty() && ticket.is_none() {
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
        // A cluster limit spends the request and the tokens it used.
        if let (Some(ticket), Some(ledger)) = (ticket, &self.ledger) {
            ledger.settle(
                ticket,
                Amount {
                    nano_usd: 1,
                    tokens: used,
                },
            );
        }
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
