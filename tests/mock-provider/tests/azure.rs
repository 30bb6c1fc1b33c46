//! The mock's Azure OpenAI surface through a real HTTP client.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail the test loudly"
)]

use gatehouse_mock_provider::{Behaviour, MockProvider};
use serde_json::{Value, json};

async fn post(
    mock: &MockProvider,
    path_and_query: &str,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path_and_query}", mock.origin()))
        .header("api-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

const CHAT: &str = "/openai/deployments/gpt4o-deploy/chat/completions?api-version=2024-10-21";

fn chat(stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": "hello azure"}], "stream": stream,
           "stream_options": {"include_usage": true}})
}

#[tokio::test]
async fn chat_has_deployment_as_model_and_filter_results() {
    let mock = MockProvider::with_api_key("az-key").start().await.unwrap();
    let resp = post(&mock, CHAT, "az-key", &chat(false)).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "gpt4o-deploy");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "This is gpt4o-deploy mock speaking."
    );
    assert_eq!(
        v["choices"][0]["content_filter_results"]["hate"]["filtered"],
        false
    );
    assert_eq!(v["prompt_filter_results"][0]["prompt_index"], 0);
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(sent.header("api-key"), Some("az-key"));
}

#[tokio::test]
async fn stream_starts_with_prompt_filter_chunk() {
    let mock = MockProvider::start().await.unwrap();
    let text = post(&mock, CHAT, "any", &chat(true))
        .await
        .text()
        .await
        .unwrap();
    let data: Vec<&str> = text
        .split_terminator("\n\n")
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(data[0]).unwrap();
    assert_eq!(first["choices"], json!([]));
    assert!(first["prompt_filter_results"].is_array());
    let role: Value = serde_json::from_str(data[1]).unwrap();
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(role["model"], "gpt4o-deploy");
    let usage: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn embeddings_key_version_and_faults() {
    let mock = MockProvider::with_api_key("az-key").start().await.unwrap();
    let resp = post(
        &mock,
        "/openai/deployments/embed-deploy/embeddings?api-version=2024-10-21",
        "az-key",
        &json!({"input": ["a b", "c"]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "embed-deploy");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);

    let resp = post(&mock, CHAT, "wrong", &chat(false)).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "401");

    let resp = post(
        &mock,
        "/openai/deployments/gpt4o-deploy/chat/completions",
        "az-key",
        &chat(false),
    )
    .await;
    assert_eq!(resp.status(), 400);

    mock.push(Behaviour::rate_limited(2));
    let resp = post(&mock, CHAT, "az-key", &chat(false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    mock.push(Behaviour::cut_after(1));
    let resp = post(&mock, CHAT, "az-key", &chat(true)).await;
    assert!(resp.text().await.is_err());
}
