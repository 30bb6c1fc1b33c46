//! The sync call to the operator's ledger (`POST {url}/ledger/v1/sync`, JSON both ways): which
//! URL, which token, which CA, and what each answer means.
//!
//! - **URLs** (`--ledger-url`, one or more): the one that answered last is tried first, then the
//!   others in order. A `503 not_leader` naming the leader's URL is followed at once (at most
//!   [`MAX_REDIRECTS`] times per sync), and only to the scheme the configured URLs use, so an
//!   https ledger never sends the sidecar to plain http; the leader is then tried first until it
//!   stops answering.
//! - **Token** (`--ledger-token-file`): a projected ServiceAccount token, sent as a bearer
//!   token. The file is re-read when its size, modification time or inode changes (the kubelet
//!   rotates it by swapping a symlink), and after a 401. Never logged.
//! - **CA** (`--ledger-ca-file`): https URLs are verified against it only; without it, against
//!   the compiled-in web roots.
//! - **Bounds**: each call is bounded by `--ledger-timeout-ms` (connect, send, answer), an
//!   answer body by [`MAX_ANSWER_BYTES`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gatehouse_crds::ledger::{LedgerError, SYNC_PATH, SyncRequest, SyncResponse};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Most `not_leader` redirects followed in one sync.
pub const MAX_REDIRECTS: usize = 3;

/// Largest ledger answer read.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Why the client could not be built (at start).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read or holds no certificate.
    #[error("failed to read ledger CA file {path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A `--ledger-url` is not an http(s) URL.
    #[error("invalid --ledger-url '{url}': {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// TLS could not be set up.
    #[error("failed to set up TLS for the ledger: {0}")]
    Tls(String),
}

/// Why one sync failed; the ledger counts as unreachable until one succeeds.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No `--ledger-url` is configured.
    #[error("no --ledger-url is configured")]
    NoUrl,
    /// Could not connect, send or read in time.
    #[error("failed to reach the ledger at {url}: {reason}")]
    Transport {
        /// The URL tried.
        url: String,
        /// Why (no token in it).
        reason: String,
    },
    /// The ledger refused the sync.
    #[error("the ledger at {url} answered {status} {code}: {message}")]
    Refused {
        /// The URL tried.
        url: String,
        /// HTTP status.
        status: u16,
        /// `LedgerError::code`.
        code: String,
        /// `LedgerError::message`.
        message: String,
    },
    /// A 2xx that is not a `SyncResponse`.
    #[error("the ledger at {url} answered something that is not a sync response: {reason}")]
    Invalid {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
}

impl SyncError {
    /// The `result` label of `gatehouse_ledger_syncs_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoUrl => "no_url",
            Self::Transport { .. } => "unreachable",
            Self::Refused { status: 401, .. } => "unauthenticated",
            Self::Refused { status: 403, .. } => "forbidden",
            Self::Refused { status: 503, .. } => "unavailable",
            Self::Refused { .. } => "refused",
            Self::Invalid { .. } => "invalid_response",
        }
    }
}

/// Where the client stands for `--ledger-*` flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--ledger-url`.
    pub urls: Vec<String>,
    /// `--ledger-token-file`.
    pub token_file: PathBuf,
    /// `--ledger-ca-file`.
    pub ca_file: Option<PathBuf>,
    /// `--ledger-timeout-ms`.
    pub timeout: Duration,
}

type Http = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The sync client; owned by the one task that syncs, so one call is in flight at most.
#[derive(Debug)]
pub struct LedgerClient {
    /// Base URLs as configured (no trailing slash).
    urls: Vec<String>,
    /// The URL that answered last (a configured one or a leader named by a redirect).
    preferred: Option<String>,
    https: bool,
    token: TokenFile,
    timeout: Duration,
    http: Http,
}

