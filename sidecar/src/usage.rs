//! Token usage in OpenAI's shape (the gateway's lingua franca), split by how each token type is
//! billed, its price, and the estimate of a stream that ended before its provider reported usage.
//!
//! Every provider's report becomes this one shape on the way in (docs/architecture.md,
//! "Metering"): OpenAI and Azure OpenAI report it as it is (`prompt_tokens_details.cached_tokens`,
//! `completion_tokens_details.reasoning_tokens`); Anthropic's cache reads and writes, Gemini's
//! cached content and thoughts, Bedrock Converse's cache reads and writes are translated into it by
//! their adapters. Cache writes travel as `prompt_tokens_details.cache_write_tokens`, a field
//! OpenAI does not define (the official SDKs keep unknown fields).

use gatehouse_crds::config::Pricing;
use gatehouse_crds::usage::AnthropicUsage;
use serde::{Deserialize, Deserializer};

/// The `usage` object of a chat completion, an embeddings list or the last stream chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cached reads and cache writes included.
    #[serde(default, deserialize_with = "count")]
    pub prompt_tokens: u64,
    /// Completion tokens, reasoning included.
    #[serde(default, deserialize_with = "count")]
    pub completion_tokens: u64,
    /// Breakdown of the prompt tokens.
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    /// Breakdown of the completion tokens.
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
    /// The counts are the gateway's estimate, not the provider's report (`gatehouse_estimated`,
    /// see [`estimate_embedding_prompt`]).
    #[serde(default, rename = "gatehouse_estimated")]
    pub estimated: bool,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PromptDetails {
    /// Prompt tokens served from the provider's cache.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    /// Prompt tokens written to the provider's cache on this call (Anthropic, Bedrock).
    #[serde(default)]
    pub cache_write_tokens: Option<u64>,
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct CompletionDetails {
    /// Completion tokens the model spent reasoning (OpenAI's o-series, Gemini's thoughts).
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

/// A token count that may be `null` (0).
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
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
    /// A usage from its parts: `prompt` includes `cached` and `cache_write`, `completion`
    /// includes `reasoning`. Zero breakdowns are left out, as providers leave them out.
    pub fn new(
        prompt: u64,
        completion: u64,
        cached: u64,
        cache_write: u64,
        reasoning: u64,
    ) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            prompt_tokens_details: (cached > 0 || cache_write > 0).then_some(PromptDetails {
                cached_tokens: Some(cached),
                cache_write_tokens: (cache_write > 0).then_some(cache_write),
            }),
            completion_tokens_details: (reasoning > 0).then_some(CompletionDetails {
                reasoning_tokens: Some(reasoning),
            }),
            estimated: false,
        }
    }

    /// Cached prompt tokens, never more than the prompt.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(self.prompt_tokens)
    }

    /// Prompt tokens written to the cache, never more than the prompt's uncached part.
    pub fn cache_write_tokens(&self) -> u64 {
        self.prompt_tokens_details
            .and_then(|d| d.cache_write_tokens)
            .unwrap_or(0)
            .min(self.prompt_tokens - self.cached_tokens())
    }

    /// Reasoning tokens, never more than the completion.
    pub fn reasoning_tokens(&self) -> u64 {
        self.completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0)
            .min(self.completion_tokens)
    }

    /// The tokens by billing type; they add up to `prompt_tokens + completion_tokens`.
    pub fn tokens(&self) -> Tokens {
        let cached_read = self.cached_tokens();
        let cache_write = self.cache_write_tokens();
        let reasoning = self.reasoning_tokens();
        Tokens {
            input: self.prompt_tokens - cached_read - cache_write,
            cached_read,
            cache_write,
            output: self.completion_tokens - reasoning,
            reasoning,
        }
    }

    /// Price in USD: each token type at its rate. A request whose prompt is longer than the
    /// long-context tier's threshold has every token priced at the tier's rates. Unset rates fall
    /// back as `Pricing` documents: cached reads and cache writes to the input rate, reasoning to
    /// the output rate (in the long-context tier, to the tier's input and output rates).
    pub fn cost(&self, pricing: &Pricing) -> f64 {
        let t = self.tokens();
        let (input, cached, write, output, reasoning) = match &pricing.long_context {
            Some(tier) if self.prompt_tokens > tier.above_input_tokens => (
                tier.input_per_million,
                tier.cached_input_per_million
                    .unwrap_or(tier.input_per_million),
                tier.cache_write_per_million
                    .unwrap_or(tier.input_per_million),
                tier.output_per_million,
                tier.output_per_million,
            ),
            _ => (
                pricing.input_per_million,
                pricing
                    .cached_input_per_million
                    .unwrap_or(pricing.input_per_million),
                pricing
                    .cache_write_per_million
                    .unwrap_or(pricing.input_per_million),
                pricing.output_per_million,
                pricing
                    .reasoning_per_million
                    .unwrap_or(pricing.output_per_million),
            ),
        };
        (t.input as f64 * input
            + t.cached_read as f64 * cached
            + t.cache_write as f64 * write
            + t.output as f64 * output
            + t.reasoning as f64 * reasoning)
            / 1_000_000.0
    }

    /// Merge usage reported in pieces (Anthropic: the prompt in `message_start`, the completion
    /// in `message_delta`): each count is the largest reported, each breakdown the latest.
    pub fn merge(old: Option<Usage>, new: Usage) -> Usage {
        let Some(old) = old else { return new };
        Usage {
            prompt_tokens: old.prompt_tokens.max(new.prompt_tokens),
            completion_tokens: old.completion_tokens.max(new.completion_tokens),
            prompt_tokens_details: new.prompt_tokens_details.or(old.prompt_tokens_details),
            completion_tokens_details: new
                .completion_tokens_details
                .or(old.completion_tokens_details),
            estimated: old.estimated || new.estimated,
        }
    }

    /// The OpenAI shape of an Anthropic `usage` object (the arithmetic is
    /// [`AnthropicUsage::prompt_tokens`]'s, shared with the operator side). Anthropic counts
    /// thinking inside `output_tokens` and does not report it apart.
    pub fn from_anthropic(u: &AnthropicUsage) -> Self {
        Self::new(
            u.prompt_tokens(),
            u.completion_tokens(),
            u.cached_tokens(),
            u.cache_creation_input_tokens.unwrap_or(0),
            0,
        )
    }
}

