//! The end-of-request record: metrics and one access-log line per request, for buffered and
//! streamed answers alike, written once when the request ends.
//!
//! The access line (target `gatehouse::access`; message `request`, or `stream finished` for a
//! relayed stream) has: `request_id`; the identity `namespace`, `workload`, `service_account`,
//! `pod`, `tag`; `route`, `provider`, `model`; the tokens by type `input_tokens`,
//! `cached_read_tokens`, `cache_write_tokens`, `output_tokens`, `reasoning_tokens` (absent when
//! no usage was measured); `cost_usd` (decimal USD, `unknown` for an answer of an unpriced model,
//! `0` when nothing was billed) and `cost_estimated`; `status`, `attempts`, `rule`, `budget` (what
//! the covering Budgets made of it: ok, warn, downgraded, exceeded, unavailable; absent when none
//! covers it) and `downgraded_to`, `stream`, `end`, `duration_ms`. Never a key, a prompt or an
//! answer.

use std::fmt;
use std::sync::Arc;

use super::{Context, End, Hooks, Stage};
use crate::metrics::{
    AttemptLabels, ErrorLabels, Metrics, RequestLabels, RouteLabels, SpendLabels,
};

/// The status recorded for a request whose client went away before any response head left
/// (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// Records metrics and the access line.
#[derive(Debug)]
pub struct Telemetry {
    metrics: Arc<Metrics>,
    /// The label value of a missing identity part or tag, shared.
    empty: Arc<str>,
}

impl Telemetry {
    /// Record into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            empty: Arc::from(""),
        }
    }

    /// The spend counters: tokens by type whenever usage was measured, USD when it was priced.
    fn spend(&self, ctx: &Context) {
        let (Some(target), Some(route), Some(usage)) = (&ctx.answered_by, &ctx.route, &ctx.usage)
        else {
            return;
        };
        let workload = ctx.identity.workload.as_deref();
        // Reference counts only: no allocation for a label set already seen.
        let labels = SpendLabels {
            namespace: workload.map_or_else(|| self.empty.clone(), |w| w.namespace.clone()),
            workload: workload.map_or_else(|| self.empty.clone(), |w| w.name.clone()),
            tag: ctx
                .identity
                .tag
                .clone()
                .unwrap_or_else(|| self.empty.clone()),
            route: route.name.clone(),
            provider: target.provider.name.clone(),
            model: target.model.clone(),
        };
        self.metrics
            .spend
            .add(&labels, &usage.tokens(), ctx.cost_usd);
    }
}

/// The access line's `cost_usd`, formatted when the line is written (no string built for it).
struct Cost<'a>(&'a Context);

impl fmt::Display for Cost<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ctx = self.0;
        match ctx.cost_usd {
            // The precision of the `x-gatehouse-cost-usd` header.
            Some(cost) => write!(f, "{cost:.8}"),
            // Answered and measured but not priced (ISSUE #11's contract with metering).
            None if ctx.answered_by.is_some() && ctx.usage.is_some() => f.write_str("unknown"),
            None => f.write_str("0"),
        }
    }
}

impl Stage for Telemetry {
    fn name(&self) -> &'static str {
        "telemetry"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            end: true,
            ..Hooks::default()
        }
    }

    fn on_end(&self, ctx: &mut Context, end: End) {
        let m = &self.metrics;
        let status = ctx.status.map_or(CLIENT_CLOSED, |s| s.as_u16());
        // Label values are shared strings: reference counts, no allocation per request.
        let shared = |name: Option<&Arc<str>>| name.map_or_else(|| self.empty.clone(), Arc::clone);
        let route_label = shared(ctx.route.as_ref().map(|r| &r.name));
        let provider_label = shared(ctx.answered_by.as_ref().map(|t| &t.provider.name));
        let model_label = shared(ctx.answered_by.as_ref().map(|t| &t.model));
        let (route, provider, model) = (&*route_label, &*provider_label, &*model_label);
        m.requests
            .get_or_create(&RequestLabels {
                route: route_label.clone(),
                provider: provider_label.clone(),
                model: model_label.clone(),
                status,
            })
            .inc();
        // Duration and overhead up to the response head (for a stream: until it was committed),
        // as the metrics document.
        let elapsed = ctx.head_elapsed.unwrap_or_else(|| ctx.start.elapsed());
        if !route.is_empty() {
            m.request_duration
                .get_or_create(&RouteLabels {
                    route: route_label.clone(),
                })
                .observe(elapsed.as_secs_f64());
        }
        if !ctx.attempts.is_empty() {
            m.overhead
                .observe(elapsed.saturating_sub(ctx.upstream_wait).as_secs_f64());
        }
        for attempt in &ctx.attempts {
            m.attempts
                .get_or_create(&AttemptLabels {
                    provider: attempt.target.provider.name.clone(),
                    outcome: attempt.outcome,
                })
                .inc();
        }
        if let Some(reason) = ctx.error {
            m.errors.get_or_create(&ErrorLabels { reason }).inc();
        }
        if end == End::StreamBroken {
            m.streams_broken
                .get_or_create(&RouteLabels {
                    route: route_label.clone(),
                })
                .inc();
        }
        if end == End::ClientGone {
            m.client_disconnects
                .get_or_create(&RouteLabels {
                    route: route_label.clone(),
                })
                .inc();
        }
        self.spend(ctx);
        let duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0;
        let workload = ctx.identity.workload.as_deref();
        let tokens = ctx.usage.map(|u| u.tokens());
        let budget = ctx.budget.as_ref().and_then(|b| b.outcome);
        // One line per request; a relayed stream's says so in its message (it is written when the
        // stream ends, with the stream's usage and cost).
        macro_rules! access_line {
            ($message:literal) => {
                tracing::info!(
                    target: "gatehouse::access",
                    request_id = %ctx.request_id,
                    namespace = workload.map_or("", |w| &*w.namespace),
                    workload = workload.map_or("", |w| &*w.name),
                    service_account = workload.map_or("", |w| &*w.service_account),
                    pod = workload.map_or("", |w| &*w.pod),
                    tag = ctx.identity.tag.as_deref().unwrap_or(""),
                    route,
                    provider,
                    model,
                    input_tokens = tokens.map(|t| t.input),
                    cached_read_tokens = tokens.map(|t| t.cached_read),
                    cache_write_tokens = tokens.map(|t| t.cache_write),
                    output_tokens = tokens.map(|t| t.output),
                    reasoning_tokens = tokens.map(|t| t.reasoning),
                    cost_usd = %Cost(ctx),
                    cost_estimated = ctx.usage_estimated,
                    status,
                    attempts = ctx.attempts.len(),
                    rule = ctx.rule.as_deref().unwrap_or(""),
                    budget = budget.map(|b| b.as_str()),
                    downgraded_to = ctx.budget.as_ref().and_then(|b| b.downgraded_to()),
                    stream = ctx.stream,
                    end = end.as_str(),
                    duration_ms,
                    $message
                )
            };
        }
        if ctx.streaming {
            access_line!("stream finished");
        } else {
            access_line!("request");
        }
    }
}
