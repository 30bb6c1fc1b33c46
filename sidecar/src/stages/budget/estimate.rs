//! What a request may cost at most, reserved before it is sent.
//!
//! - **Input tokens:** the body's bytes / 3 ([`BYTES_PER_INPUT_TOKEN`], JSON included), plus
//!   [`IMAGE_TOKENS`] per mention of an image part type in `messages` (`"image"`, `"image_url"`,
//!   `"input_image"` as JSON strings: an Anthropic image part names it once, an OpenAI one twice,
//!   as its type and its key; counted in bodies under 256 KiB, whose bytes alone would reserve
//!   less than their images may cost). Tokenizers average about 4 bytes per token on English and code and
//!   about 3 on CJK text, so bytes / 3 is above the real count for most prompts; an image by URL
//!   is a few bytes for up to about 1,600 tokens (Anthropic's largest), hence the allowance.
//! - **Output tokens:** `max_completion_tokens`, `max_tokens` or (Responses)
//!   `max_output_tokens` (the largest, when several are set; Anthropic's required `max_tokens`), else `--budget-default-output-tokens` (4096); none for
//!   embeddings. A provider stops at the limit the client set, so with one set the output part
//!   is a true ceiling.
//! - **Price:** the most expensive of the targets the request may go to (its route's, or the
//!   routing rule's subset, or the downgrade Route's), each token type at the highest of its
//!   rates (input at the cache-write rate when that is higher, output at the reasoning rate when
//!   that is higher; the long-context tier when the input estimate crosses it). An unpriced
//!   model counts 0 USD, as metering does (`gatehouse_unpriced_requests_total` shows them).

use gatehouse_crds::config::Pricing;
use gatehouse_crds::ledger::{Amount, usd_to_nanos};
use memchr::memmem;

use crate::dialect::Operation;
use crate::request::Request;
use crate::state::Target;

/// Body bytes counted as one input token.
pub const BYTES_PER_INPUT_TOKEN: u64 = 3;

/// Input tokens reserved per mention of an image part type (on top of the body's bytes).
pub const IMAGE_TOKENS: u64 = 1_600;

/// The default of `--budget-default-output-tokens`: output reserved for a request that sets no
/// `max_tokens`.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 4_096;

/// The token counts a request is reserved for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    /// Input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
}

/// The tokens `request` may use.
pub fn tokens(request: &Request, default_output: u64) -> Tokens {
    let body = request.body();
    // A body big enough to be parsed off the request thread is not scanned on it either; its
    // bytes / 3 already reserve far more than its image parts could add.
    let images = request
        .index
        .features
        .messages_at
        .clone()
        .filter(|_| body.len() < crate::request::OFFLOAD_BYTES)
        .and_then(|r| body.get(r))
        .map_or(0, count_images);
    let input = (body.len() as u64)
        .div_ceil(BYTES_PER_INPUT_TOKEN)
        .saturating_add(images.saturating_mul(IMAGE_TOKENS));
    let output = match request.op {
        Operation::Embeddings => 0,
        Operation::Chat => request.index.max_tokens.unwrap_or(default_output),
    };
    Tokens { input, output }
}

/// Mentions of image part types in `messages`: the JSON strings `"image_url"` (OpenAI),
/// `"image"` (Anthropic) and `"input_image"`; inside a JSON string their quotes would be escaped,
/// so text that merely mentions them does not count.
fn count_images(messages: &[u8]) -> u64 {
    [&b"\"image_url\""[..], b"\"image\"", b"\"input_image\""]
        .iter()
        .map(|needle| memmem::find_iter(messages, needle).count() as u64)
        .sum()
}

/// The reservation for `tokens` on the most expensive of `targets`.
pub fn amount<'a>(tokens: Tokens, targets: impl IntoIterator<Item = &'a Target>) -> Amount {
    let usd = targets
        .into_iter()
        .filter_map(|t| t.provider.models.get(&*t.model))
        .map(|p| ceiling(tokens, p))
        .fold(0.0, f64::max);
    Amount {
        nano_usd: usd_to_nanos(usd),
        tokens: tokens.input.saturating_add(tokens.output),
    }
}

