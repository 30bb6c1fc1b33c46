//! The pooled HTTP clients used to reach providers (rustls, HTTP/1.1 and HTTP/2 by ALPN).
//!
//! One shared client serves every provider without `spec.tls` or `spec.proxy` (through the
//! environment's proxy, if `HTTPS_PROXY`/`HTTP_PROXY` are set). A provider with either gets a
//! client of its own ([`Egress::for_provider`]), built when a snapshot is and kept while its
//! settings and material stay the same, so its connection pool survives unrelated reloads. When
//! the material changes (a CA, a client certificate, proxy credentials rotated in the keys
//! Secret) the next snapshot carries a new client: new requests open new connections with the
//! new material, while requests in flight finish on the old client's connections, which close
//! once the last snapshot holding that client is gone.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse_crds::ProviderKeys;
use gatehouse_crds::config::ProviderConfig;
use http::{HeaderName, HeaderValue, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub mod connect;
pub mod tls;

use connect::{Connector, ProxyRoute};

/// Most bytes of an HTTP/1 response head (and of one read): hyper's default, set here so that
/// the bound on an upstream that never ends its headers is written down. Over it the call fails
/// ("message head is too large") and the attempt fails over.
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// Most header lines of an HTTP/1 response head (hyper's default); over it the call fails.
pub const MAX_HEADERS: usize = 100;

/// Most bytes of an HTTP/2 response's header list (hyper's client default).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Connect timeout when none is given (the `--connect-timeout-ms` default).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Client for upstream calls.
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<Connector>, Full<Bytes>>;

/// Why a provider's own client could not be built. No secret material in any message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EgressError {
    /// An entry the rendered config names is not in the keys directory (yet).
    #[error("keys entry {0:?} is missing")]
    Missing(String),
    /// TLS material or settings cannot be used.
    #[error("failed to set up TLS: {0}")]
    Tls(String),
    /// The proxy settings cannot be used.
    #[error("failed to set up the proxy: {0}")]
    Proxy(String),
    /// A header cannot be sent.
    #[error("failed to set up header {0:?}: the value is not a valid header value")]
    Header(String),
}

/// Build the shared upstream client: public roots, proxies from `route`.
pub fn client(connect_timeout: Duration) -> UpstreamClient {
    shared(connect_timeout, Arc::new(ProxyRoute::Direct))
}

fn shared(connect_timeout: Duration, route: Arc<ProxyRoute>) -> UpstreamClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(Connector::new(connect_timeout, route));
    build(https)
}

fn build(https: hyper_rustls::HttpsConnector<Connector>) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .http1_max_buf_size(MAX_HEAD_BYTES)
        .http1_max_headers(MAX_HEADERS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .build(https)
}

/// Which client a provider's requests use.
#[derive(Clone, Debug, Default)]
pub enum Via {
    /// The shared client.
    #[default]
    Shared,
    /// Its own (TLS or proxy settings); boxed, the client is large and the common case is
    /// `Shared`.
    Own(Box<UpstreamClient>),
    /// Its settings cannot be used (why, no secrets): every attempt fails and fails over.
    Broken(Arc<str>),
}

/// How one provider is reached: its client and the headers added to each of its requests.
#[derive(Clone, Default)]
pub struct ProviderEgress {
    /// The client.
    pub via: Via,
    /// `spec.headers`, ready to send (Secret-sourced values marked sensitive).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `Proxy-Authorization` for an http endpoint reached through a proxy with credentials
    /// (https endpoints send it in the CONNECT only).
    pub proxy_authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for ProviderEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let via = match &self.via {
            Via::Shared => "shared",
            Via::Own(_) => "own",
            Via::Broken(_) => "broken",
        };
        f.debug_struct("ProviderEgress")
            .field("via", &via)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field(
                "proxy_authorization",
                &self
                    .proxy_authorization
                    .as_ref()
                    .map(|_| gatehouse_crds::keys::Redacted),
            )
            .finish()
    }
}

