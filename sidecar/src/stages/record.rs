//! The request's record and its trace: last in the chain, after telemetry.
//!
//! In the chain only when `--request-records` is above 0 or an OTLP endpoint is configured; with
//! both off a request pays nothing for it.
//!
//! - **Head** (tracing on): an incoming W3C `traceparent` (`00-<trace-id>-<parent-id>-<flags>`,
//!   lowercase hex; an unknown higher version is read the same way, `ff` and all-zero ids are
//!   invalid) is continued: the request's span joins that trace with the caller's span as its
//!   parent, and the caller's sampled flag decides whether it is exported. A request without
//!   one (or with an invalid one) starts a trace of its own, sampled, whose id is its request id.
//! - **Request**: notes the operation and the model alias the client asked for.
//! - **End**: builds one [`Record`] (no prompt, no answer, no header value, no key), keeps it in
//!   the ring the admin port serves (`records`) and queues it for the exporter (`otlp`).
//!
//! Spans (OpenTelemetry GenAI conventions), built on the exporter's task from the record:
//!
//! - one `SERVER` span per request, named `{gen_ai.operation.name} {gen_ai.request.model}`
//!   (the alias the client asked for), from arrival to end, with `gen_ai.operation.name`,
//!   `gen_ai.request.model`, `gen_ai.provider.name` and `gen_ai.response.model` (the target that
//!   answered), `gen_ai.usage.input_tokens` / `output_tokens`, `http.response.status_code`,
//!   `error.type` when it failed (the gateway's error code, else the status), and Gatehouse's
//!   own `gatehouse.request_id`, `gatehouse.route`, `gatehouse.rule`, `gatehouse.tag`,
//!   `gatehouse.cache`, `gatehouse.budget`, `gatehouse.rate_limit`, `gatehouse.cost_usd`,
//!   `gatehouse.attempts`, `gatehouse.stream`, `gatehouse.end`;
//! - one `CLIENT` span per upstream attempt, its child, named `{gen_ai.operation.name}
//!   {upstream model}`, with `gen_ai.operation.name`, `gen_ai.provider.name`,
//!   `gen_ai.request.model`, `server.address`, `server.port`, `gatehouse.provider` (the
//!   ModelProvider) and `gatehouse.attempt.outcome`; a failed attempt has `error.type` (its
//!   outcome: `server_error`, `timeout`, `connect_error`, ...) and status ERROR; the answering attempt
//!   has `gen_ai.response.model` and the usage.

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;
use rand::Rng;

use super::{Context, End, Flow, Hooks, Stage};
use crate::error::ProxyError;
use crate::otlp::Exporter;
use crate::otlp::proto::{Kind, Span, Value};
use crate::records::{self, Attempt, Record, Records};
use crate::request::Request;

/// A request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    /// The trace.
    pub trace_id: u128,
    /// The request's span.
    pub span_id: u64,
    /// The caller's span, when the request carried a `traceparent`.
    pub parent: Option<u64>,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceIds {
    /// Whether the trace is sampled (exported).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// A parsed `traceparent`: trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// `trace-id`.
    pub trace_id: u128,
    /// `parent-id`.
    pub parent_id: u64,
    /// `trace-flags`.
    pub flags: u8,
}

