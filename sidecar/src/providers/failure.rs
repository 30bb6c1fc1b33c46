//! How a call failed, beyond the status code: the part common to every provider (401/403 are a
//! credentials refusal, the `retry-after-ms` / `retry-after` headers, the delay cap). Each
//! provider's own signals are in its adapter (`Adapter::key_refused`, `billing_refused`,
//! `rate_limit_delay`).
//!
//! Credentials: 401 and 403 always count. Some providers also refuse a key with another status:
//! Gemini answers a wrong or expired API key with `400 INVALID_ARGUMENT` and a
//! `google.rpc.ErrorInfo` detail (reason `API_KEY_INVALID`, also for expired keys); Bedrock names
//! signing failures in `x-amzn-errortype`, some of them documented as 400 (`IncompleteSignature`,
//! `RequestExpired`, `NotAuthorized`). Those become the same auth failure as a 401: the next target
//! is tried. The reason named is always one of the adapters' fixed strings, never text from the
//! body, which may echo the key.
//!
//! Rate limits: the delay comes from what the provider really sends: `retry-after-ms` (OpenAI,
//! Azure OpenAI), `retry-after` in seconds (OpenAI, Azure OpenAI, Anthropic), Gemini's
//! `google.rpc.RetryInfo.retryDelay` in the error body, and for OpenAI-wire providers the
//! `x-ratelimit-reset-*` header of an exhausted limit. Bedrock's `ThrottlingException` carries no
//! delay. [`DEFAULT_RETRY_AFTER`] stands in when nothing says.

use std::time::Duration;

use gatehouse_crds::config::ProviderKind;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::error::AuthFailure;
use crate::providers::{self, Adapter};

/// The `Retry-After` the gateway answers a rate-limited request with when no provider said how
/// long to wait: short, so a client backs off a little and comes back (the gateway's own
/// retries and failover have already happened by then).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Longest delay taken from a provider; anything larger is cut to it (a day).
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Whether an error answer of a provider of `kind` is a refusal of the gateway's credentials,
/// and which (401/403 always are). `body` may be empty when it was not read.
pub fn auth_failure(
    kind: ProviderKind,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<AuthFailure> {
    providers::adapter(kind).key_refused(status, headers, body)
}

/// 401 and 403 are always a credentials refusal; `refused` makes any status one (the provider
/// named a key problem). `reason` is the provider's name for it.
pub fn always_auth(
    status: StatusCode,
    reason: Option<&'static str>,
    refused: bool,
) -> Option<AuthFailure> {
    let always = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    (always || refused).then_some(AuthFailure { status, reason })
}

/// How long a provider of `kind` asked to wait after a 429, if it said. `body` may be empty when
/// it was not read (see [`Adapter::delay_in_body`]).
pub fn retry_after(kind: ProviderKind, headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
    delay(providers::adapter(kind), headers, body)
}

/// [`retry_after`] for an adapter: `retry-after-ms` (OpenAI, Azure OpenAI), then `retry-after`
/// in seconds (all that send one), then the provider's own signal; capped.
pub fn delay(adapter: &dyn Adapter, headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let delay = header("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| seconds(ms / 1000.0))
        .or_else(|| {
            header("retry-after")
                .and_then(|v| v.parse::<f64>().ok())
                .and_then(seconds)
        })
        .or_else(|| adapter.rate_limit_delay(headers, body))?;
    Some(delay.min(MAX_RETRY_AFTER))
}

/// A delay as whole seconds, rounded up, for a `Retry-After` header.
pub fn header_seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

/// Non-negative, finite seconds as a duration; too large for one saturates at the cap.
pub(crate) fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::try_from_secs_f64(secs).unwrap_or(MAX_RETRY_AFTER))
}

/// `error` of a JSON error body (Gemini, Anthropic and OpenAI all nest their error there).
pub(crate) fn error_object(body: &[u8]) -> Option<Value> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get_mut("error")?.take();
    error.is_object().then_some(error)
}

