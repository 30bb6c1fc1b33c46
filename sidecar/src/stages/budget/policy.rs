//! The Budgets of a config, validated once when the snapshot is built: each one's limit, period,
//! enforcement, thresholds, downgrade Route and scope, and which of them cover a request.
//!
//! Scope conditions combine with AND: the Route the request's model alias resolved to must be
//! among `routes` (empty: every Route), the sidecar's ServiceAccount among `serviceAccounts`
//! (empty: every one), and the pod's labels must match `workloadSelector` (absent: every pod).
//! The labels are the ones the sidecar's identity carries (`--workload-labels`): a selector on a
//! label outside that list sees it as absent, as Kubernetes does for a pod without the label.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gatehouse_crds::config::BudgetConfig;
use gatehouse_crds::ledger::{AccountKind, Limit, Period};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::state::ServedRoute;
use crate::workload::Workload;

/// Why a Budget of the config cannot be enforced. `render()` never emits one; a hand-made or
/// newer config might, and the sidecar then keeps its last good config rather than guess.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Neither `limitUsd` nor `limitTokens`.
    #[error("budget '{0}' has no limit")]
    NoLimit(String),
    /// A period this version does not know (or `custom` without `periodSeconds`).
    #[error("budget '{budget}' has an unknown period '{period}'")]
    Period {
        /// Budget name.
        budget: String,
        /// The period as written.
        period: String,
    },
    /// `enforcement` or `failMode` is not one of its values.
    #[error("budget '{budget}' has an unknown {field} '{value}'")]
    Value {
        /// Budget name.
        budget: String,
        /// `enforcement` or `failMode`.
        field: &'static str,
        /// The value as written.
        value: String,
    },
    /// The downgrade names a Route the config does not have.
    #[error("budget '{budget}' downgrades to route '{route}', which does not exist")]
    DowngradeRoute {
        /// Budget name.
        budget: String,
        /// The missing Route.
        route: String,
    },
    /// A `matchExpressions` operator other than In, NotIn, Exists, DoesNotExist.
    #[error("budget '{budget}' has a workload selector with unknown operator '{operator}'")]
    Operator {
        /// Budget name.
        budget: String,
        /// The operator as written.
        operator: String,
    },
}

/// A budget's downgrade: from `at_percent` of the limit, covered requests go to `route`'s targets.
#[derive(Debug)]
pub struct Downgrade {
    /// Percent of the limit.
    pub at_percent: u8,
    /// The Route whose targets serve downgraded requests.
    pub route: Arc<ServedRoute>,
}

/// One Budget, ready to be enforced.
#[derive(Debug)]
pub struct Policy {
    /// The ledger account: kind and name.
    pub kind: AccountKind,
    /// Budget name.
    pub name: Arc<str>,
    /// The limit, on the ledger's integer units.
    pub limit: Limit,
    /// The period.
    pub period: Period,
    /// `enforcement: hard`: past the limit requests are refused.
    pub hard: bool,
    /// `failMode: closed`: refuse when the ledger cannot be reached and the lease is gone.
    pub fail_closed: bool,
    /// Soft thresholds in percent, ascending.
    pub thresholds: Vec<u8>,
    /// The downgrade, if any.
    pub downgrade: Option<Downgrade>,
    routes: Vec<String>,
    service_accounts: Vec<String>,
    selector: Option<Selector>,
    /// Its `gatehouse_budget_decisions_total` counters, by outcome, taken from the metrics on
    /// first use (the same series across config reloads), so a request costs an increment.
    pub(super) decisions: std::sync::OnceLock<Vec<prometheus_client::metrics::counter::Counter>>,
}

