//! Gemini's API: `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent`
//! (`?alt=sse`: SSE whose `data:` lines are each a `GenerateContentResponse`, CRLF-separated as
//! Google sends them; without it a JSON array sent piece by piece), `:embedContent` and
//! `:batchEmbedContents`. The key comes as `x-goog-api-key` or `?key=`. Errors are
//! `{"error": {"code", "message", "status"}}`; like the real API, a wrong key is a 400
//! `INVALID_ARGUMENT` with reason `API_KEY_INVALID` and a missing one a 403.
//!
//! Shapes follow the REST reference and google-genai's types (`GenerateContentResponse`,
//! `Candidate`, `UsageMetadata`, `FunctionCall`, `EmbedContentResponse`).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::answer::{Answer, Finish, Forced, Prompt, next_id, text_of, words_in};
use crate::behaviour::{Behaviour, Fault};
use crate::body::{self, Body, Pacing};
use crate::openai::text_vector;

/// Google's canonical status name for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        s if s >= 500 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

fn default_message(status: u16) -> &'static str {
    match status {
        429 => "Resource has been exhausted (e.g. check quota).",
        503 => "The model is overloaded. Please try again later.",
        500 => {
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
        }
        404 => "models/unknown is not found for API version v1beta.",
        _ => "The mock provider rejected this request.",
    }
}

fn error_value(status: u16, message: Option<&str>, status_text: Option<&str>) -> Value {
    json!({"error": {
        "code": status,
        "message": message.unwrap_or(default_message(status)),
        "status": status_text.unwrap_or(status_name(status)),
    }})
}

/// A Gemini error response for `status`; `status_text` overrides `error.status`.
///
/// Gemini sends no `retry-after` header. A quota 429 says how long to wait in the body instead:
/// `details` holds a `google.rpc.QuotaFailure`, a `google.rpc.Help` and a `google.rpc.RetryInfo`
/// whose `retryDelay` is a protobuf Duration (`"37s"`); `retry_after_secs` adds those. Without it
/// the 429 has no details, as Gemini's "Resource has been exhausted" answers do.
pub(crate) fn error(
    status: u16,
    status_text: Option<&str>,
    message: Option<&str>,
    retry_after_secs: Option<u64>,
) -> Response<Body> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut value = error_value(code.as_u16(), message, status_text);
    if let Some(secs) = retry_after_secs {
        value["error"]["details"] = json!([
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    "quotaDimensions": {"location": "global", "model": "mock"},
                    "quotaValue": "60",
                }],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{secs}s")},
        ]);
    }
    body::json_response(code, &value)
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Checks `x-goog-api-key` or `?key=` when the mock has a key.
pub(crate) fn authenticate(
    expected: Option<&str>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<Response<Body>> {
    let expected = expected?;
    let given = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| query_param(query, "key"));
    match given {
        Some(key) if key == expected => None,
        Some(_) => {
            let mut v = error_value(
                400,
                Some("API key not valid. Please pass a valid API key."),
                None,
            );
            v["error"]["details"] = json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }]);
            Some(body::json_response(StatusCode::BAD_REQUEST, &v))
        }
        None => Some(error(
            403,
            None,
            Some(
                "Method doesn't allow unregistered callers (callers without established \
                 identity). Please use API Key or other form of API consumer identity to call \
                 this API.",
            ),
            None,
        )),
    }
}

fn invalid(message: &str) -> Response<Body> {
    error(400, None, Some(message), None)
}

/// Reads what the mock needs from a `GenerateContentRequest`.
fn prompt(request: &Value) -> Prompt {
    let mut prompt = Prompt {
        words: request.get("systemInstruction").map(words_in).unwrap_or(0),
        max_tokens: request
            .pointer("/generationConfig/maxOutputTokens")
            .and_then(Value::as_u64),
        ..Prompt::default()
    };
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        prompt.tools = tools
            .iter()
            .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
            .flatten()
            .filter_map(|f| f.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect();
        prompt.tool_schemas = tools
            .iter()
            .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
            .flatten()
            .filter_map(|f| {
                let name = f.get("name").and_then(Value::as_str)?;
                let schema = f
                    .get("parameters")
                    .or_else(|| f.get("parametersJsonSchema"));
                Some((name.to_owned(), schema.cloned().unwrap_or_default()))
            })
            .collect();
    }
    let calling = request.pointer("/toolConfig/functionCallingConfig");
    prompt.tool_choice = match calling.and_then(|c| c.get("mode")).and_then(Value::as_str) {
        Some("NONE") => Some(Forced::None),
        Some("ANY") => match calling
            .and_then(|c| c.pointer("/allowedFunctionNames/0"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(Forced::Named(name.to_owned())),
            None => Some(Forced::Any),
        },
        _ => None,
    };
    if request
        .pointer("/generationConfig/responseMimeType")
        .and_then(Value::as_str)
        == Some("application/json")
    {
        prompt.json_schema = Some(
            request
                .pointer("/generationConfig/responseSchema")
                .or_else(|| request.pointer("/generationConfig/responseJsonSchema"))
                .cloned()
                .unwrap_or_else(|| json!({})),
        );
    }
    let contents = request
        .get("contents")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for c in contents {
        prompt.words += c.get("parts").map(words_in).unwrap_or(0);
    }
    if let Some(last) = contents.last()
        && last.get("role").and_then(Value::as_str).unwrap_or("user") == "user"
    {
        let parts = last.get("parts").unwrap_or(&Value::Null);
        prompt.ends_with_tool_result = parts
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p.get("functionResponse").is_some()));
        if !prompt.ends_with_tool_result {
            prompt.last_user_text = text_of(parts);
        }
    }
    prompt
}

