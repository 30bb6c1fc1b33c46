//! Short-lived credentials from a workload identity, for providers configured without a static
//! key: AWS STS `AssumeRoleWithWebIdentity` (IRSA) and the EKS Pod Identity agent for Bedrock,
//! Microsoft Entra ID workload identity for Azure OpenAI, and the GKE metadata server or a
//! service-account key for Vertex AI.
//!
//! A [`Source`] holds the current credentials and refreshes them ahead of expiry: once
//! `lifetime - margin` has passed, where the margin is the larger of a fifth of the lifetime and
//! `min(5 min, half the lifetime)` (an hour-long token is renewed after 48 minutes, a 15-minute
//! one after 10, a 3-second one after 1.5 s). One refresh runs at a time (single flight): while it
//! runs, requests keep using the still-valid credentials, and only requests that have no valid
//! credentials wait for it. Every exchange is bounded by [`EXCHANGE_TIMEOUT`]. A refusal (STS 403,
//! Entra 400/401) fails the attempt like a refused key, so the next target is tried; it is
//! remembered for [`FAILURE_HOLD`] so a refused identity under load does not turn every request
//! into another call to the token endpoint.
//!
//! Nothing here logs or returns token material: errors carry the token service's name, the
//! status and a fixed reason name.

pub mod aws;
pub mod azure;
pub mod gcp;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use gatehouse_crds::ProviderKeys;
use gatehouse_crds::config::{IdentityConfig, ProviderConfig};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tokio::time::Instant;

use crate::error::AuthFailure;
use crate::scrub::Scrubber;
use crate::state::Credentials;
use crate::upstream::{Egress, TokenClient};

/// Longest one credential exchange (connect, request, whole answer) may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a failed exchange is remembered before the next request tries again.
pub const FAILURE_HOLD: Duration = Duration::from_secs(1);

/// Most bytes of a token endpoint's answer.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Reads the environment (a map in tests, the process environment in the binary).
pub trait Env: Send + Sync {
    /// The variable `name`, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// Why credentials could not be had. Never carries token material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The token service refused the identity (a 4xx): like a refused key.
    #[error("{service} refused the workload identity (status {}{})", .status.as_u16(), .reason.map(|r| format!(", {r}")).unwrap_or_default())]
    Refused {
        /// The token service ("AWS STS", "Microsoft Entra ID", ...).
        service: &'static str,
        /// Its status.
        status: StatusCode,
        /// Its error code, when it is one of the known ones.
        reason: Option<&'static str>,
    },
    /// The token service could not be reached, failed (5xx) or took too long.
    #[error("failed to reach {service}: {reason}")]
    Unreachable {
        /// The token service.
        service: &'static str,
        /// Why (no token material).
        reason: String,
    },
    /// The answer is not the documented shape.
    #[error("failed to read the answer of {service}: {reason}")]
    Malformed {
        /// The token service.
        service: &'static str,
        /// What is missing or wrong.
        reason: &'static str,
    },
    /// Local input (the projected token file, the service-account key) is missing or unusable.
    #[error("failed to {0}")]
    Local(String),
}

impl FetchError {
    /// The refusal as a key refusal of the attempt, when it is one.
    pub fn auth_failure(&self) -> Option<AuthFailure> {
        match self {
            Self::Refused { status, reason, .. } => Some(AuthFailure {
                status: *status,
                reason: *reason,
            }),
            _ => None,
        }
    }
}

/// Credentials as a token service handed them out, with their lifetime. `Debug` redacts them.
#[derive(Debug)]
pub struct Fetched {
    /// What authorizes requests.
    pub credentials: Credentials,
    /// How long they stay valid from now.
    pub lifetime: Duration,
}

/// The credentials in use and when to renew them. `Debug` redacts them.
#[derive(Debug)]
pub struct Current {
    /// What authorizes requests.
    pub credentials: Credentials,
    /// Scrubs these credentials out of relayed answers.
    pub scrubber: Scrubber,
    refresh_at: Instant,
    expires_at: Instant,
}

/// What a source exchanges, with everything resolved (config, then environment, then defaults).
#[derive(Debug, Clone)]
enum Exchange {
    AwsWebIdentity(aws::WebIdentity),
    AwsPodIdentity(aws::PodIdentity),
    Azure(azure::WorkloadIdentity),
    GcpMetadata(gcp::Metadata),
    GcpKey(gcp::ServiceAccountKey),
}

