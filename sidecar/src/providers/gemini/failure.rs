//! How Gemini says a call failed: `google.rpc.ErrorInfo` reasons of a refused key (under a 400
//! too), and `google.rpc.RetryInfo` in a 429's body.

use std::time::Duration;

use serde_json::Value;

use crate::providers::failure::{error_object, known, seconds};

/// Gemini `google.rpc.ErrorInfo` reasons that mean the key (or the project behind it) cannot be
/// used, from `google/api/error_reason.proto`. An expired Gemini key also comes as
/// `API_KEY_INVALID`.
pub(super) const GEMINI_KEY_REASONS: &[&str] = &[
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
pub(super) const GEMINI_AUTH_STATUSES: &[&str] = &["UNAUTHENTICATED", "PERMISSION_DENIED"];

/// The first `google.rpc.<kind>` detail of a Google error whose `field` is in `list`.
pub(super) fn known_detail(
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
pub(super) fn retry_delay(body: &[u8]) -> Option<Duration> {
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
