//! The `x-gatehouse-*` response headers: request id, route, provider, model, attempts, cost
//! (buffered answers with known pricing; a stream's cost is in its access line), cache status
//! and warnings.

use http::{HeaderMap, HeaderValue, StatusCode};

use super::{Context, Hooks, Stage};

/// Writes the `x-gatehouse-*` headers.
#[derive(Debug)]
pub struct Headers;

impl Stage for Headers {
    fn name(&self) -> &'static str {
        "headers"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            response: true,
            ..Hooks::default()
        }
    }

    fn on_response(&self, ctx: &Context, _status: StatusCode, headers: &mut HeaderMap) {
        insert(headers, "x-gatehouse-request-id", &ctx.request_id);
        if let Some(route) = &ctx.route {
            insert(headers, "x-gatehouse-route", &route.name);
        }
        if let Some(target) = &ctx.answered_by {
            insert(headers, "x-gatehouse-provider", &target.provider.name);
            insert(headers, "x-gatehouse-model", &target.model);
        }
        if !ctx.attempts.is_empty() {
            headers.insert(
                "x-gatehouse-attempts",
                HeaderValue::from(ctx.attempts.len()),
            );
        }
        if let Some(cost) = ctx.cost_usd {
            insert(headers, "x-gatehouse-cost-usd", &format!("{cost:.8}"));
        }
        headers.insert(
            "x-gatehouse-cache",
            HeaderValue::from_static(ctx.cache.as_str()),
        );
        if !ctx.warnings.is_empty() {
            insert(headers, "x-gatehouse-warning", &ctx.warnings.header_value());
        }
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}
