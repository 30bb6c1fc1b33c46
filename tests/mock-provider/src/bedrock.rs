//! Amazon Bedrock runtime's Converse API: `POST /model/{modelId}/converse` (JSON) and
//! `/converse-stream` (`application/vnd.amazon.eventstream` binary frames); InvokeModel
//! (`/invoke`) for embedding models in [`embeddings`].
//!
//! Shapes follow botocore's `bedrock-runtime` service model: `ConverseResponse` (`output.message`,
//! `stopReason`, `usage`, `metrics`), the `ConverseStreamOutput` events `messageStart`,
//! `contentBlockStart` (tool use), `contentBlockDelta`, `contentBlockStop`, `messageStop`,
//! `metadata`, and exceptions both as HTTP errors (`x-amzn-errortype` + `{"message"}`) and as
//! in-stream frames (`:message-type: exception`). Frames are encoded with AWS's own
//! `aws-smithy-eventstream` (prelude, header and message CRC32s).
//!
//! Every request must carry a well-formed SigV4 `authorization` for service `bedrock` and an
//! `x-amz-date`; with credentials configured, the access key id (and region, if set) must match.
//! The signature itself is not recomputed.

mod embeddings;

use aws_smithy_types::event_stream::{Header, HeaderValue as FrameHeaderValue, Message};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::answer::{
    Answer, Finish, Forced, Prompt, Unpaired, block_ids, next_id, text_of, unpaired, words_in,
};
use crate::behaviour::{Behaviour, Fault};
use crate::body::{self, Body, Pacing};

/// Credentials the mock expects requests to be signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    /// Access key id that must appear in `Credential=`.
    pub access_key_id: String,
    /// Secret access key (kept for a future signature check; not used to verify today).
    pub secret_access_key: String,
    /// Region that must appear in the credential scope, if set.
    pub region: Option<String>,
}

/// The exception name Bedrock uses for `status`.
fn exception_name(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        401 | 403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

fn default_message(status: u16) -> &'static str {
    match status {
        429 => "Too many requests, please wait before trying again.",
        503 => "Bedrock is unable to process your request.",
        403 => "You don't have access to the model with the specified model ID.",
        404 => "The provided model identifier is invalid.",
        400 => "The mock provider rejected this request.",
        _ => "The server encountered an internal error while processing the request.",
    }
}

/// A Bedrock error: `x-amzn-errortype` and `{"message"}`; `error_type` overrides the name.
/// Bedrock sends no `retry-after`, not even with a ThrottlingException: a caller backs off on
/// its own.
pub(crate) fn error(
    status: u16,
    error_type: Option<&str>,
    message: Option<&str>,
) -> Response<Body> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let name = error_type.unwrap_or(exception_name(code.as_u16()));
    let mut response = body::json_response(
        code,
        &json!({"message": message.unwrap_or(default_message(code.as_u16()))}),
    );
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )) {
        headers.insert("x-amzn-errortype", v);
    }
    if let Ok(v) = HeaderValue::from_str(&next_id("")) {
        headers.insert("x-amzn-requestid", v);
    }
    response
}

