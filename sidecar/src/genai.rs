//! OpenTelemetry GenAI semantic-convention values shared by metrics and traces.
//!
//! The values follow the GenAI registry (`gen_ai.provider.name`, `gen_ai.operation.name`); a
//! provider type the registry does not list keeps Gatehouse's own type name, as the conventions
//! allow for unlisted providers.

use gatehouse_crds::config::ProviderKind;

use crate::dialect::Operation;

/// `gen_ai.provider.name` for a provider type.
pub fn provider_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gcp.gemini",
        ProviderKind::AzureOpenAI => "azure.ai.openai",
        ProviderKind::Bedrock => "aws.bedrock",
        ProviderKind::VertexAI => "gcp.vertex_ai",
        // Not in the registry: a self-hosted server speaking the OpenAI API.
        ProviderKind::OpenaiCompatible => "openai_compatible",
    }
}

/// `gen_ai.operation.name` for an operation (Chat Completions, Messages and Responses are all
/// `chat`).
pub fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Chat => "chat",
        Operation::Embeddings => "embeddings",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_are_the_registry_values() {
        assert_eq!(provider_name(ProviderKind::Bedrock), "aws.bedrock");
        assert_eq!(provider_name(ProviderKind::AzureOpenAI), "azure.ai.openai");
        assert_eq!(provider_name(ProviderKind::Gemini), "gcp.gemini");
        assert_eq!(provider_name(ProviderKind::VertexAI), "gcp.vertex_ai");
        assert_eq!(provider_name(ProviderKind::Openai), "openai");
        assert_eq!(provider_name(ProviderKind::Anthropic), "anthropic");
    }
}