/// Gemini's refusal of a function call turn whose responses do not match it one for one: the
/// content after a turn of N `functionCall` parts must hold N `functionResponse` parts.
fn unmatched_responses(contents: &[Value]) -> Option<&'static str> {
    let count = |c: &Value, key: &str| {
        c.get("parts")
            .and_then(Value::as_array)
            .map_or(0, |ps| ps.iter().filter(|p| p.get(key).is_some()).count())
    };
    let mut calls = 0;
    for content in contents {
        let responses = count(content, "functionResponse");
        if (calls > 0 || responses > 0) && responses != calls {
            return Some(
                "Please ensure that the number of function response parts is equal to the number \
                 of function call parts of the function call turn.",
            );
        }
        calls = count(content, "functionCall");
    }
    None
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop | Finish::ToolUse => "STOP",
        Finish::Length => "MAX_TOKENS",
    }
}

/// `usageMetadata` with `candidates` visible output tokens so far. Thoughts come before the
/// answer, so every event reports all of them, in `thoughtsTokenCount`: Gemini counts them apart
/// from `candidatesTokenCount` (`totalTokenCount` is the sum of prompt, candidates and thoughts).
fn usage(answer: &Answer<'_>, candidates: u64) -> Value {
    let thoughts = answer.reasoning_tokens;
    let mut usage = json!({
        "promptTokenCount": answer.input_tokens,
        "candidatesTokenCount": candidates,
        "totalTokenCount": answer.input_tokens + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": answer.input_tokens}],
    });
    if answer.cached_tokens > 0 {
        usage["cachedContentTokenCount"] = json!(answer.cached_tokens);
    }
    if thoughts > 0 {
        usage["thoughtsTokenCount"] = json!(thoughts);
    }
    usage
}

fn response(model: &str, id: &str, parts: Value, finish: Option<&str>, usage: Value) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(reason) = finish {
        candidate["finishReason"] = json!(reason);
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": id,
    })
}

/// Everything under `/v1beta/models/{model}:{method}`.
pub(crate) fn handle(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    behaviour: &Behaviour,
) -> Response<Body> {
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))
        .or_else(|| {
            // Vertex AI: /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}
            let rest = path.strip_prefix("/v1/projects/")?;
            let at = rest.find("/publishers/google/models/")?;
            Some(&rest[at + "/publishers/google/models/".len()..])
        });
    let Some((model, operation)) = rest.and_then(|r| r.rsplit_once(':')) else {
        return error(404, None, Some(&format!("Not found: {path}")), None);
    };
    if method != Method::POST {
        return error(
            404,
            None,
            Some(&format!("Not found: {method} {path}")),
            None,
        );
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) | Err(_) => {
            return invalid("Invalid JSON payload received. Unknown name or malformed body.");
        }
    };
    let stream = operation == "streamGenerateContent";
    if let Fault::StreamError { status, .. } = behaviour.fault
        && !stream
    {
        return error(status, None, None, None);
    }
    match operation {
        "generateContent" | "streamGenerateContent" => {}
        "embedContent" => return embed(&request, model, behaviour),
        "countTokens" => {
            // `contents` alone, or a whole `generateContentRequest`.
            let inner = request.get("generateContentRequest").unwrap_or(&request);
            return body::json_response(
                StatusCode::OK,
                &json!({"totalTokens": prompt(inner).words}),
            );
        }
        "batchEmbedContents" => return batch_embed(&request, behaviour),
        _ => {
            return error(
                404,
                None,
                Some(&format!("Unknown method: {operation}")),
                None,
            );
        }
    }
    if request
        .get("contents")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return invalid("* GenerateContentRequest.contents: contents is not specified\n");
    }
    let contents = request.get("contents").and_then(Value::as_array);
    if let Some(message) = unmatched_responses(contents.map_or(&[], Vec::as_slice)) {
        return invalid(message);
    }
    let prompt = prompt(&request);
    let answer = Answer::plan(behaviour, model, &prompt, "");
    let id = next_id("mock-");
    if stream {
        return stream_response(
            model,
            &id,
            &answer,
            behaviour,
            query_param(query, "alt") == Some("sse"),
        );
    }
    let parts: Value = if answer.tool_calls.is_empty() {
        json!([{"text": answer.text()}])
    } else {
        answer
            .tool_calls
            .iter()
            .map(|call| json!({"functionCall": {"name": call.name, "args": call.arguments}}))
            .collect()
    };
    body::success_json(
        &response(
            model,
            &id,
            parts,
            Some(finish_reason(answer.finish)),
            usage(&answer, answer.output_tokens - answer.reasoning_tokens),
        ),
        &behaviour.fault,
    )
}

