//! Errors the proxy answers with, each knowing its HTTP status, its OpenAI error `type`/`code`, its
//! metric label and whether another attempt may succeed.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

/// How long a client shed for [`ProxyError::Overloaded`] is asked to wait.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// An error answered to the client in OpenAI's error shape.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request body is not valid JSON or not the expected shape.
    #[error("{0}")]
    InvalidRequest(String),
    /// The request body is larger than the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// No route serves the requested model.
    #[error("the model '{0}' does not exist or is not served by any route")]
    UnknownModel(String),
    /// The path is not served.
    #[error("unknown path {0}")]
    NotFound(String),
    /// The method is not allowed on this path.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The route exists but has no usable target.
    #[error("route '{route}' has no usable targets: {reason}")]
    NoTargets {
        /// Route name.
        route: String,
        /// Why (from render problems; never key material).
        reason: String,
    },
    /// The budget for request bodies in flight is spent: shed, the client should retry shortly.
    #[error("gatehouse is handling too many request bodies at once; retry shortly")]
    Overloaded,
    /// The client stopped sending its body.
    #[error("the request body did not progress for {ms} ms")]
    BodyTimeout {
        /// The progress timeout in milliseconds.
        ms: u64,
    },
    /// A bug or a lost task inside the gateway; never caused by the request's content.
    #[error("internal error: {0}")]
    Internal(String),
    /// No config has been loaded yet.
    #[error("gatehouse has not loaded its configuration yet")]
    NotReady,
    /// Every attempt failed.
    #[error("all {attempts} upstream attempts failed for route '{route}': {summary}")]
    Exhausted {
        /// Route name.
        route: String,
        /// Attempts made.
        attempts: u32,
        /// One line per attempt; never key material.
        summary: String,
        /// Status to answer with (502, 429 or 504).
        status: StatusCode,
        /// The `Retry-After` to answer with (set when the last failure was a 429).
        retry_after: Option<Duration>,
    },
}

impl ProxyError {
    /// HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownModel(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoTargets { .. } | Self::NotReady | Self::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Exhausted { status, .. } => *status,
        }
    }

    /// OpenAI error `type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_)
            | Self::BodyTooLarge { .. }
            | Self::UnknownModel(_)
            | Self::NotFound(_)
            | Self::MethodNotAllowed { .. }
            | Self::BodyTimeout { .. } => "invalid_request_error",
            Self::Exhausted { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                "rate_limit_error"
            }
            Self::NoTargets { .. }
            | Self::NotReady
            | Self::Overloaded
            | Self::Internal(_)
            | Self::Exhausted { .. } => "api_error",
        }
    }

    /// Machine-readable `code`, also the `reason` label of the error metric.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::UnknownModel(_) => "model_not_found",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::NoTargets { .. } => "no_usable_targets",
            Self::NotReady => "not_ready",
            Self::Overloaded => "overloaded",
            Self::BodyTimeout { .. } => "request_timeout",
            Self::Internal(_) => "internal_error",
            Self::Exhausted { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                "upstream_rate_limited"
            }
            Self::Exhausted { status, .. } if *status == StatusCode::GATEWAY_TIMEOUT => {
                "upstream_timeout"
            }
            Self::Exhausted { .. } => "upstream_failed",
        }
    }

    /// The `Retry-After` to answer with, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Exhausted { retry_after, .. } => *retry_after,
            Self::Overloaded => Some(OVERLOADED_RETRY_AFTER),
            _ => None,
        }
    }

    /// The OpenAI-style JSON error body.
    pub fn body(&self) -> Bytes {
        error_body(&self.to_string(), self.error_type(), self.code())
    }
}

/// `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(message: &str, error_type: &str, code: &str) -> Bytes {
    let value = json!({
        "error": {"message": message, "type": error_type, "param": null, "code": code}
    });
    Bytes::from(value.to_string())
}

/// Why one upstream attempt failed; decides whether the next attempt goes ahead.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// Could not connect or the connection broke before a response.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The attempt (or time to first token) timed out.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The upstream answered with a status that is worth retrying (429, 5xx).
    #[error("upstream answered {status}")]
    Status {
        /// Upstream status.
        status: StatusCode,
        /// How long the provider asked to wait (429 only), if it said.
        retry_after: Option<Duration>,
    },
    /// The upstream rejected the gateway's credentials (401/403, or the provider's own signal, see
    /// `providers::failure`). Another target may still work.
    #[error("provider rejected the gateway's credentials ({0})")]
    Auth(AuthFailure),
    /// The upstream answered 2xx with a body that is not what the protocol promises.
    #[error("invalid upstream response: {0}")]
    Invalid(String),
    /// The upstream sent more than the sidecar holds: a body over `--max-response-bytes` or an
    /// event over `--max-event-bytes` (see `limits`). A misbehaving upstream: the next target is
    /// tried.
    #[error("the upstream {what} is larger than the limit of {limit} bytes ({flag})")]
    TooLarge {
        /// What was too large ("response body", "event").
        what: &'static str,
        /// The limit in bytes.
        limit: usize,
        /// The flag that sets it.
        flag: &'static str,
    },
}

/// A provider's refusal of the gateway's credentials: the upstream status and, when the provider
/// names it in a known way, why. The reason is one of a fixed list of provider error names, never
/// text from the answer (which may echo the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailure {
    /// Upstream status.
    pub status: StatusCode,
    /// The provider's name for the failure (`API_KEY_INVALID`, `UnrecognizedClientException`,
    /// `invalid_api_key`, …).
    pub reason: Option<&'static str>,
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream status {}", self.status.as_u16())?;
        if let Some(reason) = self.reason {
            write!(f, ", {reason}")?;
        }
        Ok(())
    }
}

impl AttemptError {
    /// Label for the attempts metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect_error",
            Self::Timeout(_) => "timeout",
            Self::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                "rate_limited"
            }
            Self::Status { .. } => "server_error",
            Self::Auth(_) => "auth_failed",
            Self::Invalid(_) => "invalid_response",
            Self::TooLarge { .. } => "too_large",
        }
    }
}
