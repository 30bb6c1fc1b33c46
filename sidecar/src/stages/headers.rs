//! The `x-gatehouse-*` response headers: request id, route, provider, model, attempts, cost
//! (buffered answers: USD with 8 decimals, or `unknown` for an unpriced model; a stream's cost is
//! in its access line and in-band), cache status and warnings.

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

    fn on_response(&self, ctx: &Context, status: StatusCode, headers: &mut HeaderMap) {
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
        // A buffered answer's cost; `unknown` when its model is unpriced (or metering is off).
        // A stream's head leaves before its usage is known: its cost is in its access line and,
        // when the client asked for usage, in the stream (`metering::wire::COST_FIELD`).
        if status.is_success() && !ctx.streaming && ctx.answered_by.is_some() {
            match ctx.cost_usd {
                Some(cost) => {
                    let mut text = Vec::with_capacity(24);
                    super::metering::wire::write_cost(&mut text, Some(cost));
                    if let Ok(v) = HeaderValue::from_bytes(&text) {
                        headers.insert("x-gatehouse-cost-usd", v);
                    }
                }
                None => {
                    headers.insert("x-gatehouse-cost-usd", HeaderValue::from_static("unknown"));
                }
            }
        }
        // A cache hit cost nothing (no provider was called).
        if ctx.cache == super::CacheStatus::Hit {
            headers.insert("x-gatehouse-cost-usd", HeaderValue::from_static("0"));
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
