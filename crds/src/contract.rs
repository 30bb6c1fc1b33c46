//! The objects the operator writes into each namespace and the sidecar reads, by name. Both sides
//! take these names from here, so a rename cannot leave one side looking for the old one.
//!
//! The content of the config object is [`crate::config::SidecarConfig`]; the content of the keys
//! object is [`crate::keys::ProviderKeys`], one entry per [`crate::config::ProviderConfig::key`].

/// Name of the ConfigMap holding the rendered [`crate::config::SidecarConfig`] (no key material).
/// The sidecar watches it through the API, restricted to this one name.
pub const CONFIG_NAME: &str = "gatehouse-config";

/// Key of the config JSON inside the [`CONFIG_NAME`] ConfigMap.
pub const CONFIG_KEY: &str = "config.json";

/// Name of the Secret holding the provider keys, one entry per key name. It is mounted into the
/// sidecar container only; the sidecar reads it as files, never through the API.
pub const KEYS_NAME: &str = "gatehouse-keys";

/// Name of the Role and the RoleBinding that let every ServiceAccount of the namespace read the
/// [`CONFIG_NAME`] ConfigMap (and nothing else).
pub const SIDECAR_RBAC_NAME: &str = "gatehouse-sidecar";

/// Audience of the projected ServiceAccount token exchanged with AWS STS (IRSA).
pub const AWS_WEB_IDENTITY_AUDIENCE: &str = "sts.amazonaws.com";

/// Audience of the projected ServiceAccount token the EKS Pod Identity agent accepts.
pub const AWS_POD_IDENTITY_AUDIENCE: &str = "pods.eks.amazonaws.com";

/// Audience of the projected ServiceAccount token Microsoft Entra ID accepts as a federated
/// credential.
pub const AZURE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Directory of the sidecar container where the injection webhook mounts the cloud identity
/// tokens (one file per audience the namespace's ModelProviders need). No other container gets it.
pub const CLOUD_TOKEN_DIR: &str = "/var/run/secrets/gatehouse.dev/cloud";

/// The file under [`CLOUD_TOKEN_DIR`] holding the token of `audience`.
pub fn cloud_token_file(audience: &str) -> &'static str {
    match audience {
        AWS_WEB_IDENTITY_AUDIENCE => "aws-web-identity-token",
        AWS_POD_IDENTITY_AUDIENCE => "aws-pod-identity-token",
        _ => "azure-identity-token",
    }
}
