//! Bedrock's credentials (an access key pair from the keys Secret) and SigV4 signing.

use serde_json::Value;

use crate::error::CredentialsError;
use crate::state::Provider;

/// Parse the key into AWS credentials (see the module docs for the two accepted formats).
pub fn credentials(key: &str) -> Result<aws_credential_types::Credentials, String> {
    let key = key.trim();
    let (id, secret, token) = if key.starts_with('{') {
        let v: Value = serde_json::from_str(key)
            .map_err(|_| "the bedrock key is not valid JSON".to_string())?;
        let get = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        (
            get("accessKeyId"),
            get("secretAccessKey"),
            get("sessionToken"),
        )
    } else {
        let mut parts = key.splitn(3, ':');
        (
            parts.next().map(str::to_string),
            parts.next().map(str::to_string),
            parts.next().map(str::to_string),
        )
    };
    match (id, secret) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Ok(
            aws_credential_types::Credentials::new(id, secret, token, None, "gatehouse-keys"),
        ),
        _ => Err(
            "a bedrock key must be ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] or a JSON object with accessKeyId and secretAccessKey"
                .to_string(),
        ),
    }
}

/// Sign `request` with SigV4 for the `bedrock` service.
pub fn sign(
    provider: &Provider,
    credentials: &aws_credential_types::Credentials,
    request: &mut http::Request<http_body_util::Full<bytes::Bytes>>,
    body: &[u8],
) -> Result<(), CredentialsError> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let region = provider
        .region
        .clone()
        .unwrap_or_else(|| "us-east-1".to_string());
    let identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&region)
        .name("bedrock")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| CredentialsError::Sign(e.into()))?
        .into();
    let uri = request.uri().to_string();
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        uri.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| CredentialsError::Sign(e.into()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| CredentialsError::Sign(e.into()))?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}