/// The most `tokens` can cost at `pricing`.
fn ceiling(tokens: Tokens, pricing: &Pricing) -> f64 {
    let (input, write, output) = match &pricing.long_context {
        Some(tier) if tokens.input > tier.above_input_tokens => (
            tier.input_per_million,
            tier.cache_write_per_million,
            tier.output_per_million,
        ),
        _ => (
            pricing.input_per_million,
            pricing.cache_write_per_million,
            pricing.output_per_million,
        ),
    };
    let input = input.max(write.unwrap_or(0.0));
    let output = output.max(pricing.reasoning_per_million.unwrap_or(0.0));
    (tokens.input as f64 * input + tokens.output as f64 * output) / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_crds::config::LongContextPricing;

    fn pricing(input: f64, output: f64) -> Pricing {
        Pricing {
            input_per_million: input,
            output_per_million: output,
            cached_input_per_million: None,
            cache_write_per_million: None,
            reasoning_per_million: None,
            long_context: None,
        }
    }

    #[test]
    fn the_ceiling_takes_the_highest_rate_of_each_side() {
        let t = Tokens {
            input: 1_000_000,
            output: 1_000_000,
        };
        assert_eq!(ceiling(t, &pricing(1.0, 2.0)), 3.0);
        let anthropic = Pricing {
            cache_write_per_million: Some(1.25),
            reasoning_per_million: Some(4.0),
            ..pricing(1.0, 2.0)
        };
        assert_eq!(ceiling(t, &anthropic), 5.25);
        let tiered = Pricing {
            long_context: Some(LongContextPricing {
                above_input_tokens: 200_000,
                input_per_million: 10.0,
                output_per_million: 20.0,
                cached_input_per_million: None,
                cache_write_per_million: None,
            }),
            ..pricing(1.0, 2.0)
        };
        assert_eq!(ceiling(t, &tiered), 30.0);
        let short = Tokens {
            input: 1_000,
            output: 0,
        };
        assert!((ceiling(short, &tiered) - 0.001).abs() < 1e-12);
    }

    async fn request(body: &str, op: Operation, dialect: crate::dialect::Dialect) -> Request {
        let budget = crate::request::budget::BodyBudget::new(1 << 20);
        let body = crate::request::read::Body {
            bytes: bytes::Bytes::from(body.to_string()),
            permit: budget.permit(),
        };
        Request::parse(body, op, dialect, None).await.unwrap()
    }

    #[tokio::test]
    async fn tokens_are_the_body_over_three_and_the_output_limit() {
        use crate::dialect::Dialect;
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":100}"#;
        let t = tokens(&request(body, Operation::Chat, Dialect::OpenAi).await, 4096);
        assert_eq!(t.input, (body.len() as u64).div_ceil(3));
        assert_eq!(t.output, 100);
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let t = tokens(&request(body, Operation::Chat, Dialect::OpenAi).await, 4096);
        assert_eq!(t.output, 4096, "no limit set: the default");
        let body = r#"{"model":"m","max_tokens":7,"messages":[{"role":"user","content":[
            {"type":"image","source":{"type":"url","url":"https://x"}}]}]}"#;
        let t = tokens(
            &request(body, Operation::Chat, Dialect::Anthropic).await,
            4096,
        );
        assert_eq!(t.output, 7);
        assert_eq!(t.input, (body.len() as u64).div_ceil(3) + IMAGE_TOKENS);
        let body = r#"{"model":"m","input":"hello","max_tokens":9}"#;
        let t = tokens(
            &request(body, Operation::Embeddings, Dialect::OpenAi).await,
            4096,
        );
        assert_eq!(t.output, 0, "embeddings produce no output tokens");
        // Responses: `max_output_tokens` is the output limit, images sit in `input`.
        let body = r#"{"model":"m","max_output_tokens":33,"input":[{"role":"user","content":[
            {"type":"input_image","image_url":"https://x"}]}]}"#;
        let t = tokens(
            &request(body, Operation::Chat, Dialect::Responses).await,
            4096,
        );
        assert_eq!(t.output, 33);
        // Two mentions: the part's type `"input_image"` and its key `"image_url"`.
        assert_eq!(t.input, (body.len() as u64).div_ceil(3) + 2 * IMAGE_TOKENS);
    }

    #[test]
    fn the_reservation_is_priced_at_the_most_expensive_target() {
        use gatehouse_crds::config::{ProviderConfig, SidecarConfig};
        let mut config = SidecarConfig::empty("default");
        let provider: ProviderConfig = serde_json::from_value(serde_json::json!({
            "type": "openai", "endpoint": "http://127.0.0.1:1/v1",
            "models": {
                "cheap": {"inputPerMillion": 1.0, "outputPerMillion": 1.0},
                "dear": {"inputPerMillion": 10.0, "outputPerMillion": 30.0},
            },
        }))
        .unwrap();
        config.providers.insert("p".into(), provider);
        let snapshot =
            crate::state::Snapshot::build(config, &gatehouse_crds::ProviderKeys::new()).unwrap();
        let target = |model: &str| Target {
            provider: snapshot.providers["p"].clone(),
            model: model.into(),
        };
        let t = Tokens {
            input: 1_000,
            output: 1_000,
        };
        let both = [target("cheap"), target("dear"), target("unpriced")];
        assert_eq!(
            amount(t, &both),
            Amount {
                nano_usd: 40_000_000,
                tokens: 2_000
            }
        );
        assert_eq!(amount(t, &[target("unpriced")]).nano_usd, 0);
    }

    #[test]
    fn image_parts_are_counted_as_json_tokens_only() {
        let m = br#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}},
            {"type":"text","text":"the word \"image\" in text"}]}]"#;
        // `"image_url"` appears twice (the type's value and the key), the escaped `\"image\"`
        // not at all.
        assert_eq!(count_images(m), 2);
        assert_eq!(count_images(br#"[{"role":"user","content":"hi"}]"#), 0);
    }
}
