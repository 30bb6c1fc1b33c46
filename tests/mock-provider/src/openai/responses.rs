//! OpenAI's Responses API: `POST /v1/responses` (and Azure's `/openai/v1/responses`), JSON and
//! the semantic event stream (`response.created` … `response.completed`, each with its
//! `sequence_number`; no `[DONE]`). Shapes follow the API reference and the openai-python types
//! (`Response`, `ResponseOutputMessage`, `ResponseFunctionToolCall`, `ResponseUsage`, the
//! `Response*Event`s). `previous_response_id` is accepted (OpenAI stores responses); its words
//! do not count.

use bytes::Bytes;
use http::Response;
use serde_json::{Value, json};

use super::{ApiError, chat};
use crate::answer::{Answer, Finish, Prompt, next_id, text_of, words_in};
use crate::behaviour::{Behaviour, Fault};
use crate::body::{self, Body, Pacing, sse_named};

fn prompt(request: &Value) -> Prompt {
    let mut prompt = Prompt {
        words: request.get("instructions").map(words_in).unwrap_or(0),
        max_tokens: request.get("max_output_tokens").and_then(Value::as_u64),
        tool_choice: chat::forced(request.get("tool_choice")),
        json_schema: chat::json_schema(request.pointer("/text/format")),
        single_call: request.get("parallel_tool_calls") == Some(&Value::Bool(false)),
        ..Prompt::default()
    };
    for tool in request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = tool.get("name").and_then(Value::as_str) {
            prompt.tools.push(name.to_owned());
            let schema = tool.get("parameters").cloned().unwrap_or_default();
            prompt.tool_schemas.push((name.to_owned(), schema));
        }
    }
    match request.get("input") {
        Some(Value::String(s)) => {
            prompt.words += crate::answer::count_words(s);
            prompt.last_user_text = s.clone();
        }
        Some(Value::Array(items)) => {
            for item in items {
                prompt.words += item
                    .get("content")
                    .or_else(|| item.get("output"))
                    .map(words_in)
                    .unwrap_or(0);
            }
            if let Some(last) = items.last() {
                prompt.ends_with_tool_result =
                    last.get("type").and_then(Value::as_str) == Some("function_call_output");
                if last.get("role").and_then(Value::as_str) == Some("user") {
                    prompt.last_user_text = text_of(last.get("content").unwrap_or(&Value::Null));
                }
            }
        }
        _ => {}
    }
    prompt
}

/// What OpenAI refuses about function call items: a `function_call` of the input without a
/// `function_call_output` of the same `call_id` ("No tool output found for function call
/// …"), or an output whose call is not in the input. Calls answered by an earlier stored
/// response (`previous_response_id`) are not checked.
fn unanswered_call(request: &Value) -> Option<String> {
    if request
        .get("previous_response_id")
        .is_some_and(|v| !v.is_null())
    {
        return None;
    }
    let items = request.get("input")?.as_array()?;
    let ids = |kind: &str| -> Vec<&str> {
        items
            .iter()
            .filter(|i| i.get("type").and_then(Value::as_str) == Some(kind))
            .filter_map(|i| i.get("call_id").and_then(Value::as_str))
            .collect()
    };
    let (calls, outputs) = (ids("function_call"), ids("function_call_output"));
    if let Some(call) = calls.iter().find(|c| !outputs.contains(c)) {
        return Some(format!("No tool output found for function call {call}."));
    }
    outputs
        .iter()
        .find(|o| !calls.contains(o))
        .map(|o| format!("No tool call found for function call output with call_id {o}."))
}

/// The `output` items of `answer` (items carry their own ids: the message's, and one per
/// function call).
fn output(answer: &Answer<'_>, message_id: &str, call_item_ids: &[String]) -> Vec<Value> {
    if answer.tool_calls.is_empty() {
        return vec![json!({
            "type": "message", "id": message_id, "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": answer.text(), "annotations": [],
                         "logprobs": []}],
        })];
    }
    answer
        .tool_calls
        .iter()
        .zip(call_item_ids)
        .map(|(call, item_id)| {
            json!({
                "type": "function_call", "id": item_id, "call_id": call.id,
                "name": call.name, "arguments": call.arguments_json, "status": "completed",
            })
        })
        .collect()
}

fn usage(answer: &Answer<'_>) -> Value {
    json!({
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cached_tokens": answer.cached_tokens},
        "output_tokens": answer.output_tokens,
        "output_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
        "total_tokens": answer.input_tokens + answer.output_tokens,
    })
}

fn response_object(
    id: &str,
    model: &str,
    request: &Value,
    status: &str,
    output: Vec<Value>,
    usage: Value,
    incomplete: Value,
) -> Value {
    json!({
        "id": id, "object": "response", "created_at": super::now_secs(), "status": status,
        "error": null, "incomplete_details": incomplete,
        "instructions": request.get("instructions").cloned().unwrap_or(Value::Null),
        "max_output_tokens": request.get("max_output_tokens").cloned().unwrap_or(Value::Null),
        "model": model, "output": output, "parallel_tool_calls": true,
        "previous_response_id": request.get("previous_response_id").cloned().unwrap_or(Value::Null),
        "reasoning": {"effort": null, "summary": null}, "store": true, "temperature": 1.0,
        "text": request.get("text").cloned().unwrap_or_else(|| json!({"format": {"type": "text"}})),
        "tool_choice": request.get("tool_choice").cloned().unwrap_or(json!("auto")),
        "tools": request.get("tools").cloned().unwrap_or(json!([])), "top_p": 1.0,
        "truncation": "disabled", "usage": usage, "user": null, "metadata": {},
    })
}

