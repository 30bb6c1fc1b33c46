//! Errors the proxy answers with, each knowing its HTTP status, its OpenAI error `type`/`code`, its
//! metric label and whether another attempt may succeed.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

/// How long a client shed for [`ProxyError::Overloaded`] is asked to wait.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a client refused by a fail-closed Budget ([`ProxyError::BudgetUnavailable`]) is
/// asked to wait: the ledger is retried at least this often.
pub const BUDGET_UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// An error answered to the client in OpenAI's error shape.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request body is not valid JSON or not the expected shape.
    #[error("{0}")]
    InvalidRequest(String),
    /// The `x-gatehouse-tag` header is malformed (the value is not quoted back: it is the
    /// client's, and may be anything).
    #[error("invalid x-gatehouse-tag header: {0}")]
    InvalidTag(&'static str),
    /// The request cannot be translated for its target (or from the client's dialect).
    #[error(transparent)]
    Translate(TranslateError),
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
    #[error(
        "the request body did not arrive in time ({ms} ms without progress, or past the whole-body deadline)"
    )]
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
    /// A hard Budget covering the request has no room left for it in this period.
    #[error("budget '{budget}' is exhausted{}; the request was not sent", resets_text(.resets))]
    BudgetExceeded {
        /// The Budget's name.
        budget: String,
        /// When its period ends (RFC 3339); `None` for period `none`.
        resets: Option<String>,
        /// Until then (the `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// A fail-closed Budget cannot be checked: its lease is gone and the ledger is unreachable.
    #[error(
        "budget '{budget}' cannot be checked: the budget ledger cannot be reached and the budget fails closed; the request was not sent"
    )]
    BudgetUnavailable {
        /// The Budget's name.
        budget: String,
    },
    /// Redaction found sensitive data in the prompt of a route whose action is `block`. Names
    /// the detectors, never the values.
    #[error("the request was blocked: route '{route}' does not let {detectors} leave the cluster")]
    Blocked {
        /// Route name.
        route: String,
        /// The detectors that found something, comma-separated.
        detectors: String,
    },
    /// A rate limit of the route refused the request.
    #[error(
        "rate limit '{limit}' of route '{route}' reached: {limit_value} {unit} per minute; retry in {}s",
        crate::providers::failure::header_seconds(*.retry_after)
    )]
    RateLimited {
        /// Route name.
        route: String,
        /// The limit's name.
        limit: String,
        /// `requests` or `tokens`: what ran out (OpenAI's error `type`).
        unit: &'static str,
        /// The limit, per minute.
        limit_value: u64,
        /// When the request would fit.
        retry_after: Duration,
    },
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
            Self::InvalidRequest(_)
            | Self::InvalidTag(_)
            | Self::Translate(_)
            | Self::Blocked { .. } => StatusCode::BAD_REQUEST,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownModel(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoTargets { .. }
            | Self::NotReady
            | Self::Overloaded
            | Self::BudgetUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BudgetExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Exhausted { status, .. } => *status,
        }
    }

    /// OpenAI error `type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_)
            | Self::InvalidTag(_)
            | Self::Translate(_)
            | Self::BodyTooLarge { .. }
            | Self::UnknownModel(_)
            | Self::NotFound(_)
            | Self::MethodNotAllowed { .. }
            | Self::BodyTimeout { .. }
            | Self::Blocked { .. } => "invalid_request_error",
            // OpenAI's own rate-limit errors say which unit ran out.
            Self::RateLimited { unit, .. } => unit,
            Self::Exhausted { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                "rate_limit_error"
            }
            // OpenAI's own type for a spent quota, also a 429.
            Self::BudgetExceeded { .. } => "insufficient_quota",
            Self::NoTargets { .. }
            | Self::NotReady
            | Self::Overloaded
            | Self::BudgetUnavailable { .. }
            | Self::Internal(_)
            | Self::Exhausted { .. } => "api_error",
        }
    }

    /// Machine-readable `code`, also the `reason` label of the error metric.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::Translate(_) => "invalid_request",
            Self::InvalidTag(_) => "invalid_tag",
            Self::Blocked { .. } => "sensitive_data_blocked",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::UnknownModel(_) => "model_not_found",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::NoTargets { .. } => "no_usable_targets",
            Self::NotReady => "not_ready",
            Self::Overloaded => "overloaded",
            Self::BodyTimeout { .. } => "request_timeout",
            Self::Internal(_) => "internal_error",
            Self::BudgetExceeded { .. } => "budget_exceeded",
            Self::BudgetUnavailable { .. } => "budget_unavailable",
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
            Self::BudgetExceeded { retry_after, .. } => *retry_after,
            Self::BudgetUnavailable { .. } => Some(BUDGET_UNAVAILABLE_RETRY_AFTER),
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The OpenAI-style JSON error body.
    pub fn body(&self) -> Bytes {
        error_body(&self.to_string(), self.error_type(), self.code())
    }
}

