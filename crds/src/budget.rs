//! `Budget`: a spending or token limit over a period, for some or all of a namespace's traffic.
#![allow(
    clippy::duplicated_attributes,
    reason = "kube printcolumn(...) entries legitimately repeat type_ = \"string\""
)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Desired state of a Budget: the limit, its period, what it covers and how it is enforced.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "gatehouse.dev",
    version = "v1alpha1",
    kind = "Budget",
    plural = "budgets",
    singular = "budget",
    shortname = "gb",
    category = "gatehouse",
    namespaced,
    status = "BudgetStatus",
    derive = "PartialEq",
    doc = "A Budget limits what LLM traffic in a namespace may spend (USD or tokens) per period, for every route or only some routes, workloads or ServiceAccounts. Hard budgets reject requests past the limit with HTTP 429; soft budgets only warn. Not enforced yet in this version: a valid Budget is reported Ready=False with reason NotEnforced.",
    printcolumn(
        name = "USD",
        type_ = "string",
        json_path = ".spec.limit.usd",
        description = "Limit in USD"
    ),
    printcolumn(
        name = "Tokens",
        type_ = "integer",
        json_path = ".spec.limit.tokens",
        description = "Limit in tokens"
    ),
    printcolumn(
        name = "Period",
        type_ = "string",
        json_path = ".spec.period",
        description = "Budget period"
    ),
    printcolumn(
        name = "Spent",
        type_ = "string",
        json_path = ".status.spent",
        description = "Spent in the current period"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the budget is enforced (False, reason NotEnforced, until budgets are metered)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSpec {
    /// The limit: either `usd` or `tokens`, not both.
    pub limit: BudgetLimit,
    /// How often the budget resets: hourly, daily, weekly (Monday 00:00 UTC), monthly (the 1st,
    /// 00:00 UTC) or none (never resets).
    pub period: BudgetPeriod,
    /// What traffic counts against the budget. Empty: every request in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<BudgetScope>,
    /// hard: requests past the limit are rejected with HTTP 429. soft: they are served and a
    /// warning is logged and counted. Default hard.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// What sidecars do when the budget ledger cannot be reached: open serves requests anyway,
    /// closed rejects them. Default open.
    #[serde(default)]
    pub fail_mode: FailMode,
}

/// A budget limit, in USD or in tokens.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("has(self.usd) != has(self.tokens)").message("exactly one of limit.usd and limit.tokens must be set")
)]
#[serde(rename_all = "camelCase")]
pub struct BudgetLimit {
    /// Limit in USD as a decimal string greater than 0, e.g. `"250"` or `"12.50"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,12})?$"), length(max = 22))]
    #[x_kube(validation = Rule::new("!self.matches('^0*(\\\\.0*)?$')").message("limit.usd must be greater than 0"))]
    pub usd: Option<String>,
    /// Limit in tokens (prompt plus completion), greater than 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens: Option<i64>,
}

/// Period after which a budget resets.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum BudgetPeriod {
    // Plain comments: doc comments on variants would make the schema a non-structural `oneOf`.
    #[allow(missing_docs)]
    Hourly,
    #[allow(missing_docs)]
    Daily,
    #[allow(missing_docs)]
    Weekly,
    #[allow(missing_docs)]
    Monthly,
    #[allow(missing_docs)]
    None,
}

impl BudgetPeriod {
    /// The name used in the CRD and the rendered config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hourly => "hourly",
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::None => "none",
        }
    }
}

/// Whether a budget blocks (hard) or warns (soft).
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum Enforcement {
    #[allow(missing_docs)]
    #[default]
    Hard,
    #[allow(missing_docs)]
    Soft,
}

impl Enforcement {
    /// The name used in the CRD and the rendered config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Soft => "soft",
        }
    }
}

/// What to do when the budget ledger is unreachable.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum FailMode {
    #[allow(missing_docs)]
    #[default]
    Open,
    #[allow(missing_docs)]
    Closed,
}

impl FailMode {
    /// The name used in the CRD and the rendered config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// Which requests count against a budget. Conditions combine with AND; an empty scope covers
/// every request in the namespace.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BudgetScope {
    /// Names of Routes whose requests count. Empty: every Route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub routes: Vec<String>,
    /// Only requests from pods whose labels match this selector count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,
    /// Only requests from pods running as one of these ServiceAccounts (names in the Budget's
    /// namespace) count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub service_accounts: Vec<String>,
}

/// Observed state of a Budget, written by the Gatehouse operator's ledger.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// Spent in the current period, in the limit's unit (USD as a decimal string, or tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent: Option<String>,
    /// Left in the current period, in the limit's unit; `0` once the limit is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<String>,
    /// Start of the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<Time>,
    /// End of the current period, when the budget resets; unset for period none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<Time>,
    /// Current state. `Ready` is True when the budget is valid and enforced; a `Exceeded`
    /// condition reports whether the limit has been reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
