//! How each provider says a call failed, beyond the status code: which answers are a refusal of
//! the gateway's credentials, and how long a rate-limited caller should wait.
//!
//! Credentials: 401 and 403 always count. Some providers also refuse a key with another status:
//! Gemini answers a wrong or expired API key with `400 INVALID_ARGUMENT` and a
//! `google.rpc.ErrorInfo` detail (reason `API_KEY_INVALID`, also for expired keys); Bedrock names
//! signing failures in `x-amzn-errortype`, some of them documented as 400 (`IncompleteSignature`,
//! `RequestExpired`, `NotAuthorized`). Those become the same auth failure as a 401: the next target
//! is tried. The reason named is always one of the fixed strings below, never text from the
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

/// The `Retry-After` the gateway answers a rate-limited request with when no provider said how
/// long to wait: short, so a client backs off a little and comes back (the gateway's own
/// retries and failover have already happened by then).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Longest delay taken from a provider; anything larger is cut to it (a day).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Gemini `google.rpc.ErrorInfo` reasons that mean the key (or the project behind it) cannot be
/// used, from `google/api/error_reason.proto`. An expired Gemini key also comes as
/// `API_KEY_INVALID`.
const GEMINI_KEY_REASONS: &[&str] = &[
    "API_KEY_INVALID",
    "API_KEY_SERVICE_BLOCKED",
    "API_KEY_HTTP_REFERRER_BLOCKED",
    "API_KEY_IP_ADDRESS_BLOCKED",
    "API_KEY_ANDROID_APP_BLOCKED",
    "API_KEY_IOS_APP_BLOCKED",
    "ACCESS_TOKEN_EXPIRED",
    "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
    "ACCESS_TOKEN_TYPE_UNSUPPORTED",
    "CREDENTIALS_MISSING",
    "CONSUMER_SUSPENDED",
    "CONSUMER_INVALID",
];

/// Gemini `error.status` values named when no ErrorInfo reason is known.
const GEMINI_AUTH_STATUSES: &[&str] = &["UNAUTHENTICATED", "PERMISSION_DENIED"];

/// Bedrock (AWS) error names that mean the signature or the credentials were refused, whatever
/// the status: the Bedrock API error-code guide and the AWS common errors.
const BEDROCK_AUTH_ERRORS: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationTokenException",
    "MissingAuthenticationToken",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "ExpiredToken",
    "RequestExpired",
    "NotAuthorized",
    "AccessDeniedException",
];

/// Anthropic `error.type` values of a credentials refusal.
const ANTHROPIC_AUTH_TYPES: &[&str] = &["authentication_error", "permission_error"];

/// OpenAI (and Azure OpenAI) `error.code` values of a credentials refusal.
const OPENAI_AUTH_CODES: &[&str] = &[
    "invalid_api_key",
    "invalid_organization",
    "unsupported_country_region_territory",
];

/// Whether an error answer of `kind` is a refusal of the gateway's credentials, and which
/// (401/403 always are). `body` may be empty when it was not read.
pub fn auth_failure(
    kind: ProviderKind,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<AuthFailure> {
    let always = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    let (reason, refused) = match kind {
        ProviderKind::Gemini => {
            let error = error_object(body);
            let info = error
                .as_ref()
                .and_then(|e| known_detail(e, "ErrorInfo", "reason", GEMINI_KEY_REASONS));
            let named = info.or_else(|| {
                error
                    .as_ref()
                    .and_then(|e| known(e.get("status"), GEMINI_AUTH_STATUSES))
            });
            (named, info.is_some())
        }
        ProviderKind::Bedrock => {
            let name = bedrock_error_name(headers, body);
            let known = name.and_then(|n| find(n, BEDROCK_AUTH_ERRORS));
            (known, known.is_some())
        }
        ProviderKind::Anthropic => {
            let error = error_object(body);
            (
                error
                    .as_ref()
                    .and_then(|e| known(e.get("type"), ANTHROPIC_AUTH_TYPES)),
                false,
            )
        }
        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::AzureOpenAI => {
            let error = error_object(body);
            (
                error
                    .as_ref()
                    .and_then(|e| known(e.get("code"), OPENAI_AUTH_CODES)),
                false,
            )
        }
    };
    (always || refused).then_some(AuthFailure { status, reason })
}

/// Whether [`retry_after`] needs the body of a 429 from `kind` (Gemini puts the delay there).
pub fn delay_in_body(kind: ProviderKind) -> bool {
    kind == ProviderKind::Gemini
}

/// How long a provider of `kind` asked to wait after a 429, if it said. `body` may be empty when
/// it was not read (see [`delay_in_body`]).
pub fn retry_after(kind: ProviderKind, headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
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
        .or_else(|| match kind {
            ProviderKind::Gemini => gemini_retry_delay(body),
            ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::AzureOpenAI => {
                openai_reset(headers)
            }
            ProviderKind::Anthropic | ProviderKind::Bedrock => None,
        })?;
    Some(delay.min(MAX_RETRY_AFTER))
}

/// A delay as whole seconds, rounded up, for a `Retry-After` header.
pub fn header_seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

/// Non-negative, finite seconds as a duration; too large for one saturates at the cap.
fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::try_from_secs_f64(secs).unwrap_or(MAX_RETRY_AFTER))
}