/// One provider's credential source: cached, refreshed ahead of expiry, single flight.
pub struct Source {
    exchange: Exchange,
    /// Replaced by each snapshot (the provider's proxy settings may change without the
    /// exchange changing).
    client: ArcSwap<TokenClient>,
    current: ArcSwapOption<Current>,
    refresh: tokio::sync::Mutex<()>,
    failure: Mutex<Option<(Instant, FetchError)>>,
    exchanges: AtomicU64,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("exchange", &self.exchange)
            .field("exchanges", &self.exchanges.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Sources by what they exchange, so a config reload keeps the cached credentials.
static SOURCES: LazyLock<Mutex<HashMap<u64, Weak<Source>>>> = LazyLock::new(Default::default);

impl Source {
    /// The source of a provider configured with a workload identity (`None` without one), shared
    /// with the previous snapshot's when nothing it depends on changed. `key` is the provider's
    /// key (a Vertex service-account key). Token calls go through `egress`'s
    /// [`Egress::token_client`]: STS, Entra and Google OAuth by the provider's proxy settings, the
    /// Pod Identity agent and the metadata server always directly.
    pub fn for_provider(
        name: &str,
        config: &ProviderConfig,
        key: Option<&str>,
        env: &dyn Env,
        egress: &Egress,
        keys: &ProviderKeys,
    ) -> Result<Option<Arc<Self>>, String> {
        let Some(identity) = &config.identity else {
            return Ok(None);
        };
        let exchange = match identity {
            IdentityConfig::AwsWebIdentity { .. } => {
                Exchange::AwsWebIdentity(aws::WebIdentity::new(identity, config, env)?)
            }
            IdentityConfig::AwsPodIdentity { .. } => {
                Exchange::AwsPodIdentity(aws::PodIdentity::new(identity, env)?)
            }
            IdentityConfig::AzureWorkloadIdentity { .. } => {
                Exchange::Azure(azure::WorkloadIdentity::new(identity, env)?)
            }
            IdentityConfig::GcpMetadata { .. } => {
                Exchange::GcpMetadata(gcp::Metadata::new(identity, env))
            }
            IdentityConfig::GcpServiceAccountKey { .. } => {
                Exchange::GcpKey(gcp::ServiceAccountKey::new(identity, key)?)
            }
        };
        let proxied = !matches!(
            exchange,
            Exchange::AwsPodIdentity(_) | Exchange::GcpMetadata(_)
        );
        let client = egress
            .token_client(config, keys, proxied)
            .map_err(|e| e.to_string())?;
        let id = {
            use std::hash::{BuildHasher, Hash, Hasher};
            let mut h = foldhash::fast::FixedState::with_seed(0x6761_7465).build_hasher();
            name.hash(&mut h);
            format!("{exchange:?}").hash(&mut h);
            key.hash(&mut h);
            h.finish()
        };
        let mut sources = SOURCES
            .lock()
            .map_err(|_| "failed to lock the credential sources".to_string())?;
        sources.retain(|_, s| s.strong_count() > 0);
        if let Some(source) = sources.get(&id).and_then(Weak::upgrade) {
            source.client.store(Arc::new(client));
            return Ok(Some(source));
        }
        let source = Arc::new(Self::new(exchange, client));
        sources.insert(id, Arc::downgrade(&source));
        Ok(Some(source))
    }

    fn new(exchange: Exchange, client: TokenClient) -> Self {
        Self {
            exchange,
            client: ArcSwap::from_pointee(client),
            current: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
            failure: Mutex::new(None),
            exchanges: AtomicU64::new(0),
        }
    }

    /// How many exchanges this source has made (successful or not).
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    /// Valid credentials: the cached ones, renewed first when they are due (by this caller if no
    /// other renewal is running; others keep the cached ones while they are valid).
    pub async fn get(&self) -> Result<Arc<Current>, FetchError> {
        let now = Instant::now();
        let cached = self.current.load_full();
        if let Some(c) = &cached {
            if now < c.refresh_at {
                return Ok(Arc::clone(c));
            }
            if now < c.expires_at {
                // Due, still valid: renew unless someone else is or one just failed; never wait.
                if self.failed_recently(now).is_some() {
                    return Ok(Arc::clone(c));
                }
                return match self.refresh.try_lock() {
                    Ok(_guard) => match self.renew().await {
                        Ok(fresh) => Ok(fresh),
                        // Logged by `renew`; the current ones stay in use until they expire.
                        Err(_) => Ok(Arc::clone(c)),
                    },
                    Err(_) => Ok(Arc::clone(c)),
                };
            }
        }
        // Nothing valid: wait for the one renewal, then look again.
        let _guard = self.refresh.lock().await;
        let now = Instant::now();
        if let Some(c) = self.current.load_full()
            && now < c.refresh_at
        {
            return Ok(c);
        }
        if let Some(e) = self.failed_recently(now) {
            return Err(e);
        }
        self.renew().await
    }

    /// The last exchange's failure, if it is less than [`FAILURE_HOLD`] old.
    fn failed_recently(&self, now: Instant) -> Option<FetchError> {
        let failure = self.failure.lock().ok()?;
        let (at, e) = failure.as_ref()?;
        (now.saturating_duration_since(*at) < FAILURE_HOLD).then(|| e.clone())
    }

    /// One exchange (the caller holds `refresh`); the result is cached.
    async fn renew(&self) -> Result<Arc<Current>, FetchError> {
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(EXCHANGE_TIMEOUT, self.fetch())
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Unreachable {
                    service: self.service(),
                    reason: format!("timed out after {} s", EXCHANGE_TIMEOUT.as_secs()),
                })
            });
        let fetched = match result {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(source = self.service(), error = %e, "failed to get workload identity credentials");
                if let Ok(mut failure) = self.failure.lock() {
                    *failure = Some((Instant::now(), e.clone()));
                }
                return Err(e);
            }
        };
        let scrubber = Scrubber::for_credentials(&fetched.credentials)
            .map_err(|e| FetchError::Local(format!("build the credential scrubber: {e}")))?;
        let now = Instant::now();
        let current = Arc::new(Current {
            credentials: fetched.credentials,
            scrubber,
            refresh_at: now + refresh_after(fetched.lifetime),
            expires_at: now + fetched.lifetime,
        });
        self.current.store(Some(Arc::clone(&current)));
        if let Ok(mut failure) = self.failure.lock() {
            *failure = None;
        }
        Ok(current)
    }

    fn service(&self) -> &'static str {
        match &self.exchange {
            Exchange::AwsWebIdentity(_) => aws::STS,
            Exchange::AwsPodIdentity(_) => aws::POD_IDENTITY,
            Exchange::Azure(_) => azure::ENTRA,
            Exchange::GcpMetadata(_) => gcp::METADATA,
            Exchange::GcpKey(_) => gcp::OAUTH,
        }
    }

    async fn fetch(&self) -> Result<Fetched, FetchError> {
        let client = self.client.load_full();
        match &self.exchange {
            Exchange::AwsWebIdentity(w) => w.fetch(&client).await,
            Exchange::AwsPodIdentity(p) => p.fetch(&client).await,
            Exchange::Azure(a) => a.fetch(&client).await,
            Exchange::GcpMetadata(m) => m.fetch(&client).await,
            Exchange::GcpKey(k) => k.fetch(&client).await,
        }
    }
}

