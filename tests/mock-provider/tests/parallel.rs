//! Parallel tool calls in every flavour's wire shape, buffered and streamed: a request that
//! declares several tools and whose last user message names two of them gets a call of each,
//! unless it allows one call only. And the refusals of tool results that do not answer the
//! calls one for one, as each provider words them.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail the test loudly"
)]

use aws_smithy_eventstream::frame::read_message_from;
use gatehouse_mock_provider::MockProvider;
use serde_json::{Value, json};

const ASK: &str = "Call get_weather and get_time for Paris";
const SIG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn schema() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
}

/// `(name, arguments)` the mock is expected to call, in order.
fn expected() -> Vec<(String, Value)> {
    vec![
        ("get_weather".into(), json!({"city": "mock"})),
        ("get_time".into(), json!({"city": "mock"})),
    ]
}

async fn post(url: String, headers: &[(&str, String)], body: &Value) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(url).json(body);
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    req.send().await.unwrap()
}

fn sse_data(text: &str) -> Vec<Value> {
    text.split_terminator("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

// ---- OpenAI chat -------------------------------------------------------------------------

fn chat_body(stream: bool, parallel: Option<bool>) -> Value {
    let tool = |name: &str| json!({"type": "function", "function": {"name": name, "parameters": schema()}});
    let mut body = json!({
        "model": "gpt-4o-mini", "stream": stream,
        "tools": [tool("get_weather"), tool("get_time"), tool("lookup")],
        "messages": [{"role": "user", "content": ASK}],
    });
    if let Some(p) = parallel {
        body["parallel_tool_calls"] = json!(p);
    }
    body
}

async fn chat(mock: &MockProvider, body: &Value) -> reqwest::Response {
    post(format!("{}/chat/completions", mock.base_url()), &[], body).await
}

#[tokio::test]
async fn openai_chat_answers_parallel_calls() {
    let mock = MockProvider::start().await.unwrap();
    let v: Value = chat(&mock, &chat_body(false, None))
        .await
        .json()
        .await
        .unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    let got: Vec<(String, Value)> = calls
        .iter()
        .map(|c| {
            assert_eq!(c["type"], "function");
            assert!(c["id"].as_str().unwrap().starts_with("call_"));
            let args = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
            (c["function"]["name"].as_str().unwrap().to_owned(), args)
        })
        .collect();
    assert_eq!(got, expected());
    assert_ne!(calls[0]["id"], calls[1]["id"]);

    // Streamed: each call opened by a delta with its index, id and name, then its arguments.
    let text = chat(&mock, &chat_body(true, None))
        .await
        .text()
        .await
        .unwrap();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for chunk in sse_data(&text) {
        for d in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = usize::try_from(d["index"].as_u64().unwrap()).unwrap();
            if let Some(id) = d["id"].as_str() {
                assert_eq!(index, calls.len(), "a new call takes the next index");
                calls.push((
                    id.to_owned(),
                    d["function"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
            } else {
                assert_eq!(
                    index + 1,
                    calls.len(),
                    "arguments follow their call's opening delta"
                );
                calls[index]
                    .2
                    .push_str(d["function"]["arguments"].as_str().unwrap());
            }
        }
    }
    let got: Vec<(String, Value)> = calls
        .into_iter()
        .map(|(_, name, args)| (name, serde_json::from_str(&args).unwrap()))
        .collect();
    assert_eq!(got, expected());

    // parallel_tool_calls: false: one call.
    let v: Value = chat(&mock, &chat_body(false, Some(false)))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn openai_chat_refuses_tool_results_that_do_not_answer_the_calls() {
    let mock = MockProvider::start().await.unwrap();
    let call = |id: &str| json!({"id": id, "type": "function", "function": {"name": "get_time", "arguments": "{}"}});
    let result = |id: &str| json!({"role": "tool", "tool_call_id": id, "content": "noon"});
    let mut body = chat_body(false, None);
    body["messages"] = json!([
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": null, "tool_calls": [call("call_a"), call("call_b")]},
        result("call_b"), result("call_a"),
    ]);
    let resp = chat(&mock, &body).await;
    assert_eq!(resp.status(), 200, "both answered, in any order");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    body["messages"].as_array_mut().unwrap().pop();
    let resp = chat(&mock, &body).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("did not have response messages: call_a"),
        "{message}"
    );

    body["messages"] = json!([{"role": "user", "content": "hi"}, result("call_z")]);
    let resp = chat(&mock, &body).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must be a response to a preceeding message")
    );
}

// ---- OpenAI Responses --------------------------------------------------------------------

fn responses_body(stream: bool) -> Value {
    let tool = |name: &str| json!({"type": "function", "name": name, "parameters": schema()});
    json!({
        "model": "gpt-4o-mini", "stream": stream, "input": ASK,
        "tools": [tool("get_weather"), tool("get_time")],
    })
}

async fn responses(mock: &MockProvider, body: &Value) -> reqwest::Response {
    post(format!("{}/responses", mock.base_url()), &[], body).await
}

#[tokio::test]
async fn responses_answers_parallel_function_call_items() {
    let mock = MockProvider::start().await.unwrap();
    let v: Value = responses(&mock, &responses_body(false))
        .await
        .json()
        .await
        .unwrap();
    let items = v["output"].as_array().unwrap();
    let got: Vec<(String, Value)> = items
        .iter()
        .map(|i| {
            assert_eq!(i["type"], "function_call");
            assert!(i["id"].as_str().unwrap().starts_with("fc_"));
            let args = serde_json::from_str(i["arguments"].as_str().unwrap()).unwrap();
            (i["name"].as_str().unwrap().to_owned(), args)
        })
        .collect();
    assert_eq!(got, expected());
    assert_ne!(items[0]["id"], items[1]["id"]);
    assert_ne!(items[0]["call_id"], items[1]["call_id"]);

    // Streamed: each item added, its argument deltas and done events at its output index.
    let text = responses(&mock, &responses_body(true))
        .await
        .text()
        .await
        .unwrap();
    let events = sse_data(&text);
    let added: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.added")
        .map(|e| e["output_index"].as_u64().unwrap())
        .collect();
    assert_eq!(added, [0, 1]);
    let streamed = &events.last().unwrap()["response"]["output"];
    for index in 0..2u64 {
        let item_id = &streamed[usize::try_from(index).unwrap()]["id"];
        let args: String = events
            .iter()
            .filter(|e| {
                e["type"] == "response.function_call_arguments.delta" && e["output_index"] == index
            })
            .map(|e| {
                assert_eq!(&e["item_id"], item_id, "deltas name their item");
                e["delta"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"city": "mock"})
        );
    }
    let done = events.last().unwrap();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["output"].as_array().unwrap().len(), 2);
    let seq: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seq, (0..events.len() as u64).collect::<Vec<_>>());

    let mut one = responses_body(false);
    one["parallel_tool_calls"] = json!(false);
    let v: Value = responses(&mock, &one).await.json().await.unwrap();
    assert_eq!(v["output"].as_array().unwrap().len(), 1);

    // A call without its output is refused.
    let mut body = responses_body(false);
    body["input"] = json!([
        {"role": "user", "content": ASK},
        {"type": "function_call", "call_id": "call_a", "name": "get_time", "arguments": "{}"},
        {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "noon"},
    ]);
    let resp = responses(&mock, &body).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "No tool output found for function call call_b."
    );
}

