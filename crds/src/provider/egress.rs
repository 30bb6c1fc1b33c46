//! How the sidecar reaches a ModelProvider: `spec.tls` (private CAs, mTLS, a server name
//! override), `spec.proxy` (an egress proxy) and `spec.headers` (extra request headers).
//!
//! Secret material these name (CA bundles, client keys, proxy credentials, secret header values)
//! travels like API keys: resolved by [`crate::render`] into the keys Secret, read by the sidecar
//! from its mounted keys directory, so a rotation takes effect without a restart.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Request headers a ModelProvider's `spec.headers` may not set (lower case): hop-by-hop headers,
/// the ones Gatehouse sets itself (framing, content negotiation, the provider's credentials, AWS
/// request signing) and its own `x-gatehouse-*` headers. The CRD's CEL rule lists the same.
pub const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
    "accept",
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "anthropic-version",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// Whether `name` (any case) may not be set through `spec.headers`.
pub fn is_reserved_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-gatehouse-")
}

/// TLS towards the provider: which CAs to trust, a client certificate, the name to verify.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.insecureSkipVerifyDangerous) || !self.insecureSkipVerifyDangerous || (!has(self.caBundle) && !has(self.serverName))").message("tls.insecureSkipVerifyDangerous turns verification off: caBundle and serverName would have no effect, remove them")
)]
pub struct ProviderTls {
    /// PEM bundle of the CA certificates to trust for this provider, from a Secret or a
    /// ConfigMap key in the ModelProvider's namespace (e.g. a company CA). When set, only these
    /// CAs are trusted unless `systemRoots` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,
    /// Also trust the operating system's trust store of the sidecar's image. Default false: with
    /// `caBundle` only its CAs are trusted; without it the public web PKI roots compiled into the
    /// sidecar (Mozilla's set) are, as for every provider without `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_roots: Option<bool>,
    /// A `kubernetes.io/tls` Secret (keys `tls.crt`, `tls.key`) whose certificate and key the
    /// sidecar presents to the provider (mTLS). `tls.crt` may carry intermediates after the leaf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<SecretNameRef>,
    /// The DNS name the provider's certificate is verified against and sent as SNI, instead of
    /// the endpoint's host (e.g. when the endpoint is an IP address or an internal alias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*$"
        )
    )]
    pub server_name: Option<String>,
    /// DANGEROUS: accept any certificate the provider presents, without verifying who it is.
    /// Anyone on the path can then read and change prompts, answers and the API key. Meant only
    /// for a short test; the ModelProvider carries a `TLSVerified=False` condition and a Warning
    /// event while it is set, and the sidecar logs a warning on every reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify_dangerous: Option<bool>,
}

/// Where a CA bundle is: exactly one of a Secret key or a ConfigMap key.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.secretRef) != has(self.configMapRef)").message("tls.caBundle needs exactly one of secretRef and configMapRef")
)]
pub struct CaBundleRef {
    /// A key of a Secret holding the PEM bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// A key of a ConfigMap holding the PEM bundle (e.g. one filled by trust-manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
}

/// A reference to one key of a ConfigMap in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the ConfigMap's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to a whole Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretNameRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The egress proxy requests to this provider go through.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.authSecretRef) || has(self.url)").message("proxy.authSecretRef needs proxy.url"),
    validation = Rule::new("!has(self.url) || !has(self.fromEnvironment) || !self.fromEnvironment").message("proxy.url replaces the environment's proxy: proxy.fromEnvironment must not be true with it")
)]
pub struct ProviderProxy {
    /// URL of an HTTP proxy, `http://host:port` (no credentials in it: use `authSecretRef`).
    /// https endpoints are reached through a CONNECT tunnel (TLS stays end to end), http
    /// endpoints by sending the request to the proxy. Applies whatever `NO_PROXY` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^http://[^\s/?#@]+/?$"))]
    pub url: Option<String>,
    /// A `kubernetes.io/basic-auth` Secret (keys `username`, `password`) whose credentials are
    /// sent to the proxy as `Proxy-Authorization: Basic`. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretNameRef>,
    /// Whether the sidecar's `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` environment applies to this
    /// provider when `url` is not set. Default true; false reaches the provider directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_environment: Option<bool>,
}

/// One extra header sent with every request to the provider: a fixed value or one from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.value) != has(self.valueFrom)").message("a header needs exactly one of value and valueFrom"),
    validation = Rule::new("!(self.name.lowerAscii() in ['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host', 'content-length', 'content-type', 'accept', 'authorization', 'api-key', 'x-api-key', 'x-goog-api-key', 'anthropic-version', 'x-amz-date', 'x-amz-security-token', 'x-amz-content-sha256']) && !self.name.lowerAscii().startsWith('x-gatehouse-')").message("this header is hop-by-hop or set by Gatehouse itself (framing, credentials, signing) and cannot be set in spec.headers").field_path(".name")
)]
pub struct ProviderHeader {
    /// Header name, e.g. `OpenAI-Organization`.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    )]
    pub name: String,
    /// A fixed value (visible in the ModelProvider: nothing secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096), regex(pattern = r"^[^\r\n\x00]*$"))]
    pub value: Option<String>,
    /// The value from a Secret key (a token, a custom auth header's value); rotates like a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<HeaderValueSource>,
}

/// Where a header's value comes from.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValueSource {
    /// The Secret key holding the value.
    pub secret_key_ref: SecretKeyRef,
}
