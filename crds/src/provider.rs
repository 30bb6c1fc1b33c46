//! `ModelProvider`: one upstream LLM API and the Secret holding its key.
#![allow(
    clippy::duplicated_attributes,
    reason = "kube printcolumn(...) entries legitimately repeat type_ = \"string\""
)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::config::ProviderKind;

mod egress;
pub use egress::{
    CaBundleRef, ConfigMapKeyRef, HeaderValueSource, ProviderHeader, ProviderProxy, ProviderTls,
    RESERVED_HEADERS, SecretNameRef, is_reserved_header,
};

/// Default base URL of OpenAI's API.
pub const OPENAI_ENDPOINT: &str = "https://api.openai.com/v1";
/// Default base URL of Anthropic's API.
pub const ANTHROPIC_ENDPOINT: &str = "https://api.anthropic.com";
/// Default base URL of the Gemini API.
pub const GEMINI_ENDPOINT: &str = "https://generativelanguage.googleapis.com";
/// The Vertex AI location served from `aiplatform.googleapis.com` (no regional host prefix).
pub const VERTEX_GLOBAL: &str = "global";
/// Azure OpenAI `api-version` used when `spec.azure.apiVersion` is not set.
pub const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

/// Desired state of a ModelProvider: which API it speaks, where, with which key, and model prices.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "gatehouse.dev",
    version = "v1alpha1",
    kind = "ModelProvider",
    plural = "modelproviders",
    singular = "modelprovider",
    shortname = "mp",
    category = "gatehouse",
    namespaced,
    status = "ModelProviderStatus",
    derive = "PartialEq",
    doc = "A ModelProvider is one upstream LLM API (OpenAI, Anthropic, Gemini, Azure OpenAI, Bedrock or any OpenAI-compatible server) and the Secret holding its API key. Routes send traffic to providers by name.",
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.type",
        description = "Provider API family"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "Base URL in use (spec.endpoint or the type's default)"
    ),
    printcolumn(
        name = "Models",
        type_ = "integer",
        json_path = ".status.models",
        description = "Number of priced models (spec.models and Route targets)"
    ),
    printcolumn(
        name = "Priced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Priced\")].status",
        description = "Whether every model used with the provider has a price"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the provider is usable"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!(self.type in ['azureOpenAI', 'openaiCompatible']) || has(self.endpoint)").message("spec.endpoint is required when spec.type is azureOpenAI or openaiCompatible").field_path(".endpoint"),
    validation = Rule::new("self.type in ['openaiCompatible', 'vertexAI'] || has(self.apiKeySecretRef) || (has(self.bedrock) && (has(self.bedrock.webIdentity) || has(self.bedrock.podIdentity))) || (has(self.azure) && has(self.azure.workloadIdentity))").message("spec.apiKeySecretRef is required unless spec.type is openaiCompatible or vertexAI, or a workload identity (spec.bedrock.webIdentity, spec.bedrock.podIdentity, spec.azure.workloadIdentity) is set").field_path(".apiKeySecretRef"),
    validation = Rule::new("!has(self.apiKeySecretRef) || !((has(self.bedrock) && (has(self.bedrock.webIdentity) || has(self.bedrock.podIdentity))) || (has(self.azure) && has(self.azure.workloadIdentity)))").message("set exactly one credential source: spec.apiKeySecretRef or a workload identity, not both").field_path(".apiKeySecretRef"),
    validation = Rule::new("!(has(self.bedrock) && has(self.bedrock.webIdentity) && has(self.bedrock.podIdentity))").message("set one of spec.bedrock.webIdentity and spec.bedrock.podIdentity, not both").field_path(".bedrock"),
    validation = Rule::new("self.type != 'vertexAI' || has(self.vertex)").message("spec.vertex (project and location) is required when spec.type is vertexAI").field_path(".vertex"),
    validation = Rule::new("!has(self.vertex) || self.type == 'vertexAI'").message("spec.vertex is only allowed when spec.type is vertexAI").field_path(".vertex"),
    validation = Rule::new("self.type != 'bedrock' || has(self.endpoint) || has(self.bedrock)").message("spec.bedrock.region (or spec.endpoint) is required when spec.type is bedrock").field_path(".bedrock"),
    validation = Rule::new("!has(self.azure) || self.type == 'azureOpenAI'").message("spec.azure is only allowed when spec.type is azureOpenAI").field_path(".azure"),
    validation = Rule::new("!has(self.bedrock) || self.type == 'bedrock'").message("spec.bedrock is only allowed when spec.type is bedrock").field_path(".bedrock"),
    validation = Rule::new("!has(self.tls) || !has(self.endpoint) || self.endpoint.startsWith('https://')").message("spec.tls needs an https:// spec.endpoint").field_path(".tls")
)]
#[serde(rename_all = "camelCase")]
pub struct ModelProviderSpec {
    /// API family the provider speaks: openai, anthropic, gemini, azureOpenAI, bedrock,
    /// vertexAI (Gemini models on Google Cloud Vertex AI) or openaiCompatible (vLLM, Ollama,
    /// llama.cpp, TGI and other servers speaking the OpenAI API).
    #[serde(rename = "type")]
    pub kind: ProviderType,

