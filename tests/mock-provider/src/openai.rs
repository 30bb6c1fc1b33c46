//! OpenAI's wire format: `POST /v1/chat/completions` (JSON and SSE), `POST /v1/embeddings`,
//! `GET /v1/models[/{id}]`, and OpenAI's error bodies.
//!
//! Shapes follow the API reference and the openai-python types (`ChatCompletion`,
//! `ChatCompletionChunk`, `CompletionUsage`, `CreateEmbeddingResponse`, `Model`). Token counts
//! are deterministic: prompt tokens are the whitespace-separated words of the messages' text,
//! completion tokens the words answered (one per stream chunk) plus any reasoning tokens.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::behaviour::{Behaviour, Fault};
use crate::body::{self, Body, Pacing};

/// Sent as `system_fingerprint` on every completion and chunk.
pub const SYSTEM_FINGERPRINT: &str = "fp_6d0c3a1b5e";

/// `created` of every model in `/v1/models`.
const MODEL_CREATED: u64 = 1_686_935_002;

/// Words of the built-in answer; `{model}` stands for the requested model.
const SENTENCE: [&str; 5] = ["This", "is", "{model}", "mock", "speaking."];

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

/// The words the mock answers for `model` under `behaviour`: `behaviour.content` split on
/// whitespace, or `behaviour.chunks` words of the built-in sentence (which names the model).
pub fn answer_words<'a>(behaviour: &'a Behaviour, model: &'a str) -> Vec<&'a str> {
    match &behaviour.content {
        Some(content) => content.split_whitespace().collect(),
        None => (0..behaviour.chunks)
            .map(|i| match SENTENCE[i % SENTENCE.len()] {
                "{model}" => model,
                word => word,
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An OpenAI API error: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `error.message`.
    pub message: Cow<'static, str>,
    /// `error.type`.
    pub error_type: Cow<'static, str>,
    /// `error.param`.
    pub param: Option<Cow<'static, str>>,
    /// `error.code`.
    pub code: Option<Cow<'static, str>>,
    /// `retry-after` header in seconds.
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    error_type: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        message: impl Into<Cow<'static, str>>,
        error_type: &'static str,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            error_type: Cow::Borrowed(error_type),
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    fn param(mut self, param: &'static str) -> Self {
        self.param = Some(Cow::Borrowed(param));
        self
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(Cow::Borrowed(code));
        self
    }

    /// 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, "invalid_request_error")
    }

    /// 400 for a body that is not JSON, worded like OpenAI's.
    pub fn unparseable_json() -> Self {
        Self::invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
             but what was sent was not valid JSON.)",
        )
    }

    /// 400 `missing_required_parameter` for `param`.
    pub fn missing(param: &'static str) -> Self {
        Self::invalid_request(format!("Missing required parameter: '{param}'."))
            .param(param)
            .code("missing_required_parameter")
    }

    /// 401 without an `authorization` bearer token (OpenAI sends `code: null` here).
    pub fn missing_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
        )
    }

    /// 401 `invalid_api_key` for a wrong key; the message shows only the key's edges.
    pub fn invalid_api_key(given: &str) -> Self {
        let shown = redact_key(given);
        Self::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "Incorrect API key provided: {shown}. You can find your API key at \
                 https://platform.openai.com/account/api-keys."
            ),
            "invalid_request_error",
        )
        .code("invalid_api_key")
    }

    /// 404 for a path the API does not serve.
    pub fn invalid_url(method: &http::Method, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("Invalid URL ({method} {path})"),
            "invalid_request_error",
        )
    }

    /// 404 `model_not_found`.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
        )
        .param("model")
        .code("model_not_found")
    }

    /// The error a [`Fault::Status`] asks for, with OpenAI's defaults filled in.
    pub fn from_fault(
        status: u16,
        message: Option<&str>,
        error_type: Option<&str>,
        code: Option<&str>,
        param: Option<&str>,
        retry_after_secs: Option<u64>,
    ) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (d_message, d_type, d_code): (&str, &str, Option<&str>) = match status.as_u16() {
            400 => (
                "The mock provider rejected this request.",
                "invalid_request_error",
                None,
            ),
            401 => (
                "Incorrect API key provided: sk-mock***. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            403 => (
                "You are not allowed to sample from this model.",
                "invalid_request_error",
                None,
            ),
            404 => (
                "The model does not exist or you do not have access to it.",
                "invalid_request_error",
                Some("model_not_found"),
            ),
            429 => (
                "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. \
                 Please try again in 20s.",
                "requests",
                Some("rate_limit_exceeded"),
            ),
            500 => (
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            ),
            503 => (
                "The server is overloaded or not ready yet.",
                "server_error",
                None,
            ),
            s if s >= 500 => ("The upstream server failed.", "server_error", None),
            _ => (
                "The mock provider rejected this request.",
                "invalid_request_error",
                None,
            ),
        };
        Self {
            status,
            message: Cow::Owned(message.unwrap_or(d_message).to_owned()),
            error_type: Cow::Owned(error_type.unwrap_or(d_type).to_owned()),
            param: param.map(|p| Cow::Owned(p.to_owned())),
            code: code.or(d_code).map(|c| Cow::Owned(c.to_owned())),
            retry_after_secs,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let envelope = ErrorEnvelope {
            error: ErrorObject {
                message: &self.message,
                error_type: &self.error_type,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
    }

    /// The full HTTP response.
    pub(crate) fn into_response(self) -> Response<Body> {
        let mut response = json_response(self.status, self.body());
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.error_type,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

fn redact_key(key: &str) -> String {
    let head: String = key.chars().take(3).collect();
    let tail: String = {
        let chars: Vec<char> = key.chars().collect();
        let start = chars.len().saturating_sub(4);
        if chars.len() > 7 {
            chars[start..].iter().collect()
        } else {
            String::new()
        }
    };
    format!("{head}***{tail}")
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
// Chat completions: request

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    messages: Option<Messages>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// `messages`, reduced while parsing to what the mock needs: how many, and how many words of
/// text they hold. Nothing is allocated for message content.
struct Messages {
    count: usize,
    words: u64,
}

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                let mut out = Messages { count: 0, words: 0 };
                while let Some(m) = seq.next_element::<MessageWords>()? {
                    out.count += 1;
                    out.words += m.0;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// Words in one message's `content`.
struct MessageWords(u64);

impl<'de> Deserialize<'de> for MessageWords {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MessageWords;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MessageWords, A::Error> {
                let mut words = 0;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "content" {
                        words = map.next_value::<ContentWords>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(MessageWords(words))
            }
        }
        d.deserialize_map(V)
    }
}

/// Words in a `content`: a string, null, or an array of parts whose `text` fields count.
struct ContentWords(u64);

fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

impl<'de> Deserialize<'de> for ContentWords {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContentWords;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, null, or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ContentWords, E> {
                Ok(ContentWords(count_words(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<ContentWords, E> {
                Ok(ContentWords(0))
            }
            fn visit_none<E: de::Error>(self) -> Result<ContentWords, E> {
                Ok(ContentWords(0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ContentWords, A::Error> {
                let mut words = 0;
                while let Some(part) = seq.next_element::<PartWords>()? {
                    words += part.0;
                }
                Ok(ContentWords(words))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ContentWords, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ContentWords(0))
            }
        }
        d.deserialize_any(V)
    }
}

/// Words in the `text` field of one content part.
struct PartWords(u64);

impl<'de> Deserialize<'de> for PartWords {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PartWords;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a content part object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PartWords, A::Error> {
                let mut words = 0;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "text" {
                        words = map.next_value::<ContentWords>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(PartWords(words))
            }
        }
        d.deserialize_map(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Chat completions: response

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    usage: Usage,
    service_tier: &'static str,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
    annotations: [(); 0],
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    service_tier: &'static str,
    system_fingerprint: &'static str,
    choices: &'a [ChunkChoice<'a>],
    /// Absent without `include_usage`; `null` on every chunk but the last with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
}

fn sse_event(value: &impl Serialize) -> Bytes {
    let mut buf = Vec::with_capacity(384);
    buf.extend_from_slice(b"data: ");
    // Serializing these plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// `POST /v1/chat/completions`.
pub(crate) fn chat_completions(body: &[u8], behaviour: &Behaviour) -> Response<Body> {
    let request: ChatRequest<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return parse_error(&e).into_response(),
    };
    let Some(model) = request.model.as_deref() else {
        return ApiError::missing("model").into_response();
    };
    let Some(messages) = request.messages else {
        return ApiError::missing("messages").into_response();
    };
    if messages.count == 0 {
        return ApiError::invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got \
             an empty array instead.",
        )
        .param("messages")
        .code("empty_array")
        .into_response();
    }

    let mut words = answer_words(behaviour, model);
    let mut finish_reason = "stop";
    if let Some(limit) = request.max_completion_tokens.or(request.max_tokens)
        && (words.len() as u64) > limit
    {
        words.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        finish_reason = "length";
    }
    let usage = Usage::new(messages.words, words.len() as u64, behaviour);
    let id = next_id("chatcmpl-");
    let created = now_secs();

    if request.stream == Some(true) {
        let include_usage = request
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let stream = StreamAnswer {
            id: &id,
            created,
            model,
            words: &words,
            finish_reason,
            usage: include_usage.then_some(usage),
        };
        return stream.into_response(behaviour);
    }

    let content = words.join(" ");
    let completion = Completion {
        id: &id,
        object: "chat.completion",
        created,
        model,
        choices: [CompletionChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: &content,
                refusal: None,
                annotations: [],
            },
            logprobs: None,
            finish_reason,
        }],
        usage,
        service_tier: "default",
        system_fingerprint: SYSTEM_FINGERPRINT,
    };
    let json = Bytes::from(serde_json::to_vec(&completion).unwrap_or_default());
    success_json(json, &behaviour.fault)
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
        Fault::CutAfter { .. } => {
            let mut response = json_response(StatusCode::OK, Bytes::new());
            *response.body_mut() = body::truncated(json);
            response
        }
        _ => json_response(StatusCode::OK, json),
    }
}

struct StreamAnswer<'a> {
    id: &'a str,
    created: u64,
    model: &'a str,
    words: &'a [&'a str],
    finish_reason: &'static str,
    /// `Some` when the client asked for `include_usage`.
    usage: Option<Usage>,
}

impl StreamAnswer<'_> {
    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&'static str>) -> Bytes {
        let choices = [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }];
        sse_event(&Chunk {
            id: self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model,
            service_tier: "default",
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: &choices,
            usage: self.usage.map(|_| None),
        })
    }

    fn into_response(self, behaviour: &Behaviour) -> Response<Body> {
        let mut events = Vec::with_capacity(self.words.len() + 4);
        events.push(self.chunk(
            Delta {
                role: Some("assistant"),
                content: Some(""),
                refusal: Some(None),
            },
            None,
        ));
        let mut cut = false;
        match behaviour.fault {
            Fault::Garbage => {
                events.push(Bytes::from_static(
                    b"data: {\"id\": \"chatcmpl-garbage\", <<not json\n\n",
                ));
                events.push(Bytes::from_static(DONE));
            }
            _ => {
                let limit = match behaviour.fault {
                    Fault::CutAfter { chunks } => {
                        cut = true;
                        chunks.min(self.words.len())
                    }
                    _ => self.words.len(),
                };
                let mut text = String::with_capacity(32);
                for (i, word) in self.words[..limit].iter().enumerate() {
                    text.clear();
                    if i > 0 {
                        text.push(' ');
                    }
                    text.push_str(word);
                    events.push(self.chunk(
                        Delta {
                            content: Some(&text),
                            ..Delta::default()
                        },
                        None,
                    ));
                }
                if !cut {
                    events.push(self.chunk(Delta::default(), Some(self.finish_reason)));
                    if let Some(usage) = self.usage {
                        events.push(sse_event(&Chunk {
                            id: self.id,
                            object: "chat.completion.chunk",
                            created: self.created,
                            model: self.model,
                            service_tier: "default",
                            system_fingerprint: SYSTEM_FINGERPRINT,
                            choices: &[],
                            usage: Some(Some(usage)),
                        }));
                    }
                    events.push(Bytes::from_static(DONE));
                }
            }
        }
        let pacing = Pacing {
            delay: behaviour.chunk_delay,
            gate: behaviour.gate.clone(),
            // The role chunk and the first content chunk pass; the gate holds the rest.
            gate_from: 2,
            cut,
        };
        let mut response = Response::new(body::events(events, pacing));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings

#[derive(Deserialize)]
struct EmbeddingsRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    input: Option<serde_json::Value>,
    #[serde(borrow, default)]
    encoding_format: Option<Cow<'a, str>>,
    #[serde(default)]
    dimensions: Option<usize>,
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: EmbeddingVector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// Default vector length for `model` when the request sets no `dimensions`.
fn default_dimensions(model: &str) -> usize {
    if model.contains("large") { 3072 } else { 1536 }
}

/// One input of an embeddings request, by what it hashes and how many tokens it counts.
enum EmbeddingInput<'a> {
    Text(&'a str),
    Tokens(&'a [serde_json::Value]),
}

fn embedding_inputs(input: &serde_json::Value) -> Option<Vec<EmbeddingInput<'_>>> {
    use serde_json::Value;
    match input {
        Value::String(s) => Some(vec![EmbeddingInput::Text(s)]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if items.iter().all(Value::is_number) => {
            Some(vec![EmbeddingInput::Tokens(items)])
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some(EmbeddingInput::Text(s)),
                Value::Array(tokens) if tokens.iter().all(Value::is_number) => {
                    Some(EmbeddingInput::Tokens(tokens))
                }
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// A deterministic unit vector derived from the input (FNV-1a seed, xorshift stream).
fn embedding_vector(input: &EmbeddingInput<'_>, dimensions: usize) -> Vec<f32> {
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |byte: u8| {
        seed ^= u64::from(byte);
        seed = seed.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match input {
        EmbeddingInput::Text(text) => text.bytes().for_each(&mut feed),
        EmbeddingInput::Tokens(tokens) => tokens
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .for_each(|t| t.to_le_bytes().into_iter().for_each(&mut feed)),
    }
    let mut state = seed | 1;
    let mut v: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Top 24 bits to a float in [-1, 1).
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// `POST /v1/embeddings`.
pub(crate) fn embeddings(body: &[u8], behaviour: &Behaviour) -> Response<Body> {
    let request: EmbeddingsRequest<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return parse_error(&e).into_response(),
    };
    let Some(model) = request.model.as_deref() else {
        return ApiError::missing("model").into_response();
    };
    let Some(input) = request.input.as_ref() else {
        return ApiError::missing("input").into_response();
    };
    let Some(inputs) = embedding_inputs(input) else {
        return ApiError::invalid_request(
            "'$.input' is invalid. Please check the API reference: \
             https://platform.openai.com/docs/api-reference.",
        )
        .param("input")
        .into_response();
    };
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return ApiError::invalid_request(
                "Invalid value for 'encoding_format': expected one of 'float' or 'base64'.",
            )
            .param("encoding_format")
            .code("invalid_value")
            .into_response();
        }
    };
    let dimensions = request
        .dimensions
        .unwrap_or_else(|| default_dimensions(model));

    let mut prompt_tokens = 0;
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += match input {
                EmbeddingInput::Text(text) => count_words(text),
                EmbeddingInput::Tokens(tokens) => tokens.len() as u64,
            };
            let vector = embedding_vector(input, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingVector::Float(vector)
            };
            Embedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let list = EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    let json = Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
    success_json(json, &behaviour.fault)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_in_string_and_part_contents() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"one two three"},{"type":"image_url","image_url":{"url":"x"}}]},
            {"role":"assistant","content":null,"tool_calls":[]}
        ]}"#;
        let request: ChatRequest<'_> = serde_json::from_slice(body).unwrap();
        let messages = request.messages.unwrap();
        assert_eq!(messages.count, 3);
        assert_eq!(messages.words, 5);
    }

    #[test]
    fn answer_names_the_model_and_cycles() {
        let b = Behaviour::normal().chunks(7);
        assert_eq!(
            answer_words(&b, "gpt-x").join(" "),
            "This is gpt-x mock speaking. This is"
        );
        let b = Behaviour::normal().content("fixed  answer text");
        assert_eq!(answer_words(&b, "m"), ["fixed", "answer", "text"]);
    }

    #[test]
    fn key_redaction_keeps_only_edges() {
        assert_eq!(redact_key("sk-abcdefghijkl"), "sk-***ijkl");
        assert_eq!(redact_key("short"), "sho***");
    }

    #[test]
    fn embedding_vectors_are_deterministic_unit_vectors() {
        let a = embedding_vector(&EmbeddingInput::Text("hello"), 16);
        let b = embedding_vector(&EmbeddingInput::Text("hello"), 16);
        let c = embedding_vector(&EmbeddingInput::Text("world"), 16);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
