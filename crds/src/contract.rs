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
