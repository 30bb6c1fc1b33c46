//! Mock cloud token services, each speaking its documented wire shape, on one local port:
//!
//! - AWS STS `AssumeRoleWithWebIdentity`: `POST /` (or `GET /?…`), Query API form `Action`,
//!   `Version=2011-06-15`, `RoleArn`, `RoleSessionName`, `WebIdentityToken`, optional
//!   `DurationSeconds` (900..=43200); XML `AssumeRoleWithWebIdentityResponse` with
//!   `Credentials/{AccessKeyId,SecretAccessKey,SessionToken,Expiration}`, or an `ErrorResponse`
//!   (`Sender`, `AccessDenied` / `InvalidIdentityToken` / `ExpiredTokenException`).
//! - EKS Pod Identity agent: `GET /v1/credentials` with the projected token as `Authorization`;
//!   JSON `AccessKeyId`, `SecretAccessKey`, `Token`, `AccountId`, `Expiration`.
//! - Microsoft Entra ID: `POST /{tenant}/oauth2/v2.0/token`, form `client_id`, `scope`,
//!   `grant_type=client_credentials`, `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
//!   `client_assertion`; JSON `token_type`, `expires_in`, `ext_expires_in`, `access_token`, or
//!   `error` / `error_description` (`AADSTS…`) / `error_codes` / `timestamp` / `trace_id` /
//!   `correlation_id`.
//! - GCP metadata server: `GET /computeMetadata/v1/instance/service-accounts/default/token`
//!   with `Metadata-Flavor: Google` (403 without it); JSON `access_token`, `expires_in`,
//!   `token_type`.
//! - Google OAuth: `POST /token`, form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
//!   and `assertion` (an RS256 JWT, checked against the service account's public key when one is
//!   set); the same JSON, or `error` / `error_description`.
//!
//! Every credential handed out is remembered with its expiry, so a mock provider can check that
//! what it receives was issued and has not expired ([`MockIdentity::credential_check`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{Error, Flavor};

/// Which token service a request went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenFlow {
    /// STS `AssumeRoleWithWebIdentity`.
    Sts,
    /// The EKS Pod Identity agent.
    PodIdentity,
    /// Entra ID's token endpoint.
    Entra,
    /// The GCP metadata server.
    Metadata,
    /// Google's OAuth token endpoint (JWT bearer).
    GoogleOAuth,
}

/// One token request as received.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The service.
    pub flow: TokenFlow,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Headers, lowercase names.
    pub headers: BTreeMap<String, String>,
    /// The form (or query) fields.
    pub form: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Issued {
    /// AWS: the session token that must accompany the key id.
    session: Option<String>,
    expires: Instant,
}

#[derive(Debug)]
struct State {
    subject_token: Mutex<String>,
    lifetime: Mutex<Duration>,
    refuse: Mutex<Option<u16>>,
    exchanges: AtomicU64,
    issued: Mutex<HashMap<String, Issued>>,
    requests: Mutex<Vec<TokenRequest>>,
    public_key: Mutex<Option<Vec<u8>>>,
}

/// A check a [`crate::MockProvider`] runs on every API request's credentials.
pub type CredentialCheck = Arc<dyn Fn(Flavor, &HeaderMap) -> Result<(), String> + Send + Sync>;

