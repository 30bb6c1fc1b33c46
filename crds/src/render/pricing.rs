//! Prices of the models a provider is used with: its `spec.models[].pricing` override, else the
//! built-in catalog.

use std::collections::{BTreeMap, BTreeSet};

use super::{ObjectKind, Problems};
use crate::catalog;
use crate::config::{LongContextPricing, Pricing, ProviderKind};
use crate::provider::{ModelPricing, ModelProviderSpec, Price};

/// The prices of the models one provider is used with.
#[derive(Debug, Default)]
pub(super) struct ProviderPrices {
    /// Priced models, by upstream name.
    pub(super) models: BTreeMap<String, Pricing>,
    /// Models with no price (an invalid override counts as none).
    pub(super) unpriced: Vec<String>,
    /// Some override in spec.models is invalid (reported as a problem).
    pub(super) invalid: bool,
}

/// Price every model in `used`: the spec.models override first, else the catalog.
pub(super) fn price_models(
    name: &str,
    spec: &ModelProviderSpec,
    used: &BTreeSet<&str>,
    problems: &mut Problems,
) -> ProviderPrices {
    let kind = ProviderKind::from(spec.kind);
    let mut out = ProviderPrices::default();
    for &model in used {
        let listed = spec.models.iter().find(|m| m.name == model);
        let price = match listed.and_then(|m| m.pricing.as_ref()) {
            Some(pricing) => {
                let parsed = override_pricing(name, model, pricing, problems);
                out.invalid |= parsed.is_none();
                parsed
            }
            None => catalog::lookup(kind, model),
        };
        match price {
            Some(p) => {
                out.models.insert(model.to_string(), p);
            }
            None => out.unpriced.push(model.to_string()),
        }
    }
    out
}

/// A `spec.models[].pricing` override as the rendered [`Pricing`]; `None` (with a problem per
/// bad field) when any price is invalid.
fn override_pricing(
    provider: &str,
    model: &str,
    p: &ModelPricing,
    problems: &mut Problems,
) -> Option<Pricing> {
    let mut bad: Vec<String> = Vec::new();
    let long_context = p.long_context.as_ref().map(|t| {
        if t.above_input_tokens < 1 {
            bad.push(format!(
                "spec.models[{model}].pricing.longContext.aboveInputTokens must be at least 1, \
                 got {}",
                t.above_input_tokens
            ));
        }
        LongContextPricing {
            above_input_tokens: u64::try_from(t.above_input_tokens).unwrap_or(0),
            input_per_million: price(
                model,
                "longContext.inputPerMillion",
                &t.input_per_million,
                &mut bad,
            ),
            output_per_million: price(
                model,
                "longContext.outputPerMillion",
                &t.output_per_million,
                &mut bad,
            ),
            cached_input_per_million: t
                .cached_input_per_million
                .as_ref()
                .map(|v| price(model, "longContext.cachedInputPerMillion", v, &mut bad)),
            cache_write_per_million: t
                .cache_write_per_million
                .as_ref()
                .map(|v| price(model, "longContext.cacheWritePerMillion", v, &mut bad)),
        }
    });
    let pricing = Pricing {
        input_per_million: price(model, "inputPerMillion", &p.input_per_million, &mut bad),
        output_per_million: price(model, "outputPerMillion", &p.output_per_million, &mut bad),
        cached_input_per_million: p
            .cached_input_per_million
            .as_ref()
            .map(|v| price(model, "cachedInputPerMillion", v, &mut bad)),
        cache_write_per_million: p
            .cache_write_per_million
            .as_ref()
            .map(|v| price(model, "cacheWritePerMillion", v, &mut bad)),
        reasoning_per_million: p
            .reasoning_per_million
            .as_ref()
            .map(|v| price(model, "reasoningPerMillion", v, &mut bad)),
        long_context,
    };
    let ok = bad.is_empty();
    for message in bad {
        problems.push(ObjectKind::ModelProvider, provider, "InvalidSpec", message);
    }
    ok.then_some(pricing)
}

/// One override price as a number; an invalid one is recorded in `bad` (and priced 0, unused).
fn price(model: &str, field: &str, v: &Price, bad: &mut Vec<String>) -> f64 {
    v.value().unwrap_or_else(|| {
        bad.push(format!(
            "spec.models[{model}].pricing.{field}: {v} is not a non-negative whole number or \
             decimal such as \"2.50\""
        ));
        0.0
    })
}