impl LedgerClient {
    /// A client for `settings`.
    pub fn new(settings: &Settings) -> Result<Self, ClientError> {
        let mut urls = Vec::new();
        for url in &settings.urls {
            let url = url.trim().trim_end_matches('/');
            if url.is_empty() {
                continue;
            }
            let uri: http::Uri = url.parse().map_err(|_| ClientError::Url {
                url: url.to_string(),
                reason: "not a URL",
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(ClientError::Url {
                    url: url.to_string(),
                    reason: "must be http:// or https:// with a host",
                });
            }
            urls.push(url.to_string());
        }
        let https = urls.iter().any(|u| u.starts_with("https://"));
        let service = service_name(&urls);
        Ok(Self {
            urls,
            preferred: None,
            https,
            token: TokenFile::new(settings.token_file.clone()),
            timeout: settings.timeout,
            http: http_client(settings.ca_file.as_deref(), service, settings.timeout)?,
        })
    }

    /// One sync: the preferred URL, then the others, following `not_leader` redirects.
    pub async fn sync(&mut self, request: &SyncRequest) -> Result<SyncResponse, SyncError> {
        let body = Bytes::from(serde_json::to_vec(request).map_err(|e| SyncError::Invalid {
            url: String::new(),
            reason: format!("failed to encode the sync request: {e}"),
        })?);
        let mut order: Vec<String> = self.preferred.iter().cloned().collect();
        order.extend(
            self.urls
                .iter()
                .filter(|u| Some(*u) != self.preferred.as_ref())
                .cloned(),
        );
        let mut last = SyncError::NoUrl;
        let mut redirects = 0;
        let mut i = 0;
        while let Some(url) = order.get(i).cloned() {
            i += 1;
            match self.call(&url, body.clone()).await {
                Ok(answer) => {
                    self.preferred = Some(url);
                    return Ok(answer);
                }
                Err(Call::Leader(leader)) => {
                    if redirects < MAX_REDIRECTS && self.allowed(&leader) {
                        redirects += 1;
                        tracing::debug!(from = %url, to = %leader, "ledger: not the leader, following");
                        // Tried next, before the remaining configured URLs.
                        order.insert(i, leader);
                    }
                    last = SyncError::Refused {
                        url,
                        status: 503,
                        code: "not_leader".into(),
                        message: "not the leader".into(),
                    };
                }
                Err(Call::Unauthenticated(e)) => {
                    // The token may have rotated under us: read it again and retry this URL once.
                    if self.token.reload() {
                        match self.call(&url, body.clone()).await {
                            Ok(answer) => {
                                self.preferred = Some(url);
                                return Ok(answer);
                            }
                            Err(Call::Failed(e) | Call::Unauthenticated(e)) => last = e,
                            Err(Call::Leader(_)) => {}
                        }
                    } else {
                        last = e;
                    }
                }
                Err(Call::Failed(e)) => last = e,
            }
        }
        if self
            .preferred
            .as_ref()
            .is_some_and(|p| !self.urls.contains(p))
        {
            // A leader named by a redirect that stopped answering: back to the configured URLs.
            self.preferred = None;
        }
        Err(last)
    }

    /// Whether a redirect to `url` may be followed: http(s), and https when the configured
    /// URLs are.
    fn allowed(&self, url: &str) -> bool {
        match url.parse::<http::Uri>() {
            Ok(uri) => match uri.scheme_str() {
                Some("https") => uri.host().is_some(),
                Some("http") => !self.https && uri.host().is_some(),
                _ => false,
            },
            Err(_) => false,
        }
    }

    async fn call(&mut self, base: &str, body: Bytes) -> Result<SyncResponse, Call> {
        let url = sync_url(base);
        let transport = |reason: String| {
            Call::Failed(SyncError::Transport {
                url: url.clone(),
                reason,
            })
        };
        let mut request = Request::post(&url)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| transport(format!("failed to build the request: {e}")))?;
        if let Some(token) = self.token.header() {
            request.headers_mut().insert(AUTHORIZATION, token);
        }
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| transport(crate::error::error_chain(&e)))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| transport(format!("failed to read the answer: {e}")))?
                .to_bytes();
            Ok::<_, Call>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                transport(format!("no answer within {} ms", self.timeout.as_millis()))
            })??;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                Call::Failed(SyncError::Invalid {
                    url: url.clone(),
                    reason: e.to_string(),
                })
            });
        }
        let error: LedgerError = serde_json::from_slice(&bytes).unwrap_or_else(|_| LedgerError {
            code: String::new(),
            message: format!("status {}", status.as_u16()),
            leader: None,
        });
        let refused = SyncError::Refused {
            url: url.clone(),
            status: status.as_u16(),
            code: error.code.clone(),
            message: error.message.chars().take(512).collect(),
        };
        match (status, error.code.as_str(), error.leader) {
            (StatusCode::SERVICE_UNAVAILABLE, "not_leader", Some(leader)) => {
                Err(Call::Leader(leader.trim_end_matches('/').to_string()))
            }
            (StatusCode::UNAUTHORIZED, ..) => Err(Call::Unauthenticated(refused)),
            _ => Err(Call::Failed(refused)),
        }
    }
}