// ---- Anthropic ---------------------------------------------------------------------------

fn messages_body(stream: bool, disable_parallel: bool) -> Value {
    let tool = |name: &str| json!({"name": name, "input_schema": schema()});
    let mut body = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
        "tools": [tool("get_weather"), tool("get_time")],
        "messages": [{"role": "user", "content": ASK}],
    });
    if disable_parallel {
        body["tool_choice"] = json!({"type": "auto", "disable_parallel_tool_use": true});
    }
    body
}

async fn messages(mock: &MockProvider, body: &Value) -> reqwest::Response {
    let version = [("anthropic-version", "2023-06-01".to_owned())];
    post(format!("{}/v1/messages", mock.origin()), &version, body).await
}

#[tokio::test]
async fn anthropic_answers_parallel_tool_use_blocks() {
    let mock = MockProvider::start().await.unwrap();
    let v: Value = messages(&mock, &messages_body(false, false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["stop_reason"], "tool_use");
    let got: Vec<(String, Value)> = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b["type"], "tool_use");
            assert!(b["id"].as_str().unwrap().starts_with("toolu_"));
            (b["name"].as_str().unwrap().to_owned(), b["input"].clone())
        })
        .collect();
    assert_eq!(got, expected());

    // Streamed: a block per call, started, filled with input_json_delta and stopped in turn.
    let text = messages(&mock, &messages_body(true, false))
        .await
        .text()
        .await
        .unwrap();
    let events = sse_data(&text);
    let mut open: Option<u64> = None;
    let mut blocks: Vec<(String, String)> = Vec::new();
    for e in &events {
        match e["type"].as_str().unwrap() {
            "content_block_start" => {
                assert_eq!(open, None, "the block before is stopped first");
                assert_eq!(e["index"].as_u64().unwrap(), blocks.len() as u64);
                assert_eq!(e["content_block"]["input"], json!({}));
                open = e["index"].as_u64();
                blocks.push((
                    e["content_block"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
            }
            "content_block_delta" => {
                assert_eq!(e["index"].as_u64(), open);
                assert_eq!(e["delta"]["type"], "input_json_delta");
                blocks
                    .last_mut()
                    .unwrap()
                    .1
                    .push_str(e["delta"]["partial_json"].as_str().unwrap());
            }
            "content_block_stop" => {
                assert_eq!(e["index"].as_u64(), open);
                open = None;
            }
            _ => {}
        }
    }
    assert_eq!(open, None);
    let got: Vec<(String, Value)> = blocks
        .into_iter()
        .map(|(name, json)| (name, serde_json::from_str(&json).unwrap()))
        .collect();
    assert_eq!(got, expected());
    assert_eq!(events.last().unwrap()["type"], "message_stop");

    let v: Value = messages(&mock, &messages_body(false, true))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["content"].as_array().unwrap().len(),
        1,
        "disable_parallel_tool_use"
    );
}

#[tokio::test]
async fn anthropic_refuses_tool_results_split_or_missing() {
    let mock = MockProvider::start().await.unwrap();
    let uses = json!({"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_a", "name": "get_time", "input": {}},
        {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {}},
    ]});
    let result = |id: &str| json!({"type": "tool_result", "tool_use_id": id, "content": "ok"});
    let mut body = messages_body(false, false);
    body["messages"] = json!([
        {"role": "user", "content": ASK}, uses,
        {"role": "user", "content": [result("toolu_a"), result("toolu_b")]},
    ]);
    assert_eq!(messages(&mock, &body).await.status(), 200);

    // Results split over two user messages: the first does not answer every call.
    body["messages"] = json!([
        {"role": "user", "content": ASK}, uses,
        {"role": "user", "content": [result("toolu_a")]},
        {"role": "user", "content": [result("toolu_b")]},
    ]);
    let resp = messages(&mock, &body).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("messages.1: `tool_use` ids were found without `tool_result`"),
        "{message}"
    );
    assert!(message.contains("toolu_b"), "{message}");
}

