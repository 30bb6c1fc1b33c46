//! Metering: the price of an answer from the usage it reported and the provider's pricing of the
//! model that answered. Buffered answers are priced as they arrive (their cost goes into a
//! response header), streams when they end.

use bytes::Bytes;

use super::{Context, End, Hooks, Stage};

/// Prices answers.
#[derive(Debug)]
pub struct Metering;

impl Metering {
    fn price(ctx: &mut Context) {
        if ctx.cost_usd.is_some() {
            return;
        }
        let Some(target) = &ctx.answered_by else {
            return;
        };
        ctx.cost_usd = ctx
            .usage
            .zip(target.provider.models.get(&*target.model))
            .map(|(u, p)| u.cost(p));
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
        Self::price(ctx);
    }

    fn on_end(&self, ctx: &mut Context, _end: End) {
        Self::price(ctx);
    }
}

#[cfg(test)]
mod tests {

    use gatehouse_crds::config::{ProviderConfig, SidecarConfig};

    use super::*;
    use crate::dialect::Dialect;
    use crate::state::{Snapshot, Target};
    use crate::usage::Usage;

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
        let usage = Usage {
            prompt_tokens: 1000,
            completion_tokens: 500,
            prompt_tokens_details: None,
        };
        let mut ctx = Context::new(Dialect::OpenAi);
        ctx.usage = Some(usage);
        Metering.on_answer(&mut ctx, &mut Bytes::new());
        assert_eq!(ctx.cost_usd, None, "no target answered");

        ctx.answered_by = Some(target());
        Metering.on_answer(&mut ctx, &mut Bytes::new());
        let expected = (1000.0 * 2.0 + 500.0 * 8.0) / 1e6;
        assert!((ctx.cost_usd.unwrap() - expected).abs() < 1e-12);

        // A stream is priced at its end, an unpriced model not at all.
        let mut stream = Context::new(Dialect::OpenAi);
        let mut unpriced = target();
        unpriced.model = "free".into();
        stream.answered_by = Some(unpriced);
        stream.usage = Some(usage);
        Metering.on_end(&mut stream, End::StreamComplete);
        assert_eq!(stream.cost_usd, None);
        stream.answered_by = Some(target());
        Metering.on_end(&mut stream, End::StreamComplete);
        assert!(stream.cost_usd.is_some());
    }
}
