//! Metering: what an answer cost, from the usage it reported (or, when a stream ended before its
//! provider reported usage, from what the gateway measured) and the provider's price of the model
//! that answered. Buffered answers are priced as they arrive (their cost goes into the
//! `x-gatehouse-cost-usd` header), streams when they end (access line, metrics, and the in-band
//! field the relay writes with [`wire`]).
//!
//! A model absent from its provider's `models` is unpriced: `ctx.cost_usd` stays `None` with
//! `ctx.usage` set, the header says `unknown`, and `gatehouse_unpriced_requests_total` counts it.

pub mod wire;

use std::sync::Arc;

use bytes::Bytes;

use super::{Context, End, Hooks, Stage};
use crate::metrics::{Metrics, ModelLabels};
use crate::usage::Usage;

/// Prices answers.
#[derive(Debug)]
pub struct Metering {
    metrics: Arc<Metrics>,
}

/// The price of `usage` from the model that answered: `None` when nothing answered or the model
/// is unpriced.
pub fn cost_of(ctx: &Context, usage: &Usage) -> Option<f64> {
    let target = ctx.answered_by.as_ref()?;
    let pricing = target.provider.models.get(&*target.model)?;
    Some(usage.cost(pricing))
}

impl Metering {
    /// Metering that counts unpriced answers into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }

    fn price(&self, ctx: &mut Context) {
        if ctx.cost_usd.is_some() {
            return;
        }
        let Some(usage) = ctx.usage else {
            return;
        };
        ctx.cost_usd = cost_of(ctx, &usage);
        if ctx.cost_usd.is_none()
            && let Some(target) = &ctx.answered_by
        {
            self.metrics
                .unpriced_requests
                .get_or_create(&ModelLabels {
                    provider: target.provider.name.clone(),
                    model: target.model.to_string(),
                })
                .inc();
        }
    }

    /// A stream whose provider never sent its final usage (cut upstream, dropped by the client,
    /// or a server that ignores `include_usage`) is charged what was measured, as an estimate.
    fn estimate(ctx: &mut Context) {
        if ctx.measured.final_usage {
            return;
        }
        ctx.usage = Some(ctx.measured.estimate(ctx.usage));
        ctx.usage_estimated = true;
    }
}

impl Stage for Metering {
    fn name(&self) -> &'static str {
        "metering"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            answer: true,
            end: true,
            ..Hooks::default()
        }
    }

    fn on_answer(&self, ctx: &mut Context, _body: &mut Bytes) {
        // An answer without usage, or with no prompt tokens (Gemini's embeddings report none),
        // has its prompt estimated from the request's size.
        if ctx.answered_by.is_some() && ctx.usage.is_none_or(|u| u.prompt_tokens == 0) {
            Self::estimate(ctx);
        }
        self.price(ctx);
    }

    fn on_end(&self, ctx: &mut Context, _end: End) {
        // Only a relayed stream is priced here: a buffered answer was priced by `on_answer`, and
        // a request that ended without an answer (an error, a refusal, a client gone during the
        // attempts) was never billed.
        if !ctx.streaming || ctx.answered_by.is_none() {
            return;
        }
        Self::estimate(ctx);
        self.price(ctx);
    }
}

#[cfg(test)]
mod tests {

    use gatehouse_crds::config::{ProviderConfig, SidecarConfig};

    use super::*;
    use crate::dialect::Dialect;
    use crate::state::{Snapshot, Target};
    use crate::usage::Measured;

    fn target() -> Target {
        let mut config = SidecarConfig::empty("default");
        let provider: ProviderConfig = serde_json::from_value(serde_json::json!({
            "type": "openai", "endpoint": "http://127.0.0.1:1/v1",
            "models": {"priced": {"inputPerMillion": 2.0, "outputPerMillion": 8.0}},
        }))
        .unwrap();
        config.providers.insert("p".into(), provider);
        let snapshot = Snapshot::build(config, &gatehouse_crds::ProviderKeys::new()).unwrap();
        Target {
            provider: snapshot.providers["p"].clone(),
            model: "priced".into(),
        }
    }

    #[test]
    fn answers_are_priced_by_the_model_that_answered() {
        let metering = Metering::new(Arc::new(Metrics::new()));
        let usage = Usage::new(1000, 500, 0, 0, 0);
        let mut ctx = Context::new(Dialect::OpenAi);
        ctx.usage = Some(usage);
        metering.on_answer(&mut ctx, &mut Bytes::new());
        assert_eq!(ctx.cost_usd, None, "no target answered");

        ctx.answered_by = Some(target());
        metering.on_answer(&mut ctx, &mut Bytes::new());
        let expected = (1000.0 * 2.0 + 500.0 * 8.0) / 1e6;
        assert!((ctx.cost_usd.unwrap() - expected).abs() < 1e-12);
        assert!(!ctx.usage_estimated);

        // A stream is priced at its end, an unpriced model not at all (and counted).
        let mut stream = Context::new(Dialect::OpenAi);
        stream.streaming = true;
        stream.measured.final_usage = true;
        let mut unpriced = target();
        unpriced.model = "free".into();
        stream.answered_by = Some(unpriced);
        stream.usage = Some(usage);
        metering.on_end(&mut stream, End::StreamComplete);
        assert_eq!(stream.cost_usd, None);
        assert!(
            metering
                .metrics
                .encode()
                .contains(r#"gatehouse_unpriced_requests_total{provider="p",model="free"} 1"#)
        );
        stream.answered_by = Some(target());
        metering.on_end(&mut stream, End::StreamComplete);
        assert!(stream.cost_usd.is_some());
    }

    #[test]
    fn a_stream_without_its_final_usage_is_charged_an_estimate() {
        let metering = Metering::new(Arc::new(Metrics::new()));
        let mut ctx = Context::new(Dialect::OpenAi);
        ctx.streaming = true;
        ctx.answered_by = Some(target());
        ctx.measured = Measured {
            request_bytes: 4000,
            text_bytes: 400,
            final_usage: false,
        };
        metering.on_end(&mut ctx, End::ClientGone);
        assert!(ctx.usage_estimated);
        assert_eq!(ctx.usage, Some(Usage::new(1000, 100, 0, 0, 0)));
        let expected = (1000.0 * 2.0 + 100.0 * 8.0) / 1e6;
        assert!((ctx.cost_usd.unwrap() - expected).abs() < 1e-12);

        // An error before any answer costs nothing.
        let mut failed = Context::new(Dialect::OpenAi);
        failed.measured.request_bytes = 4000;
        metering.on_end(&mut failed, End::Answered);
        assert_eq!((failed.usage, failed.cost_usd), (None, None));
    }
}
