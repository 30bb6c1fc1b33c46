//! OpenAI's error body `{"error": {"message", "type", "param", "code"}}` and the statuses that
//! carry it.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use super::json_response;
use crate::body::Body;

/// An OpenAI API error: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `error.message`.
    pub message: Cow<'static, str>,
    /// `error.type`.
    pub error_type: Cow<'static, str>,
    /// `error.param`.
    pub param: Option<Cow<'static, str>>,
    /// `error.code`.
    pub code: Option<Cow<'static, str>>,
    /// `retry-after` header in seconds.
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    error_type: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        message: impl Into<Cow<'static, str>>,
        error_type: &'static str,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            error_type: Cow::Borrowed(error_type),
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    /// Set `error.param`.
    pub fn param(mut self, param: &'static str) -> Self {
        self.param = Some(Cow::Borrowed(param));
        self
    }

    /// Set `error.code`.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(Cow::Borrowed(code));
        self
    }

    /// 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, "invalid_request_error")
    }

    /// 400 for a body that is not JSON, worded like OpenAI's.
    pub fn unparseable_json() -> Self {
        Self::invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
             but what was sent was not valid JSON.)",
        )
    }

    /// 400 `missing_required_parameter` for `param`.
    pub fn missing(param: &'static str) -> Self {
        Self::invalid_request(format!("Missing required parameter: '{param}'."))
            .param(param)
            .code("missing_required_parameter")
    }

    /// 401 without an `authorization` bearer token (OpenAI sends `code: null` here).
    pub fn missing_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
        )
    }

    /// 401 `invalid_api_key` for a wrong key; the message shows only the key's edges.
    pub fn invalid_api_key(given: &str) -> Self {
        let shown = redact_key(given);
        Self::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "Incorrect API key provided: {shown}. You can find your API key at \
                 https://platform.openai.com/account/api-keys."
            ),
            "invalid_request_error",
        )
        .code("invalid_api_key")
    }

    /// 404 for a path the API does not serve.
    pub fn invalid_url(method: &http::Method, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("Invalid URL ({method} {path})"),
            "invalid_request_error",
        )
    }

    /// 404 `model_not_found`.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
        )
        .param("model")
        .code("model_not_found")
    }

    /// The error a [`Fault::Status`] asks for, with OpenAI's defaults filled in.
    pub fn from_fault(
        status: u16,
        message: Option<&str>,
        error_type: Option<&str>,
        code: Option<&str>,
        param: Option<&str>,
        retry_after_secs: Option<u64>,
    ) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (d_message, d_type, d_code): (&str, &str, Option<&str>) = match status.as_u16() {
            400 => (
                "The mock provider rejected this request.",
                "invalid_request_error",
                None,
            ),
            401 => (
                "Incorrect API key provided: sk-mock***. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            403 => (
                "You are not allowed to sample from this model.",
                "invalid_request_error",
                None,
            ),
            404 => (
                "The model does not exist or you do not have access to it.",
                "invalid_request_error",
                Some("model_not_found"),
            ),
            429 => (
                "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. \
                 Please try again in 20s.",
                "requests",
                Some("rate_limit_exceeded"),
            ),
            500 => (
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            ),
            503 => (
                "The server is overloaded or not ready yet.",
                "server_error",
                None,
            ),
            s if s >= 500 => ("The upstream server failed.", "server_error", None),
            _ => (
                "The mock provider rejected this request.",
                "invalid_request_error",
                None,
            ),
        };
        Self {
            status,
            message: Cow::Owned(message.unwrap_or(d_message).to_owned()),
            error_type: Cow::Owned(error_type.unwrap_or(d_type).to_owned()),
            param: param.map(|p| Cow::Owned(p.to_owned())),
            code: code.or(d_code).map(|c| Cow::Owned(c.to_owned())),
            retry_after_secs,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let envelope = ErrorEnvelope {
            error: ErrorObject {
                message: &self.message,
                error_type: &self.error_type,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
    }

    /// The full HTTP response.
    pub(crate) fn into_response(self) -> Response<Body> {
        let mut response = json_response(self.status, self.body());
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.error_type,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

fn redact_key(key: &str) -> String {
    let head: String = key.chars().take(3).collect();
    let tail: String = {
        let chars: Vec<char> = key.chars().collect();
        let start = chars.len().saturating_sub(4);
        if chars.len() > 7 {
            chars[start..].iter().collect()
        } else {
            String::new()
        }
    };
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_redaction_keeps_only_edges() {
        assert_eq!(redact_key("sk-abcdefghijkl"), "sk-***ijkl");
        assert_eq!(redact_key("short"), "sho***");
    }
}