/// How one call ended, when not with an answer.
enum Call {
    /// 503 `not_leader` naming the leader's URL.
    Leader(String),
    /// 401: the token was refused.
    Unauthenticated(SyncError),
    /// Anything else.
    Failed(SyncError),
}

/// `base` + the sync path, unless `base` already ends with it.
fn sync_url(base: &str) -> String {
    if base.ends_with(SYNC_PATH) {
        base.to_string()
    } else {
        format!("{base}{SYNC_PATH}")
    }
}

/// The one host name of the configured https URLs, when there is exactly one and it is a DNS
/// name (the operator Service's).
fn service_name(urls: &[String]) -> Option<String> {
    let mut hosts = urls
        .iter()
        .filter_map(|u| u.parse::<http::Uri>().ok())
        .filter(|u| u.scheme_str() == Some("https"))
        .filter_map(|u| u.host().map(str::to_string));
    let first = hosts.next()?;
    if hosts.any(|h| h != first) || first.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    Some(first)
}

fn http_client(
    ca_file: Option<&Path>,
    service: Option<String>,
    timeout: Duration,
) -> Result<Http, ClientError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_file {
        None => builder.with_webpki_roots(),
        Some(path) => builder.with_tls_config(tls_config(path, service)?),
    };
    let https = builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(2)
        .build(https))
}

/// TLS trusting the certificates of the PEM file at `path` only.
///
/// With `service` (the one DNS name the configured https URLs use), every ledger replica is
/// verified as that name, also when a `not_leader` redirect sends the sidecar to the leader's
/// pod IP: the replicas share one serving certificate, issued for the Service's names by the
/// CA in that file, and no pod IP is in it.
fn tls_config(path: &Path, service: Option<String>) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let ca = |reason: String| ClientError::Ca {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ca(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca(e.to_string()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ca("no usable certificate in it".to_string()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let pinned = service.and_then(|s| ServerName::try_from(s).ok());
    let Some(name) = pinned else {
        return Ok(builder.with_root_certificates(roots).with_no_client_auth());
    };
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AsService { inner, name }))
        .with_no_client_auth())
}