impl Policy {
    /// Validate `config`, resolving its downgrade Route among `routes` (by Route name).
    pub fn build(
        name: &str,
        config: &BudgetConfig,
        routes: &HashMap<String, Arc<ServedRoute>>,
    ) -> Result<Self, PolicyError> {
        let limit = config.limit();
        if limit.nano_usd.is_none() && limit.tokens.is_none() {
            return Err(PolicyError::NoLimit(name.to_string()));
        }
        let period = config.period().ok_or_else(|| PolicyError::Period {
            budget: name.to_string(),
            period: config.period.clone(),
        })?;
        let value = |field: &'static str, value: &str| PolicyError::Value {
            budget: name.to_string(),
            field,
            value: value.to_string(),
        };
        let hard = match config.enforcement.as_str() {
            "hard" => true,
            "soft" => false,
            other => return Err(value("enforcement", other)),
        };
        let fail_closed = match config.fail_mode.as_str() {
            "open" => false,
            "closed" => true,
            other => return Err(value("failMode", other)),
        };
        let mut thresholds = config.thresholds.clone();
        thresholds.sort_unstable();
        thresholds.dedup();
        let downgrade = match &config.downgrade {
            None => None,
            Some(d) => Some(Downgrade {
                at_percent: d.at_percent,
                route: routes.get(&d.route).cloned().ok_or_else(|| {
                    PolicyError::DowngradeRoute {
                        budget: name.to_string(),
                        route: d.route.clone(),
                    }
                })?,
            }),
        };
        let selector = config
            .workload_selector
            .as_ref()
            .map(|s| Selector::build(name, s))
            .transpose()?;
        Ok(Self {
            kind: AccountKind::Budget,
            name: Arc::from(name),
            limit,
            period,
            hard,
            fail_closed,
            thresholds,
            downgrade,
            routes: config.routes.clone(),
            service_accounts: config.service_accounts.clone(),
            selector,
            decisions: std::sync::OnceLock::new(),
        })
    }

    /// The account of a `scope: cluster` rate limit (`<route>/<limit>` on the ledger): hard,
    /// fixed minute windows, requests carried as `nano_usd`. It fails open: while the ledger
    /// cannot be reached and the lease is gone, the limit is not enforced (the sidecar says so
    /// in `gatehouse_budget_degraded`).
    pub fn rate_limit(route: &str, limit: &str, rpm: Option<u64>, tpm: Option<u64>) -> Self {
        Self {
            kind: AccountKind::RateLimit,
            name: Arc::from(gatehouse_crds::ledger::rate_limit_account(route, limit)),
            limit: gatehouse_crds::ledger::rate_limit(rpm, tpm),
            period: gatehouse_crds::ledger::RATE_LIMIT_WINDOW,
            hard: true,
            fail_closed: false,
            thresholds: Vec::new(),
            downgrade: None,
            routes: Vec::new(),
            service_accounts: Vec::new(),
            selector: None,
            decisions: std::sync::OnceLock::new(),
        }
    }

    /// Whether the budget covers a request to `route` from `workload`.
    pub fn covers(&self, route: &str, workload: &Workload) -> bool {
        (self.routes.is_empty() || self.routes.iter().any(|r| r == route))
            && (self.service_accounts.is_empty()
                || self
                    .service_accounts
                    .iter()
                    .any(|sa| **sa == *workload.service_account))
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&workload.labels))
    }

    /// The label keys its workload selector reads.
    pub fn selector_keys(&self) -> impl Iterator<Item = &str> {
        self.selector.iter().flat_map(|s| {
            s.labels
                .keys()
                .map(String::as_str)
                .chain(s.expressions.iter().map(Expression::key))
        })
    }

    /// Whether `fraction` of the limit is past the first soft threshold (or, for a soft budget,
    /// past the limit itself).
    pub fn warns_at(&self, fraction: f64) -> bool {
        self.thresholds
            .first()
            .is_some_and(|t| fraction * 100.0 >= f64::from(*t))
            || (!self.hard && fraction >= 1.0)
    }
}

/// A label selector, validated.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    labels: BTreeMap<String, String>,
    expressions: Vec<Expression>,
}