    /// Base URL of the API, e.g. `https://api.openai.com/v1` or `http://vllm.models:8000/v1`.
    /// Defaults per type: openai `https://api.openai.com/v1`, anthropic `https://api.anthropic.com`,
    /// gemini `https://generativelanguage.googleapis.com`, bedrock
    /// `https://bedrock-runtime.<region>.amazonaws.com`, vertexAI
    /// `https://<location>-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com` for
    /// location `global`). Required for azureOpenAI (your resource's
    /// URL) and openaiCompatible. For openai and openaiCompatible include the version path (`/v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"),
        length(max = 2048)
    )]
    pub endpoint: Option<String>,

    /// The Secret key holding the provider's API key, in the ModelProvider's namespace. Required
    /// for every type except openaiCompatible. The key is only ever mounted into the Gatehouse
    /// sidecar container, never into application containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,

    /// Models served by this provider, each with an optional price that overrides the built-in
    /// pricing catalog (prices feed the x-gatehouse-cost-usd response header, logs and metrics).
    /// Models need not be listed: every model a Route sends to this provider is served, priced
    /// from the catalog when it lists the model. Names must be unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 256))]
    pub models: Vec<ProviderModel>,

    /// Settings only used when type is azureOpenAI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSettings>,

    /// Settings only used when type is bedrock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bedrock: Option<BedrockSettings>,

    /// Settings only used (and required) when type is vertexAI: the Google Cloud project and
    /// location. Credentials: a service-account key JSON from `apiKeySecretRef`, or, without it,
    /// the GKE metadata server (workload identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertex: Option<VertexSettings>,

    /// TLS towards the provider: a CA bundle (private CA), the system trust store, a client
    /// certificate (mTLS), a server name override. See docs/egress.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ProviderTls>,

    /// The egress proxy to reach the provider through, or opting out of the sidecar's
    /// `HTTPS_PROXY` environment. See docs/egress.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProviderProxy>,

    /// Extra headers sent with every request to the provider (e.g. `OpenAI-Organization`), each
    /// a fixed value or a Secret key. Names are unique (case-insensitively), and hop-by-hop
    /// headers and those Gatehouse sets itself (credentials, framing) are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name.lowerAscii() == a.name.lowerAscii()))").message("spec.headers[].name must be unique (case-insensitively)"))]
    pub headers: Vec<ProviderHeader>,
}