/// The parts of a SigV4 `authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SigV4<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) date: &'a str,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
    pub(crate) signed_headers: Vec<&'a str>,
    pub(crate) signature: &'a str,
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=HEX`; why not, when it is malformed.
pub(crate) fn parse_sigv4(value: &str) -> Result<SigV4<'_>, &'static str> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("authorization does not start with AWS4-HMAC-SHA256")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or("authorization has no Credential=")?;
    let signed = signed.ok_or("authorization has no SignedHeaders=")?;
    let signature = signature.ok_or("authorization has no Signature=")?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err("Credential is not AKID/date/region/service/aws4_request");
    };
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the credential scope date is not YYYYMMDD");
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("Signature is not 64 hex digits");
    }
    let signed_headers: Vec<&str> = signed.split(';').collect();
    if !signed_headers.contains(&"host") {
        return Err("SignedHeaders does not include host");
    }
    Ok(SigV4 {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// Checks the SigV4 headers; the 403 Bedrock would answer when they fail.
pub(crate) fn authenticate(
    expected: Option<&AwsCredentials>,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    let deny = |name: &str, message: &str| Some(error(403, Some(name), Some(message)));
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return deny(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
    };
    let sig = match parse_sigv4(auth) {
        Ok(sig) => sig,
        Err(why) => return deny("IncompleteSignatureException", why),
    };
    let Some(amz_date) = headers.get("x-amz-date").and_then(|v| v.to_str().ok()) else {
        return deny(
            "IncompleteSignatureException",
            "x-amz-date header is missing",
        );
    };
    if amz_date.len() != 16 || !amz_date.starts_with(sig.date) || !amz_date.ends_with('Z') {
        return deny(
            "InvalidSignatureException",
            "x-amz-date is not YYYYMMDDTHHMMSSZ of the credential scope date",
        );
    }
    if !sig.signed_headers.contains(&"x-amz-date") {
        return deny(
            "InvalidSignatureException",
            "SignedHeaders does not include x-amz-date",
        );
    }
    if sig.service != "bedrock" {
        return deny(
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'.",
        );
    }
    if let Some(expected) = expected {
        if sig.access_key_id != expected.access_key_id {
            return deny(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            );
        }
        if let Some(region) = &expected.region
            && sig.region != region
        {
            return deny(
                "InvalidSignatureException",
                "Credential should be scoped to a valid region.",
            );
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /model/{modelId}/count-tokens` with a Converse input: `{"inputTokens"}`, the words of
/// the system prompt and the messages.
fn count_tokens(body: &[u8]) -> Response<Body> {
    let request: Value = serde_json::from_slice(body).unwrap_or_default();
    let Some(converse) = request.pointer("/input/converse") else {
        return error(
            400,
            Some("ValidationException"),
            Some(
                "1 validation error detected: Value null at 'input' failed to satisfy constraint: Member must not be null",
            ),
        );
    };
    let prompt = prompt(converse);
    body::json_response(StatusCode::OK, &json!({"inputTokens": prompt.words}))
}