/// When a Budget resets, for its refusal.
fn resets_text(resets: &Option<String>) -> String {
    match resets {
        Some(at) => format!(" until its period ends at {at}"),
        None => " (its period is none: it does not reset)".to_string(),
    }
}

/// `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(message: &str, error_type: &str, code: &str) -> Bytes {
    let value = json!({
        "error": {"message": message, "type": error_type, "param": null, "code": code}
    });
    Bytes::from(value.to_string())
}

/// Why a request cannot be translated for its target (or from the client's dialect): answered
/// 400 at once, never another attempt (the next target would most likely refuse it too).
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// A field of the request has a shape the translation cannot read.
    #[error("{0}")]
    Invalid(String),
    /// The request asks for something the target cannot express.
    #[error("{0}")]
    Unsupported(String),
    /// The body of a request translated from its bytes is not JSON.
    #[error("request body is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The translated request could not be serialized.
    #[error("failed to encode request: {0}")]
    Encode(#[from] serde_json::Error),
    /// A bug in a translation (never caused by the request's content): answered 500.
    #[error("internal error: {0}")]
    Internal(String),
    /// A name from the request or the config does not fit into the target's URL.
    #[error("{what} does not make a valid URL")]
    Url {
        /// What was put into the URL (`model 'x'`, `deployment name 'y'`).
        what: String,
        /// Why the URL was refused.
        #[source]
        source: http::uri::InvalidUri,
    },
}

impl From<TranslateError> for ProxyError {
    fn from(e: TranslateError) -> Self {
        match e {
            // A bug, not the request's fault: a 500 like any other internal error.
            TranslateError::Internal(message) => Self::Internal(message),
            e => Self::Translate(e),
        }
    }
}