// ---- Gemini ------------------------------------------------------------------------------

fn gemini_body() -> Value {
    let decl = |name: &str| json!({"name": name, "parametersJsonSchema": schema()});
    json!({
        "contents": [{"role": "user", "parts": [{"text": ASK}]}],
        "tools": [{"functionDeclarations": [decl("get_weather"), decl("get_time")]}],
    })
}

async fn gemini(mock: &MockProvider, method: &str, body: &Value) -> reqwest::Response {
    post(
        format!("{}/v1beta/models/gemini-2.0-flash:{method}", mock.origin()),
        &[],
        body,
    )
    .await
}

#[tokio::test]
async fn gemini_answers_parallel_function_call_parts() {
    let mock = MockProvider::start().await.unwrap();
    let v: Value = gemini(&mock, "generateContent", &gemini_body())
        .await
        .json()
        .await
        .unwrap();
    let parts = v["candidates"][0]["content"]["parts"].as_array().unwrap();
    let got: Vec<(String, Value)> = parts
        .iter()
        .map(|p| {
            (
                p["functionCall"]["name"].as_str().unwrap().to_owned(),
                p["functionCall"]["args"].clone(),
            )
        })
        .collect();
    assert_eq!(got, expected());
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");

    let text = gemini(&mock, "streamGenerateContent?alt=sse", &gemini_body())
        .await
        .text()
        .await
        .unwrap();
    let chunks: Vec<Value> = text
        .split_terminator("\r\n\r\n")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    let got: Vec<(String, Value)> = chunks
        .iter()
        .flat_map(|c| {
            c["candidates"][0]["content"]["parts"]
                .as_array()
                .unwrap()
                .clone()
        })
        .map(|p| {
            (
                p["functionCall"]["name"].as_str().unwrap().to_owned(),
                p["functionCall"]["args"].clone(),
            )
        })
        .collect();
    assert_eq!(got, expected());
    assert_eq!(
        chunks.last().unwrap()["candidates"][0]["finishReason"],
        "STOP"
    );

    // Two calls answered by one response part: refused.
    let mut body = gemini_body();
    body["contents"] = json!([
        {"role": "user", "parts": [{"text": ASK}]},
        {"role": "model", "parts": parts},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"r": "sun"}}}]},
    ]);
    let resp = gemini(&mock, "generateContent", &body).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("number of function response parts")
    );
    body["contents"][2]["parts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"functionResponse": {"name": "get_time", "response": {"r": "noon"}}}));
    assert_eq!(gemini(&mock, "generateContent", &body).await.status(), 200);
}

