//! The OTLP/HTTP trace exporter: off unless an endpoint is configured.
//!
//! The request path hands each finished request's [`Record`] (shared, no copy) to a bounded
//! queue with `try_send`; when the queue is full the record is dropped and counted
//! (`gatehouse_trace_records_dropped_total`), the request never waits. A task of its own turns
//! records into spans (one per request, one per attempt; `stages::record` documents them),
//! encodes them as an `ExportTraceServiceRequest` in protobuf (`otlp::proto`, written by hand:
//! a few hundred lines instead of the opentelemetry SDK's dependency tree) and POSTs them to the
//! endpoint with `content-type: application/x-protobuf`: a batch when 512 records are waiting
//! or 1 s after the first of them arrived, whichever is first.
//!
//! Each POST is bounded by `--otlp-timeout-ms`. 429, 502, 503, 504 and transport errors are
//! retried (OTLP/HTTP's retryable answers) after a backoff of 1 s, 2 s, 4 s, or the server's
//! `Retry-After` when it is shorter than 30 s; after 3 retries the batch is dropped and counted.
//! Any other answer drops the batch at once. Records keep queueing meanwhile, up to the bound.

pub mod proto;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::records::Record;
use crate::upstream::UpstreamClient;

/// Records per export request, at most.
pub const MAX_BATCH: usize = 512;
/// Longest a record waits for its batch.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Default queue bound, in records (`--otlp-queue`).
pub const DEFAULT_QUEUE: u64 = 2048;
/// Default bound of one export POST (`--otlp-timeout-ms`), OTLP's default.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Retries of a batch after a retryable answer.
const RETRIES: u32 = 3;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The traces URL (`.../v1/traces`).
    pub endpoint: Uri,
    /// Queue bound, in records.
    pub queue: usize,
    /// Bound of one POST.
    pub timeout: Duration,
    /// Resource attributes (`service.name`, `k8s.namespace.name`, `k8s.pod.name`, ...).
    pub resource: Vec<(&'static str, String)>,
}

/// Why an endpoint is not usable.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL.
    #[error("failed to parse the OTLP endpoint {url:?}: {source}")]
    Parse {
        /// What was given.
        url: String,
        /// Why.
        source: http::uri::InvalidUri,
    },
    /// Not http(s) with a host.
    #[error("the OTLP endpoint {0:?} is not an http:// or https:// URL with a host")]
    Scheme(String),
}

/// The traces URL from, in order: `--otlp-endpoint` (`GATEHOUSE_OTLP_ENDPOINT`), used as is
/// unless it has no path, which then gets `/v1/traces`; `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
/// used as is; `OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/traces`. `None`: tracing is off (also when
/// `OTEL_TRACES_EXPORTER=none` and no `--otlp-endpoint` was given).
pub fn endpoint(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Uri>, EndpointError> {
    let nonblank = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    let (url, append) = if let Some(flag) = flag.filter(|s| !s.trim().is_empty()) {
        (flag.trim().to_string(), None)
    } else if nonblank(env("OTEL_TRACES_EXPORTER")).is_some_and(|e| e.trim() == "none") {
        return Ok(None);
    } else if let Some(url) = nonblank(env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        (url.trim().to_string(), None)
    } else if let Some(url) = nonblank(env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        (url.trim().to_string(), Some(()))
    } else {
        return Ok(None);
    };
    let parsed: Uri = url.parse().map_err(|source| EndpointError::Parse {
        url: url.clone(),
        source,
    })?;
    let scheme_ok = matches!(parsed.scheme_str(), Some("http" | "https"));
    if !scheme_ok || parsed.host().is_none() {
        return Err(EndpointError::Scheme(url));
    }
    let bare = matches!(parsed.path(), "" | "/");
    let url = if append.is_some() || bare {
        format!("{}/v1/traces", url.trim_end_matches('/'))
    } else {
        url
    };
    url.parse()
        .map(Some)
        .map_err(|source| EndpointError::Parse { url, source })
}

/// Counters of the exporter, read at scrape time.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans the endpoint accepted.
    pub exported: AtomicU64,
    /// Spans of batches given up on (refused, or still failing after the retries).
    pub failed: AtomicU64,
}

/// The request path's handle on the exporter.
#[derive(Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Arc<Record>>,
    counters: Arc<Counters>,
}

impl Exporter {
    /// Queue a finished request's record; drops (and counts) it when the queue is full.
    pub fn send(&self, record: Arc<Record>) {
        if self.tx.try_send(record).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

/// The exporter's counters as Prometheus metrics.
#[derive(Debug)]
pub struct CountersCollector(pub Arc<Counters>);

impl Collector for CountersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows: [(&str, &str, &AtomicU64); 3] = [
            (
                "trace_records_dropped",
                "Request records not traced because the export queue was full",
                &self.0.dropped,
            ),
            (
                "trace_spans_exported",
                "Spans the OTLP endpoint accepted",
                &self.0.exported,
            ),
            (
                "trace_spans_failed",
                "Spans given up on: refused by the OTLP endpoint, or still failing after the retries",
                &self.0.failed,
            ),
        ];
        for (name, help, value) in rows {
            let metric = ConstCounter::new(value.load(Ordering::Relaxed));
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            metric.encode(family)?;
        }
        Ok(())
    }
}

