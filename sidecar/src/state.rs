//! The live configuration: an immutable [`Snapshot`] built from a rendered config plus keys, swapped
//! atomically on reload. A request loads the snapshot once when it starts, so a reload never changes
//! the rules under a request already in flight.

use std::collections::{BTreeMap, HashMap};

use gatehouse_crds::ProviderKeys;
use gatehouse_crds::keys::Redacted;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use gatehouse_crds::config::{Pricing, ProviderKind, RouteConfig, SidecarConfig, TargetConfig};
use http::{HeaderName, HeaderValue, Uri};

use crate::providers::{self, Adapter};

/// Why a config could not become a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The rendered config is of a version this sidecar does not read.
    #[error("unsupported config apiVersion '{0}'")]
    Version(String),
    /// A provider endpoint is not a usable URL.
    #[error("provider '{provider}' has an invalid endpoint: {reason}")]
    Endpoint {
        /// Provider name.
        provider: String,
        /// What is wrong.
        reason: String,
    },
    /// A route target names a provider the config does not have. `render()` never emits one
    /// (it moves such targets to `unavailable`); a hand-made config might, and a request would
    /// otherwise find no provider to call.
    #[error("route '{route}' has a target naming provider '{provider}', which does not exist")]
    UnknownProvider {
        /// Route name.
        route: String,
        /// The missing provider.
        provider: String,
    },
    /// A Budget cannot be enforced as configured.
    #[error(transparent)]
    Budget(#[from] crate::stages::budget::policy::PolicyError),
    /// A provider's credential scrubber could not be built.
    #[error("provider '{provider}': {source}")]
    Scrubber {
        /// Provider name.
        provider: String,
        /// Why.
        source: crate::scrub::BuildError,
    },
}

/// A provider ready to be called.
#[derive(Debug)]
pub struct Provider {
    /// ModelProvider name (shared, so metric label sets clone it without allocating).
    pub name: Arc<str>,
    /// Protocol family.
    pub kind: ProviderKind,
    /// The adapter of that family: how requests are built, sent and read back.
    pub adapter: &'static dyn Adapter,
    /// Full URL of the chat completions endpoint.
    pub chat_url: Uri,
    /// Full URL of the embeddings endpoint.
    pub embeddings_url: Uri,
    /// Base URL without trailing slash (adapters whose paths depend on the model build on it).
    pub base: String,
    /// How requests are authorized; key material only in here, never in `Debug` output.
    pub credentials: Credentials,
    /// Scrubs these credentials out of everything relayed back (`scrub`); built once here.
    pub scrubber: crate::scrub::Scrubber,
    /// Azure OpenAI: the `api-version` query parameter.
    pub api_version: Option<String>,
    /// Bedrock: the AWS region to sign for.
    pub region: Option<String>,
    /// The workload identity whose short-lived credentials authorize requests in place of
    /// `credentials` (`providers::credentials`), if configured.
    pub identity: Option<Arc<providers::credentials::Source>>,
    /// The scrubber of the identity's current credentials and the Secret-sourced header
    /// values, cached for the credentials it was built for (`credentials::authorization`).
    pub identity_scrubber:
        arc_swap::ArcSwapOption<(Arc<providers::credentials::Current>, crate::scrub::Scrubber)>,
    /// Vertex AI: the project and location in the URL.
    pub vertex: Option<gatehouse_crds::config::VertexConfig>,
    /// Pricing by upstream model name.
    pub models: BTreeMap<String, Pricing>,
    /// How the provider is reached: its client (`spec.tls`, `spec.proxy`) and extra headers.
    pub egress: crate::upstream::ProviderEgress,
}

