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
                    model: target.model.clone(),
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
        // An answer without usage, or with no prompt tokens, has its prompt estimated from the
        // request's size; one the gateway already estimated (embeddings whose provider reports
        // no tokens, `usage::estimate_embedding_prompt`) is charged as it says, as an estimate.
        if ctx.usage.is_some_and(|u| u.estimated) {
            ctx.usage_estimated = true;
        } else if ctx.answered_by.is_some() && ctx.usage.is_none_or(|u| u.prompt_tokens == 0) {
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

    /// What metering costs per request, for the bench (numbers only mean something in release):
    /// `cargo test --release -p gatehouse-sidecar --lib metering::tests::cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_per_request() {
        use std::hint::black_box;
        use std::time::Instant;

        use bytes::BytesMut;

        let metering = Metering::new(Arc::new(Metrics::new()));
        let mut ctx = Context::new(Dialect::OpenAi);
        ctx.answered_by = Some(target());
        let usage = Usage::new(1200, 300, 1024, 0, 64);
        let n = 200_000u32;
        // A buffered answer: priced, and the header's text.
        let t = Instant::now();
        for _ in 0..n {
            ctx.usage = Some(black_box(usage));
            ctx.cost_usd = None;
            metering.on_answer(&mut ctx, &mut Bytes::new());
            let mut text = Vec::with_capacity(24);
            wire::write_cost(&mut text, ctx.cost_usd);
            black_box(http::HeaderValue::from_bytes(&text).ok());
        }
        let buffered = t.elapsed() / n;
        // A 20-chunk stream whose client did not ask for usage: each chunk's `"usage":null`
        // removed and copied around, the usage chunk dropped (the relay's inspection of each
        // event, which runs with metering off too, is left out).
        let events: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                format!(
                    "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
                )
                .into_bytes()
            })
            .collect();
        let t = Instant::now();
        for _ in 0..n / 20 {
            let mut out = BytesMut::with_capacity(4096);
            for e in &events {
                if let Some(cut) = wire::without(black_box(e), "usage") {
                    out.extend_from_slice(&e[..cut.start]);
                    out.extend_from_slice(&e[cut.end..]);
                }
            }
            black_box(out);
        }
        let stripped = t.elapsed() / (n / 20);
        // The cost spliced into the usage chunk a client asked for.
        let chunk = br#"data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":1200,"completion_tokens":300}}"#;
        let t = Instant::now();
        for _ in 0..n {
            let cost = cost_of(&ctx, &usage);
            let (at, _) = wire::cost_at(black_box(chunk), "usage").unwrap_or((0, false));
            let mut field = Vec::with_capacity(40);
            wire::write_cost(&mut field, cost);
            black_box((at, field));
        }
        let in_band = t.elapsed() / n;
        // The relay's inspection of 20 chunks: today's (usage, choices counted, text measured)
        // against one that reads usage and error only, as before metering measured text.
        #[derive(serde::Deserialize)]
        struct UsageOnly {
            #[serde(default)]
            _usage: Option<Usage>,
            #[serde(default)]
            _error: Option<serde::de::IgnoredAny>,
        }
        let data: Vec<&[u8]> = events.iter().map(|e| &e[6..e.len() - 2]).collect();
        let t = Instant::now();
        for _ in 0..n / 20 {
            for d in &data {
                black_box(crate::dialect::openai::inspect(black_box(d), true).is_ok());
            }
        }
        let inspect = t.elapsed() / (n / 20);
        let t = Instant::now();
        for _ in 0..n / 20 {
            for d in &data {
                black_box(serde_json::from_slice::<UsageOnly>(black_box(d)).is_ok());
            }
        }
        let usage_only = t.elapsed() / (n / 20);
        println!(
            "metering: buffered answer {buffered:?}/request; 20-chunk stream, usage stripped, \
             {stripped:?}/request; in-band cost {in_band:?}/stream; inspecting 20 chunks \
             {inspect:?} (usage and error only: {usage_only:?})"
        );
    }
}