fn hex(s: &[u8]) -> Option<u128> {
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    let mut v: u128 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

/// Parse a W3C `traceparent` value; `None` when invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    let v = value;
    if v.len() < 55 {
        return None;
    }
    let version = hex(v.get(0..2)?)?;
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    // A later version may append fields after another dash.
    if v.len() > 55 && v.get(55) != Some(&b'-') {
        return None;
    }
    if v.get(2) != Some(&b'-') || v.get(35) != Some(&b'-') || v.get(52) != Some(&b'-') {
        return None;
    }
    let trace_id = hex(v.get(3..35)?)?;
    let parent_id = u64::try_from(hex(v.get(36..52)?)?).ok()?;
    let flags = u8::try_from(hex(v.get(53..55)?)?).ok()?;
    if trace_id == 0 || parent_id == 0 {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// What the stage notes on the way (in `Context::trail`).
#[derive(Debug, Default)]
pub struct Trail {
    /// The trace, when tracing is on.
    pub trace: Option<TraceIds>,
    /// The operation.
    pub op: Option<crate::dialect::Operation>,
    /// The alias asked for.
    pub alias: Option<Box<str>>,
}

/// Keeps records and queues traces.
#[derive(Debug)]
pub struct RecordStage {
    records: Option<Arc<Records>>,
    exporter: Option<Arc<Exporter>>,
}

impl RecordStage {
    /// A stage keeping records in `records` and/or exporting to `exporter`; `None` when both are
    /// off (the stage is then not in the chain).
    pub fn new(records: Option<Arc<Records>>, exporter: Option<Arc<Exporter>>) -> Option<Self> {
        let records = records.filter(|r| r.capacity() > 0);
        (records.is_some() || exporter.is_some()).then_some(Self { records, exporter })
    }
}

fn nonzero_u64(rng: &mut impl Rng) -> u64 {
    loop {
        let v: u64 = rng.random();
        if v != 0 {
            return v;
        }
    }
}

impl Stage for RecordStage {
    fn name(&self) -> &'static str {
        "record"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            head: self.exporter.is_some(),
            request: true,
            end: true,
            ..Hooks::default()
        }
    }

    fn on_head(&self, ctx: &mut Context, headers: &HeaderMap) -> Result<(), ProxyError> {
        let parent = headers
            .get("traceparent")
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let mut rng = rand::rng();
        let trace = match parent {
            Some(p) => TraceIds {
                trace_id: p.trace_id,
                span_id: nonzero_u64(&mut rng),
                parent: Some(p.parent_id),
                flags: p.flags,
            },
            None => TraceIds {
                // The request id is a random 128-bit value already.
                trace_id: u128::from_str_radix(&ctx.request_id, 16)
                    .ok()
                    .filter(|t| *t != 0)
                    .unwrap_or_else(|| rng.random::<u128>() | 1),
                span_id: nonzero_u64(&mut rng),
                parent: None,
                flags: 1,
            },
        };
        ctx.trail.get_or_insert_with(Box::default).trace = Some(trace);
        Ok(())
    }

    fn on_request(&self, ctx: &mut Context, request: &mut Request) -> Result<Flow, ProxyError> {
        let trail = ctx.trail.get_or_insert_with(Box::default);
        trail.op = Some(request.op);
        let alias = &request.index.alias;
        let mut cut = alias.len().min(records::MAX_ALIAS_BYTES);
        while !alias.is_char_boundary(cut) {
            cut -= 1;
        }
        trail.alias = Some(alias.get(..cut).unwrap_or_default().into());
        Ok(Flow::Continue)
    }

    fn on_end(&self, ctx: &mut Context, end: End) {
        let now = SystemTime::now();
        let duration = ctx.start.elapsed();
        let start_unix_ns = records::unix_ns(now)
            .saturating_sub(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        let trail = ctx.trail.take().unwrap_or_default();
        let traced = self.exporter.is_some() && trail.trace.is_some_and(|t| t.sampled());
        let mut rng = rand::rng();
        let attempts = ctx
            .attempts
            .iter()
            .map(|a| Attempt {
                target: a.target.clone(),
                outcome: a.outcome,
                offset: a.started.saturating_duration_since(ctx.start),
                elapsed: a.elapsed,
                span_id: if traced { nonzero_u64(&mut rng) } else { 0 },
            })
            .collect();
        let workload = ctx.identity.workload.as_deref();
        let record = Arc::new(Record {
            request_id: ctx.request_id.clone(),
            trace: trail.trace,
            start_unix_ns,
            duration,
            head: ctx.head_elapsed,
            upstream: ctx.upstream_wait,
            operation: trail.op,
            alias: trail.alias,
            namespace: workload.map(|w| w.namespace.clone()),
            workload: workload.map(|w| w.name.clone()),
            tag: ctx.identity.tag.clone(),
            route: ctx.route.as_ref().map(|r| r.name.clone()),
            rule: ctx.rule.clone(),
            stream: ctx.stream,
            answered_by: ctx.answered_by.clone(),
            attempts,
            usage: ctx.usage,
            estimated: ctx.usage_estimated,
            cost_usd: ctx.cost_usd,
            cache: ctx.cache,
            budget: ctx.budget.as_ref().map(|b| records::Budget {
                outcome: b.outcome.map(|o| o.as_str()),
                budgets: b.covering().map(Arc::from).collect(),
                downgraded_to: b.downgraded_to().map(Arc::from),
            }),
            rate_limit: ctx.rate_limit.as_ref().map(|r| records::RateLimit {
                outcome: r.outcome(),
                applied: r.applied.clone(),
                refused_by: r.refused_by.clone(),
            }),
            status: ctx
                .status
                .map_or(super::telemetry::CLIENT_CLOSED, |s| s.as_u16()),
            error: ctx.error,
            end,
        });
        if traced && let Some(exporter) = &self.exporter {
            exporter.send(record.clone());
        }
        if let Some(records) = &self.records {
            records.push(record);
        }
    }
}

fn server(target: &crate::state::Target) -> (Option<&str>, Option<i64>) {
    let uri = &target.provider.chat_url;
    let port = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    (uri.host(), port.map(i64::from))
}

/// The spans of one record (none when it is not traced).
pub fn spans(r: &Record) -> Vec<Span<'_>> {
    let Some(trace) = r.trace else {
        return Vec::new();
    };
    let op = r.operation_name();
    let flags = u32::from(trace.flags) | 0x100 | if trace.parent.is_some() { 0x200 } else { 0 };
    let int = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
    let mut out = Vec::with_capacity(1 + r.attempts.len());
    let mut attrs: Vec<(&'static str, Value<'_>)> = Vec::with_capacity(24);
    if !op.is_empty() {
        attrs.push(("gen_ai.operation.name", Value::Str(op)));
    }
    if let Some(alias) = r.alias.as_deref() {
        attrs.push(("gen_ai.request.model", Value::Str(alias)));
    }
    if let Some(t) = &r.answered_by {
        attrs.push((
            "gen_ai.provider.name",
            Value::Str(crate::genai::provider_name(t.provider.kind)),
        ));
        attrs.push(("gen_ai.response.model", Value::Str(&t.model)));
    }
    if let Some(u) = &r.usage {
        attrs.push(("gen_ai.usage.input_tokens", int(u.prompt_tokens)));
        attrs.push(("gen_ai.usage.output_tokens", int(u.completion_tokens)));
    }
    attrs.push(("http.response.status_code", Value::Int(i64::from(r.status))));
    let failed = r.status >= 400 || r.error.is_some() || r.end == End::StreamBroken;
    let error_type = failed.then(|| match r.error {
        Some(code) => code.to_string(),
        None if r.end == End::StreamBroken => "stream_broken".to_string(),
        None => r.status.to_string(),
    });
    let failed = error_type.is_some();
    if let Some(e) = error_type {
        attrs.push(("error.type", Value::String(e)));
    }
    attrs.push(("gatehouse.request_id", Value::Str(&r.request_id)));
    if let Some(route) = r.route.as_deref() {
        attrs.push(("gatehouse.route", Value::Str(route)));
    }
    if let Some(rule) = r.rule.as_deref() {
        attrs.push(("gatehouse.rule", Value::Str(rule)));
    }
    if let Some(tag) = r.tag.as_deref() {
        attrs.push(("gatehouse.tag", Value::Str(tag)));
    }
    attrs.push(("gatehouse.cache", Value::Str(r.cache.as_str())));
    if let Some(outcome) = r.budget.as_ref().and_then(|b| b.outcome) {
        attrs.push(("gatehouse.budget", Value::Str(outcome)));
    }
    if let Some(rl) = &r.rate_limit {
        attrs.push(("gatehouse.rate_limit", Value::Str(rl.outcome)));
    }
    if let Some(cost) = r.cost_usd {
        attrs.push(("gatehouse.cost_usd", Value::Double(cost)));
    }
    attrs.push(("gatehouse.attempts", int(r.attempts.len() as u64)));
    attrs.push(("gatehouse.stream", Value::Bool(r.stream)));
    attrs.push(("gatehouse.end", Value::Str(r.end.as_str())));
    let dur = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let name = |model: Option<&str>| match (op, model) {
        ("", _) => "gatehouse request".to_string(),
        (op, Some(m)) if !m.is_empty() => format!("{op} {m}"),
        (op, _) => op.to_string(),
    };
    let trace_id = trace.trace_id.to_be_bytes();
    let request_span = trace.span_id.to_be_bytes();
    out.push(Span {
        trace_id,
        span_id: request_span,
        parent: trace.parent.map(u64::to_be_bytes),
        name: name(r.alias.as_deref()),
        kind: Kind::Server,
        start_ns: r.start_unix_ns,
        end_ns: r.start_unix_ns.saturating_add(dur(r.duration)),
        attributes: attrs,
        error: failed.then_some("request failed"),
        flags,
    });
    let last = r.attempts.len().saturating_sub(1);
    for (i, a) in r.attempts.iter().enumerate() {
        let mut attrs: Vec<(&'static str, Value<'_>)> = Vec::with_capacity(12);
        if !op.is_empty() {
            attrs.push(("gen_ai.operation.name", Value::Str(op)));
        }
        attrs.push((
            "gen_ai.provider.name",
            Value::Str(crate::genai::provider_name(a.target.provider.kind)),
        ));
        attrs.push(("gen_ai.request.model", Value::Str(&a.target.model)));
        let (host, port) = server(&a.target);
        if let Some(host) = host {
            attrs.push(("server.address", Value::Str(host)));
        }
        if let Some(port) = port {
            attrs.push(("server.port", Value::Int(port)));
        }
        attrs.push(("gatehouse.provider", Value::Str(&a.target.provider.name)));
        attrs.push(("gatehouse.attempt.outcome", Value::Str(a.outcome)));
        let ok = a.outcome == "success";
        if ok && i == last && r.answered_by.is_some() {
            attrs.push(("gen_ai.response.model", Value::Str(&a.target.model)));
            if let Some(u) = &r.usage {
                attrs.push(("gen_ai.usage.input_tokens", int(u.prompt_tokens)));
                attrs.push(("gen_ai.usage.output_tokens", int(u.completion_tokens)));
            }
        }
        if !ok {
            attrs.push(("error.type", Value::Str(a.outcome)));
        }
        let start = r.start_unix_ns.saturating_add(dur(a.offset));
        out.push(Span {
            trace_id,
            span_id: a.span_id.to_be_bytes(),
            parent: Some(request_span),
            name: name(Some(&a.target.model)),
            kind: Kind::Client,
            start_ns: start,
            end_ns: start.saturating_add(dur(a.elapsed)),
            attributes: attrs,
            error: (!ok).then_some("attempt failed"),
            flags: u32::from(trace.flags) | 0x100,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_as_w3c_says() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok),
            Some(TraceParent {
                trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
                parent_id: 0x00f067aa0ba902b7,
                flags: 1
            })
        );
        // Uppercase hex, zero ids, version ff, a version-00 value with more after it, missing
        // dashes: invalid.
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version is read by its first fields.
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert_eq!(parse_traceparent(later).map(|p| p.flags), Some(0));
    }
}