impl TranslateError {
    /// HTTP status it is answered with: 400, the request is the problem (500 for a bug).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Why an upstream answer is not what its protocol promises (a 2xx body or stream the adapter
/// cannot decode). Fails the attempt over like a connection error: another target may answer.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A buffered body is not JSON.
    #[error("response body is not valid JSON")]
    BodyNotJson(#[source] serde_json::Error),
    /// A buffered body is JSON but not an object.
    #[error("response body is not a JSON object")]
    BodyNotObject,
    /// A buffered body lacks what the provider documents (`"anthropic response has no 'content' array"`).
    #[error("{0}")]
    Shape(&'static str),
    /// Bedrock embeddings: the answers do not match the inputs.
    #[error("bedrock cohere response has {got} embeddings for {expected} texts")]
    CountMismatch {
        /// Embeddings in the answer.
        got: usize,
        /// Texts sent.
        expected: usize,
    },
    /// Bedrock embeddings: the target's model is of no known family.
    #[error("'{0}' is not a bedrock embedding model gatehouse knows")]
    UnknownEmbeddingModel(String),
    /// The answers of a fanned-out attempt cannot be joined.
    #[error("{count} answers to one {kind} request cannot be joined")]
    Join {
        /// Answers received.
        count: usize,
        /// Provider type.
        kind: &'static str,
    },
    /// A pass-through request got more than one answer.
    #[error("a pass-through request got several answers")]
    SeveralAnswers,
    /// The translated answer could not be serialized.
    #[error("failed to encode response: {0}")]
    Encode(#[source] serde_json::Error),
    /// A stream came with another content type than the provider's stream framing.
    #[error("expected an event stream ({0})")]
    ContentType(&'static str),
    /// An SSE event whose data is not a JSON object.
    #[error("the upstream sent an event that is not a JSON object")]
    EventNotObject,
    /// An Anthropic SSE event whose data is not a JSON object with a `type`.
    #[error("the upstream sent an event that is not a JSON object with a type")]
    EventUntyped,
    /// An SSE event that is not UTF-8.
    #[error("the upstream sent an event that is not UTF-8")]
    EventNotUtf8,
    /// An AWS event-stream frame that does not decode (length, CRC).
    #[error("the upstream sent an invalid event-stream frame")]
    Frame(#[source] aws_smithy_eventstream::error::Error),
    /// An AWS event-stream frame whose payload is not a JSON object.
    #[error("the upstream sent an event whose payload is not a JSON object")]
    PayloadNotObject,
    /// The stream was cut inside an SSE event.
    #[error("the upstream stream ended inside an event")]
    CutInEvent,
    /// The stream was cut inside an event-stream frame.
    #[error("the upstream stream ended inside an event-stream frame")]
    CutInFrame,
    /// The stream ended before the provider's end marker (`"before message_stop"`).
    #[error("the upstream stream ended {0}")]
    EndedEarly(&'static str),
    /// The first event of a stream is an error event.
    #[error("the stream started with an error event")]
    ErrorFirst,
    /// The stream ended before its first event.
    #[error("stream ended before the first chunk")]
    NoFirstEvent,
}

/// Why an upstream call failed at the transport level.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Could not connect, or the connection broke before a response.
    #[error("{}", error_chain(.0))]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The response body broke off.
    #[error("failed to read response: {}", error_chain(&**.0))]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stream broke before its first event.
    #[error("stream broke before the first chunk: {}", error_chain(.0))]
    FirstChunk(#[source] hyper::Error),
    /// The request could not be built (a header the adapter set is invalid).
    #[error("failed to build request: {0}")]
    Build(#[source] http::Error),
    /// The provider's TLS, proxy or header settings cannot be used (why; never secret
    /// material). Fails over like a connect error.
    #[error("the provider's egress settings cannot be used: {0}")]
    Egress(std::sync::Arc<str>),
    /// An egress proxy answered 407 to a plain-http request sent through it: it refused the
    /// gateway's proxy credentials. Fails over like a connect error.
    #[error(
        "the egress proxy refused the gateway's credentials (407 Proxy Authentication Required)"
    )]
    ProxyAuth,
}

/// The provider's key cannot be used to authorize a request (no key material in it).
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The key is not in a form the provider type accepts (why, never the key).
    #[error("the provider's key cannot be used: {0}")]
    Unusable(String),
    /// The workload identity's credentials could not be had (the token service is unreachable,
    /// answered garbage, or the projected token is missing).
    #[error("failed to get workload identity credentials: {0}")]
    Identity(#[source] crate::providers::credentials::FetchError),
    /// Signing the request failed.
    #[error("failed to sign request: {0}")]
    Sign(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why one upstream attempt did not produce an answer for the client; [`AttemptError::is_retryable`]
/// holds the retry table of docs/architecture.md.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// Could not connect or the connection broke before a response.
    #[error("connection failed: {0}")]
    Connect(#[from] TransportError),
    /// The attempt (or time to first token) timed out.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The upstream answered with a status that is worth retrying (408, 429, 5xx).
    #[error("upstream answered {status}")]
    Status {
        /// Upstream status.
        status: StatusCode,
        /// How long the provider asked to wait (429 only), if it said.
        retry_after: Option<Duration>,
    },
    /// The upstream rejected the gateway's credentials (401/403, or the provider's own signal).
    /// Another target may still work.
    #[error("provider rejected the gateway's credentials ({0})")]
    Auth(AuthFailure),
    /// The provider refused for billing reasons (no credit, quota used up): the account, not the
    /// request, is the problem, so another target may still work.
    #[error("provider refused the request for billing reasons ({0})")]
    Billing(AuthFailure),
    /// The key cannot be used at all.
    #[error("invalid upstream response: {0}")]
    Credentials(#[from] CredentialsError),
    /// The upstream answered 2xx with a body that is not what the protocol promises.
    #[error("invalid upstream response: {0}")]
    Invalid(#[from] DecodeError),
    /// The provider refused the request itself (a 4xx other than 408/429 and the credential and
    /// billing refusals): the answer goes back to the client, no other target is tried.
    #[error("provider refused the request with status {}", .0.status.as_u16())]
    Refused(Refusal),
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

/// A provider's refusal of the request itself, passed back to the client.
#[derive(Debug)]
pub struct Refusal {
    /// Upstream status.
    pub status: StatusCode,
    /// Upstream content type.
    pub content_type: Option<http::HeaderValue>,
    /// Upstream body (never a credentials refusal's: those are dropped).
    pub body: Bytes,
}

/// What an upstream status means for the attempt, before any provider-specific reading: the
/// status half of the retry table (docs/architecture.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx: an answer.
    Success,
    /// 408, 429, 5xx: try the next attempt.
    Retry,
    /// Any other status: a refusal of the request, unless the provider says it is about the key
    /// or billing (then retried).
    Refusal,
}

impl StatusClass {
    /// Classify `status`.
    pub fn of(status: StatusCode) -> Self {
        if status.is_success() {
            Self::Success
        } else if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
        {
            Self::Retry
        } else {
            Self::Refusal
        }
    }
}

/// A provider's refusal of the gateway's credentials (or billing): the upstream status and, when
/// the provider names it in a known way, why. The reason is one of a fixed list of provider error
/// names, never text from the answer (which may echo the key).
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
    /// Whether the next attempt may go ahead: everything but a refusal of the request itself.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }

    /// What the attempt says about the target's health (`routing::health`): a refusal of the
    /// request itself shows the target is up.
    pub fn health_outcome(&self) -> crate::routing::health::Outcome {
        use crate::routing::health::Outcome;
        match self {
            Self::Timeout(_) => Outcome::Timeout,
            Self::Refused(_) => Outcome::Success,
            _ => Outcome::Failure,
        }
    }

    /// Label for the attempts metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect_error",
            Self::Timeout(_) => "timeout",
            Self::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                "rate_limited"
            }
            // Anthropic's 529 `overloaded_error`: the provider is saturated, not broken.
            Self::Status { status, .. } if status.as_u16() == 529 => "overloaded",
            Self::Status { .. } => "server_error",
            Self::Auth(_) => "auth_failed",
            Self::Billing(_) => "billing_refused",
            Self::Credentials(_) | Self::Invalid(_) => "invalid_response",
            Self::Refused(_) => "client_error",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

/// An error with its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_table() {
        for (status, class) in [
            (200, StatusClass::Success),
            (204, StatusClass::Success),
            (408, StatusClass::Retry),
            (429, StatusClass::Retry),
            (500, StatusClass::Retry),
            (503, StatusClass::Retry),
            (400, StatusClass::Refusal),
            (401, StatusClass::Refusal),
            (404, StatusClass::Refusal),
            (422, StatusClass::Refusal),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(StatusClass::of(status), class, "{status}");
        }
        let refused = AttemptError::Refused(Refusal {
            status: StatusCode::BAD_REQUEST,
            content_type: None,
            body: Bytes::new(),
        });
        assert!(!refused.is_retryable());
        let auth = AuthFailure {
            status: StatusCode::UNAUTHORIZED,
            reason: None,
        };
        for retryable in [
            AttemptError::Timeout(1),
            AttemptError::Status {
                status: StatusCode::TOO_MANY_REQUESTS,
                retry_after: None,
            },
            AttemptError::Auth(auth),
            AttemptError::Billing(auth),
            AttemptError::Invalid(DecodeError::BodyNotObject),
            AttemptError::Credentials(CredentialsError::Unusable("x".into())),
            AttemptError::TooLarge {
                what: "event",
                limit: 1,
                flag: "--max-event-bytes",
            },
        ] {
            assert!(retryable.is_retryable(), "{retryable}");
        }
    }

    #[test]
    fn attempt_outcome_labels() {
        let auth = AuthFailure {
            status: StatusCode::FORBIDDEN,
            reason: None,
        };
        let status = |s: u16| AttemptError::Status {
            status: StatusCode::from_u16(s).unwrap(),
            retry_after: None,
        };
        let cases = [
            (AttemptError::Timeout(5), "timeout"),
            (status(429), "rate_limited"),
            (status(502), "server_error"),
            (status(408), "server_error"),
            (AttemptError::Auth(auth), "auth_failed"),
            (AttemptError::Billing(auth), "billing_refused"),
            (
                AttemptError::Invalid(DecodeError::NoFirstEvent),
                "invalid_response",
            ),
            (
                AttemptError::Refused(Refusal {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    content_type: None,
                    body: Bytes::new(),
                }),
                "client_error",
            ),
        ];
        for (error, label) in cases {
            assert_eq!(error.metric_label(), label, "{error}");
        }
    }

    #[test]
    fn decode_errors_keep_their_source() {
        let json = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        let e = AttemptError::from(DecodeError::BodyNotJson(json));
        assert_eq!(
            e.to_string(),
            "invalid upstream response: response body is not valid JSON"
        );
        let inner = std::error::Error::source(&e).unwrap();
        assert!(std::error::Error::source(inner).is_some());
    }
}