// ---- Bedrock Converse --------------------------------------------------------------------

fn converse_body() -> Value {
    let spec = |name: &str| json!({"toolSpec": {"name": name, "inputSchema": {"json": schema()}}});
    json!({
        "messages": [{"role": "user", "content": [{"text": ASK}]}],
        "toolConfig": {"tools": [spec("get_weather"), spec("get_time")]},
    })
}

async fn converse(mock: &MockProvider, op: &str, body: &Value) -> reqwest::Response {
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=AKID/20250102/us-east-1/bedrock/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date, Signature={SIG}"
    );
    let headers = [
        ("authorization", auth),
        ("x-amz-date", "20250102T030405Z".to_owned()),
    ];
    let model = "anthropic.claude-3-haiku-20240307-v1%3A0";
    post(
        format!("{}/model/{model}/{op}", mock.origin()),
        &headers,
        body,
    )
    .await
}

#[tokio::test]
async fn bedrock_answers_parallel_tool_use_blocks() {
    let mock = MockProvider::start().await.unwrap();
    let v: Value = converse(&mock, "converse", &converse_body())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["stopReason"], "tool_use");
    let content = v["output"]["message"]["content"].as_array().unwrap();
    let got: Vec<(String, Value)> = content
        .iter()
        .map(|b| {
            (
                b["toolUse"]["name"].as_str().unwrap().to_owned(),
                b["toolUse"]["input"].clone(),
            )
        })
        .collect();
    assert_eq!(got, expected());

    let bytes = converse(&mock, "converse-stream", &converse_body())
        .await
        .bytes()
        .await
        .unwrap();
    let mut buf = &bytes[..];
    let mut open: Option<u64> = None;
    let mut blocks: Vec<(String, String)> = Vec::new();
    while !buf.is_empty() {
        let message = read_message_from(&mut buf).unwrap();
        let payload: Value = serde_json::from_slice(message.payload()).unwrap();
        if let Some(start) = payload.get("start") {
            assert_eq!(open, None);
            assert_eq!(
                payload["contentBlockIndex"].as_u64().unwrap(),
                blocks.len() as u64
            );
            open = payload["contentBlockIndex"].as_u64();
            blocks.push((
                start["toolUse"]["name"].as_str().unwrap().to_owned(),
                String::new(),
            ));
        } else if let Some(delta) = payload.get("delta") {
            assert_eq!(payload["contentBlockIndex"].as_u64(), open);
            blocks
                .last_mut()
                .unwrap()
                .1
                .push_str(delta["toolUse"]["input"].as_str().unwrap());
        } else if payload.get("contentBlockIndex").is_some() {
            assert_eq!(
                payload["contentBlockIndex"].as_u64(),
                open,
                "stop of the open block"
            );
            open = None;
        }
    }
    let got: Vec<(String, Value)> = blocks
        .into_iter()
        .map(|(name, json)| (name, serde_json::from_str(&json).unwrap()))
        .collect();
    assert_eq!(got, expected());

    let mut body = converse_body();
    body["messages"] = json!([
        {"role": "user", "content": [{"text": ASK}]},
        {"role": "assistant", "content": content},
        {"role": "user", "content": [{"toolResult": {"toolUseId": content[0]["toolUse"]["toolUseId"], "content": [{"text": "sun"}]}}]},
    ]);
    let resp = converse(&mock, "converse", &body).await;
    assert_eq!(resp.status(), 400);
    let kind = resp.headers()["x-amzn-errortype"].to_str().unwrap();
    assert!(kind.starts_with("ValidationException"), "{kind}");
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Expected toolResult blocks at messages.2.content")
    );
}