/// Start the exporter task; it flushes what is queued and stops when `shutdown` turns true.
pub fn start(
    settings: Settings,
    client: UpstreamClient,
    shutdown: watch::Receiver<bool>,
) -> (Arc<Exporter>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    let counters = Arc::new(Counters::default());
    let task = tokio::spawn(run(settings, client, rx, shutdown, counters.clone()));
    (Arc::new(Exporter { tx, counters }), task)
}

async fn run(
    settings: Settings,
    client: UpstreamClient,
    mut rx: mpsc::Receiver<Arc<Record>>,
    mut shutdown: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    let mut batch: Vec<Arc<Record>> = Vec::with_capacity(MAX_BATCH);
    loop {
        // Wait for the first record of a batch (or the end).
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let due = tokio::time::Instant::now() + BATCH_DELAY;
        let mut ending = false;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => batch.push(r),
                    None => { ending = true; break; }
                },
                _ = tokio::time::sleep_until(due) => break,
                _ = shutdown.wait_for(|s| *s) => { ending = true; break; }
            }
        }
        export(&settings, &client, &batch, &counters, !ending).await;
        batch.clear();
        if ending {
            break;
        }
    }
    // Shutting down: what is still queued goes in one last try, without retries.
    while let Ok(r) = rx.try_recv() {
        batch.push(r);
        if batch.len() == MAX_BATCH {
            export(&settings, &client, &batch, &counters, false).await;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        export(&settings, &client, &batch, &counters, false).await;
    }
}

/// Export one batch; retries retryable failures when `retry`.
async fn export(
    settings: &Settings,
    client: &UpstreamClient,
    batch: &[Arc<Record>],
    counters: &Counters,
    retry: bool,
) {
    let spans: Vec<proto::Span<'_>> = batch
        .iter()
        .flat_map(|r| crate::stages::record::spans(r))
        .collect();
    if spans.is_empty() {
        return;
    }
    let body = Bytes::from(proto::export_request(
        &settings.resource,
        ("gatehouse", env!("CARGO_PKG_VERSION")),
        &spans,
    ));
    let n = spans.len() as u64;
    let mut backoff = Duration::from_secs(1);
    let mut tries = 0;
    loop {
        tries += 1;
        match post(settings, client, body.clone()).await {
            Ok(()) => {
                counters.exported.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Err(Failure::Retryable { why, retry_after }) if retry && tries <= RETRIES => {
                let wait = retry_after
                    .filter(|d| *d <= MAX_RETRY_AFTER)
                    .unwrap_or(backoff);
                tracing::debug!(endpoint = %settings.endpoint, error = %why, retry_in_ms = wait.as_millis() as u64, "trace export failed; retrying");
                tokio::time::sleep(wait).await;
                backoff *= 2;
            }
            Err(Failure::Retryable { why, .. } | Failure::Final(why)) => {
                counters.failed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(endpoint = %settings.endpoint, error = %why, spans = n, "failed to export traces; batch dropped");
                return;
            }
        }
    }
}

enum Failure {
    Retryable {
        why: String,
        retry_after: Option<Duration>,
    },
    Final(String),
}

async fn post(settings: &Settings, client: &UpstreamClient, body: Bytes) -> Result<(), Failure> {
    let request = http::Request::builder()
        .method(Method::POST)
        .uri(settings.endpoint.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .header(
            http::header::USER_AGENT,
            concat!("gatehouse-sidecar/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| Failure::Final(format!("failed to build the export request: {e}")))?;
    let call = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| Failure::Retryable {
                why: format!(
                    "failed to send the export request: {}",
                    crate::error::error_chain(&e)
                ),
                retry_after: None,
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read (and bound) the body so the connection can be reused; its content (a partial
        // success or a Status) is not needed.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            http_body_util::Limited::new(response.into_body(), 64 * 1024).collect(),
        )
        .await;
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Err(Failure::Retryable {
                why: format!("the endpoint answered {status}"),
                retry_after,
            }),
            s => Err(Failure::Final(format!("the endpoint answered {s}"))),
        }
    };
    match tokio::time::timeout(settings.timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Retryable {
            why: format!(
                "the export took longer than {} ms",
                settings.timeout.as_millis()
            ),
            retry_after: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_endpoint_comes_from_the_flag_then_the_standard_variables() {
        let none = env(&[]);
        assert_eq!(endpoint(None, &none).unwrap(), None);
        assert_eq!(
            endpoint(Some("http://c:4318"), &none).unwrap().unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            endpoint(Some("http://c:4318/custom"), &none)
                .unwrap()
                .unwrap(),
            "http://c:4318/custom"
        );
        let both = env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:2/"),
        ]);
        assert_eq!(endpoint(None, &both).unwrap().unwrap(), "http://t:1/x");
        assert_eq!(
            endpoint(Some("https://flag:3"), &both).unwrap().unwrap(),
            "https://flag:3/v1/traces"
        );
        let base = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:2/otlp")]);
        assert_eq!(
            endpoint(None, &base).unwrap().unwrap(),
            "http://base:2/otlp/v1/traces"
        );
        let off = env(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:2"),
        ]);
        assert_eq!(endpoint(None, &off).unwrap(), None);
        assert!(endpoint(Some("ftp://x"), &none).is_err());
        assert!(endpoint(Some("not a url"), &none).is_err());
    }
}