impl ModelProviderSpec {
    /// Names of the Secrets this spec reads (API key, TLS, proxy credentials, header values):
    /// what the operator fetches and watches for it.
    pub fn secret_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        names.extend(self.api_key_secret_ref.as_ref().map(|r| r.name.as_str()));
        if let Some(tls) = &self.tls {
            names.extend(
                tls.ca_bundle
                    .as_ref()
                    .and_then(|c| c.secret_ref.as_ref())
                    .map(|r| r.name.as_str()),
            );
            names.extend(
                tls.client_certificate_secret_ref
                    .as_ref()
                    .map(|r| r.name.as_str()),
            );
        }
        names.extend(
            self.proxy
                .as_ref()
                .and_then(|p| p.auth_secret_ref.as_ref())
                .map(|r| r.name.as_str()),
        );
        names.extend(
            self.headers
                .iter()
                .filter_map(|h| h.value_from.as_ref())
                .map(|v| v.secret_key_ref.name.as_str()),
        );
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Names of the ConfigMaps this spec reads (a CA bundle).
    pub fn config_map_names(&self) -> Vec<&str> {
        self.tls
            .as_ref()
            .and_then(|t| t.ca_bundle.as_ref())
            .and_then(|c| c.config_map_ref.as_ref())
            .map(|r| r.name.as_str())
            .into_iter()
            .collect()
    }
}

/// API family of a ModelProvider.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ProviderType {
    // Variants carry plain comments: doc comments would turn the schema into a `oneOf`, which
    // Kubernetes does not accept in a structural schema. The field doc lists the values instead.
    #[allow(missing_docs)]
    Openai,
    #[allow(missing_docs)]
    Anthropic,
    #[allow(missing_docs)]
    Gemini,
    #[allow(missing_docs)]
    #[serde(rename = "azureOpenAI")]
    AzureOpenAI,
    #[allow(missing_docs)]
    Bedrock,
    #[allow(missing_docs)]
    OpenaiCompatible,
    #[allow(missing_docs)]
    #[serde(rename = "vertexAI")]
    VertexAI,
}

impl From<ProviderType> for ProviderKind {
    fn from(t: ProviderType) -> Self {
        match t {
            ProviderType::Openai => Self::Openai,
            ProviderType::Anthropic => Self::Anthropic,
            ProviderType::Gemini => Self::Gemini,
            ProviderType::AzureOpenAI => Self::AzureOpenAI,
            ProviderType::Bedrock => Self::Bedrock,
            ProviderType::OpenaiCompatible => Self::OpenaiCompatible,
            ProviderType::VertexAI => Self::VertexAI,
        }
    }
}

/// A reference to one key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data whose value is the API key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// One model a provider serves and, optionally, what it costs.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderModel {
    /// Upstream model name, as the provider expects it (e.g. `gpt-4o-mini`).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Prices in USD per million tokens, each a whole number (`5`) or a decimal string (`"2.50"`).
    /// Overrides the built-in catalog for this provider's model; when unset the catalog's price
    /// is used, and a model in neither is served unpriced (its cost reported as unknown, and the
    /// `Priced` condition names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<ModelPricing>,
}

/// Prices in USD per million tokens. Each price is a whole number (`5`) or a decimal string
/// (`"2.50"`), as Kubernetes quantities are written; a bare YAML decimal (`2.5`) must be quoted.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModelPricing {
    /// USD per million prompt (input) tokens, e.g. `"2.50"` or `3`.
    pub input_per_million: Price,
    /// USD per million completion (output) tokens, e.g. `10`.
    pub output_per_million: Price,
    /// USD per million cached prompt tokens read from the provider's prompt cache, e.g. `"1.25"`.
    /// Defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<Price>,
    /// USD per million prompt tokens written to the provider's prompt cache (Anthropic's cache
    /// writes), e.g. `"3.75"`. Defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<Price>,
    /// USD per million reasoning tokens, for providers that bill them apart from output tokens.
    /// Defaults to the output price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_per_million: Option<Price>,
    /// A long-context tier: requests whose prompt exceeds `aboveInputTokens` tokens are priced
    /// entirely at these rates (e.g. Gemini 2.5 Pro above 200k prompt tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContextModelPricing>,
}

