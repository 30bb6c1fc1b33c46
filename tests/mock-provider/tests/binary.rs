//! The `gatehouse-mock-provider` binary, driven through its control API like process-level tests
//! and the README demo do.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_until_up(client: &reqwest::Client, origin: &str) {
    for _ in 0..200 {
        if client
            .get(format!("{origin}/__mock/stats"))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    unreachable!("mock binary did not come up on {origin}");
}

#[tokio::test]
async fn binary_serves_and_obeys_control_api() {
    let addr = gatehouse_mock_provider::refusing_addr().unwrap();
    let _child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_gatehouse-mock-provider"))
            .args([
                "--listen",
                &addr.to_string(),
                "--api-key",
                "sk-bin",
                "--chunks",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let origin = format!("http://{addr}");
    let client = reqwest::Client::new();
    wait_until_up(&client, &origin).await;

    let resp = client
        .post(format!("{origin}/__mock/behaviours"))
        .json(&json!({"fault": {"kind": "status", "status": 503}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let chat = |key: &'static str| {
        client
            .post(format!("{origin}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    assert_eq!(chat("sk-bin").await.unwrap().status(), 503);
    assert_eq!(chat("sk-nope").await.unwrap().status(), 401);
    let v: Value = chat("sk-bin").await.unwrap().json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "This is");

    let requests: Value = client
        .get(format!("{origin}/__mock/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(requests.as_array().unwrap().len(), 3);
    assert_eq!(requests[1]["headers"]["authorization"], "Bearer sk-nope");
}
