//! OpenAI's wire format: `POST /v1/chat/completions` (JSON and SSE), `POST /v1/embeddings`,
//! `GET /v1/models[/{id}]`, and OpenAI's error bodies.
//!
//! Shapes follow the API reference and the openai-python types (`ChatCompletion`,
//! `ChatCompletionChunk`, `CompletionUsage`, `CreateEmbeddingResponse`, `Model`). Token counts
//! are deterministic: prompt tokens are the whitespace-separated words of the messages' text,
//! completion tokens the words answered (one per stream chunk) plus any reasoning tokens.

mod chat;
mod embeddings;
mod error;
mod responses;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::behaviour::{Behaviour, Fault};
use crate::body::{self, Body};

pub use chat::answer_words;
pub(crate) use chat::{azure_chat_completions, chat_completions};
pub(crate) use embeddings::{embeddings, text_vector};
pub use error::ApiError;
pub(crate) use responses::responses;

/// Sent as `system_fingerprint` on every completion and chunk.
pub const SYSTEM_FINGERPRINT: &str = "fp_6d0c3a1b5e";

/// `created` of every model in `/v1/models`.
const MODEL_CREATED: u64 = 1_686_935_002;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id(prefix: &str) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{n:024}")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// A JSON response with OpenAI's content type.
pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Map a body parse failure to OpenAI's error: syntax errors are "could not parse", type errors
/// name the problem.
fn parse_error(e: &serde_json::Error) -> ApiError {
    match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::invalid_request(format!("Invalid request body: {e}"))
        }
        _ => ApiError::unparseable_json(),
    }
}

/// A 200 JSON answer, damaged as `fault` asks.
fn success_json(json: Bytes, fault: &Fault) -> Response<Body> {
    match fault {
        Fault::Garbage => json_response(
            StatusCode::OK,
            Bytes::from_static(
                b"{\"id\": \"chatcmpl-garbage\", \"choices\": [{\"index\": 0, <<not json",
            ),
        ),
        Fault::CutAfter { .. }
        | Fault::CutInside {
            clean_end: false, ..
        } => {
            let mut response = json_response(StatusCode::OK, Bytes::new());
            *response.body_mut() = body::truncated(json);
            response
        }
        Fault::CutInside {
            clean_end: true, ..
        } => json_response(StatusCode::OK, json.slice(..json.len() / 2)),
        _ => json_response(StatusCode::OK, json),
    }
}

// ---------------------------------------------------------------------------------------------
// Usage

/// `usage` of a completion (openai-python `CompletionUsage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Words in the prompt.
    pub prompt_tokens: u64,
    /// Words answered plus reasoning tokens.
    pub completion_tokens: u64,
    /// Sum of the two.
    pub total_tokens: u64,
    /// Cached share of the prompt.
    pub prompt_tokens_details: PromptTokensDetails,
    /// Reasoning share of the completion.
    pub completion_tokens_details: CompletionTokensDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Always 0.
    pub audio_tokens: u64,
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CompletionTokensDetails {
    /// Hidden reasoning tokens (counted in `completion_tokens`).
    pub reasoning_tokens: u64,
    /// Always 0.
    pub audio_tokens: u64,
    /// Always 0.
    pub accepted_prediction_tokens: u64,
    /// Always 0.
    pub rejected_prediction_tokens: u64,
}

impl Usage {
    fn new(prompt: u64, answered: u64, behaviour: &Behaviour) -> Self {
        let completion = answered + behaviour.reasoning_tokens;
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: behaviour.cached_tokens.min(prompt),
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: behaviour.reasoning_tokens,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Models

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

fn model(id: &str) -> Model<'_> {
    Model {
        id,
        object: "model",
        created: MODEL_CREATED,
        owned_by: "openai",
    }
}

/// `GET /v1/models`.
pub(crate) fn list_models(models: &[String], behaviour: &Behaviour) -> Response<Body> {
    let list = ModelList {
        object: "list",
        data: models.iter().map(|m| model(m)).collect(),
    };
    let json = Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
    success_json(json, &behaviour.fault)
}

/// `GET /v1/models/{id}`.
pub(crate) fn retrieve_model(models: &[String], id: &str, behaviour: &Behaviour) -> Response<Body> {
    if !models.iter().any(|m| m == id) {
        return ApiError::model_not_found(id).into_response();
    }
    let json = Bytes::from(serde_json::to_vec(&model(id)).unwrap_or_default());
    success_json(json, &behaviour.fault)
}