/// The mock token services on a local port. Stops when dropped.
#[derive(Debug)]
pub struct MockIdentity {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for MockIdentity {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The projected ServiceAccount token the mock accepts unless told otherwise.
pub const SUBJECT_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.mock-projected-service-account-token.sig";

impl MockIdentity {
    /// Start on `127.0.0.1:0`, issuing credentials valid for `lifetime`.
    pub async fn start(lifetime: Duration) -> Result<Self, Error> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(Error::LocalAddr)?;
        let state = Arc::new(State {
            subject_token: Mutex::new(SUBJECT_TOKEN.to_string()),
            lifetime: Mutex::new(lifetime),
            refuse: Mutex::new(None),
            exchanges: AtomicU64::new(0),
            issued: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            public_key: Mutex::new(None),
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&state)));
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Refuse every exchange from now on with `status` (in each service's error shape), or
    /// stop refusing (`None`).
    pub fn refuse(&self, status: Option<u16>) {
        if let Ok(mut r) = self.state.refuse.lock() {
            *r = status;
        }
    }

    /// Accept `token` as the projected ServiceAccount token instead of [`SUBJECT_TOKEN`].
    pub fn set_subject_token(&self, token: impl Into<String>) {
        if let Ok(mut t) = self.state.subject_token.lock() {
            *t = token.into();
        }
    }

    /// Check JWT-bearer assertions against this RSA public key (PKCS#1 `RSAPublicKey` DER).
    pub fn set_public_key(&self, der: Vec<u8>) {
        if let Ok(mut k) = self.state.public_key.lock() {
            *k = Some(der);
        }
    }

    /// Token exchanges answered (successfully or not).
    pub fn exchanges(&self) -> u64 {
        self.state.exchanges.load(Ordering::SeqCst)
    }

    /// The token requests received, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// A check for [`crate::MockProviderBuilder::credential_check`]: Bedrock requests must be
    /// signed with an issued, unexpired access key id and carry its session token in
    /// `x-amz-security-token`; every other flavour must carry `Authorization: Bearer` with an
    /// issued, unexpired access token.
    pub fn credential_check(&self) -> CredentialCheck {
        let state = Arc::clone(&self.state);
        Arc::new(move |flavor, headers| {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let issued = state.issued.lock().map_err(|_| "poisoned".to_string())?;
            let now = Instant::now();
            if flavor == Flavor::Bedrock {
                let auth = header("authorization").ok_or("no authorization")?;
                let id = auth
                    .split("Credential=")
                    .nth(1)
                    .and_then(|c| c.split('/').next())
                    .ok_or("no Credential=")?;
                let entry = issued
                    .get(id)
                    .ok_or(format!("access key id {id} was never issued"))?;
                if now >= entry.expires {
                    return Err(format!("access key id {id} has expired"));
                }
                let token = header("x-amz-security-token").ok_or("no x-amz-security-token")?;
                if Some(token) != entry.session.as_deref() {
                    return Err("x-amz-security-token is not the key's session token".into());
                }
                if !auth.contains("x-amz-security-token") {
                    return Err("x-amz-security-token is not signed".into());
                }
                return Ok(());
            }
            let bearer = header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or("no Authorization: Bearer")?;
            let entry = issued
                .get(bearer)
                .ok_or("the access token was never issued")?;
            if now >= entry.expires {
                return Err("the access token has expired".into());
            }
            Ok(())
        })
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn form_fields(text: &str) -> BTreeMap<String, String> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert("content-type", v);
    }
    response
}

fn iso8601(at: SystemTime) -> String {
    aws_smithy_types::DateTime::from(at)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

fn sts_error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/xml",
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>\n</ErrorResponse>\n"
        ),
    )
}

fn entra_error(status: u16, error: &str, code: u32, text: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/json; charset=utf-8",
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text} Trace ID: 0000 Correlation ID: 0000 Timestamp: 2026-11-30 00:00:00Z"),
            "error_codes": [code],
            "timestamp": "2026-11-30 00:00:00Z",
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
            "error_uri": "https://login.microsoftonline.com/error?code=".to_string() + &code.to_string(),
        })
        .to_string(),
    )
}

