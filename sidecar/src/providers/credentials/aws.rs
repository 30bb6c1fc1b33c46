//! AWS credentials for Bedrock without a static key.
//!
//! - IRSA: `POST {sts}/` with the Query API form `Action=AssumeRoleWithWebIdentity`,
//!   `Version=2011-06-15`, `RoleArn`, `RoleSessionName`, `WebIdentityToken` (the projected
//!   ServiceAccount token, audience `sts.amazonaws.com`) and `DurationSeconds`; the XML answer's
//!   `AssumeRoleWithWebIdentityResult/Credentials` holds `AccessKeyId`, `SecretAccessKey`,
//!   `SessionToken` and `Expiration`. Errors are `ErrorResponse/Error/Code` (`AccessDenied`,
//!   `InvalidIdentityToken`, `ExpiredTokenException`, ...). The call needs no signature.
//! - EKS Pod Identity: `GET {agent}` (default `http://169.254.170.23/v1/credentials`) with the
//!   projected token (audience `pods.eks.amazonaws.com`) as the `Authorization` header; the JSON
//!   answer holds `AccessKeyId`, `SecretAccessKey`, `Token`, `AccountId` and `Expiration`.
//!
//! The session token goes into every SigV4 signature as `X-Amz-Security-Token`.

use std::time::Duration;

use bytes::Bytes;
use gatehouse_crds::config::{IdentityConfig, ProviderConfig};
use gatehouse_crds::contract::{
    AWS_POD_IDENTITY_AUDIENCE, AWS_WEB_IDENTITY_AUDIENCE, CLOUD_TOKEN_DIR, cloud_token_file,
};
use http::{Method, Request};
use http_body_util::Full;
use serde_json::Value;

use super::{Env, FetchError, Fetched, call, form, known, read_token, until};
use crate::state::Credentials;
use crate::upstream::TokenClient;

/// The token service's name in errors.
pub const STS: &str = "AWS STS";
/// The Pod Identity agent's name in errors.
pub const POD_IDENTITY: &str = "the EKS Pod Identity agent";

/// The EKS Pod Identity agent's credentials URL.
pub const POD_IDENTITY_ENDPOINT: &str = "http://169.254.170.23/v1/credentials";

/// Lifetime asked of STS (the role's maximum session duration may allow more; one hour is the
/// default maximum of every role).
const DURATION_SECONDS: &str = "3600";

/// STS error codes that are a refusal of the identity.
const STS_REFUSALS: &[&str] = &[
    "AccessDenied",
    "InvalidIdentityToken",
    "ExpiredTokenException",
    "ExpiredToken",
    "IDPRejectedClaim",
    "IDPCommunicationError",
    "MalformedPolicyDocument",
    "PackedPolicyTooLarge",
    "RegionDisabledException",
    "ValidationError",
    "InvalidParameterValue",
];

fn injected(audience: &str) -> String {
    format!("{CLOUD_TOKEN_DIR}/{}", cloud_token_file(audience))
}

/// IRSA, resolved.
#[derive(Debug, Clone)]
pub struct WebIdentity {
    role_arn: String,
    session_name: String,
    endpoint: String,
    token_file: String,
}

impl WebIdentity {
    /// From the config, then `AWS_WEB_IDENTITY_TOKEN_FILE` / `AWS_STS_REGIONAL_ENDPOINTS`, then
    /// the defaults (the regional STS endpoint of the provider's region, the injected token).
    pub fn new(
        identity: &IdentityConfig,
        config: &ProviderConfig,
        env: &dyn Env,
    ) -> Result<Self, String> {
        let IdentityConfig::AwsWebIdentity {
            role_arn,
            session_name,
            sts_endpoint,
            token_file,
        } = identity
        else {
            return Err("not an AWS web identity".to_string());
        };
        let region = config
            .region
            .clone()
            .or_else(|| env.var("AWS_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = sts_endpoint.clone().unwrap_or_else(|| {
            match env.var("AWS_STS_REGIONAL_ENDPOINTS").as_deref() {
                Some("legacy") => "https://sts.amazonaws.com".to_string(),
                _ => format!("https://sts.{region}.amazonaws.com"),
            }
        });
        Ok(Self {
            role_arn: role_arn.clone(),
            session_name: session_name.clone(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token_file: token_file
                .clone()
                .or_else(|| env.var("AWS_WEB_IDENTITY_TOKEN_FILE"))
                .unwrap_or_else(|| injected(AWS_WEB_IDENTITY_AUDIENCE)),
        })
    }

    /// One `AssumeRoleWithWebIdentity`.
    pub async fn fetch(&self, client: &TokenClient) -> Result<Fetched, FetchError> {
        let token = read_token(&self.token_file)?;
        let body = form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", &self.role_arn),
            ("RoleSessionName", &self.session_name),
            ("WebIdentityToken", &token),
            ("DurationSeconds", DURATION_SECONDS),
        ]);
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/", self.endpoint))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/xml")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| FetchError::Local(format!("build the STS request: {e}")))?;
        let (status, body) = call(client, STS, request).await?;
        let text = std::str::from_utf8(&body).unwrap_or_default();
        if !status.is_success() {
            return Err(FetchError::Refused {
                service: STS,
                status,
                reason: xml_text(text, "Code").and_then(|c| known(&c, STS_REFUSALS)),
            });
        }
        let malformed = |reason| FetchError::Malformed {
            service: STS,
            reason,
        };
        let credentials = xml_text(text, "Credentials").ok_or(malformed("no Credentials"))?;
        let field = |name, missing| xml_text(&credentials, name).ok_or(malformed(missing));
        let id = field("AccessKeyId", "no AccessKeyId")?;
        let secret = field("SecretAccessKey", "no SecretAccessKey")?;
        let session = field("SessionToken", "no SessionToken")?;
        let lifetime = until(&field("Expiration", "no Expiration")?)
            .ok_or(malformed("Expiration is not an ISO 8601 time"))?;
        Ok(aws_credentials(id, secret, session, lifetime, "sts"))
    }
}

