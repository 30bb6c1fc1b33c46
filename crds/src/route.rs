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
#[x_kube(
    validation = Rule::new("!has(self.rules) || self.rules.all(r, r.targets.all(n, self.targets.exists(t, has(t.name) && t.name == n)))").message("every spec.rules[].targets entry must name a target in spec.targets (spec.targets[].name)").field_path(".rules"),
    validation = Rule::new("self.targets.all(a, !has(a.name) || self.targets.exists_one(b, has(b.name) && b.name == a.name))").message("spec.targets[].name must be unique").field_path(".targets"),
    validation = Rule::new("!has(self.rules) || self.rules.all(a, self.rules.exists_one(b, b.name == a.name))").message("spec.rules[].name must be unique").field_path(".rules"),
    validation = Rule::new("!has(self.rateLimits) || self.rateLimits.all(a, self.rateLimits.exists_one(b, b.name == a.name))").message("spec.rateLimits[].name must be unique").field_path(".rateLimits")
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

    /// Time limits. Defaults: request 10m, attempt 2m, firstToken same as attempt, idle unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// When a failing target is taken out of rotation (outlier ejection). Defaults: eject after 5
    /// failures or 2 timeouts in a row, or 50% failures over at least 20 attempts within 10s; for
    /// 30s, doubling on each repeat up to 5m. The last healthy target of a Route is never ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierPolicy>,

    /// Rules that send some requests to a subset of the targets, by request features (estimated
    /// input tokens, tools, images, JSON mode, a header, the caller's workload labels). The first
    /// rule that matches wins; a request no rule matches may go to every target. The matched rule
    /// is named in the `x-gatehouse-rule` response header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rules: Vec<RouteRule>,

    /// Rate limits: requests and/or tokens per minute, for every caller of the Route or for
    /// selected workloads, counted per sidecar (local) or across sidecars (cluster). Every limit
    /// that applies to a request must admit it; a refused request gets HTTP 429
    /// `rate_limit_exceeded` with `Retry-After`, and answers carry OpenAI's
    /// `x-ratelimit-limit-*`, `x-ratelimit-remaining-*` and `x-ratelimit-reset-*` headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub rate_limits: Vec<crate::guardrails::RateLimit>,

    /// Redaction of sensitive data (emails, phone numbers, card numbers, keys, custom patterns)
    /// before a prompt leaves the cluster, and in answers. Unset: no redaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<crate::guardrails::Redact>,

    /// What the audit line of each request carries besides who called what (prompts and
    /// answers are opt-in). Unset: neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::guardrails::Audit>,

    /// Response cache: present turns exact caching on for this Route (docs/caching.md). Unset:
    /// no cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::Cache>,
}

/// Outlier ejection settings of a Route.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("!has(self.baseEjection) || !has(self.maxEjection) || duration(self.baseEjection) <= duration(self.maxEjection)").message("outlier.baseEjection must not be longer than outlier.maxEjection").field_path(".baseEjection")
)]
#[serde(rename_all = "camelCase")]
pub struct OutlierPolicy {
    /// Whether failing targets are ejected at all. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Failed attempts in a row (errors, 5xx, 429, timeouts, billing or key refusals) that eject a
    /// target; 0 turns this check off. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_failures: Option<i32>,
    /// Timed-out attempts in a row that eject a target; 0 turns this check off. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_timeouts: Option<i32>,
    /// Percentage of failed attempts within one window that ejects a target; 0 turns this check
    /// off. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub failure_rate_percent: Option<i32>,
    /// Attempts a window must see before its failure rate counts. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub failure_rate_min_requests: Option<i32>,
    /// Length of the failure-rate window, as a duration such as `10s`. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(ms|s|m|h))+$"), length(max = 32))]
    pub window: Option<String>,
    /// First cooldown of an ejected target, doubled on each ejection in a row. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(ms|s|m|h))+$"), length(max = 32))]
    pub base_ejection: Option<String>,
    /// Longest cooldown. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(ms|s|m|h))+$"), length(max = 32))]
    pub max_ejection: Option<String>,
}

/// A routing rule: requests it matches go only to the targets it names.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("!has(self.match.minInputTokens) || !has(self.match.maxInputTokens) || self.match.minInputTokens <= self.match.maxInputTokens").message("rules[].match.minInputTokens must not be larger than maxInputTokens").field_path(".match")
)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Rule name, unique within the Route; sent back in `x-gatehouse-rule`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// What a request must look like; every condition given must hold (none given: every
    /// request matches).
    #[serde(rename = "match", default)]
    pub matches: RuleMatch,
    /// Names of targets (`spec.targets[].name`) that serve matching requests, tried by their
    /// priority and weight as usual.
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 63)))]
    pub targets: Vec<String>,
}

/// Request features a rule matches on.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuleMatch {
    /// Estimated input tokens (prompt bytes / 4) at least this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_input_tokens: Option<i64>,
    /// Estimated input tokens at most this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_input_tokens: Option<i64>,
    /// Whether the request declares tools (true) or none (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<bool>,
    /// Whether the request carries images (true) or none (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<bool>,
    /// Whether the request asks for JSON output: OpenAI `response_format` `json_object` or
    /// `json_schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_mode: Option<bool>,
    /// Request headers and the exact values they must have, e.g. `x-gatehouse-tier: cheap`.
    /// Names are matched case-insensitively.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(length(max = 8))]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Labels of the calling workload (the sidecar's pod) and the values they must have.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(length(max = 8))]
    pub workload_labels: std::collections::BTreeMap<String, String>,
}

/// One upstream target of a Route.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteTarget {
    /// Optional name of this target, unique within the Route, for `spec.rules[].targets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
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
    /// Streaming requests: longest silence from the upstream once the stream has started; the
    /// stream then ends with an error event. Default: unset (only `request` bounds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,9}(ms|s|m|h))+$"), length(max = 32))]
    pub idle: Option<String>,
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