fn google_error(status: u16, error: &str, description: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/json; charset=utf-8",
        json!({"error": error, "error_description": description}).to_string(),
    )
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let flow = if path == "/v1/credentials" {
        TokenFlow::PodIdentity
    } else if path.ends_with("/oauth2/v2.0/token") {
        TokenFlow::Entra
    } else if path == "/computeMetadata/v1/instance/service-accounts/default/token" {
        TokenFlow::Metadata
    } else if path == "/token" {
        TokenFlow::GoogleOAuth
    } else if path == "/" {
        TokenFlow::Sts
    } else {
        return respond(404, "text/plain", "not found".into());
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let mut form = form_fields(&text);
    if flow == TokenFlow::Sts && parts.method == Method::GET {
        form = form_fields(parts.uri.query().unwrap_or_default());
    }
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Ok(mut r) = state.requests.lock() {
        r.push(TokenRequest {
            flow,
            method: parts.method.to_string(),
            path: path.clone(),
            headers: headers.clone(),
            form: form.clone(),
        });
    }
    state.exchanges.fetch_add(1, Ordering::SeqCst);
    let refuse = state.refuse.lock().ok().and_then(|r| *r);
    let subject = state
        .subject_token
        .lock()
        .map(|t| t.clone())
        .unwrap_or_default();
    let lifetime = state
        .lifetime
        .lock()
        .map(|l| *l)
        .unwrap_or(Duration::from_secs(3600));
    let n = state.exchanges.load(Ordering::SeqCst);
    let field = |k: &str| form.get(k).map(String::as_str);
    match flow {
        TokenFlow::Sts => {
            if let Some(status) = refuse {
                return sts_error(
                    status,
                    "AccessDenied",
                    "Not authorized to perform sts:AssumeRoleWithWebIdentity",
                );
            }
            if field("Action") != Some("AssumeRoleWithWebIdentity")
                || field("Version") != Some("2011-06-15")
            {
                return sts_error(
                    400,
                    "InvalidAction",
                    "Could not find operation for this action.",
                );
            }
            for name in ["RoleArn", "RoleSessionName", "WebIdentityToken"] {
                if field(name).is_none_or(str::is_empty) {
                    return sts_error(
                        400,
                        "MissingParameter",
                        &format!("The request must contain the parameter {name}."),
                    );
                }
            }
            if let Some(d) = field("DurationSeconds")
                && !d.parse::<u32>().is_ok_and(|d| (900..=43200).contains(&d))
            {
                return sts_error(400, "ValidationError", "DurationSeconds is out of range.");
            }
            if field("WebIdentityToken") != Some(subject.as_str()) {
                return sts_error(
                    400,
                    "InvalidIdentityToken",
                    "Couldn't retrieve verification key from your identity provider.",
                );
            }
            let (id, secret, session, expiration) = issue_aws(state, n, lifetime);
            respond(
                200,
                "text/xml",
                format!(
                    "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <AssumeRoleWithWebIdentityResult>\n    <SubjectFromWebIdentityToken>system:serviceaccount:ns:app</SubjectFromWebIdentityToken>\n    <Audience>sts.amazonaws.com</Audience>\n    <AssumedRoleUser>\n      <Arn>{role}/{session_name}</Arn>\n      <AssumedRoleId>AROACLKWSDQRAOEXAMPLE:{session_name}</AssumedRoleId>\n    </AssumedRoleUser>\n    <Credentials>\n      <SessionToken>{session}</SessionToken>\n      <SecretAccessKey>{secret}</SecretAccessKey>\n      <Expiration>{expiration}</Expiration>\n      <AccessKeyId>{id}</AccessKeyId>\n    </Credentials>\n    <Provider>arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE</Provider>\n  </AssumeRoleWithWebIdentityResult>\n  <ResponseMetadata>\n    <RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId>\n  </ResponseMetadata>\n</AssumeRoleWithWebIdentityResponse>\n",
                    role = field("RoleArn").unwrap_or_default(),
                    session_name = field("RoleSessionName").unwrap_or_default(),
                ),
            )
        }
        TokenFlow::PodIdentity => {
            if let Some(status) = refuse {
                return respond(
                    status,
                    "application/json",
                    json!({"code": "AccessDeniedException", "message": "the association does not allow this service account"}).to_string(),
                );
            }
            if headers.get("authorization").map(String::as_str) != Some(subject.as_str()) {
                return respond(
                    401,
                    "application/json",
                    json!({"code": "InvalidTokenException", "message": "the service account token is not valid"}).to_string(),
                );
            }
            let (id, secret, session, expiration) = issue_aws(state, n, lifetime);
            respond(
                200,
                "application/json",
                json!({
                    "AccessKeyId": id,
                    "SecretAccessKey": secret,
                    "Token": session,
                    "AccountId": "123456789012",
                    "Expiration": expiration,
                })
                .to_string(),
            )
        }
        TokenFlow::Entra => {
            if let Some(status) = refuse {
                return entra_error(
                    status,
                    "invalid_client",
                    700213,
                    "No matching federated identity record found for presented assertion subject.",
                );
            }
            if field("grant_type") != Some("client_credentials") {
                return entra_error(
                    400,
                    "unsupported_grant_type",
                    70003,
                    "The app requested an unsupported grant type.",
                );
            }
            if field("client_assertion_type")
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return entra_error(
                    400,
                    "invalid_request",
                    90015,
                    "Requested client assertion type is invalid.",
                );
            }
            if field("client_id").is_none_or(str::is_empty) {
                return entra_error(
                    400,
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'client_id'.",
                );
            }
            if field("scope") != Some("https://cognitiveservices.azure.com/.default") {
                return entra_error(
                    400,
                    "invalid_scope",
                    1002012,
                    "The provided value for scope is not valid.",
                );
            }
            if field("client_assertion") != Some(subject.as_str()) {
                return entra_error(
                    401,
                    "invalid_client",
                    700024,
                    "Client assertion is not within its valid time range.",
                );
            }
            let token = issue_bearer(state, "entra", n, lifetime);
            respond(
                200,
                "application/json; charset=utf-8",
                json!({
                    "token_type": "Bearer",
                    "expires_in": lifetime.as_secs().max(1),
                    "ext_expires_in": lifetime.as_secs().max(1),
                    "access_token": token,
                })
                .to_string(),
            )
        }
        TokenFlow::Metadata => {
            if headers.get("metadata-flavor").map(String::as_str) != Some("Google") {
                return respond(
                    403,
                    "text/html",
                    "Missing required header: Metadata-Flavor".into(),
                );
            }
            if let Some(status) = refuse {
                return respond(status, "text/plain", "Unable to generate access token; IAM returned 403 Forbidden: Permission 'iam.serviceAccounts.getAccessToken' denied".into());
            }
            let token = issue_bearer(state, "gce", n, lifetime);
            respond(
                200,
                "application/json",
                json!({"access_token": token, "expires_in": lifetime.as_secs().max(1), "token_type": "Bearer"}).to_string(),
            )
        }
        TokenFlow::GoogleOAuth => {
            if let Some(status) = refuse {
                return google_error(status, "invalid_grant", "Invalid JWT Signature.");
            }
            if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
                return google_error(400, "unsupported_grant_type", "Invalid grant_type: ");
            }
            let public_key = state.public_key.lock().ok().and_then(|k| k.clone());
            if let Err(why) = check_jwt(
                field("assertion").unwrap_or_default(),
                public_key.as_deref(),
            ) {
                return google_error(400, "invalid_grant", why);
            }
            let token = issue_bearer(state, "oauth", n, lifetime);
            respond(
                200,
                "application/json; charset=utf-8",
                json!({"access_token": token, "expires_in": lifetime.as_secs().max(1), "token_type": "Bearer"}).to_string(),
            )
        }
    }
}

