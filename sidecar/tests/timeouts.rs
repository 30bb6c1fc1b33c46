//! Route timeouts through the sidecar in-process: the per-attempt limit, the first-token limit of
//! streams and the whole-request deadline, answered in the OpenAI and the Anthropic dialect.
//!
//! The tests run on tokio's paused clock (`start_paused`): the sidecar, the mock providers and the
//! client all run on the test's runtime, time stands still while any of them has work, and when
//! all of them wait it jumps to the next timer. So a timeout fires exactly when nothing but the
//! timer is left, whatever the load on the machine, and a test of a 30 s deadline takes
//! milliseconds. Loopback I/O does not count as waiting: tokio advances the clock only after a
//! zero-timeout poll of the I/O driver woke no task, and bytes written to a loopback socket are
//! readable at once, so a pending exchange always wakes someone first
//! (`loopback_io_is_never_cut_by_the_paused_clock` checks exactly that). Elapsed times are virtual
//! and keep the generous bounds the tests had on the real clock.
//!
//! One test stays on the real clock (see `the_request_deadline_bounds_the_attempts_together`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use gatehouse_mock_provider::{Behaviour, MockProvider, StreamGate};
use serde_json::{Value, json};
use support::{Sidecar, SseReader, header, provider, sse_events};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

/// A Route `chat` over `targets` (provider names, one priority each, in order), model
/// `gpt-4o-mini`, with `attempts` attempts and `timeouts` (a YAML flow mapping), no ejection.
fn route(targets: &[&str], attempts: u32, timeouts: &str) -> String {
    let targets: String = targets
        .iter()
        .enumerate()
        .map(|(i, p)| format!("    - {{provider: {p}, model: gpt-4o-mini, priority: {i}}}\n"))
        .collect();
    format!(
        r#"---
apiVersion: gatehouse.dev/v1alpha1
kind: Route
metadata:
  name: chat
spec:
  models: ["chat"]
  targets:
{targets}  retry:
    attempts: {attempts}
    backoff: {{base: 10ms, max: 20ms}}
  timeouts: {timeouts}
  # Each test times targets out request after request to pin the limits; ejection would then
  # skip them. Ejection has its own suite (tests/faults).
  outlier: {{enabled: false}}
"#
    )
}

/// One mock per name, each behind an openaiCompatible provider of that name, and a sidecar
/// serving `route(names, attempts, timeouts)`.
async fn setup(names: &[&str], attempts: u32, timeouts: &str) -> (Vec<MockProvider>, Sidecar) {
    let mut mocks = Vec::new();
    let mut manifests = String::new();
    for name in names {
        let mock = MockProvider::start().await.unwrap();
        manifests.push_str(&provider(name, &mock.base_url(), None));
        mocks.push(mock);
    }
    manifests.push_str(&route(names, attempts, timeouts));
    (mocks, Sidecar::start(&manifests).await)
}

/// A `/v1/messages` (Anthropic dialect) request for the `chat` route.
async fn messages(sidecar: &Sidecar, stream: bool) -> reqwest::Response {
    sidecar
        .client
        .post(sidecar.url("/v1/messages"))
        .json(&json!({"model": "chat", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "Say hello"}]}))
        .send()
        .await
        .unwrap()
}

