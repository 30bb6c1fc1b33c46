//! Golden costs through the real sidecar and the mock provider: every provider type, buffered
//! and streamed, with cached reads (and cache writes and reasoning where the provider reports
//! them), priced from rates stated here and checked against costs computed by hand. Also the
//! usage the gateway asks OpenAI providers for and hides from clients that did not, and the
//! estimate charged for a stream cut upstream or dropped by its client.
//!
//! The costs are read where a client reads them: `x-gatehouse-cost-usd` on buffered answers, the
//! `gatehouse_cost_usd` field of the final usage event of streams whose client asked for usage,
//! and the access line (captured here from the `gatehouse::access` log target) for the others.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gatehouse_crds::config::Pricing;
use gatehouse_mock_provider::{Behaviour, MockProvider, StreamGate};
use gatehouse_sidecar::state::Snapshot;
use serde_json::{Value, json};
use support::{Sidecar, SseReader, header, sse_events};

const KEY: &str = "sk-metering-test-0123456789";
const AWS_KEY: &str = "AKIDMOCKEXAMPLE:mock-secret-access-key";
const WAIT: Duration = Duration::from_secs(5);

/// The rates every model is priced at here, USD per million tokens: large and distinct, so each
/// token type's share shows in the 8 decimals of the header.
const PRICE: Pricing = Pricing {
    input_per_million: 1000.0,
    output_per_million: 3000.0,
    cached_input_per_million: Some(100.0),
    cache_write_per_million: Some(1250.0),
    reasoning_per_million: Some(5000.0),
    long_context: None,
};

