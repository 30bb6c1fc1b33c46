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

use http::StatusCode;

use super::{CacheStatus, Context, End, Hooks, Stage};
use crate::dialect::Operation;
use crate::genai;
use crate::metrics::{
    AttemptLabels, CacheLabels, ErrorLabels, FailoverLabels, GenAiLabels, Metrics,
    RateLimitDecisionLabels, RequestLabels, RouteHandles, RouteLabels, ServerSeries, SpendLabels,
    TargetHandles, TokenSeries, TokenUsageLabels,
};
use crate::state::ServedRoute;

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
    /// The series of `route` that do not depend on the request beyond it, resolved on its first
    /// request; `None` when the route's handles belong to another [`Metrics`] (a test running two
    /// sidecars on one snapshot).
    fn route_handles<'a>(&self, route: &'a ServedRoute) -> Option<&'a RouteHandles> {
        let m = &self.metrics;
        let h = route.metric_handles.get_or_init(|| RouteHandles {
            owner: m.id,
            duration: m.request_duration.get_or_create_owned(&RouteLabels {
                route: route.name.clone(),
            }),
            cache: Default::default(),
            targets: route.targets.iter().map(|_| Default::default()).collect(),
        });
        (h.owner == m.id).then_some(h)
    }

    /// The series of a plain request, the common case: answered 200 by one of its Route's own
    /// targets at the first attempt, nothing failed. Resolved with the same labels the labelled
    /// path uses, once per target and operation.
    fn target_handles<'a>(
        &self,
        ctx: &Context,
        end: End,
        route: &ServedRoute,
        handles: &'a RouteHandles,
    ) -> Option<&'a TargetHandles> {
        let answered = ctx.answered_by.as_ref()?;
        let op = ctx.operation?;
        let [attempt] = ctx.attempts.as_slice() else {
            return None;
        };
        if ctx.status != Some(StatusCode::OK)
            || ctx.error.is_some()
            || attempt.outcome != "success"
            || matches!(end, End::StreamBroken | End::ClientGone)
        {
            return None;
        }
        let i = route.targets.iter().position(|t| {
            Arc::ptr_eq(&t.provider, &answered.provider) && t.model == answered.model
        })?;
        let slot = handles.targets.get(i)?.get(match op {
            Operation::Chat => 0,
            Operation::Embeddings => 1,
        })?;
        Some(slot.get_or_init(|| {
            let m = &self.metrics;
            let labels = GenAiLabels {
                gen_ai_operation_name: genai::operation_name(op),
                gen_ai_provider_name: genai::provider_name(answered.provider.kind),
                gen_ai_request_model: route.name.clone(),
                gen_ai_response_model: answered.model.clone(),
                error_type: "",
                route: route.name.clone(),
                provider: answered.provider.name.clone(),
            };
            let server = m.genai_server.handle(&labels);
            let labels = GenAiLabels {
                gen_ai_request_model: answered.model.clone(),
                ..labels
            };
            let client = m.genai_client_duration.handle(&labels);
            let tokens = m.genai_tokens.handle(&TokenUsageLabels {
                gen_ai_operation_name: labels.gen_ai_operation_name,
                gen_ai_provider_name: labels.gen_ai_provider_name,
                gen_ai_request_model: answered.model.clone(),
                gen_ai_response_model: answered.model.clone(),
                route: route.name.clone(),
                provider: answered.provider.name.clone(),
            });
            TargetHandles {
                requests: m.requests.get_or_create_owned(&RequestLabels {
                    route: route.name.clone(),
                    provider: answered.provider.name.clone(),
                    model: answered.model.clone(),
                    status: StatusCode::OK.as_u16(),
                }),
                attempts: m.attempts.get_or_create_owned(&AttemptLabels {
                    provider: answered.provider.name.clone(),
                    outcome: "success",
                }),
                server,
                client,
                tokens,
            }
        }))
    }

    /// The GenAI convention metrics (`metrics` module doc): the server ones per request, the
    /// client ones per attempt. `plain` holds their series when the request is a plain one.
    fn genai(&self, ctx: &Context, end: End, route: &Arc<str>, plain: Option<&TargetHandles>) {
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
        let total = ctx.start.elapsed();
        let output = ctx.usage.map_or(0, |u| {
            let t = u.tokens();
            t.output + t.reasoning
        });
        let server = |s: &ServerSeries| {
            s.duration.observe(total.as_secs_f64());
            if let Some(first) = ctx.first_event
                && error_type.is_empty()
            {
                s.observe_ttft(first.as_secs_f64());
                if end == End::StreamComplete && output > 1 {
                    s.observe_tpot(total.saturating_sub(first).as_secs_f64() / (output - 1) as f64);
                }
            }
        };
        let tokens = |s: &TokenSeries, usage: &crate::usage::Usage| {
            let t = usage.tokens();
            s.input
                .observe((t.input + t.cached_read + t.cache_write) as f64);
            s.output.observe((t.output + t.reasoning) as f64);
        };
        if let Some(plain) = plain {
            server(&plain.server);
            if let Some(attempt) = ctx.attempts.first() {
                plain.client.observe(attempt.elapsed.as_secs_f64());
            }
            if let Some(usage) = &ctx.usage {
                tokens(&plain.tokens, usage);
            }
            return;
        }
        let labels = GenAiLabels {
            gen_ai_operation_name: operation,
            gen_ai_provider_name: answered.map_or("", |t| genai::provider_name(t.provider.kind)),
            gen_ai_request_model: route.clone(),
            gen_ai_response_model: answered.map_or_else(|| self.empty.clone(), |t| t.model.clone()),
            error_type,
            route: route.clone(),
            provider: answered.map_or_else(|| self.empty.clone(), |t| t.provider.name.clone()),
        };
        m.genai_server.with(&labels, server);
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
        if let (Some(target), Some(usage)) = (answered, &ctx.usage) {
            let labels = TokenUsageLabels {
                gen_ai_operation_name: operation,
                gen_ai_provider_name: genai::provider_name(target.provider.kind),
                gen_ai_request_model: target.model.clone(),
                gen_ai_response_model: target.model.clone(),
                route: route.clone(),
                provider: target.provider.name.clone(),
            };
            m.genai_tokens.with(&labels, |s| tokens(s, usage));
        }
    }

    /// Cache results, failovers and rate-limit decisions of a routed request.
    fn decisions(&self, ctx: &Context, route: &Arc<str>, handles: Option<&RouteHandles>) {
        let m = &self.metrics;
        let result = ctx.cache.as_str();
        let labelled = || {
            m.cache_requests.get_or_create_owned(&CacheLabels {
                route: route.clone(),
                result,
            })
        };
        match handles {
            Some(h) => {
                let slot = match ctx.cache {
                    CacheStatus::Bypass => &h.cache[0],
                    CacheStatus::Hit => &h.cache[1],
                    CacheStatus::Miss => &h.cache[2],
                };
                slot.get_or_init(labelled).inc();
            }
            None => {
                labelled().inc();
            }
        }
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

    /// Every per-request metric (`--metrics on`). A request of a Route records through the
    /// Route's handles ([`RouteHandles`]) where it can, by label lookup where it cannot; the
    /// series are the same either way.
    fn record(&self, ctx: &Context, end: End) {
        let m = &self.metrics;
        let route = ctx.route.as_deref();
        let handles = route.and_then(|r| self.route_handles(r));
        let plain = route
            .zip(handles)
            .and_then(|(r, h)| self.target_handles(ctx, end, r, h));
        let status = ctx.status.map_or(CLIENT_CLOSED, |s| s.as_u16());
        // Label values are shared strings: reference counts, no allocation per request.
        let shared = |name: Option<&Arc<str>>| name.map_or_else(|| self.empty.clone(), Arc::clone);
        let route_label = shared(route.map(|r| &r.name));
        match plain {
            Some(plain) => {
                plain.requests.inc();
            }
            None => {
                m.requests
                    .get_or_create(&RequestLabels {
                        route: route_label.clone(),
                        provider: shared(ctx.answered_by.as_ref().map(|t| &t.provider.name)),
                        model: shared(ctx.answered_by.as_ref().map(|t| &t.model)),
                        status,
                    })
                    .inc();
            }
        }
        // Duration and overhead up to the response head (for a stream: until it was committed),
        // as the metrics document.
        let elapsed = ctx.head_elapsed.unwrap_or_else(|| ctx.start.elapsed());
        if !route_label.is_empty() {
            match handles {
                Some(h) => h.duration.observe(elapsed.as_secs_f64()),
                None => m
                    .request_duration
                    .get_or_create(&RouteLabels {
                        route: route_label.clone(),
                    })
                    .observe(elapsed.as_secs_f64()),
            }
            self.decisions(ctx, &route_label, handles);
        }
        if !ctx.attempts.is_empty() {
            m.overhead
                .observe(elapsed.saturating_sub(ctx.upstream_wait).as_secs_f64());
        }
        match plain {
            Some(plain) => {
                plain.attempts.inc();
            }
            None => {
                for attempt in &ctx.attempts {
                    m.attempts
                        .get_or_create(&AttemptLabels {
                            provider: attempt.target.provider.name.clone(),
                            outcome: attempt.outcome,
                        })
                        .inc();
                }
            }
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
        self.genai(ctx, end, &route_label, plain);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gatehouse_crds::config::{ProviderConfig, RouteConfig, SidecarConfig, TargetConfig};

    use super::*;
    use crate::dialect::Dialect;
    use crate::stages::AttemptRecord;
    use crate::state::Snapshot;
    use crate::usage::Usage;

    fn snapshot() -> Snapshot {
        let mut config = SidecarConfig::empty("default");
        for name in ["a", "b"] {
            let provider: ProviderConfig = serde_json::from_value(serde_json::json!({
                "type": "openai", "endpoint": "http://127.0.0.1:1/v1",
            }))
            .unwrap();
            config.providers.insert(name.into(), provider);
        }
        let target = |provider: &str, model: &str, priority| TargetConfig {
            provider: provider.into(),
            model: model.into(),
            priority,
            weight: 1,
        };
        let route = RouteConfig {
            aliases: vec!["chat".into()],
            targets: vec![target("a", "m1", 0), target("b", "m2", 1)],
            ..RouteConfig::default()
        };
        config.routes.insert("chat".into(), route);
        Snapshot::build(config, &gatehouse_crds::ProviderKeys::new()).unwrap()
    }

    /// The requests a Route sees: plain ones (buffered, stream, embeddings, to either target)
    /// and every kind that is not (failover, a refusal, a cache hit, a broken stream).
    fn requests(snapshot: &Snapshot) -> Vec<(Context, End)> {
        let route = snapshot.routes["chat"].clone();
        let (first, second) = (route.targets[0].clone(), route.targets[1].clone());
        // Far enough in the past that every duration lands in the same bucket on both runs.
        let start = tokio::time::Instant::now() - Duration::from_secs(7);
        let attempt = |target: &crate::state::Target, outcome| AttemptRecord {
            target: target.clone(),
            outcome,
            elapsed: Duration::from_millis(300),
            started: start,
        };
        let base = |op| {
            let mut ctx = Context::new(Dialect::OpenAi);
            ctx.start = start;
            ctx.route = Some(route.clone());
            ctx.operation = Some(op);
            ctx.head_elapsed = Some(Duration::from_millis(310));
            ctx
        };
        let answered = |op, target: &crate::state::Target, attempts: Vec<AttemptRecord>| {
            let mut ctx = base(op);
            ctx.answered_by = Some(target.clone());
            ctx.attempts = attempts;
            ctx.status = Some(StatusCode::OK);
            ctx.usage = Some(Usage::new(12, 20, 2, 0, 0));
            ctx
        };
        let mut out = vec![
            (
                answered(Operation::Chat, &first, vec![attempt(&first, "success")]),
                End::Answered,
            ),
            (
                answered(
                    Operation::Embeddings,
                    &first,
                    vec![attempt(&first, "success")],
                ),
                End::Answered,
            ),
            (
                answered(
                    Operation::Chat,
                    &second,
                    vec![attempt(&first, "timeout"), attempt(&second, "success")],
                ),
                End::Answered,
            ),
        ];
        let mut stream = answered(Operation::Chat, &second, vec![attempt(&second, "success")]);
        stream.streaming = true;
        stream.first_event = Some(Duration::from_millis(320));
        out.push((stream, End::StreamComplete));
        let mut broken = answered(Operation::Chat, &second, vec![attempt(&second, "success")]);
        broken.streaming = true;
        broken.first_event = Some(Duration::from_millis(320));
        out.push((broken, End::StreamBroken));
        let mut refused = base(Operation::Chat);
        refused.attempts = vec![attempt(&first, "rate_limited")];
        refused.status = Some(StatusCode::TOO_MANY_REQUESTS);
        out.push((refused, End::Answered));
        let mut hit = base(Operation::Chat);
        hit.cache = CacheStatus::Hit;
        hit.status = Some(StatusCode::OK);
        out.push((hit, End::Answered));
        let mut miss = answered(Operation::Chat, &first, vec![attempt(&first, "success")]);
        miss.cache = CacheStatus::Miss;
        out.push((miss, End::Answered));
        out
    }

    /// Every exposed sample but the sums (durations measured at the call differ by µs).
    fn samples(metrics: &Metrics) -> Vec<String> {
        let mut lines: Vec<String> = metrics
            .encode()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_sum{") && !l.contains("_sum "))
            .map(String::from)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn route_handles_record_the_same_series_as_labels() {
        let snapshot = snapshot();
        let through_handles = Telemetry::new(Arc::new(Metrics::new()));
        let through_labels = Telemetry::new(Arc::new(Metrics::new()));
        // The first to record owns the Route's handles; the other finds them another's and
        // takes the labelled path for every request.
        for _ in 0..3 {
            for (ctx, end) in requests(&snapshot) {
                through_handles.record(&ctx, end);
            }
        }
        let owner = snapshot.routes["chat"].metric_handles.get().unwrap().owner;
        assert_eq!(owner, through_handles.metrics.id);
        let plain_slots = snapshot.routes["chat"]
            .metric_handles
            .get()
            .unwrap()
            .targets[0]
            .iter()
            .chain(
                &snapshot.routes["chat"]
                    .metric_handles
                    .get()
                    .unwrap()
                    .targets[1],
            )
            .filter(|s| s.get().is_some())
            .count();
        assert_eq!(
            plain_slots, 3,
            "chat to each target and embeddings to the first"
        );
        for _ in 0..3 {
            for (ctx, end) in requests(&snapshot) {
                through_labels.record(&ctx, end);
            }
        }
        let (handles, labels) = (
            samples(&through_handles.metrics),
            samples(&through_labels.metrics),
        );
        assert!(
            handles.iter().any(|l| l.starts_with(
                "gatehouse_requests_total{route=\"chat\",provider=\"a\",model=\"m1\",status=\"200\"} 9"
            )),
            "{handles:#?}"
        );
        assert_eq!(handles, labels);
    }
}