impl ProviderEgress {
    /// Whether this provider is reached like any other (the common case, nothing to add).
    pub fn is_plain(&self) -> bool {
        matches!(self.via, Via::Shared)
            && self.headers.is_empty()
            && self.proxy_authorization.is_none()
    }
}

/// The upstream clients of one sidecar: the shared one, the environment's proxy settings, and
/// the clients of providers with settings of their own, by a hash of those settings.
pub struct Egress {
    connect_timeout: Duration,
    env: Arc<ProxyRoute>,
    shared: UpstreamClient,
    own: Mutex<HashMap<u64, UpstreamClient>>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("connect_timeout", &self.connect_timeout)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl Default for Egress {
    fn default() -> Self {
        Self::new(DEFAULT_CONNECT_TIMEOUT, &|_| None)
    }
}

impl Egress {
    /// Clients with `connect_timeout`, the proxy environment read through `env`.
    pub fn new(connect_timeout: Duration, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let env = Arc::new(ProxyRoute::from_env(env));
        if let ProxyRoute::Env(matcher) = &*env {
            tracing::info!(proxy = ?matcher, "egress proxy from the environment");
        }
        Self {
            connect_timeout,
            shared: shared(connect_timeout, env.clone()),
            env,
            own: Mutex::new(HashMap::new()),
        }
    }

    /// The shared client.
    pub fn shared(&self) -> &UpstreamClient {
        &self.shared
    }

    /// How to reach the provider `name` configured as `cfg`, its material read from `keys`.
    /// Never fails: settings that cannot be used give [`Via::Broken`] (and a warning).
    /// `used` collects the hashes of the own clients in use, for [`Egress::retain`].
    pub fn for_provider(
        &self,
        name: &str,
        cfg: &ProviderConfig,
        keys: &ProviderKeys,
        used: &mut Vec<u64>,
    ) -> ProviderEgress {
        match self.try_for_provider(cfg, keys, used) {
            Ok(egress) => egress,
            Err(e) => {
                tracing::warn!(provider = name, error = %e, "the provider's TLS, proxy or header settings cannot be used: its requests fail over");
                ProviderEgress {
                    via: Via::Broken(Arc::from(e.to_string())),
                    ..ProviderEgress::default()
                }
            }
        }
    }

    fn try_for_provider(
        &self,
        cfg: &ProviderConfig,
        keys: &ProviderKeys,
        used: &mut Vec<u64>,
    ) -> Result<ProviderEgress, EgressError> {
        let mut headers = Vec::with_capacity(cfg.headers.len());
        for h in &cfg.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| EgressError::Header(h.name.clone()))?;
            let mut value = match (&h.value, &h.key) {
                (Some(v), _) => HeaderValue::try_from(v.as_str()),
                (None, Some(k)) => HeaderValue::try_from(
                    keys.get(k).ok_or_else(|| EgressError::Missing(k.clone()))?,
                ),
                (None, None) => return Err(EgressError::Header(h.name.clone())),
            }
            .map_err(|_| EgressError::Header(h.name.clone()))?;
            value.set_sensitive(h.key.is_some());
            headers.push((name, value));
        }
        let route = self.route(cfg, keys)?;
        let endpoint: Uri = cfg
            .endpoint
            .parse()
            .map_err(|_| EgressError::Proxy("the endpoint is not a valid URL".into()))?;
        let proxy_authorization = match endpoint.scheme_str() {
            Some("http") => route
                .as_deref()
                .unwrap_or(&self.env)
                .via(&endpoint)
                .and_then(|(_, a)| a),
            _ => None,
        };
        if cfg.tls.is_none() && route.is_none() {
            return Ok(ProviderEgress {
                via: Via::Shared,
                headers,
                proxy_authorization,
            });
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        cfg.tls.hash(&mut hasher);
        cfg.proxy.hash(&mut hasher);
        for entry in [
            cfg.tls.as_ref().and_then(|t| t.ca_key.as_deref()),
            cfg.tls.as_ref().and_then(|t| t.client_cert_key.as_deref()),
            cfg.tls.as_ref().and_then(|t| t.client_key_key.as_deref()),
            cfg.proxy.as_ref().and_then(|p| p.auth_key.as_deref()),
        ]
        .into_iter()
        .flatten()
        {
            keys.get(entry).hash(&mut hasher);
        }
        let id = hasher.finish();
        used.push(id);
        let mut own = self
            .own
            .lock()
            .map_err(|_| EgressError::Tls("poisoned".into()))?;
        if let Some(client) = own.get(&id) {
            return Ok(ProviderEgress {
                via: Via::Own(Box::new(client.clone())),
                headers,
                proxy_authorization,
            });
        }
        let route = route.unwrap_or_else(|| self.env.clone());
        let connector = Connector::new(self.connect_timeout, route);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match &cfg.tls {
            Some(t) => builder.with_tls_config(tls::client_config(t, keys)?),
            None => builder.with_webpki_roots(),
        }
        .https_or_http();
        let builder = match cfg.tls.as_ref().and_then(|t| t.server_name.clone()) {
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name).map_err(|_| {
                    EgressError::Tls("tls.serverName is not a valid DNS name".into())
                })?;
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let client = build(
            builder
                .enable_http1()
                .enable_http2()
                .wrap_connector(connector),
        );
        own.insert(id, client.clone());
        Ok(ProviderEgress {
            via: Via::Own(Box::new(client)),
            headers,
            proxy_authorization,
        })
    }

