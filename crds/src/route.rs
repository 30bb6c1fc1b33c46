//! `Route`: the model names apps send and the provider targets behind them.
#![allow(
    clippy::duplicated_attributes,
    reason = "kube printcolumn(...) entries legitimately repeat type_ = \"string\""
)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Desired state of a Route: the aliases it answers and where requests go.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "gatehouse.dev",
    version = "v1alpha1",
    kind = "Route",
    plural = "routes",
    singular = "route",
    shortname = "gr",
    category = "gatehouse",
    namespaced,
    status = "RouteStatus",
    derive = "PartialEq",
    doc = "A Route maps the model names applications send (aliases) to one or more provider targets, with priority failover, weighted balancing, retries and timeouts.",
    printcolumn(
        name = "Models",
        type_ = "string",
        json_path = ".spec.models",
        description = "Aliases apps send as model (empty: the Route's name)"
    ),
    printcolumn(
        name = "Targets",
        type_ = "string",
        json_path = ".status.targets",
        description = "Usable targets / all targets"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every target is usable"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Model names applications send in the request's `model` field to select this route, e.g.
    /// `gpt-4o-mini` or `chat`. Defaults to the Route's name. Each alias may belong to one Route per
    /// namespace; when two Routes claim one, the Route whose name sorts first keeps it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub models: Vec<String>,

    /// Where requests go. Targets with the lowest priority are tried first; within a priority,
    /// requests are spread by weight. At least one target is required.
    #[schemars(length(min = 1, max = 64))]
    pub targets: Vec<RouteTarget>,

    /// How failed attempts are retried. Defaults: 3 attempts, backoff 100ms doubling up to 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,

    /// Time limits. Defaults: request 10m, attempt 2m, firstToken same as attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
}

/// One upstream target of a Route.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteTarget {
    /// Name of a ModelProvider in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub provider: String,
    /// Model name sent upstream in place of the alias, e.g. `gpt-4o-mini`.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// Failover order: targets with lower priority are tried first; higher ones only when those
    /// fail. Default 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// Share of traffic among targets of the same priority. 0 means the target is used only when
    /// the others of its priority failed. Default 1.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: i32,
}

fn default_weight() -> i32 {
    1
}

/// Retry policy of a Route.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Maximum upstream attempts per request, the first one included (1 to 10). Default 3.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: i32,
    /// Wait before another pass over the targets. Moving to the next target is immediate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

fn default_attempts() -> i32 {
    3
}

/// Exponential backoff between passes over the targets.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("!has(self.base) || !has(self.max) || duration(self.base) <= duration(self.max)").message("retry.backoff.base must not be longer than retry.backoff.max").field_path(".base")
)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// First wait, doubled on each further pass, as a duration such as `100ms`, `2s` or `1m30s`.
    /// Default 100ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(ms|s|m|h))+$"), length(max = 32))]
    pub base: Option<String>,
    /// Longest wait, as a duration such as `2s`. Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(ms|s|m|h))+$"), length(max = 32))]
    pub max: Option<String>,
}

/// Time limits of a Route, as durations such as `500ms`, `30s`, `2m` or `1m30s`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("!has(self.attempt) || !has(self.request) || duration(self.attempt) <= duration(self.request)").message("timeouts.attempt must not be longer than timeouts.request").field_path(".attempt")
)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// The whole request: all attempts and the full response. Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(ms|s|m|h))+$"), length(max = 32))]
    pub request: Option<String>,
    /// One attempt, until the response headers arrive (non-streaming: the whole body). Default 2m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(ms|s|m|h))+$"), length(max = 32))]
    pub attempt: Option<String>,
    /// Streaming requests: from sending the request to the first token. Default: the attempt
    /// timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(ms|s|m|h))+$"), length(max = 32))]
    pub first_token: Option<String>,
}

/// Observed state of a Route, written by the Gatehouse operator.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// Current state. `Ready` is True when every target's provider is ready and every alias is
    /// served by this Route; otherwise its reason (e.g. `ProviderNotFound`, `DuplicateAlias`) and
    /// message say what to fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Model names this Route actually serves: `spec.models` (or the Route's name) minus aliases
    /// another Route already claims.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Number of targets requests can go to (their provider exists and is ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usable_targets: Option<i32>,
    /// Number of targets in `spec.targets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_targets: Option<i32>,
    /// `usableTargets/totalTargets`, e.g. `1/2`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<String>,
}