/// The prompt: 40 words, which every mock flavour counts as 40 prompt tokens.
fn prompt() -> String {
    (1..=40)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The answer: 6 words, one per stream chunk, 6 visible output tokens.
const ANSWER: &str = "one two three four five six";

/// Cached reads, cache writes and reasoning tokens the mock reports (where its flavour can).
const CACHED: u64 = 16;
const WRITTEN: u64 = 8;
const REASONING: u64 = 4;

#[derive(Clone, Copy, Debug)]
struct Flavour {
    name: &'static str,
    kind: &'static str,
    model: &'static str,
    key: &'static str,
    extra: &'static str,
    /// Whether the provider reports cache writes apart (Anthropic, Bedrock).
    writes: bool,
    /// Whether it reports reasoning apart (OpenAI, Azure, Gemini); the others count thinking as
    /// output.
    reasoning: bool,
}

const FLAVOURS: [Flavour; 6] = [
    Flavour {
        name: "openai",
        kind: "openai",
        model: "gpt-4o-mini",
        key: KEY,
        extra: "",
        writes: false,
        reasoning: true,
    },
    Flavour {
        name: "compatible",
        kind: "openaiCompatible",
        model: "llama-3.1-8b",
        key: KEY,
        extra: "",
        writes: false,
        reasoning: true,
    },
    Flavour {
        name: "azure",
        kind: "azureOpenAI",
        model: "gpt4o-deploy",
        key: KEY,
        extra: "  azure: {apiVersion: \"2024-10-21\"}\n",
        writes: false,
        reasoning: true,
    },
    Flavour {
        name: "anthropic",
        kind: "anthropic",
        model: "claude-sonnet-4-5",
        key: KEY,
        extra: "",
        writes: true,
        reasoning: false,
    },
    Flavour {
        name: "gemini",
        kind: "gemini",
        model: "gemini-2.5-pro",
        key: KEY,
        extra: "",
        writes: false,
        reasoning: true,
    },
    Flavour {
        name: "bedrock",
        kind: "bedrock",
        model: "anthropic.claude-3-haiku-20240307-v1:0",
        key: AWS_KEY,
        extra: "  bedrock: {region: us-east-1}\n",
        writes: true,
        reasoning: false,
    },
];

impl Flavour {
    /// The mock's behaviour for this flavour's golden request.
    fn behaviour(&self) -> Behaviour {
        Behaviour::normal()
            .content(ANSWER)
            .cached_tokens(CACHED)
            .cache_write_tokens(WRITTEN)
            .reasoning_tokens(REASONING)
    }

    /// The cost computed by hand: 40 prompt tokens of which 16 cached reads (and 8 cache writes
    /// where the provider reports them), 6 answer tokens plus 4 of reasoning (at the reasoning
    /// rate where the provider reports it apart, else as output).
    fn expected_cost(&self) -> f64 {
        let written = if self.writes { WRITTEN } else { 0 };
        let input = 40 - CACHED - written;
        let (output, reasoning) = if self.reasoning {
            (6, REASONING)
        } else {
            (6 + REASONING, 0)
        };
        (input as f64 * 1000.0
            + CACHED as f64 * 100.0
            + written as f64 * 1250.0
            + output as f64 * 3000.0
            + reasoning as f64 * 5000.0)
            / 1e6
    }
}

/// A mock that wants `KEY` (and the AWS key of `AWS_KEY`), and a sidecar with one provider and
/// one route (`r-<name>`) per flavour, every model priced at [`PRICE`].
async fn setup() -> (MockProvider, Sidecar) {
    capture_access_lines();
    let mock = MockProvider::with_api_key(KEY)
        .aws_credentials("AKIDMOCKEXAMPLE", "mock-secret-access-key")
        .aws_region("us-east-1")
        .start()
        .await
        .unwrap();
    let mut yaml =
        String::from("---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData:\n");
    for f in FLAVOURS {
        yaml.push_str(&format!("  {}: \"{}\"\n", f.name, f.key));
    }
    for f in FLAVOURS {
        let endpoint = match f.kind {
            "openai" | "openaiCompatible" => mock.base_url(),
            _ => mock.origin(),
        };
        yaml.push_str(&format!(
            "---\napiVersion: gatehouse.dev/v1alpha1\nkind: ModelProvider\nmetadata: {{name: {n}}}\n\
             spec:\n  type: {k}\n  endpoint: {endpoint}\n  apiKeySecretRef: {{name: keys, key: {n}}}\n{x}\
             ---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: r-{n}}}\n\
             spec:\n  targets: [{{provider: {n}, model: \"{m}\"}}]\n  retry: {{attempts: 1}}\n",
            n = f.name,
            k = f.kind,
            m = f.model,
            x = f.extra,
        ));
    }
    // An unpriced model on the openai provider.
    yaml.push_str(
        "---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {name: unpriced}\n\
         spec:\n  targets: [{provider: openai, model: gpt-unpriced}]\n  retry: {attempts: 1}\n",
    );
    let sidecar = Sidecar::start(&yaml).await;
    // The ModelProvider schema of this branch states input, output and cached-input prices
    // only; the rendered config (what the sidecar prices with) has every rate. Price every
    // model at PRICE in the snapshot the sidecar serves, with the same keys.
    let snapshot = sidecar.running.store.load().unwrap();
    let mut config = snapshot.config.clone();
    let mut keys = gatehouse_crds::ProviderKeys::new();
    for f in FLAVOURS {
        let p = config.providers.get_mut(f.name).unwrap();
        p.models = BTreeMap::from([(f.model.to_string(), PRICE)]);
        keys.insert(p.key.clone().unwrap(), f.key);
    }
    sidecar
        .running
        .store
        .store(Snapshot::build(config, &keys).unwrap());
    (mock, sidecar)
}

fn chat_body(route: &str, stream: bool, include_usage: bool) -> Value {
    let mut body = json!({
        "model": route,
        "messages": [{"role": "user", "content": prompt()}],
        "stream": stream,
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn messages_body(route: &str, stream: bool) -> Value {
    json!({
        "model": route,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": prompt()}],
        "stream": stream,
    })
}

async fn post(sidecar: &Sidecar, path: &str, body: &Value) -> reqwest::Response {
    sidecar
        .client
        .post(sidecar.url(path))
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

// -- the access line ------------------------------------------------------------------------

/// Every `gatehouse::access` line of this test binary, as JSON.
fn access_lines() -> &'static Arc<Mutex<Vec<u8>>> {
    static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LINES.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        access_lines().lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_access_lines() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new("gatehouse::access=info"))
            .with_writer(|| Capture)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

/// The access line of request `id`, once it is written.
async fn access_line(id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8(access_lines().lock().unwrap().clone()).unwrap();
        if let Some(line) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["request_id"] == id)
        {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no access line for {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cost an access line reports (a decimal string, as in the header).
fn logged_cost(line: &Value) -> f64 {
    line["cost_usd"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no cost in {line}"))
}

// -- golden costs ---------------------------------------------------------------------------

#[tokio::test]
async fn buffered_answers_of_every_provider_carry_their_cost_in_the_header() {
    let (mock, sidecar) = setup().await;
    for f in FLAVOURS {
        let expected = f.expected_cost();
        // OpenAI clients of every provider; Anthropic clients of Anthropic (native) and of
        // OpenAI (translated).
        let mut calls = vec![(
            "/v1/chat/completions",
            chat_body(&format!("r-{}", f.name), false, false),
        )];
        if matches!(f.name, "anthropic" | "openai") {
            calls.push((
                "/v1/messages",
                messages_body(&format!("r-{}", f.name), false),
            ));
        }
        for (path, body) in calls {
            mock.push(f.behaviour());
            let resp = post(&sidecar, path, &body).await;
            assert_eq!(resp.status(), 200, "{f:?} {path}");
            assert_eq!(
                header(&resp, "x-gatehouse-cost-usd"),
                Some(format!("{expected:.8}").as_str()),
                "{f:?} {path}"
            );
            let id = header(&resp, "x-gatehouse-request-id").unwrap().to_string();
            let answer: Value = resp.json().await.unwrap();
            if path == "/v1/chat/completions" {
                let u = &answer["usage"];
                assert_eq!(u["prompt_tokens"], 40, "{f:?}: {u}");
                assert_eq!(u["prompt_tokens_details"]["cached_tokens"], CACHED, "{f:?}");
            } else {
                let u = &answer["usage"];
                let written = if f.writes { WRITTEN } else { 0 };
                assert_eq!(u["cache_read_input_tokens"], CACHED, "{f:?}: {u}");
                assert_eq!(u["cache_creation_input_tokens"], written, "{f:?}: {u}");
                assert_eq!(u["input_tokens"], 40 - CACHED - written, "{f:?}: {u}");
            }
            assert!(
                close(logged_cost(&access_line(&id).await), expected),
                "{f:?}"
            );
        }
    }
}

#[tokio::test]
async fn streams_of_every_provider_carry_their_cost_in_band_and_in_the_access_line() {
    let (mock, sidecar) = setup().await;
    for f in FLAVOURS {
        let expected = f.expected_cost();
        let route = format!("r-{}", f.name);
        // A client that asked for usage reads the cost from the usage chunk.
        mock.push(f.behaviour());
        let resp = post(
            &sidecar,
            "/v1/chat/completions",
            &chat_body(&route, true, true),
        )
        .await;
        assert_eq!(resp.status(), 200, "{f:?}");
        let id = header(&resp, "x-gatehouse-request-id").unwrap().to_string();
        assert_eq!(header(&resp, "x-gatehouse-cost-usd"), None, "{f:?}");
        let events = sse_events(resp).await;
        let usage: Vec<Value> = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter(|c| c["usage"].is_object())
            .collect();
        assert_eq!(usage.len(), 1, "{f:?}: {events:?}");
        let u = &usage[0]["usage"];
        assert_eq!(u["prompt_tokens"], 40, "{f:?}: {u}");
        assert!(
            close(u["gatehouse_cost_usd"].as_f64().unwrap(), expected),
            "{f:?}: {u} != {expected}"
        );
        assert!(
            close(logged_cost(&access_line(&id).await), expected),
            "{f:?}"
        );

        // A client that did not ask is metered all the same (the access line).
        mock.push(f.behaviour());
        let resp = post(
            &sidecar,
            "/v1/chat/completions",
            &chat_body(&route, true, false),
        )
        .await;
        let id = header(&resp, "x-gatehouse-request-id").unwrap().to_string();
        let events = sse_events(resp).await;
        assert!(
            events.iter().all(|e| !e.contains("\"usage\"")),
            "{f:?}: {events:?}"
        );
        assert!(
            close(logged_cost(&access_line(&id).await), expected),
            "{f:?}"
        );
    }
}

#[tokio::test]
async fn anthropic_clients_read_the_stream_cost_on_message_delta() {
    let (mock, sidecar) = setup().await;
    for f in FLAVOURS {
        if !matches!(f.name, "anthropic" | "openai" | "gemini") {
            continue;
        }
        mock.push(f.behaviour());
        let resp = post(
            &sidecar,
            "/v1/messages",
            &messages_body(&format!("r-{}", f.name), true),
        )
        .await;
        assert_eq!(resp.status(), 200, "{f:?}");
        let id = header(&resp, "x-gatehouse-request-id").unwrap().to_string();
        let events = SseReader::new(resp).rest(WAIT).await;
        let delta: Value = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .find(|e| e["type"] == "message_delta")
            .unwrap();
        let expected = f.expected_cost();
        let cost = delta["usage"]["gatehouse_cost_usd"].as_f64().unwrap();
        assert!(close(cost, expected), "{f:?}: {delta}");
        assert!(
            close(logged_cost(&access_line(&id).await), expected),
            "{f:?}"
        );
    }
}

#[tokio::test]
async fn the_long_context_tier_prices_a_long_prompt() {
    let (mock, sidecar) = setup().await;
    // Re-price gemini with a tier above 39 prompt tokens: the 40-token prompt is in it.
    let snapshot = sidecar.running.store.load().unwrap();
    let mut config = snapshot.config.clone();
    let mut keys = gatehouse_crds::ProviderKeys::new();
    for f in FLAVOURS {
        keys.insert(config.providers[f.name].key.clone().unwrap(), f.key);
    }
    let gemini = FLAVOURS[4];
    let mut tiered = PRICE;
    tiered.long_context = Some(gatehouse_crds::config::LongContextPricing {
        above_input_tokens: 39,
        input_per_million: 2000.0,
        output_per_million: 4000.0,
        cached_input_per_million: Some(200.0),
        cache_write_per_million: None,
    });
    config.providers.get_mut("gemini").unwrap().models =
        BTreeMap::from([(gemini.model.to_string(), tiered)]);
    sidecar
        .running
        .store
        .store(Snapshot::build(config, &keys).unwrap());
    mock.push(gemini.behaviour());
    let resp = post(
        &sidecar,
        "/v1/chat/completions",
        &chat_body("r-gemini", false, false),
    )
    .await;
    // 24 input, 16 cached, 6 output and 4 reasoning (at the tier's output rate).
    let expected = (24.0 * 2000.0 + 16.0 * 200.0 + 10.0 * 4000.0) / 1e6;
    assert_eq!(
        header(&resp, "x-gatehouse-cost-usd"),
        Some(format!("{expected:.8}").as_str())
    );
}

// -- usage the client did not ask for ---------------------------------------------------------

#[tokio::test]
async fn openai_streams_ask_for_usage_and_the_client_sees_exactly_what_it_would_without_it() {
    let (mock, sidecar) = setup().await;
    for name in ["openai", "compatible", "azure"] {
        let f = FLAVOURS.iter().find(|f| f.name == name).unwrap();
        mock.clear();
        mock.push(f.behaviour());
        let resp = post(
            &sidecar,
            "/v1/chat/completions",
            &chat_body(&format!("r-{name}"), true, false),
        )
        .await;
        let through: Vec<Value> = sse_events(resp)
            .await
            .iter()
            .map(|e| serde_json::from_str(e).unwrap_or(json!(e)))
            .collect();
        // The provider was asked for usage.
        let sent = mock.last_request().unwrap().body.unwrap();
        assert_eq!(
            sent["stream_options"],
            json!({"include_usage": true}),
            "{name}"
        );
        // What the mock answers a client that does not ask, straight from the provider (less
        // the prompt-filter chunk without choices Azure opens with: the sidecar drops it, with
        // or without metering).
        let direct = if name == "azure" {
            reqwest::Client::new()
                .post(format!(
                    "{}/openai/deployments/{}/chat/completions?api-version=2024-10-21",
                    mock.origin(),
                    f.model
                ))
                .header("api-key", KEY)
        } else {
            reqwest::Client::new()
                .post(format!("{}/chat/completions", mock.base_url()))
                .bearer_auth(KEY)
        };
        mock.push(f.behaviour());
        let direct: Vec<Value> = sse_events(
            direct
                .json(&chat_body(f.model, true, false))
                .send()
                .await
                .unwrap(),
        )
        .await
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or(json!(e)))
        .filter(|e: &Value| e["choices"] != json!([]))
        .collect();
        let shape = |events: &[Value]| -> Vec<Value> {
            events
                .iter()
                .map(|e| match e.as_object() {
                    Some(o) => {
                        let mut o = o.clone();
                        for k in ["id", "created", "model", "system_fingerprint"] {
                            o.remove(k);
                        }
                        Value::Object(o)
                    }
                    None => e.clone(),
                })
                .collect()
        };
        assert_eq!(shape(&through), shape(&direct), "{name}");
    }
}

#[tokio::test]
async fn a_client_that_asks_for_usage_gets_it_as_the_provider_sent_it() {
    let (mock, sidecar) = setup().await;
    mock.push(FLAVOURS[0].behaviour());
    let resp = post(
        &sidecar,
        "/v1/chat/completions",
        &chat_body("r-openai", true, true),
    )
    .await;
    let events = sse_events(resp).await;
    // Every chunk but the last carries `"usage":null`, as OpenAI sends it in this mode.
    let chunks: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    let (last, rest) = chunks.split_last().unwrap();
    assert!(
        rest.iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"]["completion_tokens_details"]["reasoning_tokens"],
        REASONING
    );
}

// -- estimates ------------------------------------------------------------------------------

#[tokio::test]
async fn a_stream_cut_upstream_is_charged_its_prompt_and_the_text_relayed() {
    let (mock, sidecar) = setup().await;
    let body = chat_body("r-openai", true, false);
    let request_bytes = serde_json::to_vec(&body).unwrap().len() as f64;
    mock.push(
        FLAVOURS[0]
            .behaviour()
            .with_fault(gatehouse_mock_provider::Fault::CutAfter { chunks: 3 }),
    );
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    let id = header(&resp, "x-gatehouse-request-id").unwrap().to_string();
    let events = sse_events(resp).await;
    let text: usize = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::len))
        .sum();
    assert!(text > 0, "{events:?}");
    // No usage came: the prompt at 4 bytes a token of the request body, the output at 4 bytes a
    // token of the text relayed, both rounded up.
    let prompt = (request_bytes / 4.0).ceil();
    let output = (text as f64 / 4.0).ceil();
    let expected = (prompt * 1000.0 + output * 3000.0) / 1e6;
    let line = access_line(&id).await;
    assert!(close(logged_cost(&line), expected), "{line} != {expected}");
    assert_eq!(line["cost_estimated"], true, "{line}");
}

#[tokio::test]
async fn a_stream_its_client_cancels_is_charged_an_estimate() {
    let (mock, sidecar) = setup().await;
    // Anthropic reports the prompt in message_start: the estimate keeps it, and adds the output
    // relayed before the client left.
    let gate = StreamGate::new();
    mock.push(FLAVOURS[3].behaviour().gate(gate.clone()));
    let resp = post(
        &sidecar,
        "/v1/messages",
        &messages_body("r-anthropic", true),
    )
    .await;
    let id = header(&resp, "x-gatehouse-request-id").unwrap().to_string();
    let mut reader = SseReader::new(resp);
    let mut text = 0;
    while let Some(event) = reader.next(WAIT).await {
        let event: Value = serde_json::from_str(&event).unwrap();
        if let Some(t) = event["delta"]["text"].as_str() {
            text += t.len();
            break;
        }
    }
    drop(reader);
    // 16 uncached input, 16 cached reads, 8 cache writes; one output token reported so far,
    // fewer than the text suggests.
    let output = (text as f64 / 4.0).ceil().max(1.0);
    let expected = (16.0 * 1000.0 + 16.0 * 100.0 + 8.0 * 1250.0 + output * 3000.0) / 1e6;
    let line = access_line(&id).await;
    assert!(close(logged_cost(&line), expected), "{line} != {expected}");
    assert_eq!(line["cost_estimated"], true, "{line}");
    gate.release(100);
}

// -- unpriced -------------------------------------------------------------------------------

#[tokio::test]
async fn an_unpriced_model_is_served_with_an_unknown_cost_and_counted() {
    let (mock, sidecar) = setup().await;
    mock.push(Behaviour::normal());
    let resp = post(
        &sidecar,
        "/v1/chat/completions",
        &chat_body("unpriced", false, false),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-gatehouse-cost-usd"), Some("unknown"));
    // A stream that asked for usage gets `null` in the cost field.
    mock.push(Behaviour::normal());
    let resp = post(
        &sidecar,
        "/v1/chat/completions",
        &chat_body("unpriced", true, true),
    )
    .await;
    let events = sse_events(resp).await;
    let usage = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find(|c| c["usage"].is_object())
        .unwrap();
    assert_eq!(usage["usage"].get("gatehouse_cost_usd"), Some(&Value::Null));
    let deadline = tokio::time::Instant::now() + WAIT;
    let needle = r#"gatehouse_unpriced_requests_total{provider="openai",model="gpt-unpriced"} 2"#;
    while !sidecar.metrics().await.contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            sidecar.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn with_metering_off_nothing_is_asked_for_or_priced() {
    capture_access_lines();
    let mock = MockProvider::with_api_key(KEY).start().await.unwrap();
    let manifests = format!(
        "{}---\napiVersion: gatehouse.dev/v1alpha1\nkind: Route\nmetadata: {{name: chat}}\n\
         spec:\n  targets: [{{provider: p, model: gpt-4o-mini}}]\n",
        support::provider("p", &mock.base_url(), Some(KEY))
    );
    let sidecar = Sidecar::start_with(&manifests, |args| args.metering = false).await;
    let resp = post(
        &sidecar,
        "/v1/chat/completions",
        &chat_body("chat", false, false),
    )
    .await;
    assert_eq!(header(&resp, "x-gatehouse-cost-usd"), Some("unknown"));
    let resp = post(
        &sidecar,
        "/v1/chat/completions",
        &chat_body("chat", true, false),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let _ = sse_events(resp).await;
    let sent = mock.last_request().unwrap().body.unwrap();
    assert!(sent.get("stream_options").is_none(), "{sent}");
}

// -- embeddings -------------------------------------------------------------------------------

#[tokio::test]
async fn embeddings_are_priced_at_the_input_rate_and_estimated_when_unreported() {
    let (_mock, sidecar) = setup().await;
    for f in FLAVOURS
        .iter()
        .filter(|f| matches!(f.name, "openai" | "compatible" | "azure" | "gemini"))
    {
        let body = json!({"model": format!("r-{}", f.name), "input": ["one two three", "four"]});
        let resp = post(&sidecar, "/v1/embeddings", &body).await;
        assert_eq!(resp.status(), 200, "{}", f.name);
        let cost: f64 = header(&resp, "x-gatehouse-cost-usd")
            .unwrap_or_else(|| panic!("{}: no cost header", f.name))
            .parse()
            .unwrap();
        let id = header(&resp, "x-gatehouse-request-id").unwrap().to_string();
        let answer: Value = resp.json().await.unwrap();
        let line = access_line(&id).await;
        let reported = answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        // Gemini's embeddings report no tokens: the answer carries the gateway's estimate from
        // the input's text ("one two three" + "four": 17 bytes, 4 a token), marked as such.
        let estimated = f.name == "gemini";
        if estimated {
            assert_eq!(reported, 5, "{}: {answer}", f.name);
        }
        assert_eq!(
            answer["usage"].get("gatehouse_estimated") == Some(&json!(true)),
            estimated,
            "{}: {answer}",
            f.name
        );
        // The prompt tokens the client sees, all at the input rate; no output.
        let expected = reported as f64 * 1000.0 / 1e6;
        assert!(close(cost, expected), "{}: {cost} != {expected}", f.name);
        assert_eq!(line["cost_estimated"], estimated, "{}: {line}", f.name);
        assert_eq!(line["input_tokens"], reported, "{}: {line}", f.name);
        assert!(close(logged_cost(&line), cost), "{}: {line}", f.name);
    }
}
