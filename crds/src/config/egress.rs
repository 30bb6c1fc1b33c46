//! How a provider is reached, as rendered for the sidecar: TLS, proxy and extra headers. Secret
//! material is never in here, only the names of the keys Secret entries that hold it.

use serde::{Deserialize, Serialize};

/// TLS towards one provider.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// Keys entry holding the PEM CA bundle to trust; `None`: no private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
    /// Also trust the operating system's trust store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system_roots: bool,
    /// Keys entry holding the PEM client certificate chain (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_key: Option<String>,
    /// Keys entry holding the PEM client private key (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_key: Option<String>,
    /// Name verified in the certificate and sent as SNI instead of the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any certificate (`insecureSkipVerifyDangerous`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// The proxy one provider is reached through.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// `http://host:port` of the proxy; `None`: the environment's proxy, if `from_environment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Keys entry holding `username:password` for `Proxy-Authorization: Basic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_key: Option<String>,
    /// Whether `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` apply when `url` is unset.
    pub from_environment: bool,
}

/// One extra request header.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderConfig {
    /// Header name.
    pub name: String,
    /// A fixed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Keys entry holding the value (a Secret-sourced header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}
