//! The built-in pricing catalog: USD per million tokens of the current models of each provider
//! type, so a ModelProvider that lists no prices still gets its calls priced. A
//! `ModelProvider.spec.models[].pricing` entry overrides the catalog for that provider's model.
//!
//! The data is generated (see `scripts/gen-pricing-catalog` and `crds/catalog/README.md` for the
//! source and its date) into `crds/catalog/prices.json`, compiled into the binary and parsed once,
//! on the first lookup. Lookups happen when a namespace's config is rendered, never per request:
//! the sidecar reads prices from its rendered config only.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;

use crate::config::{Pricing, ProviderKind};

/// The catalog file, as committed.
const PRICES_JSON: &str = include_str!("../catalog/prices.json");

/// Where the catalog's prices come from, as recorded in the data file's header.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// The package the price list ships in, e.g. `litellm (PyPI)`.
    pub package: String,
    /// Version of that package.
    pub version: String,
    /// File name of the downloaded distribution.
    pub wheel: String,
    /// Path of the price list inside the package.
    pub file: String,
    /// SHA-256 of the price list file.
    pub sha256: String,
    /// Licence of the price list.
    pub license: String,
    /// Day the catalog was generated (`YYYY-MM-DD`): prices are as of that day.
    pub as_of: String,
    /// The script that wrote the file.
    pub generator: String,
}

/// The parsed data file: one section of models per provider type.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Catalog {
    source: Source,
    #[allow(
        dead_code,
        reason = "documents the unit in the data file; always USD per million"
    )]
    units: String,
    openai: HashMap<String, Pricing>,
    anthropic: HashMap<String, Pricing>,
    gemini: HashMap<String, Pricing>,
    #[serde(rename = "azureOpenAI")]
    azure_openai: HashMap<String, Pricing>,
    bedrock: HashMap<String, Pricing>,
}

/// Parsed once. The file is compiled in, so it either always parses or never does, and the unit
/// tests prove it does; an error here can only come from a hand-edited file that skipped them.
static CATALOG: LazyLock<Result<Catalog, String>> =
    LazyLock::new(|| serde_json::from_str(PRICES_JSON).map_err(|e| e.to_string()));

/// The catalog's price of `model` as served by a provider of `kind`, if it lists one.
///
/// Lookup is by the upstream model name the provider expects (`gpt-4o-mini`,
/// `claude-sonnet-4-5-20250929`, `anthropic.claude-3-5-haiku-20241022-v1:0`, ...), within the
/// provider type's own section, with these allowances for how names are written in practice:
/// - openai, openaiCompatible, azureOpenAI: a dated snapshot not listed itself (`gpt-4o-2099-01-01`)
///   takes its undated model's price. azureOpenAI looks in Azure's section first (an Azure
///   deployment is usually named after its model), then in OpenAI's; openaiCompatible uses
///   OpenAI's names.
/// - anthropic: a dated id not listed takes the undated id's price (`claude-haiku-4-5-20991231` ->
///   `claude-haiku-4-5`), as does a `-latest` alias.
/// - gemini: the `models/` prefix of Gemini's resource names is ignored.
/// - bedrock: model ids and cross-region inference-profile ids (`us.anthropic.claude-...`) are
///   each priced as listed (profiles may cost more than the in-region model); an ARN is looked up
///   by its last path segment.
///
/// Names are matched exactly first, then in lower case.
pub fn lookup(kind: ProviderKind, model: &str) -> Option<Pricing> {
    let catalog = CATALOG.as_ref().ok()?;
    let found = |section: &HashMap<String, Pricing>, name: &str| -> Option<Pricing> {
        section
            .get(name)
            .or_else(|| section.get(name.to_ascii_lowercase().as_str()))
            .copied()
    };
    let openai_like = |section: &HashMap<String, Pricing>| {
        found(section, model).or_else(|| found(section, strip_dash_date(model)?))
    };
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => openai_like(&catalog.openai),
        ProviderKind::AzureOpenAI => {
            openai_like(&catalog.azure_openai).or_else(|| openai_like(&catalog.openai))
        }
        ProviderKind::Anthropic => found(&catalog.anthropic, model)
            .or_else(|| found(&catalog.anthropic, strip_compact_date(model)?))
            .or_else(|| found(&catalog.anthropic, model.strip_suffix("-latest")?)),
        // Vertex AI serves the same Gemini models at the same list prices.
        ProviderKind::Gemini | ProviderKind::VertexAI => found(
            &catalog.gemini,
            model.strip_prefix("models/").unwrap_or(model),
        ),
        ProviderKind::Bedrock => {
            let id = match model.strip_prefix("arn:") {
                Some(arn) => arn.rsplit('/').next().unwrap_or(arn),
                None => model,
            };
            found(&catalog.bedrock, id)
        }
    }
}

