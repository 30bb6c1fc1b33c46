//! The mock's Gemini surface through a real HTTP client.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail the test loudly"
)]

use gatehouse_mock_provider::{Behaviour, MockProvider};
use serde_json::{Value, json};

const MODEL: &str = "gemini-2.0-flash";

async fn post(
    mock: &MockProvider,
    op_and_query: &str,
    key: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/{MODEL}:{op_and_query}",
            mock.origin()
        ))
        .json(body);
    if let Some(key) = key {
        req = req.header("x-goog-api-key", key);
    }
    req.send().await.unwrap()
}

fn body() -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "Be terse."}]},
        "contents": [{"role": "user", "parts": [{"text": "Say hello there"}]}],
    })
}

fn sse(text: &str) -> Vec<Value> {
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
    text.split_terminator("\r\n\r\n")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn thoughts_are_counted_apart_from_candidates() {
    let mock = MockProvider::with_api_key("gm").start().await.unwrap();
    mock.push(Behaviour::normal().reasoning_tokens(7));
    let v: Value = post(&mock, "generateContent", Some("gm"), &body())
        .await
        .json()
        .await
        .unwrap();
    let u = &v["usageMetadata"];
    assert_eq!(u["candidatesTokenCount"], 5);
    assert_eq!(u["thoughtsTokenCount"], 7);
    assert_eq!(u["totalTokenCount"], 5 + 5 + 7);
}

#[tokio::test]
async fn generate_content_shape() {
    let mock = MockProvider::with_api_key("gm").start().await.unwrap();
    mock.push(Behaviour::normal().cached_tokens(2));
    let resp = post(&mock, "generateContent", Some("gm"), &body()).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let c = &v["candidates"][0];
    assert_eq!(c["content"]["role"], "model");
    assert_eq!(
        c["content"]["parts"][0]["text"],
        "This is gemini-2.0-flash mock speaking."
    );
    assert_eq!(c["finishReason"], "STOP");
    assert_eq!(v["usageMetadata"]["promptTokenCount"], 5);
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 5);
    assert_eq!(v["usageMetadata"]["totalTokenCount"], 10);
    assert_eq!(v["usageMetadata"]["cachedContentTokenCount"], 2);
    assert_eq!(v["modelVersion"], MODEL);

    let mut limited = body();
    limited["generationConfig"] = json!({"maxOutputTokens": 2});
    let v: Value = post(&mock, "generateContent?key=gm", None, &limited)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
}

#[tokio::test]
async fn stream_sse_and_json_array() {
    let mock = MockProvider::start().await.unwrap();
    let resp = post(&mock, "streamGenerateContent?alt=sse", None, &body()).await;
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse(&resp.text().await.unwrap());
    assert_eq!(events.len(), 5);
    let text: String = events
        .iter()
        .map(|e| {
            e["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "This is gemini-2.0-flash mock speaking.");
    assert!(events[0]["candidates"][0].get("finishReason").is_none());
    assert_eq!(events[4]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(events[4]["usageMetadata"]["candidatesTokenCount"], 5);

    let text = post(&mock, "streamGenerateContent", None, &body())
        .await
        .text()
        .await
        .unwrap();
    let array: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(array.len(), 5);
}

#[tokio::test]
async fn function_call_and_response() {
    let mock = MockProvider::start().await.unwrap();
    let tools = json!([{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "object"}}]}]);
    let ask = json!({"tools": tools, "contents": [{"role": "user", "parts": [{"text": "weather in Paris?"}]}]});
    let v: Value = post(&mock, "generateContent", None, &ask)
        .await
        .json()
        .await
        .unwrap();
    let part = &v["candidates"][0]["content"]["parts"][0];
    assert_eq!(
        part["functionCall"],
        json!({"name": "get_weather", "args": {"location": "Paris"}})
    );
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");

    let events = sse(&post(&mock, "streamGenerateContent?alt=sse", None, &ask)
        .await
        .text()
        .await
        .unwrap());
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "get_weather"
    );

    let follow = json!({"tools": tools, "contents": [
        {"role": "user", "parts": [{"text": "weather in Paris?"}]},
        {"role": "model", "parts": [part]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]},
    ]});
    let v: Value = post(&mock, "generateContent", None, &follow)
        .await
        .json()
        .await
        .unwrap();
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].is_string());
}

