//! Microsoft Entra ID workload identity for Azure OpenAI: the projected ServiceAccount token
//! (audience `api://AzureADTokenExchange`) is the client assertion of a client-credentials grant,
//! `POST {authority}/{tenant}/oauth2/v2.0/token` with the form `client_id`,
//! `scope=https://cognitiveservices.azure.com/.default`, `grant_type=client_credentials`,
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and
//! `client_assertion`. The JSON answer's `access_token` (valid `expires_in` seconds) goes to Azure
//! OpenAI as `Authorization: Bearer` in place of `api-key`. Errors are JSON with `error`
//! (`invalid_client`, ...) and `error_description` starting with an `AADSTS` code.

use bytes::Bytes;
use gatehouse_crds::config::IdentityConfig;
use gatehouse_crds::contract::{AZURE_AUDIENCE, CLOUD_TOKEN_DIR, cloud_token_file};
use http::{Method, Request};
use http_body_util::Full;
use serde_json::Value;

use super::{Env, FetchError, Fetched, bearer, call, expires_in, form, known, read_token};
use crate::upstream::TokenClient;

/// The token service's name in errors.
pub const ENTRA: &str = "Microsoft Entra ID";

/// The public cloud's authority.
pub const AUTHORITY: &str = "https://login.microsoftonline.com/";

/// The scope of Azure OpenAI (Cognitive Services) tokens.
pub const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// OAuth error codes Entra answers with.
const ERRORS: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "invalid_scope",
    "unsupported_grant_type",
];

/// Entra workload identity, resolved.
#[derive(Debug, Clone)]
pub struct WorkloadIdentity {
    client_id: String,
    token_url: String,
    token_file: String,
}

impl WorkloadIdentity {
    /// From the config, then `AZURE_AUTHORITY_HOST` / `AZURE_FEDERATED_TOKEN_FILE`, then the
    /// public cloud and the injected token.
    pub fn new(identity: &IdentityConfig, env: &dyn Env) -> Result<Self, String> {
        let IdentityConfig::AzureWorkloadIdentity {
            client_id,
            tenant_id,
            authority_host,
            token_file,
        } = identity
        else {
            return Err("not an Entra workload identity".to_string());
        };
        let authority = authority_host
            .clone()
            .or_else(|| env.var("AZURE_AUTHORITY_HOST"))
            .unwrap_or_else(|| AUTHORITY.to_string());
        Ok(Self {
            client_id: client_id.clone(),
            token_url: format!(
                "{}/{}/oauth2/v2.0/token",
                authority.trim_end_matches('/'),
                super::encode(tenant_id)
            ),
            token_file: token_file
                .clone()
                .or_else(|| env.var("AZURE_FEDERATED_TOKEN_FILE"))
                .unwrap_or_else(|| {
                    format!("{CLOUD_TOKEN_DIR}/{}", cloud_token_file(AZURE_AUDIENCE))
                }),
        })
    }

    /// One client-credentials grant with the federated assertion.
    pub async fn fetch(&self, client: &TokenClient) -> Result<Fetched, FetchError> {
        let assertion = read_token(&self.token_file)?;
        let body = form(&[
            ("client_id", &self.client_id),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &assertion),
        ]);
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| FetchError::Local(format!("build the Entra token request: {e}")))?;
        let (status, body) = call(client, ENTRA, request).await?;
        let v: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            return Err(FetchError::Refused {
                service: ENTRA,
                status,
                reason: v
                    .as_ref()
                    .and_then(|v| v.get("error"))
                    .and_then(Value::as_str)
                    .and_then(|e| known(e, ERRORS)),
            });
        }
        let malformed = |reason| FetchError::Malformed {
            service: ENTRA,
            reason,
        };
        let v = v.ok_or(malformed("not JSON"))?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or(malformed("no access_token"))?;
        let lifetime = expires_in(v.get("expires_in")).ok_or(malformed("no expires_in"))?;
        Ok(Fetched {
            credentials: bearer(ENTRA, token)?,
            lifetime,
        })
    }
}