/// Verifies a server's certificate chain as usual, but for the Service's name rather than the
/// address connected to ([`tls_config`]).
#[derive(Debug)]
struct AsService {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for AsService {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The token file, read again when it changes.
#[derive(Debug)]
struct TokenFile {
    path: PathBuf,
    /// What the file looked like when read, and the header made of it.
    cached: Option<(Stamp, HeaderValue)>,
    /// Whether "cannot read the token" was logged since it was last readable.
    warned: bool,
}

/// What identifies one version of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl TokenFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            cached: None,
            warned: false,
        }
    }

    fn stamp(&self) -> Option<Stamp> {
        // Through the symlink: the kubelet swaps `..data`, the path stays.
        let meta = std::fs::metadata(&self.path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }

    /// The `Authorization` header, read from the file if it changed; `None` when unreadable.
    fn header(&mut self) -> Option<HeaderValue> {
        let stamp = self.stamp();
        match (&self.cached, stamp) {
            (Some((cached, value)), Some(now)) if *cached == now => Some(value.clone()),
            (_, Some(now)) => self.read(now),
            (_, None) => {
                self.unreadable("the file does not exist");
                self.cached = None;
                None
            }
        }
    }

    /// Read the file again; whether the token changed.
    fn reload(&mut self) -> bool {
        let before = self.cached.as_ref().map(|(_, v)| v.clone());
        match self.stamp() {
            Some(now) => {
                let after = self.read(now);
                after.is_some() && after != before
            }
            None => false,
        }
    }

    fn read(&mut self, stamp: Stamp) -> Option<HeaderValue> {
        let token = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                self.unreadable(&e.to_string());
                return None;
            }
        };
        match HeaderValue::try_from(format!("Bearer {}", token.trim())) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.cached = Some((stamp, value.clone()));
                self.warned = false;
                Some(value)
            }
            Err(_) => {
                self.unreadable("it holds characters a header cannot carry");
                None
            }
        }
    }

    fn unreadable(&mut self, why: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(path = %self.path.display(), reason = why,
                "failed to read the ledger token file; syncing without a token (the ledger will refuse)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(urls: &[&str]) -> Result<LedgerClient, ClientError> {
        LedgerClient::new(&Settings {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            token_file: PathBuf::from("/nonexistent/token"),
            ca_file: None,
            timeout: Duration::from_millis(100),
        })
    }

    #[test]
    fn urls_are_checked_and_redirects_keep_the_scheme() {
        assert!(matches!(client(&["ftp://x"]), Err(ClientError::Url { .. })));
        assert!(matches!(client(&["nope"]), Err(ClientError::Url { .. })));
        let plain = client(&["http://ledger:8444/", " "]).unwrap();
        assert_eq!(plain.urls, ["http://ledger:8444"]);
        assert!(plain.allowed("http://10.0.0.5:8444"));
        assert!(plain.allowed("https://10.0.0.5:8444"));
        assert!(!plain.allowed("file:///etc/passwd"));
        let tls = client(&["https://ledger:8444"]).unwrap();
        assert!(
            !tls.allowed("http://10.0.0.5:8444"),
            "https never redirects to http"
        );
        assert!(tls.allowed("https://10.0.0.5:8444"));
        assert_eq!(sync_url("http://l:1"), format!("http://l:1{SYNC_PATH}"));
        assert_eq!(
            sync_url(&format!("http://l:1{SYNC_PATH}")),
            format!("http://l:1{SYNC_PATH}")
        );
    }

    #[test]
    fn the_token_is_read_again_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let mut token = TokenFile::new(path.clone());
        assert!(token.header().is_none());
        std::fs::write(&path, "first\n").unwrap();
        let first = token.header().unwrap();
        assert_eq!(first.to_str().unwrap(), "Bearer first");
        assert!(first.is_sensitive());
        // Rotated by a rename, as the kubelet does: a new inode.
        let tmp = dir.path().join("token.new");
        std::fs::write(&tmp, "second-token").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(
            token.header().unwrap().to_str().unwrap(),
            "Bearer second-token"
        );
        assert!(!token.reload(), "unchanged");
        let dbg = format!("{token:?}");
        assert!(!dbg.contains("second-token"), "{dbg}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(matches!(
            tls_config(&path, None),
            Err(ClientError::Ca { .. })
        ));
        assert!(matches!(
            tls_config(&dir.path().join("missing.pem"), None),
            Err(ClientError::Ca { .. })
        ));
    }
}
