//! The end-of-request record: metrics and one access-log line per request, for buffered and
//! streamed answers alike, written once when the request ends.

use std::sync::Arc;

use super::{Context, End, Hooks, Stage};
use crate::metrics::{AttemptLabels, ErrorLabels, Metrics, RequestLabels, RouteLabels};

/// The status recorded for a request whose client went away before any response head left
/// (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// Records metrics and the access line.
#[derive(Debug)]
pub struct Telemetry {
    metrics: Arc<Metrics>,
}

impl Telemetry {
    /// Record into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
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
        let route = ctx.route_name();
        let (provider, model) = match &ctx.answered_by {
            Some(t) => (t.provider.name.as_str(), &*t.model),
            None => ("", ""),
        };
        m.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                provider: provider.to_string(),
                model: model.to_string(),
                status,
            })
            .inc();
        // Duration and overhead up to the response head (for a stream: until it was committed),
        // as the metrics document.
        let elapsed = ctx.head_elapsed.unwrap_or_else(|| ctx.start.elapsed());
        if !route.is_empty() {
            m.request_duration
                .get_or_create(&RouteLabels {
                    route: route.to_string(),
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
                    route: route.to_string(),
                })
                .inc();
        }
        if end == End::ClientGone {
            m.client_disconnects
                .get_or_create(&RouteLabels {
                    route: route.to_string(),
                })
                .inc();
        }
        let duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0;
        let prompt_tokens = ctx.usage.map(|u| u.prompt_tokens);
        let completion_tokens = ctx.usage.map(|u| u.completion_tokens);
        // One line per request; a relayed stream's says so in its message (it is written when the
        // stream ends, with the stream's usage and cost).
        if ctx.streaming {
            tracing::info!(
                target: "gatehouse::access",
                request_id = %ctx.request_id,
                route,
                provider,
                model,
                status,
                attempts = ctx.attempts.len(),
                rule = ctx.rule.as_deref().unwrap_or(""),
                stream = ctx.stream,
                stream_end = end.as_str(),
                duration_ms,
                prompt_tokens,
                completion_tokens,
                cost_usd = ctx.cost_usd,
                "stream finished"
            );
        } else {
            tracing::info!(
                target: "gatehouse::access",
                request_id = %ctx.request_id,
                route,
                provider,
                model,
                status,
                attempts = ctx.attempts.len(),
                rule = ctx.rule.as_deref().unwrap_or(""),
                stream = ctx.stream,
                end = end.as_str(),
                duration_ms,
                prompt_tokens,
                completion_tokens,
                cost_usd = ctx.cost_usd,
                "request"
            );
        }
    }
}
