//! The audit line: one JSON object per request, written when the request ends to stdout and/or a
//! rotated file (`--audit-stdout`, `--audit-file`; [`crate::audit`]), saying who called what and
//! what happened:
//!
//! `time` (arrival, RFC 3339 UTC), `request_id`; the identity `namespace`, `service_account`,
//! `pod`, `workload`, `labels`; `tag`; `route`, `rule`, `provider`, `model`; `tokens` by type;
//! `cost_usd` (decimal string, `unknown`, or `0`) and `cost_estimated`; `status`, `error`,
//! `attempts`, `cache`, `stream`, `end`, `duration_ms`; `redaction` (action, counts per detector
//! in the prompt and the answer, placeholders restored); `rate_limit` (decision, the limits that
//! applied, the one that refused, what was left); `budget` (decision, the covering Budgets, the
//! Route a downgrade sent the request to).
//!
//! No prompt or answer unless the Route opts in (`spec.audit.prompt`, `spec.audit.answer`); they
//! are then taken after redaction: the request body as the provider got it, the buffered answer
//! as the app got it, or a stream's text as the app got it (at most [`MAX_ANSWER_TEXT`] bytes).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{Context, End, Hooks, Stage};
use crate::audit::Sink;
use crate::dialect::Dialect;
use crate::request::Request;
use crate::sse::{self, EventEnds};
use crate::stages::Flow;

/// Most bytes of a stream's text kept for the audit line.
pub const MAX_ANSWER_TEXT: usize = 64 * 1024;

/// What the audit line carries of the content, when the route opts in.
#[derive(Debug, Default)]
pub struct Capture {
    prompt: Option<Bytes>,
    body: Option<Bytes>,
    text: Option<String>,
    truncated: bool,
}

/// Writes the audit line.
#[derive(Debug)]
pub struct Audit {
    sink: Arc<Sink>,
}

impl Audit {
    /// Audit lines into `sink`.
    pub fn new(sink: Arc<Sink>) -> Self {
        Self { sink }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    namespace: &'a str,
    service_account: &'a str,
    pod: &'a str,
    workload: &'a str,
    labels: Option<&'a BTreeMap<String, String>>,
    tag: Option<&'a str>,
    route: Option<&'a str>,
    rule: Option<&'a str>,
    provider: Option<&'a str>,
    model: Option<&'a str>,
    tokens: Option<Tokens>,
    cost_usd: String,
    cost_estimated: bool,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    attempts: usize,
    cache: &'a str,
    stream: bool,
    end: &'a str,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    redaction: Option<Redaction<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<Budget<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<Answer<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    answer_truncated: bool,
}

#[derive(Serialize)]
struct Budget<'a> {
    decision: &'static str,
    budgets: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    downgraded_to: Option<&'a str>,
}

#[derive(Serialize)]
struct Tokens {
    input: u64,
    cached_read: u64,
    cache_write: u64,
    output: u64,
    reasoning: u64,
}

#[derive(Serialize)]
struct Redaction<'a> {
    action: &'a str,
    request: BTreeMap<&'a str, u32>,
    response: BTreeMap<&'a str, u32>,
    restored: u32,
}