/// An embeddings answer (OpenAI's shape) whose provider reported no prompt tokens (Gemini's
/// `batchEmbedContents` reports none; Bedrock's Cohere models report them in a header that may be
/// missing) gets them estimated from the text of the request's `input` (`request` is the body the
/// client sent), by [`BYTES_PER_TOKEN`], and marked `"gatehouse_estimated": true`: the client
/// sees the count it is charged (the access line says it is estimated) instead of a zero.
pub fn estimate_embedding_prompt(answer: &mut serde_json::Value, request: &[u8]) {
    use std::borrow::Cow;

    use serde_json::{Value, json};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Input<'a> {
        One(#[serde(borrow)] Cow<'a, str>),
        Many(#[serde(borrow)] Vec<Cow<'a, str>>),
        Ids(Vec<u64>),
        ManyIds(Vec<Vec<u64>>),
    }
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow, default)]
        input: Option<Input<'a>>,
    }
    let Some(usage) = answer.get_mut("usage").and_then(Value::as_object_mut) else {
        return;
    };
    if usage
        .get("prompt_tokens")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 0)
    {
        return;
    }
    // Token ids (decoded to text before they went upstream) count as themselves.
    let tokens = match serde_json::from_slice::<Body<'_>>(request).map(|b| b.input) {
        Ok(Some(Input::One(s))) => estimate_tokens(s.len() as u64),
        Ok(Some(Input::Many(items))) => estimate_tokens(items.iter().map(|s| s.len() as u64).sum()),
        Ok(Some(Input::Ids(ids))) => ids.len() as u64,
        Ok(Some(Input::ManyIds(lists))) => lists.iter().map(|l| l.len() as u64).sum(),
        _ => 0,
    };
    if tokens == 0 {
        return;
    }
    usage.insert("prompt_tokens".into(), json!(tokens));
    usage.insert("total_tokens".into(), json!(tokens));
    usage.insert("gatehouse_estimated".into(), json!(true));
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

