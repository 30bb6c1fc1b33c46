//! A route's guardrails as the sidecar reads them: rate limits, redaction, audit content.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

/// One rate limit of a route.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Name, unique within the route.
    pub name: String,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute (prompt plus completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Where it is counted.
    pub scope: RateLimitScopeConfig,
    /// ServiceAccounts it applies to; empty: every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Pod label selector it applies to; `None`: every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,
}

/// Where a rate limit is counted.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitScopeConfig {
    /// By each sidecar on its own.
    Local,
    /// Across every sidecar in scope, through the ledger.
    Cluster,
}

impl RateLimitScopeConfig {
    /// The name used in the CRD and the audit line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Cluster => "cluster",
        }
    }
}

/// Redaction of a route.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedactConfig {
    /// What happens to a value found.
    pub action: RedactActionConfig,
    /// Built-in detectors that run, by name (`guardrails::Detector::as_str`), sorted.
    pub detectors: Vec<String>,
    /// Custom detectors, in the Route's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom: Vec<CustomDetectorConfig>,
}

/// What redaction does with a value found.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum RedactActionConfig {
    /// Replace with a typed placeholder, in prompts and answers.
    Mask,
    /// Refuse a prompt that has one (400); mask answers.
    Block,
    /// Placeholders upstream, the original values back in the answer.
    MaskAndRestore,
}

impl RedactActionConfig {
    /// The name used in the CRD, metrics and the audit line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mask => "mask",
            Self::Block => "block",
            Self::MaskAndRestore => "maskAndRestore",
        }
    }
}

/// A custom detector.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomDetectorConfig {
    /// Name (lower case, digits and `-`).
    pub name: String,
    /// The regular expression, already checked by `guardrails::check_pattern`.
    pub pattern: String,
}

/// What a route's audit lines carry besides who called what.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditConfig {
    /// The request body, after redaction.
    #[serde(default)]
    pub prompt: bool,
    /// The answer, after redaction.
    #[serde(default)]
    pub answer: bool,
}

impl AuditConfig {
    /// Whether nothing is opted in (left out of the rendered config).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}
