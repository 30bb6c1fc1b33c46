//! The mock's Bedrock Converse surface through a real HTTP client, frames decoded with AWS's
//! event-stream decoder.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail the test loudly"
)]

use aws_smithy_eventstream::frame::read_message_from;
use aws_smithy_types::event_stream::HeaderValue;
use gatehouse_mock_provider::{Behaviour, MockProvider};
use serde_json::{Value, json};

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1%3A0";
const SIG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn post(mock: &MockProvider, op: &str, akid: &str, body: &Value) -> reqwest::Response {
    post_to(mock, MODEL, op, akid, body).await
}

async fn post_to(
    mock: &MockProvider,
    model: &str,
    op: &str,
    akid: &str,
    body: &Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/model/{model}/{op}", mock.origin()))
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={akid}/20250102/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, Signature={SIG}"
            ),
        )
        .header("x-amz-date", "20250102T030405Z")
        .json(body)
        .send()
        .await
        .unwrap()
}

fn body() -> Value {
    json!({
        "system": [{"text": "Be terse."}],
        "messages": [{"role": "user", "content": [{"text": "Say hello there"}]}],
        "inferenceConfig": {"maxTokens": 64},
    })
}

/// `(message type, event or exception type, payload)` of every frame.
fn frames(bytes: &[u8]) -> Vec<(String, String, Value)> {
    let mut buf = bytes;
    let mut out = Vec::new();
    while !buf.is_empty() {
        let message = read_message_from(&mut buf).unwrap();
        let header = |name: &str| {
            message
                .headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .map(|h| match h.value() {
                    HeaderValue::String(s) => s.as_str().to_owned(),
                    other => format!("{other:?}"),
                })
        };
        assert_eq!(header(":content-type").unwrap(), "application/json");
        let kind = header(":message-type").unwrap();
        let name = header(":event-type")
            .or_else(|| header(":exception-type"))
            .unwrap();
        out.push((
            kind,
            name,
            serde_json::from_slice(message.payload()).unwrap(),
        ));
    }
    out
}

#[tokio::test]
async fn converse_shape() {
    let mock = MockProvider::builder()
        .aws_credentials("AKIDMOCK", "secret")
        .aws_region("us-east-1")
        .start()
        .await
        .unwrap();
    mock.push(Behaviour::normal().cached_tokens(2));
    let resp = post(&mock, "converse", "AKIDMOCK", &body()).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["output"]["message"]["role"], "assistant");
    assert_eq!(
        v["output"]["message"]["content"][0]["text"],
        "This is anthropic.claude-3-haiku-20240307-v1:0 mock speaking."
    );
    assert_eq!(v["stopReason"], "end_turn");
    assert_eq!(v["usage"]["inputTokens"], 3);
    assert_eq!(v["usage"]["cacheReadInputTokens"], 2);
    assert_eq!(v["usage"]["outputTokens"], 5);
    assert_eq!(v["usage"]["totalTokens"], 10);
    assert!(v["metrics"]["latencyMs"].is_u64());
}

