//! Which callers a rate limit applies to: its ServiceAccounts and pod label selector, against
//! the sidecar's own workload (the caller is always the sidecar's pod).

use std::collections::BTreeMap;

use gatehouse_crds::config::RateLimitConfig;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::workload::Workload;

/// Whether `limit` applies to requests of `workload`.
pub fn applies(limit: &RateLimitConfig, workload: &Workload) -> bool {
    (limit.service_accounts.is_empty()
        || limit
            .service_accounts
            .iter()
            .any(|sa| *sa == *workload.service_account))
        && limit
            .workload_selector
            .as_ref()
            .is_none_or(|s| selects(s, &workload.labels))
}

/// Kubernetes label selector semantics: every `matchLabels` pair and every requirement holds
/// (an empty selector selects everything); an unknown operator selects nothing.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let requirements = selector.match_expressions.iter().flatten().all(|r| {
        let values = r.values.as_deref().unwrap_or_default();
        let have = labels.get(&r.key);
        match r.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    pairs && requirements
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_follow_kubernetes() {
        let labels: BTreeMap<String, String> = [("team".into(), "search".into())].into();
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let sel = |pairs: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: Some(exprs),
        };
        assert!(selects(&LabelSelector::default(), &labels));
        assert!(selects(&sel(&[("team", "search")], vec![]), &labels));
        assert!(!selects(&sel(&[("team", "ads")], vec![]), &labels));
        assert!(selects(
            &sel(&[], vec![req("team", "In", &["ads", "search"])]),
            &labels
        ));
        assert!(!selects(
            &sel(&[], vec![req("team", "NotIn", &["search"])]),
            &labels
        ));
        assert!(selects(
            &sel(&[], vec![req("tier", "DoesNotExist", &[])]),
            &labels
        ));
        assert!(!selects(
            &sel(&[], vec![req("tier", "Exists", &[])]),
            &labels
        ));
        assert!(!selects(
            &sel(&[], vec![req("team", "Bogus", &[])]),
            &labels
        ));
    }
}