/// The `toolUseId`s of a message's `toolUse` (or `toolResult`) blocks.
fn tool_ids(message: &Value, kind: &str) -> Vec<String> {
    block_ids(message, |b| {
        b.get(kind)
            .and_then(|t| t.get("toolUseId"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

/// Converse's refusal of tool uses and results that do not pair up.
fn unpaired_tools(messages: &[Value]) -> Option<String> {
    Some(
        match unpaired(
            messages,
            |m| tool_ids(m, "toolUse"),
            |m| tool_ids(m, "toolResult"),
        )? {
            Unpaired::Unanswered { index, ids } => format!(
                "Expected toolResult blocks at messages.{}.content for the following Ids: {}",
                index + 1,
                ids.join(", ")
            ),
            Unpaired::Unexpected { index, .. } => format!(
                "The number of toolResult blocks at messages.{index}.content exceeds the number \
                 of toolUse blocks of previous turn."
            ),
        },
    )
}

fn prompt(request: &Value) -> Prompt {
    let mut prompt = Prompt {
        words: request.get("system").map(words_in).unwrap_or(0),
        max_tokens: request
            .pointer("/inferenceConfig/maxTokens")
            .and_then(Value::as_u64),
        ..Prompt::default()
    };
    if let Some(tools) = request
        .pointer("/toolConfig/tools")
        .and_then(Value::as_array)
    {
        prompt.tools = tools
            .iter()
            .filter_map(|t| t.pointer("/toolSpec/name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        prompt.tool_schemas = tools
            .iter()
            .filter_map(|t| {
                let name = t.pointer("/toolSpec/name").and_then(Value::as_str)?;
                let schema = t.pointer("/toolSpec/inputSchema/json").cloned();
                Some((name.to_owned(), schema.unwrap_or_default()))
            })
            .collect();
    }
    let choice = request.pointer("/toolConfig/toolChoice");
    prompt.tool_choice = if choice.and_then(|c| c.get("any")).is_some() {
        Some(Forced::Any)
    } else {
        choice
            .and_then(|c| c.pointer("/tool/name"))
            .and_then(Value::as_str)
            .map(|n| Forced::Named(n.to_owned()))
    };
    // Converse takes the schema as a JSON string.
    prompt.json_schema = request
        .pointer("/outputConfig/textFormat/structure/jsonSchema/schema")
        .and_then(Value::as_str)
        .map(|s| serde_json::from_str(s).unwrap_or_default());
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for m in messages {
        prompt.words += m.get("content").map(words_in).unwrap_or(0);
    }
    if let Some(last) = messages.last()
        && last.get("role").and_then(Value::as_str) == Some("user")
    {
        let content = last.get("content").unwrap_or(&Value::Null);
        prompt.ends_with_tool_result = content
            .as_array()
            .is_some_and(|blocks| blocks.iter().any(|b| b.get("toolResult").is_some()));
        if !prompt.ends_with_tool_result {
            prompt.last_user_text = text_of(content);
        }
    }
    prompt
}

fn stop_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolUse => "tool_use",
    }
}

fn usage(answer: &Answer<'_>) -> Value {
    let input = answer.input_tokens - answer.cached_tokens - answer.cache_write_tokens;
    json!({
        "inputTokens": input,
        "outputTokens": answer.output_tokens,
        "totalTokens": answer.input_tokens + answer.output_tokens,
        "cacheReadInputTokens": answer.cached_tokens,
        "cacheWriteInputTokens": answer.cache_write_tokens,
    })
}

/// `POST /model/{modelId}/converse`, `/converse-stream` and `/invoke`.
pub(crate) fn handle(
    method: &Method,
    path: &str,
    body: &[u8],
    behaviour: &Behaviour,
) -> Response<Body> {
    let not_found = || error(404, Some("UnknownOperationException"), Some("Not found"));
    if method != Method::POST {
        return not_found();
    }
    let rest = path.strip_prefix("/model/").unwrap_or_default();
    let (model, stream) = if let Some(m) = rest.strip_suffix("/converse-stream") {
        (m, true)
    } else if let Some(m) = rest.strip_suffix("/converse") {
        (m, false)
    } else if let Some(m) = rest.strip_suffix("/invoke") {
        return embeddings::invoke(&percent_decode(m), body, behaviour);
    } else if rest.ends_with("/count-tokens") {
        return count_tokens(body);
    } else {
        return not_found();
    };
    let model = percent_decode(model);
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error(
                400,
                Some("SerializationException"),
                Some("Unexpected JSON body"),
            );
        }
    };
    if request.pointer("/outputConfig/textFormat").is_some()
        && !crate::anthropic::structured_outputs(&model)
    {
        return error(
            400,
            Some("ValidationException"),
            Some("This model doesn't support structured outputs (outputConfig.textFormat)."),
        );
    }
    if let Some(problem) = request
        .pointer("/outputConfig/textFormat/structure/jsonSchema/schema")
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .as_ref()
        .and_then(crate::anthropic::unsupported_schema)
    {
        return error(
            400,
            Some("ValidationException"),
            Some(&format!(
                "outputConfig.textFormat.structure.jsonSchema.schema: {problem}"
            )),
        );
    }
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return error(
            400,
            None,
            Some(
                "1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null",
            ),
        );
    };
    if messages
        .first()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        != Some("user")
    {
        return error(
            400,
            None,
            Some(
                "A conversation must start with a user message. Try again with a conversation that starts with a user message.",
            ),
        );
    }
    if let Some(message) = unpaired_tools(messages) {
        return error(400, Some("ValidationException"), Some(&message));
    }
    if let Fault::StreamError { status, .. } = behaviour.fault
        && !stream
    {
        return error(status, None, None);
    }
    let prompt = prompt(&request);
    let answer = Answer::plan(behaviour, &model, &prompt, "tooluse_");
    if stream {
        return stream_response(&answer, behaviour);
    }
    let content: Value = if answer.tool_calls.is_empty() {
        json!([{"text": answer.text()}])
    } else {
        answer
            .tool_calls
            .iter()
            .map(|call| {
                json!({"toolUse": {"toolUseId": call.id, "name": call.name,
                                   "input": call.arguments}})
            })
            .collect()
    };
    let mut response = body::success_json(
        &json!({
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop_reason(answer.finish),
            "usage": usage(&answer),
            "metrics": {"latencyMs": u64::try_from(behaviour.latency.as_millis()).unwrap_or(0) + 42},
        }),
        &behaviour.fault,
    );
    if let Ok(v) = HeaderValue::from_str(&next_id("")) {
        response.headers_mut().insert("x-amzn-requestid", v);
    }
    response
}

/// One event-stream frame.
pub(crate) fn frame(message_type: &str, type_header: &str, name: &str, payload: &Value) -> Bytes {
    let message = Message::new(Bytes::from(serde_json::to_vec(payload).unwrap_or_default()))
        .add_header(Header::new(
            type_header.to_owned(),
            FrameHeaderValue::String(name.to_owned().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            FrameHeaderValue::String("application/json".into()),
        ))
        .add_header(Header::new(
            ":message-type",
            FrameHeaderValue::String(message_type.to_owned().into()),
        ));
    let mut buf = Vec::with_capacity(128);
    // Writing into a Vec fails only for headers or payloads past the format's size limits.
    let _ = aws_smithy_eventstream::frame::write_message_to(&message, &mut buf);
    Bytes::from(buf)
}

fn event(name: &str, payload: &Value) -> Bytes {
    frame("event", ":event-type", name, payload)
}

/// The in-stream exception member name for `status` (lower camel case, as in the service model).
fn stream_exception(status: u16) -> &'static str {
    match status {
        400 => "validationException",
        429 => "throttlingException",
        503 => "serviceUnavailableException",
        424 => "modelStreamErrorException",
        _ => "internalServerException",
    }
}

fn stream_response(answer: &Answer<'_>, behaviour: &Behaviour) -> Response<Body> {
    // Real streams pad each event with a "p" field so sizes do not leak content.
    let mut events = vec![event(
        "messageStart",
        &json!({"p": "abcdefghij", "role": "assistant"}),
    )];
    let start = |index: usize, call: &crate::answer::PlannedCall| {
        event(
            "contentBlockStart",
            &json!({"contentBlockIndex": index, "p": "abcd",
                "start": {"toolUse": {"toolUseId": call.id, "name": call.name}}}),
        )
    };
    let block_stop = |index: usize| {
        event(
            "contentBlockStop",
            &json!({"contentBlockIndex": index, "p": "abcdef"}),
        )
    };
    // The content chunks after the first block's start: one delta each; a later tool use's
    // first chunk also closes the block before it and opens its own.
    let deltas: Vec<Bytes> = match answer.tool_calls.as_slice() {
        [] => (0..answer.words.len())
            .map(|i| {
                event(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"text": answer.chunk_text(i)}, "p": "abc"}),
                )
            })
            .collect(),
        calls => {
            events.push(start(0, &calls[0]));
            calls
                .iter()
                .enumerate()
                .flat_map(|(index, call)| {
                    call.pieces.iter().enumerate().map(move |(j, piece)| {
                        let d = event(
                            "contentBlockDelta",
                            &json!({"contentBlockIndex": index,
                                    "delta": {"toolUse": {"input": piece}}, "p": "ab"}),
                        );
                        if index > 0 && j == 0 {
                            let mut joined = block_stop(index - 1).to_vec();
                            joined.extend_from_slice(&start(index, call));
                            joined.extend_from_slice(&d);
                            Bytes::from(joined)
                        } else {
                            d
                        }
                    })
                })
                .collect()
        }
    };
    let last_block = answer.tool_calls.len().saturating_sub(1);
    let gate_from = events.len() + 1;
    let cut = behaviour.fault.stream_cut(deltas.len());
    let (limit, error_status) = match (cut, &behaviour.fault) {
        (Some(cut), _) => (cut.chunks, None),
        (None, &Fault::StreamError { chunks, status }) => (chunks.min(deltas.len()), Some(status)),
        (None, _) => (deltas.len(), None),
    };
    if behaviour.fault == Fault::Garbage {
        // A prelude whose CRC does not match: no decoder accepts it.
        events.push(Bytes::from_static(
            b"\x00\x00\x00\x20\x00\x00\x00\x00garbage-not-a-frame-at-all!!",
        ));
    } else {
        events.extend(deltas.into_iter().take(limit));
        if let Some(status) = error_status {
            events.push(frame(
                "exception",
                ":exception-type",
                stream_exception(status),
                &json!({"message": default_message(status)}),
            ));
        } else if cut.is_none() {
            events.push(block_stop(last_block));
            events.push(event(
                "messageStop",
                &json!({"stopReason": stop_reason(answer.finish), "p": "ab"}),
            ));
            events.push(event(
                "metadata",
                &json!({"usage": usage(answer), "metrics": {"latencyMs": 42}, "p": "abcdefgh"}),
            ));
        }
    }
    let mut response = Response::new(body::events(events, Pacing::of(behaviour, gate_from, cut)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    if let Ok(v) = HeaderValue::from_str(&next_id("")) {
        headers.insert("x-amzn-requestid", v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_sigv4_header() {
        let sig = parse_sigv4(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240102/us-east-1/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        .unwrap();
        assert_eq!(sig.access_key_id, "AKIDEXAMPLE");
        assert_eq!(sig.region, "us-east-1");
        assert_eq!(sig.service, "bedrock");
        assert_eq!(sig.signed_headers, ["content-type", "host", "x-amz-date"]);
        assert!(parse_sigv4("Bearer x").is_err());
        assert!(parse_sigv4("AWS4-HMAC-SHA256 Credential=A/2024/r/s/aws4_request, SignedHeaders=host, Signature=00").is_err());
    }

    #[test]
    fn decodes_percent_encoded_model_ids() {
        assert_eq!(
            percent_decode("anthropic.claude-3-haiku-20240307-v1%3A0"),
            "anthropic.claude-3-haiku-20240307-v1:0"
        );
    }
}