#[derive(Serialize)]
struct RateLimit<'a> {
    decision: &'a str,
    limits: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining_tokens: Option<u64>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Answer<'a> {
    Body(&'a RawValue),
    Text(&'a str),
}

fn opted(ctx: &Context) -> (bool, bool) {
    ctx.route.as_ref().map_or((false, false), |r| {
        (r.config.audit.prompt, r.config.audit.answer)
    })
}

/// A stream's answer text in the client's dialect: OpenAI `choices[].delta.content`, Anthropic
/// `delta.text`, Responses `delta` of `response.output_text.delta` (every message item's text in
/// order; the whole texts a Responses stream repeats in its `*.done` events are not read twice).
fn event_text(dialect: Dialect, data: &[u8], out: &mut String) {
    #[derive(serde::Deserialize)]
    struct OpenAi {
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        #[serde(default)]
        delta: Option<Delta>,
    }
    #[derive(serde::Deserialize)]
    struct Delta {
        #[serde(default)]
        content: Option<String>,
        #[serde(default)]
        text: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Anthropic {
        #[serde(default)]
        delta: Option<Delta>,
    }
    match dialect {
        Dialect::OpenAi => {
            if let Ok(c) = serde_json::from_slice::<OpenAi>(data) {
                for choice in c.choices {
                    if let Some(t) = choice.delta.and_then(|d| d.content) {
                        out.push_str(&t);
                    }
                }
            }
        }
        Dialect::Anthropic => {
            if let Ok(e) = serde_json::from_slice::<Anthropic>(data)
                && let Some(t) = e.delta.and_then(|d| d.text)
            {
                out.push_str(&t);
            }
        }
        // `response.output_text.delta` events carry the text in `delta`.
        Dialect::Responses => {
            #[derive(serde::Deserialize)]
            struct Event<'a> {
                #[serde(default, borrow)]
                r#type: Option<std::borrow::Cow<'a, str>>,
                #[serde(default)]
                delta: Option<String>,
            }
            if let Ok(e) = serde_json::from_slice::<Event<'_>>(data)
                && e.r#type.as_deref() == Some("response.output_text.delta")
                && let Some(t) = e.delta
            {
                out.push_str(&t);
            }
        }
    }
}

impl Stage for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            answer: true,
            events: true,
            end: true,
            ..Hooks::default()
        }
    }

    fn on_request(
        &self,
        ctx: &mut Context,
        request: &mut Request,
    ) -> Result<Flow, crate::error::ProxyError> {
        let (prompt, answer) = opted(ctx);
        if prompt || answer {
            ctx.audit = Some(Box::new(Capture {
                // The body as redaction left it: the stages before this one already ran.
                prompt: prompt.then(|| Bytes::copy_from_slice(request.body())),
                ..Capture::default()
            }));
        }
        Ok(Flow::Continue)
    }

    fn on_answer(&self, ctx: &mut Context, body: &mut Bytes) {
        if opted(ctx).1
            && let Some(c) = ctx.audit.as_mut()
        {
            c.body = Some(body.clone());
        }
    }

    fn on_events(&self, ctx: &mut Context, events: &mut Bytes) {
        if !opted(ctx).1 {
            return;
        }
        let dialect = ctx.dialect;
        let Some(c) = ctx.audit.as_mut() else {
            return;
        };
        let text = c.text.get_or_insert_with(String::new);
        let mut ends = EventEnds::default();
        let mut start = 0;
        while let Some(end) = ends.next(events, start) {
            if let Some(data) = sse::data(&events[start..end]) {
                event_text(dialect, &data, text);
            }
            start = end;
        }
        if text.len() > MAX_ANSWER_TEXT {
            let mut cut = MAX_ANSWER_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            c.truncated = true;
        }
    }

    fn on_end(&self, ctx: &mut Context, end: End) {
        let workload = ctx.identity.workload.as_deref();
        let tokens = ctx.usage.map(|u| {
            let t = u.tokens();
            Tokens {
                input: t.input,
                cached_read: t.cached_read,
                cache_write: t.cache_write,
                output: t.output,
                reasoning: t.reasoning,
            }
        });
        let cost_usd = match ctx.cost_usd {
            Some(c) => format!("{c:.8}"),
            None if ctx.answered_by.is_some() && ctx.usage.is_some() => "unknown".into(),
            None => "0".into(),
        };
        let redaction = ctx.redaction.as_ref().map(|r| {
            let s = &r.session;
            let kinds = s.engine().kinds();
            let counts = |c: &[u32]| {
                kinds
                    .iter()
                    .zip(c)
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| (&*k.name, *n))
                    .collect()
            };
            Redaction {
                action: s.engine().action().as_str(),
                request: counts(&s.counts.request),
                response: counts(&s.counts.response),
                restored: s.counts.restored,
            }
        });
        let rate_limit = ctx.rate_limit.as_ref().map(|d| RateLimit {
            decision: d.outcome(),
            limits: d.applied.iter().map(|l| &**l).collect(),
            refused_by: d.refused_by.as_deref(),
            remaining_requests: d.requests.map(|s| s.remaining),
            remaining_tokens: d.tokens.map(|s| s.remaining),
        });
        let budget = ctx.budget.as_ref().and_then(|b| {
            b.outcome.map(|outcome| Budget {
                decision: outcome.as_str(),
                budgets: b.covering().collect(),
                downgraded_to: b.downgraded_to(),
            })
        });
        // An answer restored for the app holds values again: the line gets their placeholders.
        let session = ctx.redaction.as_ref().map(|r| &r.session);
        let masked_body: Option<Vec<u8>> = match (session, ctx.audit.as_deref()) {
            (Some(s), Some(Capture { body: Some(b), .. })) => s.masked_json(b),
            _ => None,
        };
        let masked_text: Option<String> = match (session, ctx.audit.as_deref()) {
            (Some(s), Some(Capture { text: Some(t), .. })) => {
                let mut out = Vec::with_capacity(t.len());
                s.masked(t.as_bytes(), crate::redact::Escape::Plain, &mut out)
                    .then(|| String::from_utf8_lossy(&out).into_owned())
            }
            _ => None,
        };
        let capture = ctx.audit.as_deref();
        let prompt = capture
            .and_then(|c| c.prompt.as_ref())
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| serde_json::from_str::<&RawValue>(p).ok());
        let answer = capture.and_then(|c| match (&c.body, &c.text) {
            (Some(b), _) => std::str::from_utf8(masked_body.as_deref().unwrap_or(b))
                .ok()
                .and_then(|b| serde_json::from_str::<&RawValue>(b).ok())
                .map(Answer::Body),
            (None, Some(t)) => Some(Answer::Text(masked_text.as_deref().unwrap_or(t))),
            (None, None) => None,
        });
        let elapsed = ctx.start.elapsed();
        let arrived = std::time::SystemTime::now()
            .checked_sub(elapsed)
            .unwrap_or(std::time::UNIX_EPOCH);
        let line = Line {
            time: crate::audit::rfc3339(arrived),
            request_id: &ctx.request_id,
            namespace: workload.map_or("", |w| &w.namespace),
            service_account: workload.map_or("", |w| &w.service_account),
            pod: workload.map_or("", |w| &w.pod),
            workload: workload.map_or("", |w| &w.name),
            labels: workload.map(|w| &w.labels).filter(|l| !l.is_empty()),
            tag: ctx.identity.tag.as_deref(),
            route: ctx.route.as_ref().map(|r| &*r.name),
            rule: ctx.rule.as_deref(),
            provider: ctx.answered_by.as_ref().map(|t| &*t.provider.name),
            model: ctx.answered_by.as_ref().map(|t| &*t.model),
            tokens,
            cost_usd,
            cost_estimated: ctx.usage_estimated,
            status: ctx
                .status
                .map_or(super::telemetry::CLIENT_CLOSED, |s| s.as_u16()),
            error: ctx.error,
            attempts: ctx.attempts.len(),
            cache: ctx.cache.as_str(),
            stream: ctx.stream,
            end: end.as_str(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            redaction,
            rate_limit,
            budget,
            prompt,
            answer,
            answer_truncated: capture.is_some_and(|c| c.truncated),
        };
        if let Ok(bytes) = serde_json::to_vec(&line) {
            self.sink.write(bytes);
        }
    }
}