/// What authorizes one request: the provider's key, or its workload identity's current
/// credentials.
#[derive(Debug)]
pub enum Authorization<'a> {
    /// The provider's static credentials.
    Static(&'a crate::state::Provider),
    /// The workload identity's current credentials, and the scrubber of them and of the
    /// provider's Secret-sourced header values.
    Current(Arc<Current>, Scrubber),
}

impl Authorization<'_> {
    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        match self {
            Self::Static(p) => &p.credentials,
            Self::Current(c, _) => &c.credentials,
        }
    }

    /// The scrubber of those credentials.
    pub fn scrubber(&self) -> &Scrubber {
        match self {
            Self::Static(p) => &p.scrubber,
            Self::Current(_, s) => s,
        }
    }
}

/// The authorization of one request to `provider`. A refusal by the token service is a refusal of
/// the gateway's credentials (the next target is tried, as for a refused key); any other failure
/// is a credentials error (also retried elsewhere).
pub async fn authorization(
    provider: &crate::state::Provider,
) -> Result<Authorization<'_>, crate::error::AttemptError> {
    let Some(source) = &provider.identity else {
        return Ok(Authorization::Static(provider));
    };
    match source.get().await {
        Ok(current) => {
            let scrubber = scrubber(provider, &current).map_err(|e| {
                crate::error::AttemptError::Credentials(crate::error::CredentialsError::Identity(
                    FetchError::Local(format!("build the credential scrubber: {e}")),
                ))
            })?;
            Ok(Authorization::Current(current, scrubber))
        }
        Err(e) => Err(match e.auth_failure() {
            Some(auth) => crate::error::AttemptError::Auth(auth),
            None => {
                crate::error::AttemptError::Credentials(crate::error::CredentialsError::Identity(e))
            }
        }),
    }
}