/// Check a JWT-bearer assertion the way Google does: RS256, the claims it requires, the
/// signature when a key is known.
fn check_jwt(jwt: &str, public_key: Option<&[u8]>) -> Result<(), &'static str> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("Invalid JWT: not three segments");
    };
    let json = |seg: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).ok()?).ok()
    };
    let header = json(h).ok_or("Invalid JWT header")?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("Invalid JWT: alg must be RS256");
    }
    let claims = json(c).ok_or("Invalid JWT claims")?;
    for claim in ["iss", "scope", "aud"] {
        if claims.get(claim).and_then(Value::as_str).is_none() {
            return Err("Invalid JWT: a required claim is missing");
        }
    }
    let (Some(iat), Some(exp)) = (
        claims.get("iat").and_then(Value::as_u64),
        claims.get("exp").and_then(Value::as_u64),
    ) else {
        return Err("Invalid JWT: iat and exp are required");
    };
    if exp <= iat || exp - iat > 3600 {
        return Err("Invalid JWT: exp must be within an hour of iat");
    }
    if let Some(key) = public_key {
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "Invalid JWT Signature.")?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key)
            .verify(format!("{h}.{c}").as_bytes(), &signature)
            .map_err(|_| "Invalid JWT Signature.")?;
    }
    Ok(())
}

fn issue_aws(state: &State, n: u64, lifetime: Duration) -> (String, String, String, String) {
    let id = format!("ASIAMOCK{n:012}");
    let secret = format!("mock-secret-access-key-{n:08}-wJalrXUtnFEMI");
    let session = format!("IQoJb3JpZ2luX2VjEMOCK{n:08}SESSIONTOKEN");
    let expires = Instant::now() + lifetime;
    if let Ok(mut issued) = state.issued.lock() {
        issued.insert(
            id.clone(),
            Issued {
                session: Some(session.clone()),
                expires,
            },
        );
    }
    (id, secret, session, iso8601(SystemTime::now() + lifetime))
}

fn issue_bearer(state: &State, prefix: &str, n: u64, lifetime: Duration) -> String {
    let token = format!("{prefix}-access-token-{n:08}-eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9");
    if let Ok(mut issued) = state.issued.lock() {
        issued.insert(
            token.clone(),
            Issued {
                session: None,
                expires: Instant::now() + lifetime,
            },
        );
    }
    token
}