#[tokio::test]
async fn converse_stream_frames() {
    let mock = MockProvider::start().await.unwrap();
    let resp = post(&mock, "converse-stream", "AKIDANY", &body()).await;
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let fs = frames(&resp.bytes().await.unwrap());
    let names: Vec<&str> = fs.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    assert!(fs.iter().all(|(k, _, _)| k == "event"));
    assert_eq!(fs[0].2["role"], "assistant");
    let text: String = fs[1..6]
        .iter()
        .map(|(_, _, p)| p["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        text,
        "This is anthropic.claude-3-haiku-20240307-v1:0 mock speaking."
    );
    assert_eq!(fs[7].2["stopReason"], "end_turn");
    assert_eq!(fs[8].2["usage"]["outputTokens"], 5);
    assert!(fs[8].2["metrics"]["latencyMs"].is_u64());
}

#[tokio::test]
async fn tool_use_json_and_stream() {
    let mock = MockProvider::start().await.unwrap();
    let ask = json!({
        "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]},
        "messages": [{"role": "user", "content": [{"text": "weather in Paris?"}]}],
    });
    let v: Value = post(&mock, "converse", "A", &ask)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["stopReason"], "tool_use");
    let tool_use = &v["output"]["message"]["content"][0]["toolUse"];
    assert!(
        tool_use["toolUseId"]
            .as_str()
            .unwrap()
            .starts_with("tooluse_")
    );
    assert_eq!(tool_use["name"], "get_weather");
    assert_eq!(tool_use["input"], json!({"location": "Paris"}));

    let fs = frames(
        &post(&mock, "converse-stream", "A", &ask)
            .await
            .bytes()
            .await
            .unwrap(),
    );
    assert_eq!(fs[1].1, "contentBlockStart");
    assert_eq!(fs[1].2["start"]["toolUse"]["name"], "get_weather");
    let input: String = fs
        .iter()
        .filter(|(_, n, _)| n == "contentBlockDelta")
        .map(|(_, _, p)| p["delta"]["toolUse"]["input"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).unwrap(),
        json!({"location": "Paris"})
    );
    assert!(
        fs.iter()
            .any(|(_, n, p)| n == "messageStop" && p["stopReason"] == "tool_use")
    );

    let mut follow = ask.clone();
    follow["messages"] = json!([
        {"role": "user", "content": [{"text": "weather in Paris?"}]},
        {"role": "assistant", "content": [{"toolUse": tool_use}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": tool_use["toolUseId"], "content": [{"text": "sunny"}]}}]},
    ]);
    let v: Value = post(&mock, "converse", "A", &follow)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["stopReason"], "end_turn");
}

#[tokio::test]
async fn auth_and_errors() {
    let mock = MockProvider::builder()
        .aws_credentials("AKIDMOCK", "s")
        .start()
        .await
        .unwrap();
    let resp = post(&mock, "converse", "AKIDOTHER", &body()).await;
    assert_eq!(resp.status(), 403);
    assert!(
        resp.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("UnrecognizedClientException")
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/model/{MODEL}/converse", mock.origin()))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    let resp = post(&mock, "converse", "AKIDMOCK", &json!({})).await;
    assert_eq!(resp.status(), 400);
    assert!(
        resp.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("ValidationException")
    );
    assert!(resp.json::<Value>().await.unwrap()["message"].is_string());

    // Bedrock says no delay, whatever the behaviour asks for.
    mock.push(Behaviour::rate_limited(5));
    let resp = post(&mock, "converse", "AKIDMOCK", &body()).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_none());
    assert_eq!(
        error_type(&resp).split(':').next(),
        Some("ThrottlingException")
    );

    for (status, name) in [
        (429, "ThrottlingException"),
        (500, "InternalServerException"),
        (503, "ServiceUnavailableException"),
        (403, "AccessDeniedException"),
    ] {
        mock.push(Behaviour::status(status));
        let resp = post(&mock, "converse", "AKIDMOCK", &body()).await;
        assert_eq!(resp.status(), status);
        assert!(
            resp.headers()["x-amzn-errortype"]
                .to_str()
                .unwrap()
                .starts_with(name)
        );
    }

    mock.push(Behaviour::stream_error(2, 429));
    let fs = frames(
        &post(&mock, "converse-stream", "AKIDMOCK", &body())
            .await
            .bytes()
            .await
            .unwrap(),
    );
    let last = fs.last().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str()),
        ("exception", "throttlingException")
    );
    assert!(last.2["message"].is_string());

    mock.push(Behaviour::cut_after(1));
    assert!(
        post(&mock, "converse-stream", "AKIDMOCK", &body())
            .await
            .bytes()
            .await
            .is_err()
    );

    // A truncation inside a frame: whole frames, then half of one.
    mock.push(Behaviour::truncated(1));
    let bytes = post(&mock, "converse-stream", "AKIDMOCK", &body())
        .await
        .bytes()
        .await
        .unwrap();
    let mut buf = &bytes[..];
    read_message_from(&mut buf).unwrap(); // messageStart
    read_message_from(&mut buf).unwrap(); // one contentBlockDelta
    assert!(!buf.is_empty());
    assert!(read_message_from(&mut buf).is_err(), "half a frame");

    mock.push(Behaviour::cut_inside(1));
    assert!(
        post(&mock, "converse-stream", "AKIDMOCK", &body())
            .await
            .bytes()
            .await
            .is_err()
    );

    mock.push(Behaviour::garbage());
    let bytes = post(&mock, "converse-stream", "AKIDMOCK", &body())
        .await
        .bytes()
        .await
        .unwrap();
    let mut buf = &bytes[..];
    read_message_from(&mut buf).unwrap(); // messageStart
    assert!(read_message_from(&mut buf).is_err());
}

