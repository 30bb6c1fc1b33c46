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