#[derive(Debug, Clone, PartialEq)]
enum Expression {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Expression {
    fn key(&self) -> &str {
        match self {
            Self::In(k, _) | Self::NotIn(k, _) | Self::Exists(k) | Self::DoesNotExist(k) => k,
        }
    }
}

impl Selector {
    fn build(budget: &str, s: &LabelSelector) -> Result<Self, PolicyError> {
        let expressions = s
            .match_expressions
            .iter()
            .flatten()
            .map(|e| {
                let key = e.key.clone();
                let values = e.values.clone().unwrap_or_default();
                match e.operator.as_str() {
                    "In" => Ok(Expression::In(key, values)),
                    "NotIn" => Ok(Expression::NotIn(key, values)),
                    "Exists" => Ok(Expression::Exists(key)),
                    "DoesNotExist" => Ok(Expression::DoesNotExist(key)),
                    other => Err(PolicyError::Operator {
                        budget: budget.to_string(),
                        operator: other.to_string(),
                    }),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            labels: s.match_labels.clone().unwrap_or_default(),
            expressions,
        })
    }

    /// Kubernetes' semantics: every `matchLabels` pair and every expression must hold; an empty
    /// selector matches every pod.
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
            && self.expressions.iter().all(|e| match e {
                Expression::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
                Expression::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

/// Every Budget of a snapshot, by name order.
#[derive(Debug, Default)]
pub struct Budgets {
    all: Vec<Arc<Policy>>,
}

impl Budgets {
    /// Validate every Budget of the config.
    pub fn build(
        configs: &BTreeMap<String, BudgetConfig>,
        routes: &HashMap<String, Arc<ServedRoute>>,
    ) -> Result<Self, PolicyError> {
        let all = configs
            .iter()
            .map(|(name, c)| Policy::build(name, c, routes).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self { all })
    }

    /// Whether the config has no Budget.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Every Budget.
    pub fn all(&self) -> &[Arc<Policy>] {
        &self.all
    }

    /// The Budgets covering a request to `route` from `workload`.
    pub fn covering(&self, route: &str, workload: &Workload) -> Vec<Arc<Policy>> {
        self.all
            .iter()
            .filter(|p| p.covers(route, workload))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn config(json: serde_json::Value) -> BudgetConfig {
        let mut base =
            serde_json::json!({"limitUsd": 1.0, "period": "daily", "enforcement": "hard"});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), json.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    fn workload(sa: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            service_account: Arc::from(sa),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Workload::default()
        }
    }

    #[test]
    fn scope_conditions_combine_with_and() {
        let routes = HashMap::new();
        let p = Policy::build(
            "b",
            &config(serde_json::json!({
                "routes": ["chat"],
                "serviceAccounts": ["web"],
                "workloadSelector": {"matchLabels": {"team": "search"}},
            })),
            &routes,
        )
        .unwrap();
        let search = workload("web", &[("team", "search")]);
        assert!(p.covers("chat", &search));
        assert!(!p.covers("embed", &search), "another route");
        assert!(
            !p.covers("chat", &workload("batch", &[("team", "search")])),
            "another ServiceAccount"
        );
        assert!(
            !p.covers("chat", &workload("web", &[("team", "ads")])),
            "another team"
        );
        assert!(
            !p.covers("chat", &workload("web", &[])),
            "a label the identity does not carry is absent"
        );
        let everything = Policy::build("all", &config(serde_json::json!({})), &routes).unwrap();
        assert!(everything.covers("anything", &workload("", &[])));
    }

    #[test]
    fn selector_expressions_follow_kubernetes() {
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let s = Selector::build(
            "b",
            &LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![
                    req("team", "In", &["a", "b"]),
                    req("tier", "NotIn", &["free"]),
                    req("app", "Exists", &[]),
                    req("canary", "DoesNotExist", &[]),
                ]),
            },
        )
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(s.matches(&labels(&[("team", "a"), ("app", "x")])));
        assert!(s.matches(&labels(&[("team", "b"), ("app", "x"), ("tier", "paid")])));
        assert!(!s.matches(&labels(&[("team", "c"), ("app", "x")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("app", "x"), ("tier", "free")])));
        assert!(!s.matches(&labels(&[("team", "a")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("app", "x"), ("canary", "1")])));
        assert!(
            Selector::build("b", &LabelSelector::default())
                .unwrap()
                .matches(&BTreeMap::new()),
            "an empty selector matches every pod"
        );
        let bad = LabelSelector {
            match_expressions: Some(vec![req("team", "Like", &["a"])]),
            ..LabelSelector::default()
        };
        assert!(matches!(
            Selector::build("b", &bad),
            Err(PolicyError::Operator { .. })
        ));
    }

    #[test]
    fn unusable_budgets_are_refused() {
        let routes = HashMap::new();
        let err = |json| Policy::build("b", &config(json), &routes).unwrap_err();
        assert!(matches!(
            err(serde_json::json!({"period": "fortnightly"})),
            PolicyError::Period { .. }
        ));
        assert!(matches!(
            err(serde_json::json!({"period": "custom"})),
            PolicyError::Period { .. }
        ));
        assert!(matches!(
            err(serde_json::json!({"enforcement": "maybe"})),
            PolicyError::Value { .. }
        ));
        assert!(matches!(
            err(serde_json::json!({"failMode": "ajar"})),
            PolicyError::Value { .. }
        ));
        assert!(matches!(
            err(serde_json::json!({"downgrade": {"atPercent": 80, "route": "cheap"}})),
            PolicyError::DowngradeRoute { .. }
        ));
        assert!(matches!(
            err(serde_json::json!({"limitUsd": null})),
            PolicyError::NoLimit(_)
        ));
        let custom = Policy::build(
            "b",
            &config(serde_json::json!({"period": "custom", "periodSeconds": 60, "thresholds": [80, 50, 80]})),
            &routes,
        )
        .unwrap();
        assert_eq!(custom.period, Period::Seconds(60));
        assert_eq!(custom.thresholds, [50, 80]);
        assert!(!custom.warns_at(0.49) && custom.warns_at(0.5));
    }
}