/// The long-context tier of a model's prices, in USD per million tokens.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LongContextModelPricing {
    /// The tier applies to requests with more prompt tokens than this, e.g. `200000`.
    #[schemars(range(min = 1, max = 100000000))]
    pub above_input_tokens: i64,
    /// USD per million prompt tokens in this tier.
    pub input_per_million: Price,
    /// USD per million completion tokens in this tier.
    pub output_per_million: Price,
    /// USD per million cached prompt tokens in this tier. Defaults to this tier's input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<Price>,
    /// USD per million cache-write tokens in this tier. Defaults to this tier's input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<Price>,
}

/// A price in USD: a whole number (`5`) or a non-negative decimal string (`"2.50"`), like a
/// Kubernetes quantity (int-or-string). Strings keep every digit the author wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Price {
    /// Written as a YAML/JSON integer.
    Whole(i64),
    /// Written as a string.
    Decimal(String),
}

/// Pattern of a price written as a string: up to 9 integer and 12 fractional digits.
pub const PRICE_PATTERN: &str = r"^[0-9]{1,9}(\.[0-9]{1,12})?$";

impl Price {
    /// The price as a number, or `None` when it is negative, not a plain decimal (`"1,5"`,
    /// `"1e3"`) or out of range.
    pub fn value(&self) -> Option<f64> {
        match self {
            Self::Whole(n) => (0..=999_999_999).contains(n).then_some(*n as f64),
            Self::Decimal(s) => parse_decimal(s),
        }
    }
}

impl std::fmt::Display for Price {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole(n) => write!(f, "{n}"),
            Self::Decimal(s) => write!(f, "{s:?}"),
        }
    }
}

