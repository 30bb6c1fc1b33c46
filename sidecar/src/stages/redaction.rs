//! Redaction (`Route.spec.redact`): sensitive values are masked in the prompt before anything
//! stores or sends it, refused (`block`: 400 naming the detectors), or replaced by placeholders
//! whose values come back in the answer (`maskAndRestore`); answers are masked (and restored)
//! before anything reads them, streams included, through the hold-back of [`redact::stream`].
//! Counts per detector go to `gatehouse_redactions_total` and the audit line; values never do.
//!
//! [`redact::stream`]: crate::redact::stream

use std::sync::Arc;

use bytes::Bytes;

use super::{Context, End, Flow, Hooks, Stage};
use crate::error::ProxyError;
use crate::metrics::{Metrics, RedactionLabels};
use crate::redact::events::StreamText;
use crate::redact::{Direction, Session};
use crate::request::Request;

/// One request's redaction: its session and its stream's hold-back.
#[derive(Debug)]
pub struct State {
    /// Placeholders handed out, originals, counts.
    pub session: Session,
    stream: StreamText,
}

/// The redaction stage.
#[derive(Debug)]
pub struct Redaction {
    metrics: Arc<Metrics>,
}

impl Redaction {
    /// Redaction counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl Stage for Redaction {
    fn name(&self) -> &'static str {
        "redaction"
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

    fn on_request(&self, ctx: &mut Context, request: &mut Request) -> Result<Flow, ProxyError> {
        let Some(route) = ctx.route.clone() else {
            return Ok(Flow::Continue);
        };
        let engine = match &route.redact {
            None => return Ok(Flow::Continue),
            Some(Ok(engine)) => engine.clone(),
            // Never send a prompt unredacted because the redaction could not be built.
            Some(Err(why)) => {
                return Err(ProxyError::NoTargets {
                    route: route.name.to_string(),
                    reason: format!("its redaction cannot be used: {why}"),
                });
            }
        };
        let mut session = Session::new(engine);
        let body = session.rewrite_json(request.body(), Direction::Request);
        let blocked = session.blocked;
        let detectors = session.request_detectors().join(", ");
        ctx.redaction = Some(Box::new(State {
            session,
            stream: StreamText::default(),
        }));
        if blocked {
            return Err(ProxyError::Blocked {
                route: route.name.to_string(),
                detectors,
            });
        }
        if let Some(body) = body {
            request.replace_body(Bytes::from(body))?;
        }
        Ok(Flow::Continue)
    }

    fn on_answer(&self, ctx: &mut Context, body: &mut Bytes) {
        let Some(state) = ctx.redaction.as_mut() else {
            return;
        };
        if let Some(new) = state.session.rewrite_json(body, Direction::Response) {
            *body = Bytes::from(new);
        }
    }

    fn on_events(&self, ctx: &mut Context, events: &mut Bytes) {
        let dialect = ctx.dialect;
        let Some(state) = ctx.redaction.as_mut() else {
            return;
        };
        if let Some(new) = state.stream.rewrite(dialect, &mut state.session, events) {
            *events = new;
        }
    }

    fn on_end(&self, ctx: &mut Context, _end: End) {
        let (Some(state), Some(route)) = (&ctx.redaction, &ctx.route) else {
            return;
        };
        let session = &state.session;
        let kinds = session.engine().kinds();
        for (direction, counts) in [
            ("request", &session.counts.request),
            ("response", &session.counts.response),
        ] {
            for (kind, &n) in kinds.iter().zip(counts) {
                if n > 0 {
                    self.metrics
                        .redactions
                        .get_or_create(&RedactionLabels {
                            route: route.name.clone(),
                            detector: kind.name.clone(),
                            direction,
                        })
                        .inc_by(u64::from(n));
                }
            }
        }
    }
}
