//! A closed-loop load generator: `concurrency` keep-alive HTTP/1.1 connections, each sending its
//! next request as soon as the previous answer is complete, until `requests` answers arrived.
//! Latencies go into HDR histograms (microsecond resolution).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where.
    pub addr: SocketAddr,
    /// Request path.
    pub path: &'static str,
    /// JSON body.
    pub body: Bytes,
    /// Streamed answer expected.
    pub stream: bool,
    /// Extra request headers (peers want a key or routing headers).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// Results of one load run.
#[derive(Debug)]
pub struct Outcome {
    /// Answers received.
    pub requests: u64,
    /// Non-2xx answers or broken streams.
    pub errors: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Full request latency.
    pub latency: Histogram<u64>,
    /// Time to the response headers.
    pub ttfb: Histogram<u64>,
    /// Time to the first content token (streams).
    pub ttft: Histogram<u64>,
}

impl Outcome {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: histogram()?,
            ttfb: histogram()?,
            ttft: histogram()?,
        })
    }

    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Merge another run into this one (for interleaved rounds).
    pub fn merge(&mut self, other: &Outcome) -> anyhow::Result<()> {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latency.add(&other.latency)?;
        self.ttfb.add(&other.ttfb)?;
        self.ttft.add(&other.ttft)?;
        Ok(())
    }

    /// An empty outcome to merge into.
    pub fn empty() -> anyhow::Result<Self> {
        Self::new()
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Run `requests` requests over `concurrency` connections.
pub async fn run(target: &Target, concurrency: usize, requests: u64) -> anyhow::Result<Outcome> {
    let remaining = Arc::new(AtomicU64::new(requests));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let target = target.clone();
        let remaining = remaining.clone();
        tasks.push(tokio::spawn(async move { worker(target, remaining).await }));
    }
    let mut total = Outcome::new()?;
    for task in tasks {
        let part = task.await.context("load worker panicked")??;
        total.requests += part.requests;
        total.errors += part.errors;
        total.latency.add(&part.latency)?;
        total.ttfb.add(&part.ttfb)?;
        total.ttft.add(&part.ttft)?;
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("failed to connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(target: Target, remaining: Arc<AtomicU64>) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new()?;
    let mut sender = connect(target.addr).await?;
    let authority = target.addr.to_string();
    loop {
        // Claim one request; stop when none are left.
        if remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            return Ok(out);
        }
        if sender.ready().await.is_err() {
            sender = connect(target.addr).await?;
        }
        let mut request = http::Request::post(target.path)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in &target.headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(target.body.clone()))?;
        let sent = Instant::now();
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(_) => {
                out.errors += 1;
                out.requests += 1;
                sender = connect(target.addr).await?;
                continue;
            }
        };
        out.ttfb.record(micros(sent.elapsed()))?;
        let ok = response.status().is_success();
        let mut body = response.into_body();
        let mut first_token = false;
        let mut done = !target.stream;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                done = false;
                break;
            };
            if let Ok(data) = frame.into_data() {
                if target.stream && !first_token && has_token(&data) {
                    first_token = true;
                    out.ttft.record(micros(sent.elapsed()))?;
                }
                if target.stream && data.windows(6).any(|w| w == b"[DONE]") {
                    done = true;
                }
            }
        }
        out.latency.record(micros(sent.elapsed()))?;
        out.requests += 1;
        if !ok || !done {
            out.errors += 1;
        }
    }
}

/// Whether a stream chunk carries generated text (not the empty role chunk).
fn has_token(data: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"content\":\"";
    data.windows(NEEDLE.len())
        .enumerate()
        .any(|(i, w)| w == NEEDLE && data.get(i + NEEDLE.len()).is_some_and(|b| *b != b'"'))
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// Fail loudly when a run had errors: numbers from a broken run mean nothing.
pub fn check(name: &str, outcome: &Outcome) -> anyhow::Result<()> {
    if outcome.errors > 0 {
        bail!(
            "{name}: {} of {} requests failed",
            outcome.errors,
            outcome.requests
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::has_token;

    #[test]
    fn role_chunk_is_not_a_token() {
        assert!(!has_token(
            br#"data: {"delta":{"role":"assistant","content":""}}"#
        ));
        assert!(has_token(br#"data: {"delta":{"content":"Hi"}}"#));
    }
}