#[tokio::test]
async fn embeddings() {
    let mock = MockProvider::start().await.unwrap();
    let v: Value = post(
        &mock,
        "embedContent",
        None,
        &json!({"content": {"parts": [{"text": "hi"}]}}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["embedding"]["values"].as_array().unwrap().len(), 768);
    let v: Value = post(
        &mock,
        "batchEmbedContents",
        None,
        &json!({"requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 8},
        ]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["embeddings"][1]["values"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn keys_and_error_shapes() {
    let mock = MockProvider::with_api_key("gm").start().await.unwrap();
    let resp = post(&mock, "generateContent", None, &body()).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["status"],
        "PERMISSION_DENIED"
    );
    let resp = post(&mock, "generateContent", Some("bad"), &body()).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["details"][0]["reason"], "API_KEY_INVALID");

    let resp = post(
        &mock,
        "generateContent",
        Some("gm"),
        &json!({"contents": []}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["status"],
        "INVALID_ARGUMENT"
    );

    for (status, name) in [
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
    ] {
        mock.push(Behaviour::status(status));
        let resp = post(&mock, "generateContent", Some("gm"), &body()).await;
        assert_eq!(resp.status(), status);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], status);
        assert_eq!(v["error"]["status"], name);
    }

    mock.push(Behaviour::stream_error(1, 503));
    let events = sse(
        &post(&mock, "streamGenerateContent?alt=sse", Some("gm"), &body())
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(events.last().unwrap()["error"]["status"], "UNAVAILABLE");

    mock.push(Behaviour::cut_after(1));
    let resp = post(&mock, "streamGenerateContent?alt=sse", Some("gm"), &body()).await;
    assert!(resp.text().await.is_err());
}

#[tokio::test]
async fn rate_limits_say_the_delay_in_the_body_not_a_header() {
    let mock = MockProvider::with_api_key("gm").start().await.unwrap();
    mock.push(Behaviour::rate_limited(37));
    let resp = post(&mock, "generateContent", Some("gm"), &body()).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    let details = v["error"]["details"].as_array().unwrap();
    let retry = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .unwrap();
    assert_eq!(retry["retryDelay"], "37s");
    assert!(
        details
            .iter()
            .any(|d| d["@type"] == "type.googleapis.com/google.rpc.QuotaFailure")
    );

    // Without a delay: a bare RESOURCE_EXHAUSTED.
    mock.push(Behaviour::status(429));
    let resp = post(&mock, "generateContent", Some("gm"), &body()).await;
    assert!(resp.headers().get("retry-after").is_none());
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].get("details").is_none(), "{v}");
}

#[tokio::test]
async fn truncated_streams_end_inside_an_event() {
    let mock = MockProvider::with_api_key("gm").start().await.unwrap();
    // Clean end: the body finishes normally, half an event short.
    mock.push(Behaviour::truncated(1));
    let text = post(&mock, "streamGenerateContent?alt=sse", Some("gm"), &body())
        .await
        .text()
        .await
        .unwrap();
    let (whole, partial) = text.rsplit_once("\r\n\r\n").unwrap();
    assert_eq!(sse(&format!("{whole}\r\n\r\n")).len(), 1);
    assert!(partial.starts_with("data: {"), "{partial:?}");
    assert!(serde_json::from_str::<Value>(&partial[6..]).is_err());

    mock.push(Behaviour::cut_inside(1));
    let resp = post(&mock, "streamGenerateContent?alt=sse", Some("gm"), &body()).await;
    assert!(resp.text().await.is_err());
}
