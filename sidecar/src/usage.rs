//! Token usage as OpenAI reports it, and its price.

use gatehouse_crds::config::Pricing;
use gatehouse_crds::usage::AnthropicUsage;
use serde::Deserialize;

/// The `usage` object of a chat completion or of the last stream chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens, reasoning included.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Breakdown of the prompt tokens.
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PromptDetails {
    /// Prompt tokens served from the provider's cache.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

impl Usage {
    /// Cached prompt tokens, never more than the prompt.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(self.prompt_tokens)
    }

    /// Price in USD.
    pub fn cost(&self, pricing: &Pricing) -> f64 {
        let cached = self.cached_tokens();
        let uncached = self.prompt_tokens - cached;
        let cached_price = pricing
            .cached_input_per_million
            .unwrap_or(pricing.input_per_million);
        (uncached as f64 * pricing.input_per_million
            + cached as f64 * cached_price
            + self.completion_tokens as f64 * pricing.output_per_million)
            / 1_000_000.0
    }
}

/// A request's tokens split by how they are billed: the five types metering prices and the
/// metrics count. `input` excludes the cached reads and cache writes; `output` excludes
/// reasoning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Prompt tokens billed at the input rate.
    pub input: u64,
    /// Prompt tokens read from the provider's cache.
    pub cached_read: u64,
    /// Prompt tokens written to the provider's cache.
    pub cache_write: u64,
    /// Completion tokens other than reasoning.
    pub output: u64,
    /// Reasoning (thinking) tokens.
    pub reasoning: u64,
}

impl Tokens {
    /// The token types with their metric label, in a fixed order.
    pub fn by_type(&self) -> [(&'static str, u64); 5] {
        [
            ("input", self.input),
            ("cached_read", self.cached_read),
            ("cache_write", self.cache_write),
            ("output", self.output),
            ("reasoning", self.reasoning),
        ]
    }
}

impl Usage {
    /// The tokens by billing type.
    pub fn tokens(&self) -> Tokens {
        let cached_read = self.cached_tokens();
        Tokens {
            input: self.prompt_tokens - cached_read,
            cached_read,
            cache_write: 0,
            output: self.completion_tokens,
            reasoning: 0,
        }
    }
}

/// The usage of a buffered response body, if it reports one.
pub fn of_body(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct WithUsage {
        #[serde(default)]
        usage: Option<Usage>,
    }
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
}

/// The usage of a buffered Anthropic message (cache reads and writes count as prompt tokens, reads
/// as cached ones).
pub fn of_anthropic_body(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Message {
        usage: AnthropicUsage,
    }
    let u = serde_json::from_slice::<Message>(body).ok()?.usage;
    Some(Usage::from_anthropic(&u))
}

impl Usage {
    /// The OpenAI shape of an Anthropic `usage` object (the arithmetic is
    /// [`AnthropicUsage::prompt_tokens`]'s, shared with the operator side).
    pub fn from_anthropic(u: &AnthropicUsage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens(),
            completion_tokens: u.completion_tokens(),
            prompt_tokens_details: Some(PromptDetails {
                cached_tokens: Some(u.cached_tokens()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_tokens_are_priced_at_the_cached_rate() {
        let usage: Usage = serde_json::from_str(
            r#"{"prompt_tokens":1000,"completion_tokens":500,"prompt_tokens_details":{"cached_tokens":400}}"#,
        )
        .unwrap();
        let pricing = Pricing {
            input_per_million: 2.0,
            output_per_million: 8.0,
            cached_input_per_million: Some(0.5),
            ..Pricing::default()
        };
        let expected = (600.0 * 2.0 + 400.0 * 0.5 + 500.0 * 8.0) / 1e6;
        assert!((usage.cost(&pricing) - expected).abs() < 1e-12);
    }

    #[test]
    fn cached_price_defaults_to_input_price_and_is_capped_by_prompt() {
        let usage = Usage {
            prompt_tokens: 10,
            completion_tokens: 0,
            prompt_tokens_details: Some(PromptDetails {
                cached_tokens: Some(50),
            }),
        };
        assert_eq!(usage.cached_tokens(), 10);
        let pricing = Pricing {
            input_per_million: 1.0,
            output_per_million: 1.0,
            cached_input_per_million: None,
            ..Pricing::default()
        };
        assert!((usage.cost(&pricing) - 10.0 / 1e6).abs() < 1e-15);
    }

    #[test]
    fn body_without_usage_has_none() {
        assert_eq!(of_body(br#"{"id":"x"}"#), None);
        assert_eq!(of_body(b"not json"), None);
    }
}
