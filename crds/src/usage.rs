//! Token counts as providers report them, reduced to the one shape Gatehouse meters and prices:
//! prompt tokens (cached ones included), of which cached, and completion tokens.
//!
//! Shared so that every place that reads an Anthropic `usage` object (buffered answers, stream
//! events, translation to the OpenAI shape, and the budget ledger as it lands) counts the same way.

use serde::Deserialize;

/// Anthropic's `usage` object (Messages API), as a message or a stream event carries it.
///
/// Anthropic splits the prompt in three: `input_tokens` (not cached), `cache_creation_input_tokens`
/// (written to the cache on this call) and `cache_read_input_tokens` (served from the cache). All
/// three are prompt tokens; only the reads are cached tokens in OpenAI's sense.
#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnthropicUsage {
    /// Prompt tokens neither written to nor read from the cache. Absent from events that report
    /// only the output so far (older `message_delta`s).
    #[serde(default)]
    pub input_tokens: Option<u64>,
    /// Completion tokens.
    #[serde(default)]
    pub output_tokens: Option<u64>,
    /// Prompt tokens written to the cache on this call.
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    /// Prompt tokens read from the cache.
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Whether this object reports the prompt at all (`input_tokens` present). An event without
    /// it says nothing about the prompt, which is not the same as a prompt of 0 tokens.
    pub fn reports_prompt(&self) -> bool {
        self.input_tokens.is_some()
    }

    /// All prompt tokens: uncached input plus cache writes plus cache reads (what OpenAI calls
    /// `prompt_tokens`). Missing fields count as 0.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(self.cached_tokens())
    }

    /// Prompt tokens served from the cache (OpenAI's `prompt_tokens_details.cached_tokens`).
    pub fn cached_tokens(&self) -> u64 {
        self.cache_read_input_tokens.unwrap_or(0)
    }

    /// Completion tokens; 0 when not reported.
    pub fn completion_tokens(&self) -> u64 {
        self.output_tokens.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_reads_and_writes_are_prompt_tokens_and_reads_are_cached() {
        let u: AnthropicUsage = serde_json::from_str(
            r#"{"input_tokens":10,"output_tokens":7,"cache_creation_input_tokens":100,
                "cache_read_input_tokens":1000}"#,
        )
        .unwrap();
        assert!(u.reports_prompt());
        assert_eq!(u.prompt_tokens(), 1110);
        assert_eq!(u.cached_tokens(), 1000);
        assert_eq!(u.completion_tokens(), 7);
    }

    #[test]
    fn a_delta_with_only_output_does_not_report_the_prompt() {
        let u: AnthropicUsage = serde_json::from_str(r#"{"output_tokens":15}"#).unwrap();
        assert!(!u.reports_prompt());
        assert_eq!((u.prompt_tokens(), u.cached_tokens()), (0, 0));
        assert_eq!(u.completion_tokens(), 15);
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let u = AnthropicUsage {
            input_tokens: Some(u64::MAX),
            cache_read_input_tokens: Some(5),
            ..AnthropicUsage::default()
        };
        assert_eq!(u.prompt_tokens(), u64::MAX);
    }
}
