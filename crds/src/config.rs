//! The rendered sidecar config: what the operator writes per namespace (no keys in it) and what the
//! sidecar reads, in kube mode from the rendered config object and in standalone mode straight from
//! [`crate::render`].
//!
//! This is a versioned wire contract between operator and sidecar: unknown fields are rejected so a
//! sidecar never silently ignores a setting it does not understand.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod cache;
mod egress;
mod guardrails;
pub use cache::{
    CacheBackendConfig, CacheConfig, CacheScopeConfig, DEFAULT_MAX_BYTES,
    DEFAULT_SEMANTIC_MAX_ENTRIES, DEFAULT_SEMANTIC_THRESHOLD, DEFAULT_SEMANTIC_TIMEOUT_MS,
    DEFAULT_TTL_MS, SemanticCacheConfig,
};
pub use egress::{HeaderConfig, ProxyConfig, TlsConfig};
pub use guardrails::{
    AuditConfig, CustomDetectorConfig, RateLimitConfig, RateLimitScopeConfig, RedactActionConfig,
    RedactConfig,
};

/// The `apiVersion` written into every rendered config; the sidecar refuses any other.
pub const CONFIG_API_VERSION: &str = "gatehouse.dev/config-v1alpha1";

/// Everything the sidecars of one namespace need to serve, without secret material.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarConfig {
    /// Always [`CONFIG_API_VERSION`].
    pub api_version: String,
    /// Namespace the config was rendered for.
    pub namespace: String,
    /// Usable providers by ModelProvider name. Providers with unresolved keys are left out.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Routes by Route name.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    /// Budgets by Budget name.
    #[serde(default)]
    pub budgets: BTreeMap<String, BudgetConfig>,
}

impl SidecarConfig {
    /// An empty config for `namespace`.
    pub fn empty(namespace: impl Into<String>) -> Self {
        Self {
            api_version: CONFIG_API_VERSION.to_string(),
            namespace: namespace.into(),
            providers: BTreeMap::new(),
            routes: BTreeMap::new(),
            budgets: BTreeMap::new(),
        }
    }
}

/// Wire protocol family of a provider.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum ProviderKind {
    /// OpenAI's API.
    Openai,
    /// Anthropic Messages API.
    Anthropic,
    /// Google Gemini API.
    Gemini,
    /// Azure OpenAI Service.
    AzureOpenAI,
    /// Amazon Bedrock Converse API.
    Bedrock,
    /// Any server speaking the OpenAI API (vLLM, Ollama, llama.cpp, TGI...).
    OpenaiCompatible,
    /// Gemini models on Google Cloud Vertex AI (Gemini's bodies, Vertex's URLs, a GCP token).
    #[serde(rename = "vertexAI")]
    VertexAI,
}

impl ProviderKind {
    /// The name used in the CRD and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::AzureOpenAI => "azureOpenAI",
            Self::Bedrock => "bedrock",
            Self::OpenaiCompatible => "openaiCompatible",
            Self::VertexAI => "vertexAI",
        }
    }
}

/// One upstream provider, resolved.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// Protocol family.
    #[serde(rename = "type")]
    pub kind: ProviderKind,
    /// Base URL, without trailing slash. For `openai`/`openaiCompatible` it includes the version
    /// path (`https://api.openai.com/v1`) and the sidecar appends `/chat/completions`.
    pub endpoint: String,
    /// Name of the entry in the keys Secret (and of the file in the mounted keys directory) that holds
    /// this provider's API key; `None` when the provider is used without a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Known models with their pricing, by upstream model name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, Pricing>,
    /// Azure OpenAI only: the `api-version` query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Bedrock only: the AWS region (for request signing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Where the credentials come from when they are not a static key: a workload identity
    /// exchanged by the sidecar. `None`: the key (if any) is the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
    /// Vertex AI only: the project and location in the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertex: Option<VertexConfig>,
    /// TLS settings (`spec.tls`); `None`: the public roots, no client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Proxy settings (`spec.proxy`); `None`: the environment's proxy, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// Extra request headers (`spec.headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderConfig>,
}