/// Parse a non-negative decimal string (`"2.50"`) as [`PRICE_PATTERN`] allows it.
pub(crate) fn parse_decimal(s: &str) -> Option<f64> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl Serialize for Price {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Whole(n) => serializer.serialize_i64(*n),
            Self::Decimal(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Price;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a price: a whole number such as 5 or a decimal string such as \"2.50\"",
                )
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Price, E> {
                Ok(Price::Whole(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Price, E> {
                i64::try_from(v)
                    .map(Price::Whole)
                    .map_err(|_| E::custom(format!("price {v} is too large")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Price, E> {
                Err(E::custom(format!(
                    "price {v} must be a whole number or a quoted decimal string such as \"{v}\""
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Price, E> {
                Ok(Price::Decimal(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl schemars::JsonSchema for Price {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Price".into()
    }

    fn inline_schema() -> bool {
        true
    }

    // Int-or-string, as Kubernetes declares quantities: the pattern applies to the string form,
    // the bounds to the integer form. (No `anyOf` of the two types: kube's structural rewrite
    // would empty its branches, and `x-kubernetes-int-or-string` alone says the same.)
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "pattern": PRICE_PATTERN,
            "minimum": 0,
            "maximum": 999_999_999,
        })
    }
}

/// Azure OpenAI settings.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AzureSettings {
    /// Value of the `api-version` query parameter, e.g. `2024-10-21`. Defaults to `2024-10-21`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$"))]
    pub api_version: Option<String>,

    /// Authenticate with Microsoft Entra ID workload identity instead of an `api-key`: the pod's
    /// projected ServiceAccount token (audience `api://AzureADTokenExchange`) is exchanged at the
    /// tenant's token endpoint for an access token, sent as `Authorization: Bearer`. Replaces
    /// `apiKeySecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<AzureWorkloadIdentity>,
}

/// Entra ID workload identity: the app registration (or user-assigned managed identity) whose
/// federated credential trusts the cluster's ServiceAccount tokens.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AzureWorkloadIdentity {
    /// Application (client) ID of the app registration or managed identity.
    #[schemars(length(min = 1, max = 128))]
    pub client_id: String,
    /// Directory (tenant) ID.
    #[schemars(length(min = 1, max = 128))]
    pub tenant_id: String,
    /// Entra authority, e.g. `https://login.microsoftonline.com/` (the default, or the sidecar's
    /// `AZURE_AUTHORITY_HOST`). Sovereign clouds have their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s?#]+$"), length(max = 2048))]
    pub authority_host: Option<String>,
    /// Path of the federated token file in the sidecar. Defaults to the token the injection
    /// webhook mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub token_file: Option<String>,
}

/// Amazon Bedrock settings.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BedrockSettings {
    /// AWS region, e.g. `us-east-1`. The endpoint defaults to
    /// `https://bedrock-runtime.<region>.amazonaws.com`.
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: String,

    /// Sign with temporary credentials from STS `AssumeRoleWithWebIdentity` (IRSA): the pod's
    /// projected ServiceAccount token (audience `sts.amazonaws.com`) is exchanged for the role's
    /// credentials, cached and refreshed before they expire. Replaces `apiKeySecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity: Option<AwsWebIdentity>,

    /// Sign with credentials from the EKS Pod Identity agent, fetched with the pod's projected
    /// ServiceAccount token (audience `pods.eks.amazonaws.com`). Replaces `apiKeySecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_identity: Option<AwsPodIdentity>,
}

/// IRSA: the IAM role assumed with the pod's web identity token.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AwsWebIdentity {
    /// ARN of the IAM role to assume, e.g. `arn:aws:iam::111122223333:role/gatehouse-bedrock`.
    #[schemars(
        regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$"),
        length(max = 2048)
    )]
    pub role_arn: String,
    /// Role session name (shows in CloudTrail). Defaults to `gatehouse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\w+=,.@-]{2,64}$"))]
    pub session_name: Option<String>,
    /// STS endpoint. Defaults to the regional one, `https://sts.<region>.amazonaws.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s?#]+$"), length(max = 2048))]
    pub sts_endpoint: Option<String>,
    /// Path of the web identity token file in the sidecar. Defaults to the token the injection
    /// webhook mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub token_file: Option<String>,
}

/// EKS Pod Identity: credentials from the node's Pod Identity agent.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AwsPodIdentity {
    /// The agent's credentials URL. Defaults to `http://169.254.170.23/v1/credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s?#]+$"), length(max = 2048))]
    pub endpoint: Option<String>,
    /// Path of the authorization token file in the sidecar. Defaults to the token the injection
    /// webhook mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub token_file: Option<String>,
}

/// Vertex AI settings.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VertexSettings {
    /// Google Cloud project ID.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"))]
    pub project: String,
    /// Vertex AI location, e.g. `us-central1`, or `global`.
    #[schemars(regex(pattern = r"^[a-z0-9-]{1,63}$"))]
    pub location: String,
    /// Metadata server used for the access token when there is no service-account key. Defaults
    /// to `http://metadata.google.internal` (or the sidecar's `GCE_METADATA_HOST`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s?#]+$"), length(max = 2048))]
    pub metadata_endpoint: Option<String>,
    /// OAuth token endpoint for a service-account key. Defaults to the key's `token_uri`, then
    /// `https://oauth2.googleapis.com/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s?#]+$"), length(max = 2048))]
    pub token_endpoint: Option<String>,
}

/// Observed state of a ModelProvider, written by the Gatehouse operator.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelProviderStatus {
    /// Current state. `Ready` is True when the key resolved and the spec is usable; otherwise its
    /// reason (e.g. `SecretNotFound`, `KeyNotFound`, `InvalidKey`) and message say what to fix.
    /// `Priced` is True (reason `AllModelsPriced`) when every model the provider is used with has
    /// a price, from `spec.models[].pricing` or the built-in catalog; otherwise False with reason
    /// `UnpricedModels` and a message naming them (their cost is reported as unknown).
    /// `TLSVerified` is False (reason `VerificationDisabled`) while
    /// `spec.tls.insecureSkipVerifyDangerous` is set; TLS, proxy and header material that cannot
    /// be used makes `Ready` False (e.g. `ConfigMapNotFound`, `InvalidCertificate`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Base URL requests go to: `spec.endpoint` or the type's default, without a trailing slash.
    /// Unset while the provider is not usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Number of priced models: of `spec.models` and the models Routes send to this provider,
    /// those with a price from `spec.models[].pricing` or the built-in catalog. Unset while the
    /// provider is not usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<i32>,
}