/// The usage of a buffered Anthropic message.
pub fn of_anthropic_body(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Message {
        usage: AnthropicUsage,
    }
    let u = serde_json::from_slice::<Message>(body).ok()?.usage;
    Some(Usage::from_anthropic(&u))
}

/// Bytes of text per token the estimates assume. Byte-pair tokenizers average about four bytes
/// of English text per token (OpenAI's rule of thumb); code, JSON and non-Latin scripts run
/// denser (two to three bytes per token), so an estimate may be low by up to half for them and
/// high by about a quarter for plain English prose.
pub const BYTES_PER_TOKEN: u64 = 4;

/// Tokens in `bytes` bytes of text, by [`BYTES_PER_TOKEN`] (rounded up).
pub fn estimate_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(BYTES_PER_TOKEN)
}

/// What the gateway measured of a request itself, for an estimate when a stream ends before its
/// provider reported the final usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measured {
    /// Bytes of the client's request body. The prompt estimate is this over
    /// [`BYTES_PER_TOKEN`]: the body's JSON (keys, roles, quotes, about 30 bytes a message) and
    /// any parameters count as prompt, so it runs high for short prompts.
    pub request_bytes: u64,
    /// Bytes of answer text relayed to the client (content, tool-call arguments, reasoning as the
    /// stream carried them, JSON-escaped).
    pub text_bytes: u64,
    /// Whether the provider's final usage report was seen (OpenAI's usage chunk, Anthropic's
    /// `message_delta`, a translated stream's usage).
    pub final_usage: bool,
}

impl Measured {
    /// The usage to charge for a stream that ended without its final report: what the provider
    /// reported so far, with the prompt estimated when it reported none and the completion at
    /// least what the relayed text suggests.
    pub fn estimate(&self, reported: Option<Usage>) -> Usage {
        let mut usage = reported.unwrap_or_default();
        if usage.prompt_tokens == 0 {
            usage.prompt_tokens = estimate_tokens(self.request_bytes);
        }
        usage.completion_tokens = usage
            .completion_tokens
            .max(estimate_tokens(self.text_bytes));
        usage
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_crds::config::LongContextPricing;

    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

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
        assert!(close(usage.cost(&pricing), expected));
    }