/// A credential source the sidecar exchanges for short-lived credentials. Unset endpoints and
/// token files fall back to the standard environment variables of each cloud, then to the
/// documented defaults (see docs/aws.md, docs/azure.md, docs/gcp.md).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "source", deny_unknown_fields)]
pub enum IdentityConfig {
    /// AWS STS `AssumeRoleWithWebIdentity` with a projected ServiceAccount token (IRSA).
    #[serde(rename_all = "camelCase")]
    AwsWebIdentity {
        /// The role to assume.
        role_arn: String,
        /// The role session name.
        session_name: String,
        /// STS endpoint; default `https://sts.<region>.amazonaws.com`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sts_endpoint: Option<String>,
        /// Token file; default `AWS_WEB_IDENTITY_TOKEN_FILE`, then the injected path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<String>,
    },
    /// The EKS Pod Identity agent.
    #[serde(rename_all = "camelCase")]
    AwsPodIdentity {
        /// Agent URL; default `AWS_CONTAINER_CREDENTIALS_FULL_URI`, then
        /// `http://169.254.170.23/v1/credentials`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        /// Authorization token file; default `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, then the
        /// injected path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<String>,
    },
    /// Microsoft Entra ID workload identity (client credentials with a federated assertion).
    #[serde(rename_all = "camelCase")]
    AzureWorkloadIdentity {
        /// Application (client) ID.
        client_id: String,
        /// Tenant ID.
        tenant_id: String,
        /// Authority; default `AZURE_AUTHORITY_HOST`, then `https://login.microsoftonline.com/`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authority_host: Option<String>,
        /// Federated token file; default `AZURE_FEDERATED_TOKEN_FILE`, then the injected path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<String>,
    },
    /// The GCE/GKE metadata server's token for the pod's (workload identity) service account.
    #[serde(rename_all = "camelCase")]
    GcpMetadata {
        /// Metadata server; default `GCE_METADATA_HOST`, then `http://metadata.google.internal`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
    /// A service-account key (the provider's key in the keys Secret) exchanged with an RS256
    /// JWT-bearer grant.
    #[serde(rename_all = "camelCase")]
    GcpServiceAccountKey {
        /// Token endpoint; default the key's `token_uri`, then `https://oauth2.googleapis.com/token`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_endpoint: Option<String>,
    },
}

impl IdentityConfig {
    /// The audience of the projected ServiceAccount token this source needs mounted into the
    /// sidecar, if any.
    pub fn token_audience(&self) -> Option<&'static str> {
        match self {
            Self::AwsWebIdentity { .. } => Some(crate::contract::AWS_WEB_IDENTITY_AUDIENCE),
            Self::AwsPodIdentity { .. } => Some(crate::contract::AWS_POD_IDENTITY_AUDIENCE),
            Self::AzureWorkloadIdentity { .. } => Some(crate::contract::AZURE_AUDIENCE),
            Self::GcpMetadata { .. } | Self::GcpServiceAccountKey { .. } => None,
        }
    }
}

/// Vertex AI: where the model lives.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VertexConfig {
    /// Google Cloud project ID.
    pub project: String,
    /// Location (`us-central1`, `global`).
    pub location: String,
}

/// Prices in USD per million tokens. Unset optional rates fall back as documented on each field,
/// so a price list that names only input and output still prices every token type.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pricing {
    /// USD per million prompt tokens.
    pub input_per_million: f64,
    /// USD per million completion tokens.
    pub output_per_million: f64,
    /// USD per million cached prompt tokens (cache reads); defaults to the input price when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<f64>,
    /// USD per million prompt tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`); defaults to the input price when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<f64>,
    /// USD per million reasoning tokens, where a provider bills them apart from output; defaults
    /// to the output price (reasoning tokens are part of the completion tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_per_million: Option<f64>,
    /// Rates of the long-context tier: when a request's prompt tokens exceed
    /// `above_input_tokens`, every token of that request is priced at these rates instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContextPricing>,
}

/// The long-context tier of a model's pricing (e.g. Gemini 2.5 Pro above 200k prompt tokens).
/// Unset optional rates fall back to this tier's input (or output) rate.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LongContextPricing {
    /// The tier applies to requests with more prompt tokens than this.
    pub above_input_tokens: u64,
    /// USD per million prompt tokens.
    pub input_per_million: f64,
    /// USD per million completion tokens.
    pub output_per_million: f64,
    /// USD per million cached prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<f64>,
    /// USD per million cache-write tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<f64>,
}

/// A route: the aliases apps send as `model` and where they go.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// Model names apps send that select this route. Unique across the namespace's routes.
    pub aliases: Vec<String>,
    /// Usable targets (those whose provider resolved). May be empty when every target is unusable;
    /// the sidecar then answers the route's aliases with a 503 naming the reason.
    pub targets: Vec<TargetConfig>,
    /// Why targets were dropped, for error messages (no secrets in here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Timeouts.
    pub timeouts: TimeoutConfig,
    /// When a target is taken out of rotation for a while (outlier ejection).
    #[serde(default, skip_serializing_if = "OutlierConfig::is_default")]
    pub outlier: OutlierConfig,
    /// Rules choosing a subset of `targets` by request features; the first match wins, else
    /// every target serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    /// Rate limits; every one that applies to a request must admit it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitConfig>,
    /// Redaction of prompts and answers; `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<RedactConfig>,
    /// What the audit lines carry besides who called what.
    #[serde(default, skip_serializing_if = "AuditConfig::is_default")]
    pub audit: AuditConfig,
    /// Response cache; `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheConfig>,
}

/// Outlier ejection of a route's targets: a target that keeps failing is left out of the
/// route's choices for a cooldown that doubles on each repeat, then one real request tests it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierConfig {
    /// Whether targets are ejected at all.
    pub enabled: bool,
    /// Failed attempts in a row (any retryable failure) that eject a target; 0 turns this off.
    pub consecutive_failures: u32,
    /// Timed-out attempts in a row that eject a target; 0 turns this off.
    pub consecutive_timeouts: u32,
    /// Failed share of attempts, in percent, within one window that ejects a target; 0 turns
    /// this off.
    pub failure_rate_percent: u32,
    /// Attempts a window needs before its failure rate counts.
    pub failure_rate_min_requests: u32,
    /// Length of the failure-rate window, in milliseconds.
    pub window_ms: u64,
    /// First cooldown, in milliseconds; doubled on each ejection in a row.
    pub base_ejection_ms: u64,
    /// Longest cooldown, in milliseconds.
    pub max_ejection_ms: u64,
}

