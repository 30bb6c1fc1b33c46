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
use crate::genai;
use crate::metrics::{
    AttemptLabels, CacheLabels, ErrorLabels, FailoverLabels, GenAiLabels, Metrics,
    RateLimitDecisionLabels, RequestLabels, RouteLabels, SpendLabels, TokenUsageLabels,
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

impl Telemetry {
    /// The GenAI convention metrics (`metrics` module doc): the server ones per request, the
    /// client ones per attempt.
    fn genai(&self, ctx: &Context, end: End, route: &Arc<str>) {
        let Some(op) = ctx.operation else {
            return;
        };
        let m = &self.metrics;
        let operation = genai::operation_name(op);
        let answered = ctx.answered_by.as_ref();
        // Server side: as the app saw the request.
        let failed = ctx.status.is_some_and(|s| s.as_u16() >= 400);
        let error_type = match (ctx.error, end) {
            (Some(code), _) => code,
            (None, End::StreamBroken) => "stream_broken",
            (None, End::ClientGone) => "client_gone",
            // A provider's refusal relayed as it was: the last attempt's outcome.
            (None, _) if failed => ctx
                .attempts
                .last()
                .map(|a| a.outcome)
                .filter(|o| *o != "success")
                .unwrap_or("_OTHER"),
            (None, _) => "",
        };
        let server = GenAiLabels {
            gen_ai_operation_name: operation,
            gen_ai_provider_name: answered.map_or("", |t| genai::provider_name(t.provider.kind)),
            gen_ai_request_model: route.clone(),
            gen_ai_response_model: answered.map_or_else(|| self.empty.clone(), |t| t.model.clone()),
            error_type,
            route: route.clone(),
            provider: answered.map_or_else(|| self.empty.clone(), |t| t.provider.name.clone()),
        };
        let total = ctx.start.elapsed();
        let output = ctx.usage.map_or(0, |u| {
            let t = u.tokens();
            t.output + t.reasoning
        });
        m.genai_server.with(&server, |s| {
            s.duration.observe(total.as_secs_f64());
            if let Some(first) = ctx.first_event
                && error_type.is_empty()
            {
                s.observe_ttft(first.as_secs_f64());
                if end == End::StreamComplete && output > 1 {
                    s.observe_tpot(total.saturating_sub(first).as_secs_f64() / (output - 1) as f64);
                }
            }
        });
        // Client side: each attempt, as the provider served it.
        for attempt in &ctx.attempts {
            let ok = attempt.outcome == "success";
            let target = &attempt.target;
            let labels = GenAiLabels {
                gen_ai_operation_name: operation,
                gen_ai_provider_name: genai::provider_name(target.provider.kind),
                gen_ai_request_model: target.model.clone(),
                gen_ai_response_model: if ok {
                    target.model.clone()
                } else {
                    self.empty.clone()
                },
                error_type: if ok { "" } else { attempt.outcome },
                route: route.clone(),
                provider: target.provider.name.clone(),
            };
            m.genai_client_duration
                .with(&labels, |h| h.observe(attempt.elapsed.as_secs_f64()));
        }
        if let (Some(target), Some(usage)) = (answered, ctx.usage) {
            let t = usage.tokens();
            let input = t.input + t.cached_read + t.cache_write;
            let output = t.output + t.reasoning;
            let labels = TokenUsageLabels {
                gen_ai_operation_name: operation,
                gen_ai_provider_name: genai::provider_name(target.provider.kind),
                gen_ai_request_model: target.model.clone(),
                gen_ai_response_model: target.model.clone(),
                route: route.clone(),
                provider: target.provider.name.clone(),
            };
            m.genai_tokens.with(&labels, |s| {
                s.input.observe(input as f64);
                s.output.observe(output as f64);
            });
        }
    }

    /// Cache results, failovers and rate-limit decisions of a routed request.
    fn decisions(&self, ctx: &Context, route: &Arc<str>) {
        let m = &self.metrics;
        m.cache_requests
            .get_or_create(&CacheLabels {
                route: route.clone(),
                result: ctx.cache.as_str(),
            })
            .inc();
        for pair in ctx.attempts.windows(2) {
            let (from, to) = (&pair[0].target, &pair[1].target);
            if from.provider.name != to.provider.name || from.model != to.model {
                m.failovers
                    .get_or_create(&FailoverLabels {
                        route: route.clone(),
                        from_provider: from.provider.name.clone(),
                        to_provider: to.provider.name.clone(),
                    })
                    .inc();
            }
        }
        if let Some(decision) = ctx.rate_limit.as_deref() {
            for limit in &decision.applied {
                let refused = decision.refused_by.as_ref() == Some(limit);
                m.rate_limit_decisions
                    .get_or_create(&RateLimitDecisionLabels {
                        route: route.clone(),
                        limit: limit.clone(),
                        result: if refused { "refused" } else { "allowed" },
                    })
                    .inc();
            }
        }
    }

    /// Every per-request metric (`--metrics on`).
    fn record(&self, ctx: &Context, end: End) {
        let m = &self.metrics;
        let status = ctx.status.map_or(CLIENT_CLOSED, |s| s.as_u16());
        // Label values are shared strings: reference counts, no allocation per request.
        let shared = |name: Option<&Arc<str>>| name.map_or_else(|| self.empty.clone(), Arc::clone);
        let route_label = shared(ctx.route.as_ref().map(|r| &r.name));
        let provider_label = shared(ctx.answered_by.as_ref().map(|t| &t.provider.name));
        let model_label = shared(ctx.answered_by.as_ref().map(|t| &t.model));
        m.requests
            .get_or_create(&RequestLabels {
                route: route_label.clone(),
                provider: provider_label,
                model: model_label,
                status,
            })
            .inc();
        // Duration and overhead up to the response head (for a stream: until it was committed),
        // as the metrics document.
        let elapsed = ctx.head_elapsed.unwrap_or_else(|| ctx.start.elapsed());
        if !route_label.is_empty() {
            m.request_duration
                .get_or_create(&RouteLabels {
                    route: route_label.clone(),
                })
                .observe(elapsed.as_secs_f64());
            self.decisions(ctx, &route_label);
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
        self.genai(ctx, end, &route_label);
        self.spend(ctx);
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
        if self.metrics.recording {
            self.record(ctx, end);
        }
        let status = ctx.status.map_or(CLIENT_CLOSED, |s| s.as_u16());
        let route = ctx.route.as_deref().map_or("", |r| &*r.name);
        let provider = ctx.answered_by.as_ref().map_or("", |t| &*t.provider.name);
        let model = ctx.answered_by.as_ref().map_or("", |t| &*t.model);
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