fn stream_response(
    model: &str,
    id: &str,
    answer: &Answer<'_>,
    behaviour: &Behaviour,
    sse: bool,
) -> Response<Body> {
    // One response per word; a function call comes whole, one per response (parallel calls in
    // consecutive responses), the output count reported whole from the first.
    let mut pieces: Vec<(Value, u64)> = if answer.tool_calls.is_empty() {
        (0..answer.words.len())
            .map(|i| (json!([{"text": answer.chunk_text(i)}]), i as u64 + 1))
            .collect()
    } else {
        answer
            .tool_calls
            .iter()
            .map(|call| {
                (
                    json!([{"functionCall": {"name": call.name, "args": call.arguments}}]),
                    answer.output_tokens - answer.reasoning_tokens,
                )
            })
            .collect()
    };
    if pieces.is_empty() {
        pieces.push((json!([{"text": ""}]), 0));
    }
    let total = pieces.len();
    let cut = behaviour.fault.stream_cut(total);
    let (limit, error_status) = match (cut, &behaviour.fault) {
        (Some(cut), _) => (cut.chunks, None),
        (None, &Fault::StreamError { chunks, status }) => (chunks.min(total), Some(status)),
        (None, _) => (total, None),
    };
    let mut values: Vec<Value> = pieces
        .into_iter()
        .take(limit)
        .enumerate()
        .map(|(i, (parts, so_far))| {
            let finish = (i + 1 == total).then(|| finish_reason(answer.finish));
            response(model, id, parts, finish, usage(answer, so_far))
        })
        .collect();
    if let Some(status) = error_status {
        values.push(error_value(status, None, None));
    }
    let mut events: Vec<Bytes> = Vec::with_capacity(values.len() + 2);
    if behaviour.fault == Fault::Garbage {
        events.push(Bytes::from_static(
            b"data: {\"candidates\": [<<not json\r\n\r\n",
        ));
    } else if sse {
        for v in &values {
            let mut buf = b"data: ".to_vec();
            buf.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
            buf.extend_from_slice(b"\r\n\r\n");
            events.push(Bytes::from(buf));
        }
    } else {
        for (i, v) in values.iter().enumerate() {
            let mut buf = if i == 0 {
                b"[".to_vec()
            } else {
                b",\r\n".to_vec()
            };
            buf.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
            events.push(Bytes::from(buf));
        }
        if cut.is_none() {
            events.push(Bytes::from_static(if values.is_empty() {
                b"[]"
            } else {
                b"]"
            }));
        }
    }
    let pacing = Pacing::of(behaviour, 1, cut);
    if sse {
        body::sse_response(events, pacing)
    } else {
        let mut response = Response::new(body::events(events, pacing));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
        response
    }
}

fn dimensions(request: &Value) -> usize {
    request
        .get("outputDimensionality")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .unwrap_or(768)
}

fn embed(request: &Value, _model: &str, behaviour: &Behaviour) -> Response<Body> {
    let Some(content) = request.get("content") else {
        return invalid("* EmbedContentRequest.content: content is not specified\n");
    };
    let text = text_of(content.get("parts").unwrap_or(&Value::Null));
    body::success_json(
        &json!({"embedding": {"values": text_vector(&text, dimensions(request))}}),
        &behaviour.fault,
    )
}

fn batch_embed(request: &Value, behaviour: &Behaviour) -> Response<Body> {
    let Some(requests) = request.get("requests").and_then(Value::as_array) else {
        return invalid("* BatchEmbedContentsRequest.requests: requests is not specified\n");
    };
    let embeddings: Vec<Value> = requests
        .iter()
        .map(|r| {
            let text = text_of(r.pointer("/content/parts").unwrap_or(&Value::Null));
            json!({"values": text_vector(&text, dimensions(r))})
        })
        .collect();
    body::success_json(&json!({"embeddings": embeddings}), &behaviour.fault)
}