/// How a provider's requests are authorized. `Debug` prints `[redacted]` in place of every
/// secret (the header value; the AWS secret key and session token).
#[derive(Clone)]
pub enum Credentials {
    /// No key configured: requests go out unauthenticated.
    None,
    /// One header (`authorization: Bearer …`, `api-key`, `x-api-key`, `x-goog-api-key`), its value
    /// marked sensitive.
    Header(HeaderName, HeaderValue),
    /// AWS SigV4 (Bedrock). `Debug` of these credentials redacts the secret.
    Aws(aws_credential_types::Credentials),
    /// The key is present but unusable for this provider type; why (no key material).
    Invalid(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Header(name, _) => f
                .debug_tuple("Header")
                .field(name)
                .field(&Redacted)
                .finish(),
            // The access key id names the key pair; it is not the secret.
            Self::Aws(c) => f
                .debug_struct("Aws")
                .field("access_key_id", &c.access_key_id())
                .field("secret_access_key", &Redacted)
                .field("session_token", &c.session_token().map(|_| Redacted))
                .finish(),
            Self::Invalid(why) => f.debug_tuple("Invalid").field(why).finish(),
        }
    }
}

impl Credentials {
    /// Credentials of a provider of `kind` from its key (none when the key is missing or blank).
    pub fn for_key(kind: ProviderKind, key: Option<&str>) -> Self {
        match key.map(str::trim).filter(|k| !k.is_empty()) {
            Some(key) => providers::adapter(kind).credentials(key),
            None => Self::None,
        }
    }

    /// One header carrying the key, its value marked sensitive.
    pub fn header(name: &'static str, value: String) -> Self {
        match HeaderValue::try_from(value) {
            Ok(mut v) => {
                v.set_sensitive(true);
                Self::Header(HeaderName::from_static(name), v)
            }
            Err(_) => {
                Self::Invalid("the key contains characters not allowed in a header".to_string())
            }
        }
    }
}

/// One target of a route, its provider resolved.
#[derive(Debug, Clone)]
pub struct Target {
    /// The provider.
    pub provider: Arc<Provider>,
    /// The upstream model.
    pub model: Arc<str>,
}

/// A route's compiled redaction, or why it could not be compiled.
pub type RedactEngine = Result<Arc<crate::redact::Engine>, Arc<str>>;

/// A route as the sidecar serves it: the rendered route (`gatehouse_crds::config::RouteConfig`,
/// itself rendered from a `gatehouse_crds::Route`), its targets resolved to providers and grouped
/// by priority.
#[derive(Debug)]
pub struct ServedRoute {
    /// Route name (shared, so metric label sets clone it without allocating).
    pub name: Arc<str>,
    /// The rendered route.
    pub config: RouteConfig,
    /// `config.targets`, in the same order, with their providers.
    pub targets: Vec<Target>,
    /// Indices into `config.targets`, one group per priority, lowest priority first.
    pub groups: Vec<Vec<usize>>,
    /// The targets' health (`routing::health`), looked up in the registry on first use.
    pub health: std::sync::OnceLock<Arc<crate::routing::health::RouteHealth>>,
    /// The route's redaction engine (`config.redact` compiled), or why it cannot be used.
    pub redact: Option<RedactEngine>,
    /// The route's rate limits that apply to this sidecar's workload, resolved on first use
    /// (`stages::ratelimit`; their state outlives the snapshot).
    pub rate_limits: std::sync::OnceLock<Vec<Arc<crate::stages::ratelimit::Limiter>>>,
    /// The series this route's plain requests record into (`stages::telemetry`), resolved on
    /// first use.
    pub metric_handles: std::sync::OnceLock<crate::metrics::RouteHandles>,
}

