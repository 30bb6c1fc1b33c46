//! Rendering a Route's guardrails: rate limits, redaction, audit content.

use crate::config::{
    AuditConfig, CustomDetectorConfig, RateLimitConfig, RateLimitScopeConfig, RedactActionConfig,
    RedactConfig,
};
use crate::guardrails::{
    Audit, Detector, RateLimit, RateLimitScope, Redact, RedactAction, check_pattern,
};

use super::{ObjectKind, Problems};

/// Reason of the problem of a Route whose redaction cannot be used; its requests are refused
/// (503) rather than sent unredacted.
pub const INVALID_REDACTION: &str = "InvalidRedaction";

/// The rate limits of Route `name`.
pub(super) fn rate_limits(
    name: &str,
    limits: &[RateLimit],
    problems: &mut Problems,
) -> Vec<RateLimitConfig> {
    let positive = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0);
    limits
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let rpm = positive(l.requests_per_minute);
            let tpm = positive(l.tokens_per_minute);
            if rpm.is_none() && tpm.is_none() {
                problems.push(
                    ObjectKind::Route,
                    name,
                    "InvalidSpec",
                    format!(
                        "spec.rateLimits[{i}] ({}): needs requestsPerMinute or tokensPerMinute \
                         greater than 0",
                        l.name
                    ),
                );
                return None;
            }
            let scope = match l.scope {
                RateLimitScope::Local => RateLimitScopeConfig::Local,
                RateLimitScope::Cluster => RateLimitScopeConfig::Cluster,
            };
            let mut service_accounts = l.service_accounts.clone();
            service_accounts.sort();
            service_accounts.dedup();
            Some(RateLimitConfig {
                name: l.name.clone(),
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
                scope,
                service_accounts,
                workload_selector: l.workload_selector.clone(),
            })
        })
        .collect()
}

/// The redaction of Route `name`; `Err` with the problem's message when it cannot be used.
pub(super) fn redact(
    name: &str,
    redact: &Redact,
    problems: &mut Problems,
) -> Result<RedactConfig, String> {
    let mut detectors: Vec<String> = match &redact.detectors {
        None => Detector::ALL
            .iter()
            .map(|d| d.as_str().to_string())
            .collect(),
        Some(list) => list.iter().map(|d| d.as_str().to_string()).collect(),
    };
    detectors.sort();
    detectors.dedup();
    let mut custom = Vec::with_capacity(redact.custom.len());
    for (i, c) in redact.custom.iter().enumerate() {
        if Detector::from_name(&c.name).is_some() {
            let message = format!(
                "spec.redact.custom[{i}].name {:?} is the name of a built-in detector",
                c.name
            );
            problems.push(ObjectKind::Route, name, INVALID_REDACTION, message.clone());
            return Err(message);
        }
        if let Err(e) = check_pattern(&c.pattern) {
            let message = format!("spec.redact.custom[{i}] ({}): the pattern {e}", c.name);
            problems.push(ObjectKind::Route, name, INVALID_REDACTION, message.clone());
            return Err(message);
        }
        custom.push(CustomDetectorConfig {
            name: c.name.clone(),
            pattern: c.pattern.clone(),
        });
    }
    let action = match redact.action {
        RedactAction::Mask => RedactActionConfig::Mask,
        RedactAction::Block => RedactActionConfig::Block,
        RedactAction::MaskAndRestore => RedactActionConfig::MaskAndRestore,
    };
    Ok(RedactConfig {
        action,
        detectors,
        custom,
    })
}

/// What the audit lines of a Route carry.
pub(super) fn audit(audit: Option<&Audit>) -> AuditConfig {
    audit.map_or_else(AuditConfig::default, |a| AuditConfig {
        prompt: a.prompt,
        answer: a.answer,
    })
}
