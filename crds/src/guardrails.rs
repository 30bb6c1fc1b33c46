//! A Route's guardrails: rate limits (`spec.rateLimits`), redaction of sensitive data
//! (`spec.redact`) and what its audit lines carry (`spec.audit`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A rate limit of a Route: requests and/or tokens per minute, for every caller of the Route or
/// only for the workloads it selects.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.requestsPerMinute) || has(self.tokensPerMinute)").message("a rate limit needs requestsPerMinute, tokensPerMinute or both")
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Name of the limit, unique within the Route: in the 429 message, the audit line and
    /// metrics.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2000000000))]
    pub requests_per_minute: Option<i64>,
    /// Tokens (prompt plus completion) per minute. A request is charged its estimate before it
    /// is sent (prompt bytes / 4 plus its `max_tokens`) and corrected once its usage is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2000000000))]
    pub tokens_per_minute: Option<i64>,
    /// local: each sidecar (each pod) has the whole limit to itself. cluster: the limit is
    /// shared by every sidecar it applies to, through the budget ledger. Default local.
    #[serde(default)]
    pub scope: RateLimitScope,
    /// Only callers running as one of these ServiceAccounts are limited (and share the limit).
    /// Empty: every ServiceAccount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub service_accounts: Vec<String>,
    /// Only callers whose pod labels match this selector are limited. The labels are those the
    /// sidecar carries with its identity (`--workload-labels`). Unset: every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,
}

/// Where a rate limit is counted.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitScope {
    // Plain comments: doc comments on variants would make the schema a non-structural `oneOf`.
    // Each sidecar counts on its own.
    #[allow(missing_docs)]
    #[default]
    Local,
    // Every sidecar in scope shares the limit through the ledger.
    #[allow(missing_docs)]
    Cluster,
}

/// Redaction of a Route's traffic: which detectors run and what happens to what they find.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[x_kube(
    validation = Rule::new("!has(self.custom) || self.custom.all(a, self.custom.exists_one(b, b.name == a.name))").message("redact.custom[].name must be unique").field_path(".custom"),
    validation = Rule::new("!has(self.custom) || self.custom.all(c, !(c.name in ['email', 'phone', 'ssn', 'iban', 'jwt']))").message("redact.custom[].name must not be the name of a built-in detector").field_path(".custom")
)]
#[serde(rename_all = "camelCase")]
pub struct Redact {
    /// mask: each value found is replaced by a typed placeholder such as `[EMAIL_1]` before the
    /// prompt leaves, and values found in answers never reach the app. block: a prompt with a
    /// value is refused with HTTP 400 naming the detector (never the value); answers are masked.
    /// maskAndRestore: the provider sees placeholders, and the app gets its original values
    /// back in the answer (streams too). Default mask.
    #[serde(default)]
    pub action: RedactAction,
    /// Built-in detectors that run. Default: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(max = 16))]
    pub detectors: Option<Vec<Detector>>,
    /// Detectors of your own: a name and a regular expression (Rust `regex` syntax, matched on
    /// bytes: `\d`, `\w` and `\b` are ASCII). A pattern that does not compile or can match the
    /// empty string is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub custom: Vec<CustomDetector>,
}

/// What redaction does with a value it found.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum RedactAction {
    #[allow(missing_docs)]
    #[default]
    Mask,
    #[allow(missing_docs)]
    Block,
    #[allow(missing_docs)]
    MaskAndRestore,
}

/// A built-in detector.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Detector {
    #[allow(missing_docs)]
    Email,
    #[allow(missing_docs)]
    Phone,
    #[allow(missing_docs)]
    CreditCard,
    #[allow(missing_docs)]
    Ssn,
    #[allow(missing_docs)]
    Iban,
    #[allow(missing_docs)]
    IpAddress,
    #[allow(missing_docs)]
    ApiKey,
    #[allow(missing_docs)]
    GithubToken,
    #[allow(missing_docs)]
    AwsAccessKey,
    #[allow(missing_docs)]
    PrivateKey,
    #[allow(missing_docs)]
    Jwt,
}

impl Detector {
    /// Every built-in detector, in the order they are documented.
    pub const ALL: [Self; 11] = [
        Self::Email,
        Self::Phone,
        Self::CreditCard,
        Self::Ssn,
        Self::Iban,
        Self::IpAddress,
        Self::ApiKey,
        Self::GithubToken,
        Self::AwsAccessKey,
        Self::PrivateKey,
        Self::Jwt,
    ];

    /// The name used in the CRD, the rendered config, metrics and the audit line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::CreditCard => "creditCard",
            Self::Ssn => "ssn",
            Self::Iban => "iban",
            Self::IpAddress => "ipAddress",
            Self::ApiKey => "apiKey",
            Self::GithubToken => "githubToken",
            Self::AwsAccessKey => "awsAccessKey",
            Self::PrivateKey => "privateKey",
            Self::Jwt => "jwt",
        }
    }

    /// The detector named `name`, if it is a built-in one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

/// A detector of your own.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CustomDetector {
    /// Name, unique within the Route and not one of the built-in detectors; the placeholder is
    /// the name in upper case with `-` as `_` (`employee-id` → `[EMPLOYEE_ID_1]`).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The regular expression, e.g. `EMP-[0-9]{6}`.
    #[schemars(length(min = 1, max = 1024))]
    pub pattern: String,
}

/// What a Route's audit lines carry besides who called what. Prompts and answers are left out
/// unless asked for here, and are written after redaction.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    /// Add the request body (after redaction) to each audit line. Default false.
    #[serde(default)]
    pub prompt: bool,
    /// Add the answer (after redaction: a buffered body, or a stream's text) to each audit line.
    /// Default false.
    #[serde(default)]
    pub answer: bool,
}

/// Why a custom detector's pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Not a regular expression of the supported syntax.
    #[error("does not compile: {0}")]
    Syntax(String),
    /// It can match the empty string (it would match everywhere).
    #[error("can match the empty string")]
    Empty,
}

/// Check a custom detector's pattern the way the sidecar compiles it: bytes, ASCII classes
/// (Unicode classes off), never an empty match.
pub fn check_pattern(pattern: &str) -> Result<(), PatternError> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .nest_limit(64)
        .build()
        .parse(pattern)
        .map_err(|e| PatternError::Syntax(first_line(&e.to_string())))?;
    if hir.properties().minimum_len().is_none_or(|n| n == 0) {
        return Err(PatternError::Empty);
    }
    Ok(())
}

/// regex-syntax errors draw the pattern with a caret over several lines; a condition message
/// keeps the last line, which says what is wrong.
fn first_line(message: &str) -> String {
    message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_checked_like_the_sidecar_compiles_them() {
        assert_eq!(check_pattern(r"EMP-[0-9]{6}"), Ok(()));
        assert_eq!(check_pattern(r"\bcase-\d+\b"), Ok(()));
        assert_eq!(check_pattern("a*"), Err(PatternError::Empty));
        assert_eq!(check_pattern(r"\b"), Err(PatternError::Empty));
        let Err(PatternError::Syntax(why)) = check_pattern("(unclosed") else {
            panic!("an unclosed group compiles");
        };
        assert!(why.contains("unclosed"), "{why}");
        // Unicode classes are off: the sidecar matches bytes.
        assert!(check_pattern(r"\p{Greek}+").is_err());
        for d in Detector::ALL {
            assert_eq!(Detector::from_name(d.as_str()), Some(d));
        }
    }
}
