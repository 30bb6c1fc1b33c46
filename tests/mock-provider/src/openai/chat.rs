//! `POST /v1/chat/completions`: the `chat.completion` object and the `chat.completion.chunk`
//! SSE stream.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{
    ApiError, SYSTEM_FINGERPRINT, Usage, count_words, next_id, now_secs, parse_error, success_json,
};
use crate::answer::{Answer, Finish, Prompt};
use crate::behaviour::{Behaviour, Fault};
use crate::body::{self, Body, Pacing};

/// Words of the built-in answer; `{model}` stands for the requested model.
const SENTENCE: [&str; 5] = ["This", "is", "{model}", "mock", "speaking."];

/// The words the mock answers for `model` under `behaviour`: `behaviour.content` split on
/// whitespace, or `behaviour.chunks` words of the built-in sentence (which names the model).
pub fn answer_words<'a>(behaviour: &'a Behaviour, model: &'a str) -> Vec<&'a str> {
    if let Some(pieces) = &behaviour.pieces {
        return pieces.iter().map(String::as_str).collect();
    }
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
    #[serde(default)]
    tools: Option<Vec<ToolDef>>,
    #[serde(default)]
    tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    response_format: Option<serde_json::Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
}

/// OpenAI's `tool_choice` as the mock obeys it.
pub(crate) fn forced(choice: Option<&serde_json::Value>) -> Option<crate::answer::Forced> {
    use crate::answer::Forced;
    match choice? {
        serde_json::Value::String(s) if s == "none" => Some(Forced::None),
        serde_json::Value::String(s) if s == "required" => Some(Forced::Any),
        v => v
            .pointer("/function/name")
            .or_else(|| v.get("name"))
            .and_then(serde_json::Value::as_str)
            .map(|n| Forced::Named(n.to_owned())),
    }
}

/// OpenAI's `response_format` (chat) or `text.format` (Responses): the schema of the JSON asked
/// for, if any.
pub(crate) fn json_schema(format: Option<&serde_json::Value>) -> Option<serde_json::Value> {
    let format = format?;
    match format.get("type").and_then(serde_json::Value::as_str)? {
        "json_object" => Some(serde_json::json!({})),
        "json_schema" => Some(
            format
                .pointer("/json_schema/schema")
                .or_else(|| format.get("schema"))
                .cloned()
                .unwrap_or_else(|| serde_json::json!({})),
        ),
        _ => None,
    }
}

#[derive(Deserialize)]
struct ToolDef {
    #[serde(default)]
    function: Option<FunctionDef>,
}