/// `error` of a JSON error body (Gemini, Anthropic and OpenAI all nest their error there).
fn error_object(body: &[u8]) -> Option<Value> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get_mut("error")?.take();
    error.is_object().then_some(error)
}

/// The entry of `list` equal to `name`, so that only a fixed string is ever named.
fn find(name: &str, list: &[&'static str]) -> Option<&'static str> {
    list.iter().copied().find(|k| *k == name)
}

fn known(value: Option<&Value>, list: &[&'static str]) -> Option<&'static str> {
    value.and_then(Value::as_str).and_then(|s| find(s, list))
}

/// The first `google.rpc.<kind>` detail of a Google error whose `field` is in `list`.
fn known_detail(
    error: &Value,
    kind: &str,
    field: &str,
    list: &[&'static str],
) -> Option<&'static str> {
    details(error, kind).find_map(|d| known(d.get(field), list))
}

/// The `details` of a Google error whose `@type` is `type.googleapis.com/google.rpc.<kind>`.
fn details<'a>(error: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |d| {
            d.get("@type")
                .and_then(Value::as_str)
                .and_then(|t| t.strip_prefix("type.googleapis.com/google.rpc."))
                == Some(kind)
        })
}

/// Gemini's `google.rpc.RetryInfo.retryDelay`: a protobuf Duration, `"37s"` or `"1.5s"` in JSON.
fn gemini_retry_delay(body: &[u8]) -> Option<Duration> {
    let error = error_object(body)?;
    details(&error, "RetryInfo").find_map(|d| match d.get("retryDelay")? {
        Value::String(s) => s.trim().strip_suffix('s')?.parse().ok().and_then(seconds),
        Value::Object(o) => {
            let secs = o.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
            let nanos = o.get("nanos").and_then(Value::as_f64).unwrap_or(0.0);
            seconds(secs + nanos / 1e9)
        }
        _ => None,
    })
}

/// The exception name Bedrock puts in `x-amzn-errortype` (`Name:namespace`), or in the body's
/// `__type` when the header is missing.
fn bedrock_error_name<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Option<&'a str> {
    if let Some(v) = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
    {
        return v.split(':').next().map(str::trim);
    }
    // Without the header, a `__type` in the body may name it (`namespace#Name`); only fixed names
    // are ever returned to callers, so a borrowed slice of the body is enough.
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"__type\"")?;
    let rest = text[start + 8..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let rest = rest.strip_prefix('"')?;
    let value = &rest[..rest.find('"')?];
    value.rsplit('#').next()
}

/// OpenAI's `x-ratelimit-reset-requests` / `-tokens` (`"1s"`, `"6m0s"`, `"20ms"`) of each limit
/// whose `x-ratelimit-remaining-*` is 0; the longer one when both are.
fn openai_reset(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    ["requests", "tokens"]
        .into_iter()
        .filter(|limit| header(&format!("x-ratelimit-remaining-{limit}")) == Some("0"))
        .filter_map(|limit| header(&format!("x-ratelimit-reset-{limit}")).and_then(go_duration))
        .max()
}

/// A Go-style duration (`1h2m3.5s`, `20ms`, `6m0s`) or plain seconds.
fn go_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return seconds(secs);
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let (scale, unit_len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else {
            return None;
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    seconds(total)
}

#[cfg(test)]
mod tests {
    use super::*;
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