    #[test]
    fn every_token_type_has_its_rate() {
        let usage: Usage = serde_json::from_str(
            r#"{"prompt_tokens":1000,"completion_tokens":500,
                "prompt_tokens_details":{"cached_tokens":400,"cache_write_tokens":100,"audio_tokens":null},
                "completion_tokens_details":{"reasoning_tokens":200,"accepted_prediction_tokens":0}}"#,
        )
        .unwrap();
        assert_eq!(
            usage.tokens(),
            Tokens {
                input: 500,
                cached_read: 400,
                cache_write: 100,
                output: 300,
                reasoning: 200
            }
        );
        let pricing = Pricing {
            input_per_million: 3.0,
            output_per_million: 15.0,
            cached_input_per_million: Some(0.3),
            cache_write_per_million: Some(3.75),
            reasoning_per_million: Some(20.0),
            long_context: None,
        };
        let expected =
            (500.0 * 3.0 + 400.0 * 0.3 + 100.0 * 3.75 + 300.0 * 15.0 + 200.0 * 20.0) / 1e6;
        assert!(close(usage.cost(&pricing), expected));
        // Unset rates: cached reads and writes at the input rate, reasoning at the output rate.
        let plain = Pricing {
            input_per_million: 3.0,
            output_per_million: 15.0,
            ..Pricing::default()
        };
        assert!(close(
            usage.cost(&plain),
            (1000.0 * 3.0 + 500.0 * 15.0) / 1e6
        ));
    }

    #[test]
    fn the_long_context_tier_prices_every_token_of_a_long_prompt() {
        let pricing = Pricing {
            input_per_million: 1.25,
            output_per_million: 10.0,
            cached_input_per_million: Some(0.31),
            long_context: Some(LongContextPricing {
                above_input_tokens: 200_000,
                input_per_million: 2.5,
                output_per_million: 15.0,
                cached_input_per_million: Some(0.625),
                cache_write_per_million: None,
            }),
            ..Pricing::default()
        };
        let at = Usage::new(200_000, 1000, 50_000, 0, 100);
        let at_cost = (150_000.0 * 1.25 + 50_000.0 * 0.31 + 900.0 * 10.0 + 100.0 * 10.0) / 1e6;
        assert!(
            close(at.cost(&pricing), at_cost),
            "at the threshold: base rates"
        );
        let above = Usage::new(200_001, 1000, 50_000, 1, 100);
        let above_cost =
            (150_000.0 * 2.5 + 50_000.0 * 0.625 + 2.5 + 900.0 * 15.0 + 100.0 * 15.0) / 1e6;
        assert!(close(above.cost(&pricing), above_cost), "above: tier rates");
    }

    #[test]
    fn breakdowns_are_capped_by_what_they_break_down() {
        let usage = Usage {
            prompt_tokens: 10,
            completion_tokens: 3,
            prompt_tokens_details: Some(PromptDetails {
                cached_tokens: Some(8),
                cache_write_tokens: Some(50),
            }),
            completion_tokens_details: Some(CompletionDetails {
                reasoning_tokens: Some(9),
            }),
            ..Usage::default()
        };
        let t = usage.tokens();
        assert_eq!((t.input, t.cached_read, t.cache_write), (0, 8, 2));
        assert_eq!((t.output, t.reasoning), (0, 3));
    }

    #[test]
    fn embeddings_without_prompt_tokens_get_an_estimate_marked_as_such() {
        let request =
            |input: serde_json::Value| serde_json::json!({"input": input}).to_string().into_bytes();
        let zero =
            serde_json::json!({"data": [], "usage": {"prompt_tokens": 0, "total_tokens": 0}});
        let mut answer = zero.clone();
        estimate_embedding_prompt(
            &mut answer,
            &request(serde_json::json!(["hello world", "abc"])),
        );
        let usage: Usage = serde_json::from_value(answer["usage"].clone()).unwrap();
        assert_eq!(usage.prompt_tokens, 4, "14 bytes of text");
        assert!(usage.estimated);
        assert_eq!(answer["usage"]["total_tokens"], 4);
        let mut answer = zero.clone();
        estimate_embedding_prompt(&mut answer, &request(serde_json::json!("12345")));
        assert_eq!(answer["usage"]["prompt_tokens"], 2);
        let mut answer = zero.clone();
        estimate_embedding_prompt(&mut answer, &request(serde_json::json!([[1, 2, 3], [4]])));
        assert_eq!(
            answer["usage"]["prompt_tokens"], 4,
            "token ids count as themselves"
        );
        // A provider's own count stays, unmarked.
        let mut reported = serde_json::json!({"usage": {"prompt_tokens": 7, "total_tokens": 7}});
        estimate_embedding_prompt(&mut reported, &request(serde_json::json!("12345")));
        assert_eq!(
            reported["usage"],
            serde_json::json!({"prompt_tokens": 7, "total_tokens": 7})
        );
        let usage: Usage = serde_json::from_value(reported["usage"].clone()).unwrap();
        assert!(!usage.estimated);
    }

    #[test]
    fn anthropic_cache_writes_are_cache_writes() {
        let u: AnthropicUsage = serde_json::from_str(
            r#"{"input_tokens":10,"output_tokens":7,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000}"#,
        )
        .unwrap();
        let t = Usage::from_anthropic(&u).tokens();
        assert_eq!(
            (t.input, t.cached_read, t.cache_write, t.output),
            (10, 1000, 100, 7)
        );
    }

    #[test]
    fn null_counts_are_zero_and_bodies_without_usage_have_none() {
        let u: Usage =
            serde_json::from_str(r#"{"prompt_tokens":5,"completion_tokens":null}"#).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (5, 0));
        assert_eq!(of_body(br#"{"id":"x"}"#), None);
        assert_eq!(of_body(b"not json"), None);
    }

    #[test]
    fn an_estimate_keeps_what_was_reported_and_fills_the_rest_from_bytes() {
        let m = Measured {
            request_bytes: 401,
            text_bytes: 40,
            final_usage: false,
        };
        assert_eq!(m.estimate(None), Usage::new(101, 10, 0, 0, 0));
        // Anthropic reported the prompt in message_start and one output token so far.
        let reported = Usage::new(30, 1, 20, 0, 0);
        assert_eq!(m.estimate(Some(reported)), Usage::new(30, 10, 20, 0, 0));
    }
}
