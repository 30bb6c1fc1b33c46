//! What redaction costs, in process (issue #15): a 4 KiB chat prompt through the request side
//! with every built-in detector on, with and without values in it (the target is at most 30 µs),
//! and a 20-event answer stream through the response side's hold-back. Measured on the release
//! build of the sidecar's own code (`gatehouse_sidecar::redact`), the same calls the redaction
//! stage makes.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_crds::config::{RedactActionConfig, RedactConfig};
use gatehouse_crds::guardrails::Detector;
use gatehouse_sidecar::dialect::Dialect;
use gatehouse_sidecar::redact::events::StreamText;
use gatehouse_sidecar::redact::{Direction, Engine, Session};

/// Prose for the prompts: ordinary text with numbers, versions and identifiers that look like
/// nothing sensitive.
const PROSE: &str = "The gateway routes each request to the cheapest healthy provider, and \
    version 2.14.1 of the client retries twice before giving up. Order 100234 shipped on \
    2024-03-18 at 14:05:33; the tracking page lists commit 3f786850e387550fdab836ed7e6dc881de23001b \
    and build 10.0.19045. Please summarise the incident report below in three bullet points, \
    keeping the timeline and the owners of each follow-up. ";

/// Values sprinkled into the prompt with values.
const VALUES: &[&str] = &[
    "jane.doe@example.com",
    "+1 415 555 2671",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
];

/// A chat request body of about `size` bytes: a system message and user turns of prose, with
/// `values` placed among them.
fn prompt(size: usize, values: &[&str]) -> Vec<u8> {
    let mut messages = vec![serde_json::json!({"role": "system",
        "content": "You are a careful assistant for the support team."})];
    let mut text = String::new();
    let mut placed = 0;
    let mut body = Vec::new();
    while body.len() < size {
        text.push_str(PROSE);
        if placed < values.len() {
            text.push_str("Contact: ");
            text.push_str(values[placed]);
            text.push_str(". ");
            placed += 1;
        }
        if text.len() > 700 {
            messages
                .push(serde_json::json!({"role": "user", "content": std::mem::take(&mut text)}));
        }
        let mut all = messages.clone();
        all.push(serde_json::json!({"role": "user", "content": text}));
        body = serde_json::to_vec(&serde_json::json!({"model": "chat", "messages": all}))
            .unwrap_or_default();
    }
    body
}

/// A 20-event OpenAI stream answering with prose and two values split across events.
fn stream() -> Vec<u8> {
    let text = "Sure. I wrote to jane.doe@example.com and called +1 415 555 2671 about the \
                refund of the order; the card 4111 1111 1111 1111 was not charged again. ";
    let step = text.len().div_ceil(20);
    let mut out = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let mut end = (at + step).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let chunk = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "created": 1, "model": "m", "choices": [{"index": 0,
            "delta": {"content": &text[at..end]}, "finish_reason": null}]});
        out.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
        at = end;
    }
    let last = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
        "created": 1, "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    out.extend_from_slice(format!("data: {last}\n\ndata: [DONE]\n\n").as_bytes());
    out
}

/// Per-call time of `f`: mean, p50 and p99 over batches of calls.
fn measure(mut f: impl FnMut()) -> (Duration, Duration, Duration) {
    for _ in 0..2_000 {
        f();
    }
    const BATCHES: usize = 400;
    const PER_BATCH: u32 = 50;
    let mut batches = Vec::with_capacity(BATCHES);
    let all = Instant::now();
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..PER_BATCH {
            f();
        }
        batches.push(t.elapsed() / PER_BATCH);
    }
    let mean = all.elapsed() / (BATCHES as u32 * PER_BATCH);
    batches.sort();
    (mean, batches[BATCHES / 2], batches[BATCHES * 99 / 100])
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// The report section.
pub fn report() -> anyhow::Result<String> {
    let engine = |action| -> anyhow::Result<Arc<Engine>> {
        Ok(Arc::new(Engine::build(&RedactConfig {
            action,
            detectors: Detector::ALL
                .iter()
                .map(|d| d.as_str().to_string())
                .collect(),
            custom: Vec::new(),
        })?))
    };
    let mask = engine(RedactActionConfig::Mask)?;
    let restore = engine(RedactActionConfig::MaskAndRestore)?;
    let clean = prompt(4096, &[]);
    let with_values = prompt(4096, VALUES);
    let mut out = String::new();
    writeln!(
        out,
        "\n### What redaction costs\n\n\
         In process, release build, every built-in detector on ({} patterns in one automaton); \
         per call, over 400 batches of 50 after 2,000 warm-up calls. Target: a 4 KiB prompt in \
         at most 30 µs.\n",
        gatehouse_sidecar::redact::detectors::PATTERNS.len()
    )?;
    writeln!(out, "| case | bytes | mean µs | p50 µs | p99 µs |")?;
    writeln!(out, "|---|---|---|---|---|")?;
    let mut row = |name: &str, bytes: usize, (mean, p50, p99): (Duration, Duration, Duration)| {
        writeln!(
            out,
            "| {name} | {bytes} | {} | {} | {} |",
            us(mean),
            us(p50),
            us(p99)
        )
    };
    for (name, body, engine) in [
        ("4 KiB prompt, no values (mask)", &clean, &mask),
        ("4 KiB prompt, 5 values (mask)", &with_values, &mask),
        (
            "4 KiB prompt, 5 values (maskAndRestore)",
            &with_values,
            &restore,
        ),
    ] {
        let mut changed = false;
        let m = measure(|| {
            let mut session = Session::new(engine.clone());
            changed =
                std::hint::black_box(session.rewrite_json(body, Direction::Request)).is_some();
        });
        anyhow::ensure!(
            changed == (body == &with_values),
            "{name}: the prompt was {}rewritten",
            if changed { "" } else { "not " }
        );
        row(name, body.len(), m)?;
    }
    let events = stream();
    let m = measure(|| {
        let mut session = Session::new(mask.clone());
        let mut text = StreamText::default();
        // Event by event, as the relay hands them over when they arrive one at a time.
        let mut start = 0;
        while let Some(end) = events[start..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| start + i + 2)
        {
            std::hint::black_box(text.rewrite(Dialect::OpenAi, &mut session, &events[start..end]));
            start = end;
        }
    });
    row(
        "20-event stream, event by event, 3 values (mask)",
        events.len(),
        m,
    )?;
    Ok(out)
}
