//! Azure OpenAI: `POST /openai/deployments/{deployment}/chat/completions` and `/embeddings`
//! with `?api-version=…` and an `api-key` header. Bodies are OpenAI's with the deployment as
//! `model` (the request body need not name one), plus Azure's content filter fields on chat.
//! Errors are OpenAI-shaped; a bad key gets Azure's `{"error": {"code": "401", "message"}}`.

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::behaviour::Behaviour;
use crate::body::{self, Body};
use crate::openai::{self, ApiError};

/// Checks `api-key` when the mock has a key.
pub(crate) fn authenticate(expected: Option<&str>, headers: &HeaderMap) -> Option<Response<Body>> {
    let expected = expected?;
    match headers.get("api-key").and_then(|v| v.to_str().ok()) {
        Some(key) if key == expected => None,
        _ => Some(body::json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": {"code": "401", "message": "Access denied due to invalid \
                subscription key or wrong API endpoint. Make sure to provide a valid key for an \
                active subscription and use a correct regional API endpoint for your resource."}}),
        )),
    }
}

/// The `api-version` query parameter, if any.
fn api_version(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("api-version="))
        .filter(|v| !v.is_empty())
}

/// Routes an Azure request to the OpenAI handlers with the deployment as the model.
pub(crate) fn handle(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    behaviour: &Behaviour,
) -> Response<Body> {
    // The v1 API: no deployment in the path, the deployment is the body's `model`, and no
    // `api-version` is needed.
    if path == "/openai/v1/responses" {
        if method != Method::POST {
            return not_found();
        }
        return openai::responses(body, behaviour, None);
    }
    let Some((deployment, operation)) = path
        .strip_prefix("/openai/deployments/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return not_found();
    };
    if api_version(query).is_none() {
        return ApiError::invalid_request(
            "Missing required query parameter: api-version. Set it to a supported version, \
             e.g. api-version=2024-10-21.",
        )
        .param("api-version")
        .code("missing_required_parameter")
        .into_response();
    }
    if method != Method::POST {
        return not_found();
    }
    let mut request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return ApiError::unparseable_json().into_response(),
    };
    request["model"] = Value::String(deployment.to_owned());
    let body = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
    match operation {
        "chat/completions" => openai::azure_chat_completions(&body, behaviour),
        "embeddings" => openai::embeddings(&body, behaviour),
        _ => not_found(),
    }
}

fn not_found() -> Response<Body> {
    body::json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": {"code": "404", "message": "Resource not found"}}),
    )
}
