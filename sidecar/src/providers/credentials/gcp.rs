//! Google Cloud access tokens for Vertex AI.
//!
//! - GKE workload identity (and any GCE workload): the metadata server's
//!   `GET {metadata}/computeMetadata/v1/instance/service-accounts/default/token` with
//!   `Metadata-Flavor: Google`; JSON `access_token`, `expires_in`, `token_type`.
//! - A service-account key (the provider's key, the JSON file Google issues): an RS256 JWT
//!   (`iss` the key's `client_email`, `scope` cloud-platform, `aud` the token URI, `iat`, `exp`
//!   one hour later) is exchanged with `POST {token_uri}` form
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>`; the same JSON back.
//!   Errors are JSON `error` (`invalid_grant`, ...) and `error_description`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use gatehouse_crds::config::IdentityConfig;
use gatehouse_crds::keys::Redacted;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{Value, json};

use super::{Env, FetchError, Fetched, bearer, call, expires_in, form, known};
use crate::upstream::TokenClient;

/// The metadata server's name in errors.
pub const METADATA: &str = "the GCP metadata server";
/// Google's OAuth token endpoint's name in errors.
pub const OAUTH: &str = "Google OAuth";

/// The metadata server's default address.
pub const METADATA_ENDPOINT: &str = "http://metadata.google.internal";
/// Google's token endpoint.
pub const TOKEN_ENDPOINT: &str = "https://oauth2.googleapis.com/token";
/// The scope Vertex AI needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

const ERRORS: &[&str] = &[
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "invalid_scope",
    "invalid_request",
    "access_denied",
];

/// The metadata server, resolved.
#[derive(Debug, Clone)]
pub struct Metadata {
    url: String,
}

impl Metadata {
    /// From the config, then `GCE_METADATA_HOST`, then `metadata.google.internal`.
    pub fn new(identity: &IdentityConfig, env: &dyn Env) -> Self {
        let configured = match identity {
            IdentityConfig::GcpMetadata { endpoint } => endpoint.clone(),
            _ => None,
        };
        let base = configured
            .or_else(|| env.var("GCE_METADATA_HOST").map(|h| format!("http://{h}")))
            .unwrap_or_else(|| METADATA_ENDPOINT.to_string());
        Self {
            url: format!(
                "{}/computeMetadata/v1/instance/service-accounts/default/token",
                base.trim_end_matches('/')
            ),
        }
    }

    /// One token from the metadata server.
    pub async fn fetch(&self, client: &TokenClient) -> Result<Fetched, FetchError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(&self.url)
            .header("metadata-flavor", "Google")
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Local(format!("build the metadata request: {e}")))?;
        let (status, body) = call(client, METADATA, request).await?;
        token_answer(METADATA, status, &body)
    }
}

/// A service-account key, parsed. `Debug` shows the account, never the key.
#[derive(Clone)]
pub struct ServiceAccountKey {
    client_email: String,
    key_id: Option<String>,
    pkcs8: Vec<u8>,
    token_uri: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("key_id", &self.key_id)
            .field("private_key", &Redacted)
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

impl ServiceAccountKey {
    /// Parse the key JSON (`client_email`, `private_key` PEM, `private_key_id`, `token_uri`).
    pub fn new(identity: &IdentityConfig, key: Option<&str>) -> Result<Self, String> {
        let configured = match identity {
            IdentityConfig::GcpServiceAccountKey { token_endpoint } => token_endpoint.clone(),
            _ => None,
        };
        let key = key.ok_or("the service-account key is missing from the keys Secret")?;
        let v: Value = serde_json::from_str(key)
            .map_err(|_| "the service-account key is not valid JSON".to_string())?;
        let get = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let client_email =
            get("client_email").ok_or("the service-account key has no client_email")?;
        let pem = get("private_key").ok_or("the service-account key has no private_key")?;
        let pkcs8 = pem_der(&pem)
            .ok_or("the service-account key's private_key is not a PEM private key")?;
        ring::signature::RsaKeyPair::from_pkcs8(&pkcs8).map_err(|_| {
            "the service-account key's private_key is not an RSA PKCS#8 key".to_string()
        })?;
        Ok(Self {
            client_email,
            key_id: get("private_key_id"),
            pkcs8,
            token_uri: configured
                .or_else(|| get("token_uri"))
                .unwrap_or_else(|| TOKEN_ENDPOINT.to_string()),
        })
    }

    /// The signed JWT-bearer assertion, issued now.
    fn assertion(&self) -> Result<String, FetchError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let (Some(kid), Some(h)) = (&self.key_id, header.as_object_mut()) {
            h.insert("kid".into(), json!(kid));
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sign_error = || FetchError::Local("sign the service-account assertion".to_string());
        let pair =
            ring::signature::RsaKeyPair::from_pkcs8(&self.pkcs8).map_err(|_| sign_error())?;
        let mut signature = vec![0; pair.public().modulus_len()];
        pair.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        )
        .map_err(|_| sign_error())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// One JWT-bearer grant.
    pub async fn fetch(&self, client: &TokenClient) -> Result<Fetched, FetchError> {
        let assertion = self.assertion()?;
        let body = form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &assertion),
        ]);
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| FetchError::Local(format!("build the OAuth token request: {e}")))?;
        let (status, body) = call(client, OAUTH, request).await?;
        token_answer(OAUTH, status, &body)
    }
}

/// Google's token answer (metadata server and OAuth alike), or its refusal.
fn token_answer(
    service: &'static str,
    status: http::StatusCode,
    body: &[u8],
) -> Result<Fetched, FetchError> {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    if !status.is_success() {
        return Err(FetchError::Refused {
            service,
            status,
            reason: v
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
                .and_then(|e| known(e, ERRORS)),
        });
    }
    let malformed = |reason| FetchError::Malformed { service, reason };
    let v = v.ok_or(malformed("not JSON"))?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or(malformed("no access_token"))?;
    let lifetime = expires_in(v.get("expires_in")).ok_or(malformed("no expires_in"))?;
    Ok(Fetched {
        credentials: bearer(service, token)?,
        lifetime,
    })
}

/// The DER of the first PEM block of `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN ")?;
    let body_start = start + pem[start..].find('\n')? + 1;
    let end = body_start + pem[body_start..].find("-----END ")?;
    let b64: String = pem[body_start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}