/// EKS Pod Identity, resolved.
#[derive(Debug, Clone)]
pub struct PodIdentity {
    endpoint: String,
    token_file: String,
}

impl PodIdentity {
    /// From the config, then `AWS_CONTAINER_CREDENTIALS_FULL_URI` /
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, then the agent's address and the injected token.
    pub fn new(identity: &IdentityConfig, env: &dyn Env) -> Result<Self, String> {
        let IdentityConfig::AwsPodIdentity {
            endpoint,
            token_file,
        } = identity
        else {
            return Err("not an EKS Pod Identity".to_string());
        };
        Ok(Self {
            endpoint: endpoint
                .clone()
                .or_else(|| env.var("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
                .unwrap_or_else(|| POD_IDENTITY_ENDPOINT.to_string()),
            token_file: token_file
                .clone()
                .or_else(|| env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"))
                .unwrap_or_else(|| injected(AWS_POD_IDENTITY_AUDIENCE)),
        })
    }

    /// One call to the agent.
    pub async fn fetch(&self, client: &TokenClient) -> Result<Fetched, FetchError> {
        let token = read_token(&self.token_file)?;
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(&self.endpoint)
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Local(format!("build the Pod Identity request: {e}")))?;
        let mut value = http::HeaderValue::try_from(token).map_err(|_| {
            FetchError::Local("use the Pod Identity token: not a valid header value".to_string())
        })?;
        value.set_sensitive(true);
        request.headers_mut().insert("authorization", value);
        let (status, body) = call(client, POD_IDENTITY, request).await?;
        if !status.is_success() {
            return Err(FetchError::Refused {
                service: POD_IDENTITY,
                status,
                reason: None,
            });
        }
        let malformed = |reason| FetchError::Malformed {
            service: POD_IDENTITY,
            reason,
        };
        let v: Value = serde_json::from_slice(&body).map_err(|_| malformed("not JSON"))?;
        let field = |name, missing| {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(malformed(missing))
        };
        let id = field("AccessKeyId", "no AccessKeyId")?;
        let secret = field("SecretAccessKey", "no SecretAccessKey")?;
        let session = field("Token", "no Token")?;
        let lifetime = until(&field("Expiration", "no Expiration")?)
            .ok_or(malformed("Expiration is not an ISO 8601 time"))?;
        Ok(aws_credentials(
            id,
            secret,
            session,
            lifetime,
            "eks-pod-identity",
        ))
    }
}

fn aws_credentials(
    id: String,
    secret: String,
    session: String,
    lifetime: Duration,
    provider: &'static str,
) -> Fetched {
    let expiry = std::time::SystemTime::now() + lifetime;
    Fetched {
        credentials: Credentials::Aws(aws_credential_types::Credentials::new(
            id,
            secret,
            Some(session),
            Some(expiry),
            provider,
        )),
        lifetime,
    }
}

/// The text of the first `<name>…</name>` element (entities decoded), if any.
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(
        xml[start..end]
            .trim()
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_answer_fields_are_read() {
        let xml = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials><SessionToken>tok&amp;en</SessionToken><AccessKeyId>ASIA1</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        let creds = xml_text(xml, "Credentials").unwrap();
        assert_eq!(xml_text(&creds, "SessionToken").unwrap(), "tok&en");
        assert_eq!(xml_text(&creds, "AccessKeyId").unwrap(), "ASIA1");
        assert_eq!(xml_text(&creds, "Expiration"), None);
    }
}
