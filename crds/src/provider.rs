//! `ModelProvider`: one upstream LLM API and the Secret holding its key.
#![allow(
    clippy::duplicated_attributes,
    reason = "kube printcolumn(...) entries legitimately repeat type_ = \"string\""
)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::config::ProviderKind;

/// Default base URL of OpenAI's API.
pub const OPENAI_ENDPOINT: &str = "https://api.openai.com/v1";
/// Default base URL of Anthropic's API.
pub const ANTHROPIC_ENDPOINT: &str = "https://api.anthropic.com";
/// Default base URL of the Gemini API.
pub const GEMINI_ENDPOINT: &str = "https://generativelanguage.googleapis.com";
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
        description = "Number of models with prices in spec.models"
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
    validation = Rule::new("self.type == 'openaiCompatible' || has(self.apiKeySecretRef)").message("spec.apiKeySecretRef is required unless spec.type is openaiCompatible").field_path(".apiKeySecretRef"),
    validation = Rule::new("self.type != 'bedrock' || has(self.endpoint) || has(self.bedrock)").message("spec.bedrock.region (or spec.endpoint) is required when spec.type is bedrock").field_path(".bedrock"),
    validation = Rule::new("!has(self.azure) || self.type == 'azureOpenAI'").message("spec.azure is only allowed when spec.type is azureOpenAI").field_path(".azure"),
    validation = Rule::new("!has(self.bedrock) || self.type == 'bedrock'").message("spec.bedrock is only allowed when spec.type is bedrock").field_path(".bedrock")
)]
#[serde(rename_all = "camelCase")]
pub struct ModelProviderSpec {
    /// API family the provider speaks: openai, anthropic, gemini, azureOpenAI, bedrock or
    /// openaiCompatible (vLLM, Ollama, llama.cpp, TGI and other servers speaking the OpenAI API).
    #[serde(rename = "type")]
    pub kind: ProviderType,

    /// Base URL of the API, e.g. `https://api.openai.com/v1` or `http://vllm.models:8000/v1`.
    /// Defaults per type: openai `https://api.openai.com/v1`, anthropic `https://api.anthropic.com`,
    /// gemini `https://generativelanguage.googleapis.com`, bedrock
    /// `https://bedrock-runtime.<region>.amazonaws.com`. Required for azureOpenAI (your resource's
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

    /// Models served by this provider, with their prices (for the x-gatehouse-cost-usd response
    /// header). Models not listed are still served; their cost is not reported. Names must be
    /// unique.
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

/// One model a provider serves and what it costs.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderModel {
    /// Upstream model name, as the provider expects it (e.g. `gpt-4o-mini`).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Prices in USD per million tokens.
    pub pricing: ModelPricing,
}

/// Prices in USD per million tokens, as decimal strings (e.g. `"0.15"`), so no precision is lost.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModelPricing {
    /// USD per million prompt (input) tokens, e.g. `"2.50"`.
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,12})?$"))]
    pub input_per_million: String,
    /// USD per million completion (output) tokens, e.g. `"10.00"`.
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,12})?$"))]
    pub output_per_million: String,
    /// USD per million cached prompt tokens, e.g. `"1.25"`. Defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,12})?$"))]
    pub cached_input_per_million: Option<String>,
}

/// Azure OpenAI settings.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AzureSettings {
    /// Value of the `api-version` query parameter, e.g. `2024-10-21`. Defaults to `2024-10-21`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$"))]
    pub api_version: Option<String>,
}

/// Amazon Bedrock settings.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BedrockSettings {
    /// AWS region, e.g. `us-east-1`. The endpoint defaults to
    /// `https://bedrock-runtime.<region>.amazonaws.com`.
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: String,
}

/// Observed state of a ModelProvider, written by the Gatehouse operator.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelProviderStatus {
    /// Current state. `Ready` is True when the key resolved and the spec is usable; otherwise its
    /// reason (e.g. `SecretNotFound`, `KeyNotFound`, `InvalidKey`) and message say what to fix.
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
    /// Number of models listed (with prices) in `spec.models`. Unset while the provider is not
    /// usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<i32>,
}