/// Where the catalog's data comes from; `None` only if the compiled-in file failed to parse.
pub fn source() -> Option<&'static Source> {
    CATALOG.as_ref().ok().map(|c| &c.source)
}

/// `gpt-4o-2024-08-06` -> `gpt-4o`: OpenAI's snapshot suffix.
fn strip_dash_date(model: &str) -> Option<&str> {
    let (base, date) = model.split_at_checked(model.len().checked_sub(11)?)?;
    let b = date.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let is_date = b.len() == 11
        && b[0] == b'-'
        && digits(1..5)
        && b[5] == b'-'
        && digits(6..8)
        && b[8] == b'-'
        && digits(9..11);
    (is_date && !base.is_empty()).then_some(base)
}

/// `claude-sonnet-4-5-20250929` -> `claude-sonnet-4-5`: Anthropic's snapshot suffix.
fn strip_compact_date(model: &str) -> Option<&str> {
    let (base, date) = model.split_at_checked(model.len().checked_sub(9)?)?;
    let b = date.as_bytes();
    let is_date = b.len() == 9 && b[0] == b'-' && b[1..].iter().all(u8::is_ascii_digit);
    (is_date && !base.is_empty()).then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> &'static Catalog {
        match CATALOG.as_ref() {
            Ok(c) => c,
            Err(e) => panic!("crds/catalog/prices.json does not parse: {e}"),
        }
    }

    #[test]
    fn the_committed_file_parses_and_names_its_source() {
        let c = catalog();
        assert_eq!(c.units, "USD per million tokens");
        let s = source().unwrap();
        assert_eq!(s.license, "MIT");
        assert!(s.package.starts_with("litellm"));
        assert_eq!(s.as_of.len(), 10, "asOf is a YYYY-MM-DD date");
        for (name, section) in [
            ("openai", &c.openai),
            ("anthropic", &c.anthropic),
            ("gemini", &c.gemini),
            ("azureOpenAI", &c.azure_openai),
            ("bedrock", &c.bedrock),
        ] {
            assert!(
                section.len() >= 10,
                "section {name} has {} models",
                section.len()
            );
            for (model, p) in section {
                let rates = [
                    Some(p.input_per_million),
                    Some(p.output_per_million),
                    p.cached_input_per_million,
                    p.cache_write_per_million,
                    p.reasoning_per_million,
                ];
                assert!(
                    rates.iter().flatten().all(|r| r.is_finite() && *r >= 0.0),
                    "{name}/{model}: {p:?}"
                );
                assert!(p.input_per_million > 0.0, "{name}/{model} priced as free");
            }
        }
    }

    // Expected values below were read by hand from litellm 1.110.2's
    // model_prices_and_context_window_backup.json (per-token prices times one million).

    #[test]
    fn openai_models() {
        let p = lookup(ProviderKind::Openai, "gpt-4o-mini").unwrap();
        // input_cost_per_token 1.5e-07, output 6e-07, cache_read_input_token_cost 7.5e-08
        assert_eq!(p.input_per_million, 0.15);
        assert_eq!(p.output_per_million, 0.6);
        assert_eq!(p.cached_input_per_million, Some(0.075));
        assert_eq!(p.long_context, None);
        let e = lookup(ProviderKind::Openai, "text-embedding-3-small").unwrap();
        assert_eq!((e.input_per_million, e.output_per_million), (0.02, 0.0));
        // openaiCompatible servers use OpenAI's names.
        assert_eq!(
            lookup(ProviderKind::OpenaiCompatible, "gpt-4o-mini"),
            Some(p)
        );
        assert_eq!(lookup(ProviderKind::Openai, "no-such-model"), None);
    }

    #[test]
    fn openai_dated_snapshot_falls_back_to_its_model() {
        let listed = lookup(ProviderKind::Openai, "gpt-4.1-2025-04-14").unwrap();
        assert_eq!(listed.input_per_million, 2.0);
        let unlisted = lookup(ProviderKind::Openai, "gpt-4.1-2099-12-31").unwrap();
        assert_eq!(unlisted, lookup(ProviderKind::Openai, "gpt-4.1").unwrap());
        assert_eq!(strip_dash_date("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(strip_dash_date("-2024-08-06"), None);
        assert_eq!(strip_dash_date("gpt-4o-2024-0806"), None);
        assert_eq!(strip_dash_date("é"), None);
    }

    #[test]
    fn long_context_tier_is_parsed() {
        // gpt-5.4: input 2.5e-06, output 1.5e-05, cache read 2.5e-07; above 272k tokens: input
        // 5e-06, output 2.25e-05, cache read 5e-07.
        let p = lookup(ProviderKind::Openai, "gpt-5.4").unwrap();
        assert_eq!((p.input_per_million, p.output_per_million), (2.5, 15.0));
        let tier = p.long_context.unwrap();
        assert_eq!(tier.above_input_tokens, 272_000);
        assert_eq!(tier.input_per_million, 5.0);
        assert_eq!(tier.output_per_million, 22.5);
        assert_eq!(tier.cached_input_per_million, Some(0.5));
        // gemini-2.5-pro: 1.25e-06 / 1e-05, above 200k: 2.5e-06 / 1.5e-05.
        let g = lookup(ProviderKind::Gemini, "gemini-2.5-pro").unwrap();
        let tier = g.long_context.unwrap();
        assert_eq!(tier.above_input_tokens, 200_000);
        assert_eq!(
            (tier.input_per_million, tier.output_per_million),
            (2.5, 15.0)
        );
    }

    #[test]
    fn anthropic_dated_and_undated_ids() {
        // claude-sonnet-4-5: 3e-06 / 1.5e-05, cache read 3e-07, cache write 3.75e-06.
        let p = lookup(ProviderKind::Anthropic, "claude-sonnet-4-5-20250929").unwrap();
        assert_eq!((p.input_per_million, p.output_per_million), (3.0, 15.0));
        assert_eq!(p.cached_input_per_million, Some(0.3));
        assert_eq!(p.cache_write_per_million, Some(3.75));
        assert_eq!(
            lookup(ProviderKind::Anthropic, "claude-sonnet-4-5"),
            Some(p)
        );
        // A snapshot date the catalog does not list takes the undated id's price.
        assert_eq!(
            lookup(ProviderKind::Anthropic, "claude-sonnet-4-5-20991231"),
            Some(p)
        );
        assert_eq!(
            lookup(ProviderKind::Anthropic, "claude-sonnet-4-5-latest"),
            Some(p)
        );
        // claude-haiku-4-5: 1e-06 / 5e-06.
        let h = lookup(ProviderKind::Anthropic, "claude-haiku-4-5").unwrap();
        assert_eq!((h.input_per_million, h.output_per_million), (1.0, 5.0));
        // Anthropic names are not OpenAI names.
        assert_eq!(lookup(ProviderKind::Openai, "claude-haiku-4-5"), None);
    }

    #[test]
    fn gemini_accepts_the_models_prefix_and_reasoning_rate() {
        // gemini-2.5-flash: 3e-07 / 2.5e-06, reasoning billed at the output rate (so not stored).
        let p = lookup(ProviderKind::Gemini, "models/gemini-2.5-flash").unwrap();
        assert_eq!((p.input_per_million, p.output_per_million), (0.3, 2.5));
        assert_eq!(p.reasoning_per_million, None);
        assert_eq!(lookup(ProviderKind::Gemini, "gemini-2.5-flash"), Some(p));
    }

    #[test]
    fn azure_prefers_its_own_section_then_openai() {
        // azure/gpt-4o-mini: 1.5e-07 / 6e-07, cache read 7.5e-08.
        let p = lookup(ProviderKind::AzureOpenAI, "gpt-4o-mini").unwrap();
        assert_eq!((p.input_per_million, p.output_per_million), (0.15, 0.6));
        // Azure's own spelling of GPT-3.5.
        assert!(lookup(ProviderKind::AzureOpenAI, "gpt-35-turbo").is_some());
        // azure/text-embedding-3-large: 1.43e-07, not OpenAI's 1.3e-07.
        let e = lookup(ProviderKind::AzureOpenAI, "text-embedding-3-large").unwrap();
        assert_eq!(e.input_per_million, 0.143);
        // gpt-5.6-cyber is OpenAI-only in the source: Azure falls back to it.
        assert_eq!(
            lookup(ProviderKind::AzureOpenAI, "gpt-5.6-cyber"),
            lookup(ProviderKind::Openai, "gpt-5.6-cyber")
        );
        assert!(lookup(ProviderKind::AzureOpenAI, "gpt-5.6-cyber").is_some());
        // Deployment names are often capitalised by hand.
        assert_eq!(lookup(ProviderKind::AzureOpenAI, "GPT-4o-mini"), Some(p));
    }

    #[test]
    fn bedrock_model_and_inference_profile_ids() {
        // anthropic.claude-3-5-haiku-20241022-v1:0: 8e-07 / 4e-06, cache 8e-08 / 1e-06.
        let p = lookup(
            ProviderKind::Bedrock,
            "anthropic.claude-3-5-haiku-20241022-v1:0",
        )
        .unwrap();
        assert_eq!((p.input_per_million, p.output_per_million), (0.8, 4.0));
        assert_eq!(p.cached_input_per_million, Some(0.08));
        assert_eq!(p.cache_write_per_million, Some(1.0));
        // us.anthropic.claude-sonnet-4-5-20250929-v1:0 costs 3.3e-06 / 1.65e-05, above 200k
        // prompt tokens 6.6e-06 / 2.475e-05.
        let us = lookup(
            ProviderKind::Bedrock,
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        )
        .unwrap();
        assert_eq!((us.input_per_million, us.output_per_million), (3.3, 16.5));
        let tier = us.long_context.unwrap();
        assert_eq!(tier.above_input_tokens, 200_000);
        assert_eq!(tier.input_per_million, 6.6);
        // An inference-profile ARN is priced by its profile id.
        assert_eq!(
            lookup(
                ProviderKind::Bedrock,
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0"
            ),
            Some(us)
        );
        // Llama, Titan, Cohere and Nova families.
        // meta.llama3-3-70b-instruct-v1:0: 7.2e-07 / 7.2e-07.
        let llama = lookup(ProviderKind::Bedrock, "meta.llama3-3-70b-instruct-v1:0").unwrap();
        assert_eq!(
            (llama.input_per_million, llama.output_per_million),
            (0.72, 0.72)
        );
        // amazon.titan-embed-text-v2:0: 2e-08.
        let titan = lookup(ProviderKind::Bedrock, "amazon.titan-embed-text-v2:0").unwrap();
        assert_eq!(titan.input_per_million, 0.02);
        // cohere.embed-v4:0: 1.2e-07.
        let cohere = lookup(ProviderKind::Bedrock, "cohere.embed-v4:0").unwrap();
        assert_eq!(cohere.input_per_million, 0.12);
        // amazon.nova-pro-v1:0: 8e-07 / 3.2e-06, cache read 2e-07.
        let nova = lookup(ProviderKind::Bedrock, "amazon.nova-pro-v1:0").unwrap();
        assert_eq!(
            (nova.input_per_million, nova.output_per_million),
            (0.8, 3.2)
        );
        assert_eq!(nova.cached_input_per_million, Some(0.2));
        // Bedrock ids are not Anthropic API ids.
        assert_eq!(lookup(ProviderKind::Bedrock, "claude-haiku-4-5"), None);
    }
}