/// The scrubber of `current` for `provider`: the current credentials and the provider's
/// Secret-sourced header values (which a static provider's scrubber covers too). Built once per
/// credentials and snapshot: kept in the provider until the credentials are renewed.
fn scrubber(
    provider: &crate::state::Provider,
    current: &Arc<Current>,
) -> Result<Scrubber, crate::scrub::BuildError> {
    let secret_headers: Vec<&str> = provider
        .egress
        .headers
        .iter()
        .filter(|(_, v)| v.is_sensitive())
        .filter_map(|(_, v)| v.to_str().ok())
        .collect();
    if secret_headers.is_empty() {
        return Ok(current.scrubber.clone());
    }
    if let Some(cached) = provider.identity_scrubber.load().as_deref()
        && Arc::ptr_eq(&cached.0, current)
    {
        return Ok(cached.1.clone());
    }
    let scrubber = Scrubber::for_provider(&current.credentials, &secret_headers)?;
    provider
        .identity_scrubber
        .store(Some(Arc::new((Arc::clone(current), scrubber.clone()))));
    Ok(scrubber)
}

/// When credentials living `lifetime` are renewed (see the module docs).
pub fn refresh_after(lifetime: Duration) -> Duration {
    let margin = (lifetime / 5).max(Duration::from_secs(300).min(lifetime / 2));
    lifetime.saturating_sub(margin)
}

/// Send one token request: the status and the whole answer (bounded), or why not.
pub(crate) async fn call(
    client: &TokenClient,
    service: &'static str,
    mut request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), FetchError> {
    let unreachable = |reason: String| FetchError::Unreachable { service, reason };
    if let Some(auth) = client.proxy_authorization(request.uri()) {
        request
            .headers_mut()
            .insert(http::header::PROXY_AUTHORIZATION, auth);
    }
    let response = client
        .client
        .request(request)
        .await
        .map_err(|e| unreachable(crate::error::error_chain(&e)))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| unreachable(format!("the answer broke off: {e}")))?
        .to_bytes();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(unreachable(format!("status {}", status.as_u16())));
    }
    Ok((status, body))
}

/// Read a projected token file (trimmed), naming the file (never its content) on failure.
pub(crate) fn read_token(path: &str) -> Result<String, FetchError> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| FetchError::Local(format!("read the identity token file {path}: {e}")))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(FetchError::Local(format!(
            "read the identity token file {path}: it is empty"
        )));
    }
    Ok(token.to_string())
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&encode(k));
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One of `known` equal to `value` (a fixed name to report, never text from an answer).
pub(crate) fn known(value: &str, known: &[&'static str]) -> Option<&'static str> {
    known.iter().copied().find(|k| *k == value)
}

/// A `Bearer` header credential from an access token.
pub(crate) fn bearer(service: &'static str, token: &str) -> Result<Credentials, FetchError> {
    match Credentials::header("authorization", format!("Bearer {token}")) {
        Credentials::Invalid(_) => Err(FetchError::Malformed {
            service,
            reason: "the access token is not a valid header value",
        }),
        c => Ok(c),
    }
}

/// `expires_in` as a number of seconds (Entra and Google send a number; older endpoints a string).
pub(crate) fn expires_in(value: Option<&serde_json::Value>) -> Option<Duration> {
    let secs = match value? {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// The lifetime left until an ISO 8601 `Expiration` (`2026-11-30T01:00:00Z`).
pub(crate) fn until(expiration: &str) -> Option<Duration> {
    let at = aws_smithy_types::DateTime::from_str(
        expiration.trim(),
        aws_smithy_types::date_time::Format::DateTime,
    )
    .ok()?;
    let at = std::time::SystemTime::try_from(at).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_happens_ahead_of_expiry() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(900)),
            Duration::from_secs(600)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(3)),
            Duration::from_millis(1500)
        );
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn form_encoding_escapes_reserved_bytes() {
        assert_eq!(
            form(&[("scope", "https://x/.default"), ("a b", "c&d=e")]),
            "scope=https%3A%2F%2Fx%2F.default&a%20b=c%26d%3De"
        );
    }

    #[test]
    fn expiration_parses_as_iso_8601() {
        assert!(until("2099-01-01T00:00:00Z").is_some_and(|d| d > Duration::from_secs(3600)));
        assert_eq!(until("2000-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(until("tomorrow"), None);
    }
}