impl OutlierConfig {
    /// Whether these are the defaults (left out of the rendered config).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            consecutive_timeouts: 2,
            failure_rate_percent: 50,
            failure_rate_min_requests: 20,
            window_ms: 10_000,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
        }
    }
}

/// A routing rule: when a request matches, only the named targets serve it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    /// Rule name, for the `x-gatehouse-rule` header and the log.
    pub name: String,
    /// What the request must look like (every condition set must hold).
    #[serde(rename = "match")]
    pub matches: RuleMatch,
    /// Indices into the route's `targets` that serve a matching request.
    pub targets: Vec<usize>,
}

/// Conditions of a rule; an unset condition matches anything.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleMatch {
    /// Estimated input tokens at least this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_input_tokens: Option<u64>,
    /// Estimated input tokens at most this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    /// Whether the request declares tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<bool>,
    /// Whether the request carries images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<bool>,
    /// Whether the request asks for JSON output (`response_format` json_object/json_schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_mode: Option<bool>,
    /// Request headers (lower-case names) and the values they must equal.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Workload labels of the caller and the values they must equal.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub workload_labels: std::collections::BTreeMap<String, String>,
}

/// One upstream target of a route.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetConfig {
    /// ModelProvider name (a key of [`SidecarConfig::providers`]).
    pub provider: String,
    /// Model name sent upstream in place of the alias.
    pub model: String,
    /// Lower priorities are tried first.
    pub priority: i32,
    /// Relative weight within its priority; 0 means only used when the others of its priority failed.
    pub weight: u32,
}

/// How failed attempts are retried.
///
/// Attempts walk the targets by ascending priority, choosing by weight within a priority, each target
/// once per pass; moving to a new target is immediate, starting another pass waits a backoff.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    /// Maximum upstream attempts for one request, the first included (>= 1).
    pub attempts: u32,
    /// First backoff before another pass over the targets, in milliseconds; doubles each pass.
    pub backoff_base_ms: u64,
    /// Upper bound of the backoff, in milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff_base_ms: 100,
            backoff_max_ms: 2_000,
        }
    }
}

/// Timeouts, in milliseconds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Whole request, all attempts and the full response included.
    pub request_ms: u64,
    /// One attempt until the response headers arrive (non-streaming: until the whole body arrived).
    pub attempt_ms: u64,
    /// For streams: from sending the request to the first chunk. `None` uses `attempt_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    /// For streams: longest silence between two upstream reads once the stream is relayed.
    /// `None`: only the request timeout bounds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            request_ms: 600_000,
            attempt_ms: 120_000,
            first_token_ms: None,
            idle_ms: None,
        }
    }
}

/// A budget, as the sidecar sees it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetConfig {
    /// Limit in USD, if the budget counts money.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_usd: Option<f64>,
    /// Limit in tokens, if the budget counts tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_tokens: Option<u64>,
    /// Period name: hourly, daily, weekly, monthly or none.
    pub period: String,
    /// `hard` (reject with 429) or `soft` (warn).
    pub enforcement: String,
    /// Route names the budget covers; empty means every route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// ServiceAccount names the budget covers; empty means every ServiceAccount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Pod label selector the budget covers; `None` means every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// `open` (serve when the budget ledger is unreachable) or `closed` (reject). Default `open`.
    #[serde(default = "default_fail_mode")]
    pub fail_mode: String,
    /// With period `custom`: its length in seconds, counted from the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u64>,
    /// Soft thresholds in percent of the limit (ascending, each 1..=99): past each, answers carry
    /// `x-gatehouse-budget: warn` and the operator records one Warning event per period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<u8>,
    /// Past a threshold, send covered requests to a cheaper Route's targets instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade: Option<DowngradeConfig>,
}

impl BudgetConfig {
    /// The limit on the ledger's integer units.
    pub fn limit(&self) -> crate::ledger::Limit {
        crate::ledger::Limit {
            nano_usd: self.limit_usd.map(crate::ledger::usd_to_nanos),
            tokens: self.limit_tokens,
        }
    }

    /// The period, `None` when the config names one this version does not know.
    pub fn period(&self) -> Option<crate::ledger::Period> {
        crate::ledger::Period::parse(&self.period, self.period_seconds)
    }
}

/// A budget's downgrade: past `at_percent` of the limit, covered requests are served by the
/// targets of Route `route` (same namespace) instead of their own.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DowngradeConfig {
    /// Percent of the limit (1..=99) from which requests are downgraded.
    pub at_percent: u8,
    /// The Route whose targets serve downgraded requests.
    pub route: String,
}

fn default_fail_mode() -> String {
    "open".to_string()
}