impl ServedRoute {
    fn new(name: &str, config: RouteConfig, targets: Vec<Target>) -> Self {
        let mut priorities: Vec<i32> = config.targets.iter().map(|t| t.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let groups = priorities
            .iter()
            .map(|p| {
                config
                    .targets
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.priority == *p)
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        Self {
            name: Arc::from(name),
            config,
            targets,
            groups,
            health: std::sync::OnceLock::new(),
            redact: None,
            rate_limits: std::sync::OnceLock::new(),
            metric_handles: std::sync::OnceLock::new(),
        }
    }

    /// Target by index, as configured.
    pub fn target(&self, index: usize) -> Option<&TargetConfig> {
        self.config.targets.get(index)
    }

    /// Target by index, its provider resolved.
    pub fn resolved(&self, index: usize) -> Option<&Target> {
        self.targets.get(index)
    }
}

/// Everything a request needs, immutable.
#[derive(Debug)]
pub struct Snapshot {
    /// The config this snapshot was built from.
    pub config: SidecarConfig,
    /// Route by alias.
    pub aliases: HashMap<String, Arc<ServedRoute>>,
    /// Route by name.
    pub routes: HashMap<String, Arc<ServedRoute>>,
    /// The Budgets, validated (`stages::budget`).
    pub budgets: Arc<crate::stages::budget::policy::Budgets>,
    /// Provider by name.
    pub providers: HashMap<String, Arc<Provider>>,
    /// Names of the request headers any routing rule matches on (kept per request, nothing else).
    pub rule_headers: Vec<HeaderName>,
}

impl Snapshot {
    /// Build from a rendered config and the provider keys (by key name), with the clients of
    /// a default [`crate::upstream::Egress`] (no proxy environment).
    pub fn build(config: SidecarConfig, keys: &ProviderKeys) -> Result<Self, SnapshotError> {
        static DEFAULT: std::sync::OnceLock<crate::upstream::Egress> = std::sync::OnceLock::new();
        Self::build_with(config, keys, DEFAULT.get_or_init(Default::default))
    }

    /// Build from a rendered config and the provider keys (by key name); providers with TLS or
    /// proxy settings get their clients from `egress`.
    pub fn build_with(
        config: SidecarConfig,
        keys: &ProviderKeys,
        egress: &crate::upstream::Egress,
    ) -> Result<Self, SnapshotError> {
        let mut used_clients = Vec::new();
        if config.api_version != gatehouse_crds::config::CONFIG_API_VERSION {
            return Err(SnapshotError::Version(config.api_version.clone()));
        }
        let mut providers = HashMap::new();
        for (name, p) in &config.providers {
            let base = p.endpoint.trim_end_matches('/');
            let url = |path: &str| -> Result<Uri, SnapshotError> {
                format!("{base}/{path}")
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| SnapshotError::Endpoint {
                        provider: name.clone(),
                        reason: e.to_string(),
                    })
            };
            let chat_url = url("chat/completions")?;
            let embeddings_url = url("embeddings")?;
            match chat_url.scheme_str() {
                Some("http" | "https") => {}
                _ => {
                    return Err(SnapshotError::Endpoint {
                        provider: name.clone(),
                        reason: "scheme must be http or https".to_string(),
                    });
                }
            }
            // A provider whose key file is missing is still built: the upstream answers 401 and the
            // client gets a clear "credentials rejected" error instead of the gateway guessing.
            let key = p.key.as_deref().and_then(|k| keys.get(k));
            // With a workload identity the credentials come from its source; the key, if any
            // (a Vertex service-account key), is what the source exchanges. A source that cannot
            // be built (the key is not a service-account key yet) leaves the provider unusable
            // with the reason, like an unusable key.
            let (credentials, identity) = match providers::credentials::Source::for_provider(
                name,
                p,
                key,
                &providers::credentials::ProcessEnv,
                egress,
                keys,
            ) {
                Ok(None) => (Credentials::for_key(p.kind, key), None),
                Ok(Some(source)) => (Credentials::None, Some(source)),
                Err(reason) => (Credentials::Invalid(reason), None),
            };
            let egress = egress.for_provider(name, p, keys, &mut used_clients);
            // Secret header values are scrubbed out of what is relayed back, like the key.
            let secret_headers: Vec<&str> = egress
                .headers
                .iter()
                .filter(|(_, v)| v.is_sensitive())
                .filter_map(|(_, v)| v.to_str().ok())
                .collect();
            let scrubber = crate::scrub::Scrubber::for_provider(&credentials, &secret_headers)
                .map_err(|source| SnapshotError::Scrubber {
                    provider: name.clone(),
                    source,
                })?;
            providers.insert(
                name.clone(),
                Arc::new(Provider {
                    name: Arc::from(name.as_str()),
                    kind: p.kind,
                    adapter: providers::adapter(p.kind),
                    chat_url,
                    embeddings_url,
                    base: base.to_string(),
                    credentials,
                    scrubber,
                    api_version: p.api_version.clone(),
                    region: p.region.clone(),
                    identity,
                    identity_scrubber: Default::default(),
                    vertex: p.vertex.clone(),
                    models: p.models.clone(),
                    egress,
                }),
            );
        }
        let mut aliases = HashMap::new();
        let mut routes = HashMap::new();
        // One engine per distinct redaction config: routes that redact alike share it.
        let mut engines: Vec<(&gatehouse_crds::config::RedactConfig, RedactEngine)> = Vec::new();
        for (name, r) in &config.routes {
            let targets = r
                .targets
                .iter()
                .map(|t| match providers.get(&t.provider) {
                    Some(provider) => Ok(Target {
                        provider: Arc::clone(provider),
                        model: Arc::from(t.model.as_str()),
                    }),
                    None => Err(SnapshotError::UnknownProvider {
                        route: name.clone(),
                        provider: t.provider.clone(),
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut route = ServedRoute::new(name, r.clone(), targets);
            if let Some(redact) = &r.redact {
                let engine = match engines.iter().find(|(c, _)| *c == redact) {
                    Some((_, e)) => e.clone(),
                    None => {
                        let e = crate::redact::Engine::build(redact)
                            .map(Arc::new)
                            .map_err(|e| Arc::from(e.to_string()));
                        if let Err(why) = &e {
                            tracing::warn!(route = %name, error = %why, "redaction cannot be used: the route refuses requests");
                        }
                        engines.push((redact, e.clone()));
                        e
                    }
                };
                route.redact = Some(engine);
            }
            let route = Arc::new(route);
            for alias in &r.aliases {
                aliases.insert(alias.clone(), route.clone());
            }
            routes.insert(name.clone(), route);
        }
        let budgets = Arc::new(crate::stages::budget::policy::Budgets::build(
            &config.budgets,
            &routes,
        )?);
        let mut rule_headers: Vec<HeaderName> = config
            .routes
            .values()
            .flat_map(|r| &r.rules)
            .flat_map(|rule| rule.matches.headers.keys())
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        rule_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        rule_headers.dedup();
        for (name, p) in &config.providers {
            if p.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
                tracing::warn!(
                    provider = %name,
                    "TLS verification is OFF for this provider (spec.tls.insecureSkipVerifyDangerous): anyone on the path can read and change its traffic and key"
                );
            }
        }
        egress.retain(&used_clients);
        Ok(Self {
            config,
            aliases,
            routes,
            budgets,
            providers,
            rule_headers,
        })
    }
}

/// Holds the current snapshot; readers never block writers.
#[derive(Debug, Default)]
pub struct Store {
    current: ArcSwapOption<Snapshot>,
    /// The targets' health, kept across snapshots.
    health: Arc<crate::routing::health::Health>,
    /// The upstream clients snapshots are built with.
    egress: Arc<crate::upstream::Egress>,
}

impl Store {
    /// An empty store whose snapshots use `egress`'s clients.
    pub fn with_egress(egress: Arc<crate::upstream::Egress>) -> Self {
        Self {
            egress,
            ..Self::default()
        }
    }

    /// The upstream clients.
    pub fn egress(&self) -> &Arc<crate::upstream::Egress> {
        &self.egress
    }

    /// The current snapshot, if one has been loaded.
    pub fn load(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Replace the snapshot atomically.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Some(Arc::new(snapshot)));
    }

    /// The targets' health, shared by every request and kept across reloads.
    pub fn health(&self) -> &Arc<crate::routing::health::Health> {
        &self.health
    }

    /// Whether a config has been loaded.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_crds::config::ProviderConfig;

    use super::*;

    #[test]
    fn snapshot_debug_shows_no_key_of_any_provider_type() {
        let secrets = [
            (ProviderKind::Openai, "sk-openai-secret"),
            (ProviderKind::OpenaiCompatible, "sk-compat-secret"),
            (ProviderKind::AzureOpenAI, "azure-secret"),
            (ProviderKind::Anthropic, "sk-ant-secret"),
            (ProviderKind::Gemini, "gemini-secret"),
            (
                ProviderKind::Bedrock,
                "AKIDEXAMPLE:aws-secret-key:aws-session-token",
            ),
        ];
        let mut config = SidecarConfig::empty("ns");
        let mut keys = ProviderKeys::new();
        for (kind, key) in secrets {
            let name = kind.as_str();
            config.providers.insert(
                name.to_string(),
                ProviderConfig {
                    kind,
                    endpoint: "https://example.test/v1".to_string(),
                    key: Some(name.to_string()),
                    models: BTreeMap::new(),
                    api_version: None,
                    region: Some("us-east-1".to_string()),
                    identity: None,
                    vertex: None,
                    tls: None,
                    proxy: None,
                    headers: Vec::new(),
                },
            );
            keys.insert(name, key);
        }
        let snapshot = Snapshot::build(config, &keys).unwrap();
        let debug = format!("{snapshot:?}");
        for secret in [
            "openai-secret",
            "compat-secret",
            "azure-secret",
            "ant-secret",
            "gemini-secret",
            "aws-secret-key",
            "aws-session-token",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(
            debug.contains(r#"Header("x-api-key", [redacted])"#),
            "{debug}"
        );
        assert!(debug.contains("secret_access_key: [redacted]"), "{debug}");
    }

    #[test]
    fn secret_header_values_are_scrubbed_and_never_in_debug() {
        let mut config = SidecarConfig::empty("ns");
        let provider: ProviderConfig = serde_json::from_value(serde_json::json!({
            "type": "openaiCompatible", "endpoint": "http://127.0.0.1:1/v1", "key": "p",
            "headers": [{"name": "x-org", "value": "org-public-1234"},
                        {"name": "x-token", "key": "p_header-1"}],
        }))
        .unwrap();
        config.providers.insert("p".into(), provider);
        let keys: ProviderKeys = [
            ("p", "sk-key-0123456789"),
            ("p_header-1", "tok-secret-0123456789"),
        ]
        .into_iter()
        .collect();
        let snapshot = Snapshot::build(config, &keys).unwrap();
        let p = &snapshot.providers["p"];
        assert!(p.scrubber.contains(b"echo: tok-secret-0123456789"));
        assert!(p.scrubber.contains(b"echo: sk-key-0123456789"));
        assert!(!p.scrubber.contains(b"echo: org-public-1234"));
        let debug = format!("{snapshot:?}");
        assert!(!debug.contains("tok-secret"), "{debug}");
        assert!(debug.contains("x-token"), "{debug}");
    }

    fn config(target_provider: &str) -> SidecarConfig {
        let mut config = SidecarConfig::empty("default");
        let provider: ProviderConfig = serde_json::from_value(serde_json::json!({
            "type": "openai", "endpoint": "http://127.0.0.1:1/v1",
        }))
        .unwrap();
        config.providers.insert("real".into(), provider);
        config.routes.insert(
            "chat".into(),
            RouteConfig {
                aliases: vec!["chat".into()],
                targets: vec![TargetConfig {
                    provider: target_provider.into(),
                    model: "m".into(),
                    priority: 0,
                    weight: 1,
                }],
                ..RouteConfig::default()
            },
        );
        config
    }

    #[test]
    fn a_target_naming_an_unknown_provider_is_rejected() {
        let err = Snapshot::build(config("ghost"), &ProviderKeys::new()).unwrap_err();
        assert!(
            matches!(&err, SnapshotError::UnknownProvider { route, provider } if route == "chat" && provider == "ghost"),
            "{err}"
        );
        let snapshot = Snapshot::build(config("real"), &ProviderKeys::new()).unwrap();
        let route = &snapshot.aliases["chat"];
        assert_eq!(&*route.resolved(0).unwrap().provider.name, "real");
        assert_eq!(&*route.resolved(0).unwrap().model, "m");
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn route(name: &str, config: RouteConfig) -> ServedRoute {
        ServedRoute::new(name, config, Vec::new())
    }
}