    /// The provider's own proxy route, or `None` when the environment's applies.
    fn route(
        &self,
        cfg: &ProviderConfig,
        keys: &ProviderKeys,
    ) -> Result<Option<Arc<ProxyRoute>>, EgressError> {
        let Some(proxy) = &cfg.proxy else {
            return Ok(None);
        };
        let Some(url) = &proxy.url else {
            return Ok((!proxy.from_environment).then(|| Arc::new(ProxyRoute::Direct)));
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| EgressError::Proxy("the proxy URL is not valid".into()))?;
        let auth = match &proxy.auth_key {
            Some(k) => {
                use base64::Engine;
                let raw = keys.get(k).ok_or_else(|| EgressError::Missing(k.clone()))?;
                let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                let mut value =
                    HeaderValue::try_from(format!("Basic {encoded}")).map_err(|_| {
                        EgressError::Proxy("the proxy credentials cannot be sent".into())
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Some(Arc::new(ProxyRoute::Fixed { uri, auth })))
    }

    /// The client a provider's workload-identity token calls go through (`proxied`: STS, Entra,
    /// Google OAuth) or not (`!proxied`: the node-local EKS Pod Identity agent and GCP metadata
    /// server, never through a proxy whatever the settings). Proxied calls take the provider's
    /// route (`spec.proxy`, else the environment's `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`); all
    /// trust the compiled-in public roots only: the provider's `spec.tls` (a private CA, a client
    /// certificate) is for the provider's own endpoint and never applies to a token endpoint.
    pub fn token_client(
        &self,
        cfg: &ProviderConfig,
        keys: &ProviderKeys,
        proxied: bool,
    ) -> Result<TokenClient, EgressError> {
        let route = if proxied {
            self.route(cfg, keys)?.unwrap_or_else(|| self.env.clone())
        } else {
            Arc::new(ProxyRoute::Direct)
        };
        Ok(TokenClient {
            client: shared(self.connect_timeout, route.clone()),
            route,
        })
    }

    /// Drop the own clients no provider of the current snapshot uses (their connections close
    /// once the requests still holding them end).
    pub fn retain(&self, used: &[u64]) {
        if let Ok(mut own) = self.own.lock() {
            own.retain(|id, _| used.contains(id));
        }
    }
}

/// The client of a workload identity's token calls and the proxy route it connects by (see
/// [`Egress::token_client`]).
#[derive(Clone, Debug)]
pub struct TokenClient {
    /// The client.
    pub client: UpstreamClient,
    /// Its route, for the `Proxy-Authorization` of an http token endpoint reached through a
    /// proxy (https ones send it in the CONNECT only).
    pub route: Arc<ProxyRoute>,
}

impl TokenClient {
    /// The `Proxy-Authorization` to add to a request to `uri`: an http destination reached
    /// through a proxy with credentials.
    pub fn proxy_authorization(&self, uri: &Uri) -> Option<HeaderValue> {
        if uri.scheme_str() != Some("http") {
            return None;
        }
        self.route.via(uri).and_then(|(_, auth)| auth)
    }
}

/// The client for one request to `provider` and its extra headers added (before the adapter
/// signs or authorizes the request, so a SigV4 signature covers them): the shared client and
/// nothing added for a provider without egress settings.
pub fn prepare<'a>(
    shared: &'a UpstreamClient,
    provider: &'a crate::state::Provider,
    headers: &mut http::HeaderMap,
) -> Result<&'a UpstreamClient, crate::error::TransportError> {
    let egress = &provider.egress;
    if egress.is_plain() {
        return Ok(shared);
    }
    for (name, value) in &egress.headers {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(auth) = &egress.proxy_authorization {
        headers.insert(http::header::PROXY_AUTHORIZATION, auth.clone());
    }
    match &egress.via {
        Via::Shared => Ok(shared),
        Via::Own(client) => Ok(client),
        Via::Broken(why) => Err(crate::error::TransportError::Egress(why.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(tls: bool) -> ProviderConfig {
        let mut p: ProviderConfig = serde_json::from_value(serde_json::json!({
            "type": "openaiCompatible", "endpoint": "https://llm.corp.test/v1",
        }))
        .unwrap();
        if tls {
            p.tls = Some(gatehouse_crds::config::TlsConfig {
                system_roots: false,
                insecure_skip_verify: true,
                ..Default::default()
            });
            p.proxy = Some(gatehouse_crds::config::ProxyConfig {
                url: Some("http://proxy.corp.test:3128".into()),
                auth_key: Some("p_proxy-auth".into()),
                from_environment: false,
            });
        }
        p
    }

    fn own(egress: &Egress) -> usize {
        egress.own.lock().unwrap().len()
    }

    #[test]
    fn a_plain_provider_takes_the_shared_client_and_adds_nothing() {
        let egress = Egress::default();
        let mut used = Vec::new();
        let p = egress.for_provider("p", &provider(false), &ProviderKeys::new(), &mut used);
        assert!(p.is_plain());
        assert!(used.is_empty());
        assert_eq!(own(&egress), 0);
    }

    #[test]
    fn an_own_client_is_kept_while_its_material_is_the_same_and_replaced_when_it_changes() {
        let egress = Egress::default();
        let keys = |pw: &str| -> ProviderKeys { [("p_proxy-auth", pw)].into_iter().collect() };
        let build = |k: &ProviderKeys| {
            let mut used = Vec::new();
            let p = egress.for_provider("p", &provider(true), k, &mut used);
            egress.retain(&used);
            (p, used)
        };
        let (first, used_first) = build(&keys("user:PW-ONE-secret"));
        assert!(matches!(first.via, Via::Own(_)));
        let (_, used_again) = build(&keys("user:PW-ONE-secret"));
        assert_eq!(used_first, used_again, "same material, same client");
        assert_eq!(own(&egress), 1);
        let (_, used_rotated) = build(&keys("user:PW-TWO-secret"));
        assert_ne!(used_first, used_rotated, "rotated material, new client");
        assert_eq!(own(&egress), 1, "the old client is let go");
        // Its Debug shows neither the credentials nor the header values.
        assert!(!format!("{first:?}").contains("PW-ONE"), "{first:?}");
    }

    #[test]
    fn missing_material_breaks_only_that_provider() {
        let egress = Egress::default();
        let mut used = Vec::new();
        let p = egress.for_provider("p", &provider(true), &ProviderKeys::new(), &mut used);
        match p.via {
            Via::Broken(why) => assert!(why.contains("p_proxy-auth"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