/// `POST /v1/responses`; `model` is the deployment on Azure.
pub(crate) fn responses(
    body: &[u8],
    behaviour: &Behaviour,
    model_override: Option<&str>,
) -> Response<Body> {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return ApiError::unparseable_json().into_response(),
    };
    let Some(model) = model_override.or_else(|| request.get("model").and_then(Value::as_str))
    else {
        return ApiError::invalid_request("Missing required parameter: 'model'.")
            .param("model")
            .code("missing_required_parameter")
            .into_response();
    };
    if request.get("input").is_none() && request.get("previous_response_id").is_none() {
        return ApiError::invalid_request("Missing required parameter: 'input'.")
            .param("input")
            .code("missing_required_parameter")
            .into_response();
    }
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    if let Fault::StreamError { status, .. } = behaviour.fault
        && !stream
    {
        return ApiError::from_fault(status, None, None, None, None, None).into_response();
    }
    if let Some(message) = unanswered_call(&request) {
        return ApiError::invalid_request(message)
            .param("input")
            .into_response();
    }
    let prompt = prompt(&request);
    let answer = Answer::plan(behaviour, model, &prompt, "call_");
    let id = next_id("resp_");
    let message_id = next_id("msg_");
    let call_item_ids: Vec<String> = answer.tool_calls.iter().map(|_| next_id("fc_")).collect();
    let (status, incomplete) = match answer.finish {
        Finish::Length => ("incomplete", json!({"reason": "max_output_tokens"})),
        _ => ("completed", Value::Null),
    };
    let done = response_object(
        &id,
        model,
        &request,
        status,
        output(&answer, &message_id, &call_item_ids),
        usage(&answer),
        incomplete,
    );
    if !stream {
        return body::success_json(&done, &behaviour.fault);
    }
    let mut seq = 0u64;
    let mut events: Vec<Bytes> = Vec::new();
    let mut push = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        events.push(sse_named(kind, &data));
    };
    let start = response_object(
        &id,
        model,
        &request,
        "in_progress",
        vec![],
        Value::Null,
        Value::Null,
    );
    push("response.created", json!({"response": start}));
    push("response.in_progress", json!({"response": start}));
    if answer.tool_calls.is_empty() {
        let item = &done["output"][0];
        let mut added = item.clone();
        added["content"] = json!([]);
        added["status"] = json!("in_progress");
        push(
            "response.output_item.added",
            json!({"output_index": 0, "item": added}),
        );
        let empty = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
        push(
            "response.content_part.added",
            json!({"item_id": message_id, "output_index": 0, "content_index": 0, "part": empty}),
        );
        for i in 0..answer.words.len() {
            push(
                "response.output_text.delta",
                json!({"item_id": message_id, "output_index": 0, "content_index": 0,
                       "delta": answer.chunk_text(i), "logprobs": []}),
            );
        }
        push(
            "response.output_text.done",
            json!({"item_id": message_id, "output_index": 0, "content_index": 0,
                   "text": answer.text(), "logprobs": []}),
        );
        push(
            "response.content_part.done",
            json!({"item_id": message_id, "output_index": 0, "content_index": 0,
                   "part": item["content"][0]}),
        );
        push(
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        );
    }
    // Function calls one after the other, each its own output item.
    for (index, (call, item_id)) in answer.tool_calls.iter().zip(&call_item_ids).enumerate() {
        let item = &done["output"][index];
        let mut added = item.clone();
        added["arguments"] = json!("");
        added["status"] = json!("in_progress");
        push(
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        );
        for piece in &call.pieces {
            push(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": index, "delta": piece}),
            );
        }
        push(
            "response.function_call_arguments.done",
            json!({"item_id": item_id, "output_index": index,
                   "arguments": call.arguments_json, "name": call.name}),
        );
        push(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
    }
    let end = if status == "completed" {
        "response.completed"
    } else {
        "response.incomplete"
    };
    push(end, json!({"response": done}));
    // Content events are the deltas after created, in_progress, item added (and part added).
    let lead = if answer.tool_calls.is_empty() { 4 } else { 3 };
    let cut = behaviour
        .fault
        .stream_cut(events.len().saturating_sub(lead));
    if let Some(cut) = cut {
        events.truncate((lead + cut.chunks).min(events.len()));
    }
    if let Fault::StreamError { .. } = behaviour.fault {
        events.truncate(4);
        events.push(sse_named(
            "error",
            &json!({"type": "error", "code": "server_error", "message": "The server had an error while processing your request.", "param": null, "sequence_number": 4}),
        ));
    }
    body::sse_response(events, Pacing::of(behaviour, 0, cut))
}