/// The OpenAI error body of a 504 `upstream_timeout`; returns its message.
async fn openai_timeout(resp: reqwest::Response, attempts: &str, what: &str) -> String {
    assert_eq!(resp.status(), 504, "{what}");
    assert_eq!(
        header(&resp, "x-gatehouse-attempts"),
        Some(attempts),
        "{what}"
    );
    assert_eq!(
        header(&resp, "content-type"),
        Some("application/json"),
        "{what}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "api_error", "{what}: {body}");
    assert_eq!(body["error"]["code"], "upstream_timeout", "{what}: {body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

/// The Anthropic error body of a 504; returns its message.
async fn anthropic_timeout(resp: reqwest::Response, attempts: &str, what: &str) -> String {
    assert_eq!(resp.status(), 504, "{what}");
    assert_eq!(
        header(&resp, "x-gatehouse-attempts"),
        Some(attempts),
        "{what}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error", "{what}: {body}");
    assert_eq!(body["error"]["type"], "timeout_error", "{what}: {body}");
    assert!(body.get("code").is_none(), "anthropic shape: {body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test(start_paused = true)]
async fn every_attempt_timing_out_answers_504_with_the_attempts_made() {
    let (mocks, sidecar) = setup(&["a", "b"], 3, "{attempt: 200ms, request: 30s}").await;
    for mock in &mocks {
        mock.set_default(Behaviour::hang());
    }
    // a, b, then a again after a backoff: three attempts, each cut by the attempt timeout while
    // the request deadline is far away.
    for stream in [false, true] {
        let what = format!("stream={stream}");
        let start = Instant::now();
        let message = openai_timeout(sidecar.chat("chat", stream).await, "3", &what).await;
        assert!(start.elapsed() < WAIT, "{what}: {:?}", start.elapsed());
        for target in ["a/gpt-4o-mini", "b/gpt-4o-mini"] {
            assert!(
                message.contains(&format!("{target}: timed out after 200 ms")),
                "{what}: {message}"
            );
        }
        assert_eq!(message.matches("timed out").count(), 3, "{message}");
    }
    assert_eq!(mocks[0].request_count(), 4);
    assert_eq!(mocks[1].request_count(), 2);

    for stream in [false, true] {
        let what = format!("/v1/messages stream={stream}");
        let message = anthropic_timeout(messages(&sidecar, stream).await, "3", &what).await;
        assert!(message.contains("timed out after 200 ms"), "{message}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_after_other_failures_still_answers_504() {
    let (mocks, sidecar) = setup(&["a", "b"], 2, "{attempt: 200ms, request: 30s}").await;
    mocks[0].set_default(Behaviour::status(503));
    mocks[1].set_default(Behaviour::hang());
    let message = openai_timeout(sidecar.chat("chat", false).await, "2", "503 then hang").await;
    assert!(
        message.contains("a/gpt-4o-mini: upstream answered 503"),
        "{message}"
    );
    assert!(message.contains("b/gpt-4o-mini: timed out"), "{message}");

    // The other way round the last failure is the 503: a bad gateway, not a timeout.
    mocks[0].set_default(Behaviour::hang());
    mocks[1].set_default(Behaviour::status(503));
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_failed");
}

#[tokio::test(start_paused = true)]
async fn first_token_timeout_fails_over_a_stream_that_has_not_started() {
    // The attempt limit is far away: only firstToken can cut the primary in time.
    let (mocks, sidecar) = setup(
        &["primary", "secondary"],
        2,
        "{attempt: 20s, firstToken: 300ms, request: 30s}",
    )
    .await;
    let (primary, secondary) = (&mocks[0], &mocks[1]);
    primary.push(Behaviour::hang());
    let start = Instant::now();
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-provider"), Some("secondary"));
    assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("2"));
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !events.iter().any(|e| e.contains("\"error\"")),
        "{events:?}"
    );
    assert!(start.elapsed() < WAIT, "{:?}", start.elapsed());
    assert_eq!((primary.request_count(), secondary.request_count()), (1, 1));

    // firstToken is for streams: a buffered answer slower than it (but within the attempt
    // limit) is not cut.
    primary.push(Behaviour::normal().latency(Duration::from_millis(600)));
    let resp = sidecar.chat("chat", false).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-provider"), Some("primary"));
    assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("1"));
}

/// An upstream that answers every request at once with the head of an event stream and then
/// sends no event (only, with `keep_alive`, an SSE comment every 50 ms), holding the connection
/// until the caller drops it: headers on time, first event never. Returns its base URL and how
/// many requests it got.
async fn silent_stream_upstream(keep_alive: bool) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                // Swallow the request body (sending keep-alives meanwhile); end when the caller
                // hangs up.
                let comment = b": keep-alive\n\n";
                let chunk = [
                    format!("{:x}\r\n", comment.len()).as_bytes(),
                    comment,
                    b"\r\n",
                ]
                .concat();
                loop {
                    tokio::select! {
                        read = conn.read(&mut buf) => match read {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        },
                        () = tokio::time::sleep(Duration::from_millis(50)), if keep_alive => {
                            if conn.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}/v1"), count)
}

#[tokio::test(start_paused = true)]
async fn first_token_counts_until_the_first_event_not_the_response_headers() {
    first_token_fails_over_a_stream_without_events(false).await;
}

#[tokio::test(start_paused = true)]
async fn keep_alive_comments_are_not_a_first_token() {
    first_token_fails_over_a_stream_without_events(true).await;
}

async fn first_token_fails_over_a_stream_without_events(keep_alive: bool) {
    let (silent, silent_count) = silent_stream_upstream(keep_alive).await;
    let secondary = MockProvider::start().await.unwrap();
    let manifests = [
        provider("primary", &silent, None),
        provider("secondary", &secondary.base_url(), None),
        route(
            &["primary", "secondary"],
            2,
            "{attempt: 20s, firstToken: 300ms, request: 30s}",
        ),
    ]
    .concat();
    let sidecar = Sidecar::start(&manifests).await;
    let start = Instant::now();
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-provider"), Some("secondary"));
    assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("2"));
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(start.elapsed() < WAIT, "{:?}", start.elapsed());
    assert_eq!(silent_count.load(Ordering::SeqCst), 1);
    assert_eq!(secondary.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn first_token_timeout_on_the_only_target_answers_504_before_any_byte() {
    let (mocks, sidecar) = setup(
        &["only"],
        1,
        "{attempt: 20s, firstToken: 300ms, request: 30s}",
    )
    .await;
    mocks[0].set_default(Behaviour::hang());
    let start = Instant::now();
    let message = openai_timeout(sidecar.chat("chat", true).await, "1", "openai").await;
    assert!(
        message.contains("only/gpt-4o-mini: timed out after 300 ms"),
        "{message}"
    );
    let message = anthropic_timeout(messages(&sidecar, true).await, "1", "anthropic").await;
    assert!(message.contains("timed out after 300 ms"), "{message}");
    assert!(start.elapsed() < WAIT, "{:?}", start.elapsed());
    assert_eq!(mocks[0].request_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_started_stream_slower_than_first_token_and_attempt_is_not_cut() {
    // Each event after the first comes 250 ms after the one before: slower than firstToken and
    // the attempt limit, and the whole stream takes several times both.
    let (mocks, sidecar) = setup(
        &["only"],
        1,
        "{attempt: 200ms, firstToken: 150ms, request: 30s}",
    )
    .await;
    mocks[0].push(
        Behaviour::normal()
            .content("one two three")
            .chunk_delay(Duration::from_millis(250)),
    );
    let start = Instant::now();
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert!(
        start.elapsed() > Duration::from_millis(600),
        "the stream was paced: {:?}",
        start.elapsed()
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks.iter().all(|c| c.get("error").is_none()),
        "{chunks:?}"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "one two three");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_is_cut_by_the_request_deadline_not_by_first_token() {
    let (mocks, sidecar) = setup(
        &["only"],
        1,
        "{attempt: 100ms, firstToken: 100ms, request: 1500ms}",
    )
    .await;
    // Each gate holds its stream after the first content chunk and is opened only at the end.
    let (gate, anthropic_gate) = (StreamGate::new(), StreamGate::new());
    mocks[0].push(Behaviour::normal().gate(gate.clone()));
    mocks[0].push(Behaviour::normal().gate(anthropic_gate.clone()));
    let start = Instant::now();
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp);
    let role: Value = serde_json::from_str(&reader.next(WAIT).await.unwrap()).unwrap();
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    let first: Value = serde_json::from_str(&reader.next(WAIT).await.unwrap()).unwrap();
    assert!(
        first["choices"][0]["delta"]["content"].is_string(),
        "{first}"
    );
    // Several times firstToken and the attempt limit pass: the stream stays open, silent.
    assert!(
        reader.quiet_for(Duration::from_millis(500)).await,
        "a started stream was cut by firstToken or the attempt limit"
    );
    let rest = reader.rest(WAIT).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_millis(4500),
        "cut at the request deadline (1.5 s): {elapsed:?}"
    );
    assert_eq!(rest.len(), 1, "only the error event follows: {rest:?}");
    let error: Value = serde_json::from_str(&rest[0]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout", "{error}");
    assert_eq!(error["error"]["type"], "api_error", "{error}");

    // The same in the Anthropic dialect: the stream ends with an Anthropic error event.
    let resp = messages(&sidecar, true).await;
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(WAIT, resp.text())
        .await
        .unwrap()
        .unwrap();
    assert!(text.contains("event: message_start"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error\n"), "{text}");
    let data: Value = serde_json::from_str(last.split("data: ").nth(1).unwrap()).unwrap();
    assert_eq!(data["type"], "error");
    assert!(
        data["error"]["message"]
            .as_str()
            .unwrap()
            .contains("request timeout"),
        "{data}"
    );
    gate.open();
    anthropic_gate.open();
}

// On the real clock on purpose: a paused clock cannot catch a deadline computed from
// `std::time::Instant` (which it does not move) or a timer that only fires because virtual time
// jumped. This one measures the request deadline in wall time, with bounds loose enough for a
// loaded machine.
#[tokio::test]
async fn the_request_deadline_bounds_the_attempts_together() {
    // Three targets, each failing only after 400 ms — more than half the 600 ms deadline — with
    // an attempt limit as long as the deadline: the second attempt is cut at the deadline and the
    // third never starts. Without the deadline this would take 3 × 400 ms and answer 502.
    let (mocks, sidecar) = setup(&["a", "b", "c"], 3, "{attempt: 600ms, request: 600ms}").await;
    let slow_failure = Behaviour::status(503).latency(Duration::from_millis(400));
    for mock in &mocks {
        mock.set_default(slow_failure.clone());
    }
    let deadline = Duration::from_millis(600);
    for stream in [false, true] {
        let what = format!("stream={stream}");
        let start = Instant::now();
        let message = openai_timeout(sidecar.chat("chat", stream).await, "2", &what).await;
        let elapsed = start.elapsed();
        assert!(
            elapsed >= deadline - Duration::from_millis(50) && elapsed < deadline * 3,
            "{what}: {elapsed:?}"
        );
        assert!(
            message.contains("a/gpt-4o-mini: upstream answered 503"),
            "{message}"
        );
        assert!(message.contains("b/gpt-4o-mini: timed out"), "{message}");
        assert!(!message.contains("c/gpt-4o-mini"), "{message}");
    }
    let start = Instant::now();
    anthropic_timeout(messages(&sidecar, false).await, "2", "/v1/messages").await;
    assert!(start.elapsed() < deadline * 3, "{:?}", start.elapsed());
    assert_eq!(mocks[0].request_count(), 3);
    assert_eq!(mocks[1].request_count(), 3);
    assert_eq!(mocks[2].request_count(), 0, "no attempt past the deadline");
}

#[tokio::test(start_paused = true)]
async fn the_attempt_limit_bounds_a_streams_response_headers_even_with_a_longer_first_token() {
    let (mocks, sidecar) = setup(
        &["primary", "secondary"],
        2,
        "{attempt: 300ms, firstToken: 20s, request: 30s}",
    )
    .await;
    // Headers only after 5 s: the attempt limit (300 ms) ends the attempt long before firstToken
    // (20 s) would, and the stream fails over.
    mocks[0].push(Behaviour::normal().latency(Duration::from_secs(5)));
    let start = Instant::now();
    let resp = sidecar.chat("chat", true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-provider"), Some("secondary"));
    assert_eq!(header(&resp, "x-gatehouse-attempts"), Some("2"));
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn loopback_io_is_never_cut_by_the_paused_clock() {
    // Limits of 50 ms that virtual time would exceed at the first jump: if the paused clock
    // advanced while a request or an answer was still on its way through a loopback socket, some
    // of these would fail over or time out.
    let (mocks, sidecar) = setup(
        &["primary", "secondary"],
        2,
        "{attempt: 50ms, firstToken: 50ms, request: 50ms}",
    )
    .await;
    let start = Instant::now();
    for i in 0..40 {
        let stream = i % 2 == 1;
        let resp = sidecar.chat("chat", stream).await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(
            header(&resp, "x-gatehouse-attempts"),
            Some("1"),
            "request {i}"
        );
        if stream {
            let events = sse_events(resp).await;
            assert_eq!(
                events.last().map(String::as_str),
                Some("[DONE]"),
                "{events:?}"
            );
        } else {
            let body: Value = resp.json().await.unwrap();
            assert!(
                body["choices"][0]["message"]["content"].is_string(),
                "{body}"
            );
        }
    }
    assert_eq!(
        (mocks[0].request_count(), mocks[1].request_count()),
        (40, 0)
    );
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "no timer fired, so virtual time stood still: {:?}",
        start.elapsed()
    );
}