/// The entry of `list` equal to `name`, so that only a fixed string is ever named.
pub(crate) fn find(name: &str, list: &[&'static str]) -> Option<&'static str> {
    list.iter().copied().find(|k| *k == name)
}

pub(crate) fn known(value: Option<&Value>, list: &[&'static str]) -> Option<&'static str> {
    value.and_then(Value::as_str).and_then(|s| find(s, list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::openai::go_duration;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn gemini_error(code: u16, status: &str, details: Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"error": {"code": code, "message": "m", "status": status,
            "details": details}}),
        )
        .unwrap()
    }

    #[test]
    fn gemini_invalid_or_expired_key_is_an_auth_failure() {
        let body = gemini_error(
            400,
            "INVALID_ARGUMENT",
            json!([
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                 "message": "API key expired. Please renew the API key."}
            ]),
        );
        let failure = auth_failure(
            ProviderKind::Gemini,
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            &body,
        )
        .unwrap();
        assert_eq!(failure.reason, Some("API_KEY_INVALID"));
        assert_eq!(failure.status, StatusCode::BAD_REQUEST);

        // A plain 400 (a bad request) is not one, nor an unknown reason.
        let plain = gemini_error(400, "INVALID_ARGUMENT", json!([]));
        let other = gemini_error(
            400,
            "INVALID_ARGUMENT",
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SOMETHING"}]),
        );
        for body in [plain, other, b"<html>".to_vec()] {
            assert!(
                auth_failure(
                    ProviderKind::Gemini,
                    StatusCode::BAD_REQUEST,
                    &HeaderMap::new(),
                    &body
                )
                .is_none()
            );
        }
        // A reason of another provider's kind means nothing there.
        assert!(
            auth_failure(
                ProviderKind::Openai,
                StatusCode::BAD_REQUEST,
                &HeaderMap::new(),
                &body
            )
            .is_none()
        );
        // 403 without ErrorInfo names the status.
        let denied = gemini_error(403, "PERMISSION_DENIED", json!([]));
        let failure = auth_failure(
            ProviderKind::Gemini,
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            &denied,
        )
        .unwrap();
        assert_eq!(failure.reason, Some("PERMISSION_DENIED"));
    }

    #[test]
    fn bedrock_signing_failures_are_auth_failures_whatever_the_status() {
        for (status, name) in [
            (400, "IncompleteSignatureException"),
            (400, "RequestExpired"),
            (400, "NotAuthorized"),
            (403, "UnrecognizedClientException"),
            (403, "InvalidSignatureException"),
            (403, "ExpiredTokenException"),
        ] {
            let h = headers(&[(
                "x-amzn-errortype",
                &format!("{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            )]);
            let status = StatusCode::from_u16(status).unwrap();
            let failure = auth_failure(ProviderKind::Bedrock, status, &h, b"{}").unwrap();
            assert_eq!(failure.reason, Some(name));
        }
        let from_body = auth_failure(
            ProviderKind::Bedrock,
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"__type": "com.amazon.coral.service#UnrecognizedClientException", "message": "x"}"#,
        )
        .unwrap();
        assert_eq!(from_body.reason, Some("UnrecognizedClientException"));
        let validation = headers(&[("x-amzn-errortype", "ValidationException:x")]);
        assert!(
            auth_failure(
                ProviderKind::Bedrock,
                StatusCode::BAD_REQUEST,
                &validation,
                b"{}"
            )
            .is_none()
        );
    }

    #[test]
    fn reasons_are_fixed_strings_never_body_text() {
        let body = br#"{"error": {"code": "sk-secret-key-0123456789", "message": "Incorrect API key provided: sk-secret-key-0123456789"}}"#;
        let failure = auth_failure(
            ProviderKind::Openai,
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            body,
        )
        .unwrap();
        assert_eq!(failure.reason, None);
        let body = br#"{"error": {"code": "invalid_api_key", "message": "x"}}"#;
        let failure = auth_failure(
            ProviderKind::AzureOpenAI,
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            body,
        )
        .unwrap();
        assert_eq!(failure.reason, Some("invalid_api_key"));
        let body = br#"{"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}"#;
        let failure = auth_failure(
            ProviderKind::Anthropic,
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            body,
        )
        .unwrap();
        assert_eq!(failure.reason, Some("authentication_error"));
        // Anthropic and OpenAI refuse keys with 401/403 only.
        assert!(
            auth_failure(
                ProviderKind::Anthropic,
                StatusCode::BAD_REQUEST,
                &HeaderMap::new(),
                body
            )
            .is_none()
        );
    }

    #[test]
    fn retry_after_comes_from_what_each_provider_sends() {
        let none = HeaderMap::new();
        let of = |kind, h: &HeaderMap, body: &[u8]| retry_after(kind, h, body);
        // retry-after-ms wins over retry-after; both are read for any provider.
        let h = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(
            of(ProviderKind::AzureOpenAI, &h, b""),
            Some(Duration::from_millis(1500))
        );
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(
            of(ProviderKind::Anthropic, &h, b""),
            Some(Duration::from_secs(7))
        );
        // Gemini: RetryInfo in the body.
        let body = gemini_error(
            429,
            "RESOURCE_EXHAUSTED",
            json!([
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
            ]),
        );
        assert_eq!(
            of(ProviderKind::Gemini, &none, &body),
            Some(Duration::from_secs(37))
        );
        let body = gemini_error(
            429,
            "RESOURCE_EXHAUSTED",
            json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.250s"}]),
        );
        assert_eq!(
            of(ProviderKind::Gemini, &none, &body),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            of(
                ProviderKind::Gemini,
                &none,
                &gemini_error(429, "RESOURCE_EXHAUSTED", json!([]))
            ),
            None
        );
        // OpenAI: the reset of the exhausted limit.
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-remaining-tokens", "1200"),
            ("x-ratelimit-reset-tokens", "20ms"),
        ]);
        assert_eq!(
            of(ProviderKind::Openai, &h, b""),
            Some(Duration::from_secs(360))
        );
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "3"),
            ("x-ratelimit-reset-requests", "1s"),
        ]);
        assert_eq!(of(ProviderKind::Openai, &h, b""), None);
        // Bedrock says nothing; garbage says nothing.
        assert_eq!(
            of(
                ProviderKind::Bedrock,
                &none,
                br#"{"message": "Too many requests"}"#
            ),
            None
        );
        let h = headers(&[("retry-after", "soon"), ("retry-after-ms", "-5")]);
        assert_eq!(of(ProviderKind::Openai, &h, b""), None);
        // A huge value is capped.
        let h = headers(&[("retry-after", "1e300")]);
        assert_eq!(of(ProviderKind::Openai, &h, b""), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn billing_refusals_each_provider_sends_are_told_from_rate_limits_and_bad_requests() {
        let billing = |kind, status: u16, body: &[u8]| {
            providers::adapter(kind).billing_refused(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                body,
            )
        };
        // OpenAI (and Azure OpenAI): 429 insufficient_quota, as the API sends it.
        let quota = br#"{"error": {"message": "You exceeded your current quota, please check your plan and billing details.", "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}"#;
        for kind in [ProviderKind::Openai, ProviderKind::AzureOpenAI] {
            let f = billing(kind, 429, quota).unwrap();
            assert_eq!(f.reason, Some("insufficient_quota"));
            assert!(providers::adapter(kind).reads_rate_limit_body());
        }
        // A plain rate limit is not one.
        let limit = br#"{"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}"#;
        assert!(billing(ProviderKind::Openai, 429, limit).is_none());
        // Anthropic: 400 invalid_request_error naming the credit balance.
        let credit = br#"{"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
        let f = billing(ProviderKind::Anthropic, 400, credit).unwrap();
        assert_eq!(f.reason, Some("credit_balance_too_low"));
        // Any other 400 is the request's fault.
        let bad = br#"{"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}"#;
        assert!(billing(ProviderKind::Anthropic, 400, bad).is_none());
        // 402 from anyone.
        assert!(billing(ProviderKind::Gemini, 402, b"").is_some());
    }

    #[test]
    fn anthropic_529_overloaded_is_retried_and_labelled() {
        let e = crate::error::AttemptError::Status {
            status: StatusCode::from_u16(529).unwrap(),
            retry_after: None,
        };
        assert!(e.is_retryable());
        assert_eq!(e.metric_label(), "overloaded");
        assert_eq!(
            crate::error::StatusClass::of(StatusCode::from_u16(529).unwrap()),
            crate::error::StatusClass::Retry
        );
    }

    #[test]
    fn go_durations_and_header_seconds() {
        assert_eq!(
            go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(go_duration("55"), Some(Duration::from_secs(55)));
        assert_eq!(go_duration("5x"), None);
        assert_eq!(go_duration("s"), None);
        assert_eq!(header_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(header_seconds(Duration::from_secs(7)), 7);
        assert_eq!(header_seconds(Duration::ZERO), 0);
    }
}