#[derive(Deserialize)]
struct FunctionDef {
    name: String,
    #[serde(default)]
    parameters: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// `messages`, reduced while parsing to what the mock needs: how many, how many words of text
/// they hold, and the role and text of the last one (to decide on a tool call).
struct Messages {
    count: usize,
    words: u64,
    last_role: String,
    last_text: String,
    /// What OpenAI refuses about the tool messages: an assistant's `tool_calls` not each
    /// answered by a `tool` message right after it, or a `tool` message answering no call.
    tool_error: Option<String>,
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
                let mut out = Messages {
                    count: 0,
                    words: 0,
                    last_role: String::new(),
                    last_text: String::new(),
                    tool_error: None,
                };
                // Calls of the last assistant message not yet answered by a tool message.
                let mut pending: Vec<String> = Vec::new();
                while let Some(m) = seq.next_element::<MessageWords>()? {
                    let index = out.count;
                    out.count += 1;
                    out.words += m.words;
                    if m.role == "tool" {
                        match pending
                            .iter()
                            .position(|id| Some(id) == m.tool_call_id.as_ref())
                        {
                            Some(at) => {
                                pending.remove(at);
                            }
                            None if out.tool_error.is_none() => {
                                out.tool_error = Some(format!(
                                    "Invalid parameter: messages with role 'tool' must be a \
                                     response to a preceeding message with 'tool_calls'. \
                                     (messages.[{index}].role)"
                                ));
                            }
                            None => {}
                        }
                    } else {
                        if !pending.is_empty() && out.tool_error.is_none() {
                            out.tool_error = Some(unanswered(&pending));
                        }
                        pending = m.tool_call_ids;
                    }
                    out.last_role = m.role;
                    out.last_text = m.text;
                }
                if !pending.is_empty() && out.tool_error.is_none() {
                    out.tool_error = Some(unanswered(&pending));
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

fn unanswered(ids: &[String]) -> String {
    format!(
        "An assistant message with 'tool_calls' must be followed by tool messages responding \
         to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
        ids.join(", ")
    )
}

/// Words in one message's `content`, its role and its text; the ids of its `tool_calls` and
/// its `tool_call_id`.
struct MessageWords {
    words: u64,
    role: String,
    text: String,
    tool_call_ids: Vec<String>,
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct CallId {
    #[serde(default)]
    id: Option<String>,
}

impl<'de> Deserialize<'de> for MessageWords {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MessageWords;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MessageWords, A::Error> {
                let mut out = MessageWords {
                    words: 0,
                    role: String::new(),
                    text: String::new(),
                    tool_call_ids: Vec::new(),
                    tool_call_id: None,
                };
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "content" {
                        let content = map.next_value::<ContentWords>()?;
                        out.words = content.0;
                        out.text = content.1;
                    } else if key == "role" {
                        out.role = map.next_value::<Cow<'de, str>>()?.into_owned();
                    } else if key == "tool_calls" {
                        let calls = map.next_value::<Option<Vec<CallId>>>()?;
                        out.tool_call_ids =
                            calls.into_iter().flatten().filter_map(|c| c.id).collect();
                    } else if key == "tool_call_id" {
                        out.tool_call_id = map.next_value::<Option<String>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Words and text of a `content`: a string, null, or an array of parts whose `text` fields
/// count.
struct ContentWords(u64, String);

impl<'de> Deserialize<'de> for ContentWords {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContentWords;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, null, or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ContentWords, E> {
                Ok(ContentWords(count_words(v), v.to_owned()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<ContentWords, E> {
                Ok(ContentWords(0, String::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<ContentWords, E> {
                Ok(ContentWords(0, String::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ContentWords, A::Error> {
                let mut words = 0;
                let mut text = String::new();
                while let Some(part) = seq.next_element::<PartWords>()? {
                    words += part.0;
                    if !part.1.is_empty() {
                        if !text.is_empty() {
                            text.push(' ');
                        }
                        text.push_str(&part.1);
                    }
                }
                Ok(ContentWords(words, text))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ContentWords, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ContentWords(0, String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Words and text of the `text` field of one content part.
struct PartWords(u64, String);

impl<'de> Deserialize<'de> for PartWords {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PartWords;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a content part object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PartWords, A::Error> {
                let mut out = PartWords(0, String::new());
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "text" {
                        let text = map.next_value::<ContentWords>()?;
                        out = PartWords(text.0, text.1);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

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
    /// Azure only.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_filter_results: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
    /// Azure only.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_filter_results: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<()>,
    annotations: [(); 0],
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCallOut<'a>>>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
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
    /// Azure only, on its first chunk (which has no choices).
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_filter_results: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
    /// Azure only.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_filter_results: Option<serde_json::Value>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallOut<'a>; 1]>,
}

fn sse_event(value: &impl Serialize) -> Bytes {
    body::sse_data(value)
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Azure's content filter verdicts: nothing filtered.
fn content_filter_results() -> serde_json::Value {
    let safe = serde_json::json!({"filtered": false, "severity": "safe"});
    serde_json::json!({
        "hate": safe, "self_harm": safe, "sexual": safe, "violence": safe,
    })
}

fn prompt_filter_results() -> serde_json::Value {
    serde_json::json!([{"prompt_index": 0, "content_filter_results": content_filter_results()}])
}

/// `POST /v1/chat/completions`.
pub(crate) fn chat_completions(body: &[u8], behaviour: &Behaviour) -> Response<Body> {
    chat(body, behaviour, false)
}

/// Azure OpenAI's chat completions: OpenAI's, plus `prompt_filter_results` (a first stream
/// chunk without choices) and `content_filter_results` on every choice.
pub(crate) fn azure_chat_completions(body: &[u8], behaviour: &Behaviour) -> Response<Body> {
    chat(body, behaviour, true)
}

fn chat(body: &[u8], behaviour: &Behaviour, azure: bool) -> Response<Body> {
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
    if let Some(message) = messages.tool_error {
        return ApiError::invalid_request(message)
            .param("messages")
            .into_response();
    }
    if messages.count == 0 {
        return ApiError::invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got \
             an empty array instead.",
        )
        .param("messages")
        .code("empty_array")
        .into_response();
    }

    if let Fault::StreamError { status, .. } = behaviour.fault
        && request.stream != Some(true)
    {
        return ApiError::from_fault(status, None, None, None, None, None).into_response();
    }
    let functions: Vec<FunctionDef> = request
        .tools
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| t.function)
        .collect();
    let prompt = Prompt {
        words: messages.words,
        tools: functions.iter().map(|f| f.name.clone()).collect(),
        tool_schemas: functions
            .into_iter()
            .map(|f| (f.name, f.parameters.unwrap_or_default()))
            .collect(),
        tool_choice: forced(request.tool_choice.as_ref()),
        json_schema: json_schema(request.response_format.as_ref()),
        ends_with_tool_result: messages.last_role == "tool",
        last_user_text: if messages.last_role == "user" {
            messages.last_text
        } else {
            String::new()
        },
        max_tokens: request.max_completion_tokens.or(request.max_tokens),
        single_call: request.parallel_tool_calls == Some(false),
    };
    let answer = Answer::plan(behaviour, model, &prompt, "call_");
    let finish_reason = match answer.finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::ToolUse => "tool_calls",
    };
    let answered = if answer.tool_calls.is_empty() {
        answer.words.len() as u64
    } else {
        answer
            .tool_calls
            .iter()
            .map(|c| c.pieces.len() as u64)
            .sum()
    };
    let usage = Usage::new(messages.words, answered, behaviour);
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
            answer: &answer,
            finish_reason,
            usage: include_usage.then_some(usage),
            azure,
        };
        return stream.into_response(behaviour);
    }

    let content = answer.text();
    let completion = Completion {
        id: &id,
        object: "chat.completion",
        created,
        model,
        choices: [CompletionChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: answer.tool_calls.is_empty().then_some(content.as_str()),
                refusal: None,
                annotations: [],
                tool_calls: (!answer.tool_calls.is_empty()).then(|| {
                    answer
                        .tool_calls
                        .iter()
                        .map(|call| ToolCallOut {
                            index: None,
                            id: Some(&call.id),
                            kind: Some("function"),
                            function: FunctionOut {
                                name: Some(&call.name),
                                arguments: &call.arguments_json,
                            },
                        })
                        .collect()
                }),
            },
            logprobs: None,
            finish_reason,
            content_filter_results: azure.then(content_filter_results),
        }],
        usage,
        service_tier: "default",
        system_fingerprint: SYSTEM_FINGERPRINT,
        prompt_filter_results: azure.then(prompt_filter_results),
    };
    let json = Bytes::from(serde_json::to_vec(&completion).unwrap_or_default());
    success_json(json, &behaviour.fault)
}

struct StreamAnswer<'a> {
    id: &'a str,
    created: u64,
    model: &'a str,
    answer: &'a Answer<'a>,
    finish_reason: &'static str,
    /// `Some` when the client asked for `include_usage`.
    usage: Option<Usage>,
    azure: bool,
}

impl StreamAnswer<'_> {
    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&'static str>) -> Bytes {
        let choices = [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
            content_filter_results: self.azure.then(content_filter_results),
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
            prompt_filter_results: None,
        })
    }

    /// A delta of the call at `index`: the first names the call (`call` given), the rest add
    /// argument text.
    fn tool_delta(
        &self,
        index: u32,
        call: Option<&crate::answer::PlannedCall>,
        arguments: &str,
    ) -> Bytes {
        self.chunk(
            Delta {
                tool_calls: Some([ToolCallOut {
                    index: Some(index),
                    id: call.map(|c| c.id.as_str()),
                    kind: call.map(|_| "function"),
                    function: FunctionOut {
                        name: call.map(|c| c.name.as_str()),
                        arguments,
                    },
                }]),
                ..Delta::default()
            },
            None,
        )
    }

    fn into_response(self, behaviour: &Behaviour) -> Response<Body> {
        let mut events = Vec::with_capacity(self.answer.words.len() + 5);
        if self.azure {
            events.push(sse_event(&Chunk {
                id: "",
                object: "",
                created: 0,
                model: "",
                service_tier: "default",
                system_fingerprint: SYSTEM_FINGERPRINT,
                choices: &[],
                usage: None,
                prompt_filter_results: Some(prompt_filter_results()),
            }));
        }
        events.push(self.chunk(
            Delta {
                role: Some("assistant"),
                content: Some(""),
                refusal: Some(None),
                ..Delta::default()
            },
            None,
        ));
        let mut cut = None;
        if behaviour.fault == Fault::Garbage {
            events.push(Bytes::from_static(
                b"data: {\"id\": \"chatcmpl-garbage\", <<not json\n\n",
            ));
            events.push(Bytes::from_static(DONE));
        } else {
            // Calls one after the other, each opened by a delta naming it at its index.
            let deltas: Vec<Bytes> = match self.answer.tool_calls.as_slice() {
                [] => (0..self.answer.words.len())
                    .map(|i| {
                        let text = self.answer.chunk_text(i);
                        self.chunk(
                            Delta {
                                content: Some(&text),
                                ..Delta::default()
                            },
                            None,
                        )
                    })
                    .collect(),
                calls => {
                    let mut deltas = Vec::new();
                    for (i, call) in (0u32..).zip(calls) {
                        deltas.push(self.tool_delta(i, Some(call), ""));
                        for piece in &call.pieces {
                            deltas.push(self.tool_delta(i, None, piece));
                        }
                    }
                    deltas
                }
            };
            cut = behaviour.fault.stream_cut(deltas.len());
            let (limit, error_status) = match (cut, &behaviour.fault) {
                (Some(cut), _) => (cut.chunks, None),
                (None, &Fault::StreamError { chunks, status }) => {
                    (chunks.min(deltas.len()), Some(status))
                }
                (None, _) => (deltas.len(), None),
            };
            events.extend(deltas.into_iter().take(limit));
            if let Some(status) = error_status {
                // OpenAI ends a failing stream with an error object instead of a chunk.
                let error = ApiError::from_fault(status, None, None, None, None, None);
                let mut event = b"data: ".to_vec();
                event.extend_from_slice(&error.body());
                event.extend_from_slice(b"\n\n");
                events.push(Bytes::from(event));
            } else if cut.is_none() {
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
                        prompt_filter_results: None,
                    }));
                }
                events.push(Bytes::from_static(DONE));
            }
        }
        // The role chunk and the first content chunk pass; the gate holds the rest.
        let pacing = Pacing::of(behaviour, if self.azure { 3 } else { 2 }, cut);
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
}
