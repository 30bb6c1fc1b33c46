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
    doc = "A Budget limits what LLM traffic in a namespace may spend (USD and/or tokens) per period, for every route or only some routes, workloads or ServiceAccounts. The operator's ledger holds the spend of every sidecar; each sidecar spends within a lease of what is left. Hard budgets reject requests past the limit with HTTP 429 budget_exceeded; soft budgets serve and warn. Soft thresholds warn earlier, and a downgrade can send requests to a cheaper Route past a threshold.",
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
        description = "Spent in the current period, in USD (tokens in status.spentTokens)"
    ),
    printcolumn(
        name = "Remaining",
        type_ = "string",
        json_path = ".status.remaining",
        description = "Left in the current period, in the limit's unit (USD when the budget limits USD)"
    ),
    printcolumn(
        name = "Ends",
        type_ = "string",
        json_path = ".status.periodEnd",
        description = "When the current period ends and the budget resets (UTC)"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the budget is valid and enforced"
    ),
    printcolumn(
        name = "Exceeded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Exceeded\")].status",
        description = "Whether the limit is reached: nothing is left to lease to sidecars"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.period == 'custom' ? has(self.periodSeconds) : !has(self.periodSeconds)").message("spec.periodSeconds must be set with period custom, and only with it").field_path(".periodSeconds"))]
#[serde(rename_all = "camelCase")]
pub struct BudgetSpec {
    /// The limit: `usd`, `tokens`, or both (then a request must fit both).
    pub limit: BudgetLimit,
    /// How often the budget resets, on UTC boundaries: hourly, daily, weekly (Monday 00:00 UTC),
    /// monthly (the 1st, 00:00 UTC), none (never resets) or custom (every `periodSeconds`,
    /// counted from the Unix epoch).
    pub period: BudgetPeriod,
    /// With period custom: the period's length in seconds (at least 10). Unset otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 31_622_400))]
    pub period_seconds: Option<i64>,
    /// What traffic counts against the budget. Empty: every request in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<BudgetScope>,
    /// hard: requests that do not fit what is left are rejected with HTTP 429 budget_exceeded
    /// until the period ends. soft: they are served, answers carry `x-gatehouse-budget: warn`, and
    /// the operator records a Warning event. Default hard.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// What sidecars do once their lease has expired and the budget ledger cannot be reached:
    /// open serves requests anyway (the sidecar reports itself degraded), closed rejects them.
    /// Default open.
    #[serde(default)]
    pub fail_mode: FailMode,
    /// Soft thresholds, in percent of the limit (1 to 99), e.g. `[50, 80]`. Past each, answers
    /// carry `x-gatehouse-budget: warn`, the `ThresholdReached` condition turns True and the
    /// operator records one Warning event per threshold per period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(max = 10), inner(range(min = 1, max = 99)))]
    pub thresholds: Vec<i32>,
    /// Past `atPercent` of the limit, send covered requests to the targets of a cheaper Route
    /// instead of refusing them; answers then carry `x-gatehouse-budget: downgraded` and
    /// `x-gatehouse-downgraded-to: <route>`. The limit itself still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade: Option<BudgetDowngrade>,
}

/// A budget limit, in USD, in tokens, or both.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("has(self.usd) || has(self.tokens)").message("at least one of limit.usd and limit.tokens must be set")
)]
#[serde(rename_all = "camelCase")]
pub struct BudgetLimit {
    /// Limit in USD as a decimal string greater than 0, e.g. `"250"` or `"12.50"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,12})?$"), length(max = 22))]
    #[x_kube(validation = Rule::new("!self.matches('^0*(\\\\.0*)?$')").message("limit.usd must be greater than 0"))]
    pub usd: Option<String>,
    /// Limit in tokens (prompt plus completion, every type), greater than 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens: Option<i64>,
}

/// Where requests go past a threshold instead of being refused.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetDowngrade {
    /// Percent of the limit (1 to 99) from which covered requests are downgraded.
    #[schemars(range(min = 1, max = 99))]
    pub at_percent: i32,
    /// Name of a Route in the same namespace whose targets serve downgraded requests.
    #[schemars(length(min = 1, max = 253))]
    pub route: String,
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
    // Every `periodSeconds`, from the Unix epoch.
    #[allow(missing_docs)]
    Custom,
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
            Self::Custom => "custom",
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

/// Observed state of a Budget. The spend, period and sidecar fields and the `Exceeded`,
/// `ThresholdReached`, `Downgraded` and `Degraded` conditions are written by the operator's
/// ledger (field manager `gatehouse-ledger`), within seconds of the sidecars' reports; `Ready`
/// and `observedGeneration` by its reconcile.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// Spent in the current period, in USD as a decimal string (every budget counts money,
    /// whatever it limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent: Option<String>,
    /// Tokens spent in the current period (every type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_tokens: Option<i64>,
    /// Left in the current period, in the limit's unit: USD as a decimal string when the budget
    /// limits USD, else tokens; `0` once the limit is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<String>,
    /// Tokens left in the current period, when the budget limits tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_tokens: Option<i64>,
    /// Start of the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<Time>,
    /// End of the current period, when the budget resets; unset for period none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<Time>,
    /// The period before the current one and what was spent in it (reports that arrive after
    /// the rollover still count there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_period: Option<BudgetPeriodTotal>,
    /// Sidecars that reported to the ledger within the lease time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<i32>,
    /// Sidecar instances (`<pod>/<id>`) that recently served requests without a valid lease
    /// because they could not reach the ledger (failMode open); at most 20 are listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub degraded_sidecars: Vec<String>,
    /// Current state: `Ready` (the budget is valid and enforced), `Exceeded` (nothing is left
    /// to lease), `ThresholdReached` (with thresholds), `Downgraded` (with a downgrade) and
    /// `Degraded` (sidecars served without a lease).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One finished period's total.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetPeriodTotal {
    /// When the period started.
    pub start: Time,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
    /// Spent in it, in USD as a decimal string.
    pub spent: String,
    /// Tokens spent in it.
    pub spent_tokens: i64,
}
