//! Which provider API a request speaks, decided by its path: every flavour is served on the
//! same port, so one mock can stand in for any ModelProvider type.

/// A provider wire format the mock serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// OpenAI (and OpenAI-compatible servers): `/v1/chat/completions`, `/v1/embeddings`,
    /// `/v1/models`.
    OpenAi,
    /// Azure OpenAI: `/openai/deployments/{deployment}/…?api-version=…`.
    AzureOpenAi,
    /// Anthropic Messages: `/v1/messages`.
    Anthropic,
    /// Gemini: `/v1beta/models/{model}:{method}`, and Vertex AI's
    /// `/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}`.
    Gemini,
    /// Bedrock runtime: `/model/{modelId}/converse[-stream]` and `/invoke`.
    Bedrock,
}

impl Flavor {
    /// The flavour a request path belongs to. Paths no flavour claims are OpenAI's (which
    /// answers them with its 404).
    pub fn of_path(path: &str) -> Self {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Flavor::Anthropic
        } else if path.starts_with("/v1beta/")
            || (path.starts_with("/v1/models/") && path.contains(':'))
            || (path.starts_with("/v1/projects/") && path.contains("/publishers/google/models/"))
        {
            Flavor::Gemini
        } else if path.starts_with("/openai/") {
            Flavor::AzureOpenAi
        } else if path.starts_with("/model/") {
            Flavor::Bedrock
        } else {
            Flavor::OpenAi
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_pick_flavours() {
        assert_eq!(Flavor::of_path("/v1/chat/completions"), Flavor::OpenAi);
        assert_eq!(Flavor::of_path("/v1/models/gpt-4o"), Flavor::OpenAi);
        assert_eq!(Flavor::of_path("/v1/messages"), Flavor::Anthropic);
        assert_eq!(
            Flavor::of_path("/v1beta/models/gemini-2.0-flash:generateContent"),
            Flavor::Gemini
        );
        assert_eq!(
            Flavor::of_path("/openai/deployments/gpt4o/chat/completions"),
            Flavor::AzureOpenAi
        );
        assert_eq!(
            Flavor::of_path("/model/anthropic.claude-3-haiku/converse"),
            Flavor::Bedrock
        );
        assert_eq!(
            Flavor::of_path("/model/amazon.titan-embed-text-v2%3A0/invoke"),
            Flavor::Bedrock
        );
    }
}