fn token_header(resp: &reqwest::Response) -> u64 {
    resp.headers()["x-amzn-bedrock-input-token-count"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn error_type(resp: &reqwest::Response) -> &str {
    resp.headers()["x-amzn-errortype"].to_str().unwrap()
}

fn norm(v: &Value) -> f64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt()
}

#[tokio::test]
async fn invoke_titan_embeddings() {
    let mock = MockProvider::builder()
        .aws_credentials("AKIDMOCK", "secret")
        .start()
        .await
        .unwrap();
    let v2 = "amazon.titan-embed-text-v2%3A0";
    let resp = post_to(
        &mock,
        v2,
        "invoke",
        "AKIDMOCK",
        &json!({"inputText": "hello there world", "dimensions": 256, "normalize": true}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(token_header(&resp), 3);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["embedding"].as_array().unwrap().len(), 256);
    assert!((norm(&v["embedding"]) - 1.0).abs() < 1e-3);
    assert_eq!(v["inputTextTokenCount"], 3);
    assert_eq!(v["embeddingsByType"]["float"], v["embedding"]);
    // Default size 1024; the same text always gets the same vector.
    let full = json!({"inputText": "hello there world"});
    let a: Value = post_to(&mock, v2, "invoke", "AKIDMOCK", &full)
        .await
        .json()
        .await
        .unwrap();
    let b: Value = post_to(&mock, v2, "invoke", "AKIDMOCK", &full)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a["embedding"].as_array().unwrap().len(), 1024);
    assert_eq!(a["embedding"], b["embedding"]);

    let v1: Value = post_to(
        &mock,
        "amazon.titan-embed-text-v1",
        "invoke",
        "AKIDMOCK",
        &json!({"inputText": "hi"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v1["embedding"].as_array().unwrap().len(), 1536);
    assert!(v1.get("embeddingsByType").is_none());

    for (model, body, says) in [
        (
            v2,
            json!({"inputText": "x", "dimensions": 300}),
            "#/dimensions: 300 is not a valid enum value",
        ),
        (v2, json!({"texts": ["x"]}), "extraneous key [texts]"),
        (v2, json!({}), "required key [inputText] not found"),
        (
            "amazon.titan-embed-text-v1",
            json!({"inputText": "x", "dimensions": 256}),
            "extraneous key [dimensions]",
        ),
        (
            "anthropic.claude-3-haiku-20240307-v1%3A0",
            json!({"inputText": "x"}),
            "model identifier is invalid",
        ),
    ] {
        let resp = post_to(&mock, model, "invoke", "AKIDMOCK", &body).await;
        assert_eq!(resp.status(), 400, "{body}");
        assert!(error_type(&resp).starts_with("ValidationException"));
        let message = resp.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(says), "{message}");
    }

    let resp = post_to(&mock, v2, "invoke", "AKIDOTHER", &json!({"inputText": "x"})).await;
    assert_eq!(resp.status(), 403);
    mock.push(Behaviour::status(429));
    let resp = post_to(&mock, v2, "invoke", "AKIDMOCK", &json!({"inputText": "x"})).await;
    assert_eq!(resp.status(), 429);
    assert!(error_type(&resp).starts_with("ThrottlingException"));
    assert_eq!(
        mock.last_request().unwrap().path,
        "/model/amazon.titan-embed-text-v2%3A0/invoke"
    );
}

#[tokio::test]
async fn invoke_cohere_embeddings() {
    let mock = MockProvider::start().await.unwrap();
    let model = "cohere.embed-english-v3";
    let body = json!({"texts": ["first text", "second one here"], "input_type": "search_document"});
    let resp = post_to(&mock, model, "invoke", "A", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(token_header(&resp), 5);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["response_type"], "embeddings_floats");
    assert_eq!(v["texts"], body["texts"]);
    assert!(v["id"].is_string());
    let list = v["embeddings"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].as_array().unwrap().len(), 1024);
    assert_ne!(list[0], list[1]);

    let by_type: Value = post_to(
        &mock,
        model,
        "invoke",
        "A",
        &json!({"texts": ["a"], "input_type": "search_query", "embedding_types": ["float"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(by_type["response_type"], "embeddings_by_type");
    assert_eq!(by_type["embeddings"]["float"].as_array().unwrap().len(), 1);

    let texts: Vec<String> = (0..97).map(|i| format!("t{i}")).collect();
    for (body, says) in [
        (
            json!({"texts": ["a"]}),
            "required key [input_type] not found",
        ),
        (
            json!({"texts": ["a"], "input_type": "search"}),
            "search is not a valid enum value",
        ),
        (
            json!({"texts": texts, "input_type": "clustering"}),
            "expected maxItems: 96, actual: 97",
        ),
        (
            json!({"inputText": "a", "input_type": "clustering"}),
            "extraneous key [inputText]",
        ),
    ] {
        let resp = post_to(&mock, model, "invoke", "A", &body).await;
        assert_eq!(resp.status(), 400);
        let message = resp.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(says), "{message}");
    }
}
