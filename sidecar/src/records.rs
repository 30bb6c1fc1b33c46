//! The records of the last requests: what happened to each, never what was said.
//!
//! A [`Record`] is built once when a request ends (`stages::record`), from the context the
//! stages filled in: route, rule, provider and model, every attempt (target, outcome, time),
//! tokens, cost, the cache, budget and rate-limit decisions, status and timings. It holds no
//! prompt, no answer, no header value and no key. The same record feeds the trace exporter
//! (`otlp`).
//!
//! [`Records`] keeps the last `--request-records` of them (default 1,000; 0 turns the records
//! off) in a ring; the admin port serves them as JSON: `GET /v1/requests` (newest first,
//! `?limit=N`, at most 1,000 per answer) and `GET /v1/requests/{id}`. Memory is bounded: N
//! records, each of a few hundred bytes plus its attempts (at most one per target tried) and its
//! strings, all of them bounded (names from the config, the model alias cut at
//! [`MAX_ALIAS_BYTES`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::dialect::Operation;
use crate::stages::{CacheStatus, End};
use crate::state::Target;
use crate::usage::Usage;

/// Default number of records kept (`--request-records`).
pub const DEFAULT_RECORDS: u64 = 1000;

/// The longest model alias kept (the client chooses it); longer ones are cut.
pub const MAX_ALIAS_BYTES: usize = 256;

/// Most records one list answer holds.
pub const MAX_LIST: usize = 1000;

/// One upstream attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Where it went.
    pub target: Target,
    /// `success` or the failure's label (`AttemptError::metric_label`).
    pub outcome: &'static str,
    /// From the request's arrival to the attempt's start.
    pub offset: Duration,
    /// How long it took (for a stream: until its head).
    pub elapsed: Duration,
    /// Its span in the trace; 0 when the request is not traced.
    pub span_id: u64,
}

/// The rate limits' part in a request.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// `allowed` or `limited`.
    pub outcome: &'static str,
    /// The limits that applied.
    pub applied: Vec<Arc<str>>,
    /// The limit that refused it.
    pub refused_by: Option<Arc<str>>,
}

/// The Budgets' part in a request.
#[derive(Debug, Clone)]
pub struct Budget {
    /// `ok`, `warn`, `downgraded`, `exceeded`, `unavailable`; `None` when not decided.
    pub outcome: Option<&'static str>,
    /// The covering Budgets.
    pub budgets: Vec<Arc<str>>,
    /// The Route it was downgraded to.
    pub downgraded_to: Option<Arc<str>>,
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct Record {
    /// `x-gatehouse-request-id`.
    pub request_id: String,
    /// The trace it belongs to and its span there (`stages::record`); `None` when tracing is
    /// off.
    pub trace: Option<crate::stages::record::TraceIds>,
    /// Wall-clock arrival, ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// Arrival to end.
    pub duration: Duration,
    /// Arrival to the response head.
    pub head: Option<Duration>,
    /// Time spent waiting for upstreams.
    pub upstream: Duration,
    /// The operation, once the path was known.
    pub operation: Option<Operation>,
    /// The model alias the client asked for (cut at [`MAX_ALIAS_BYTES`]).
    pub alias: Option<Box<str>>,
    /// Workload namespace and name, and the tag.
    pub namespace: Option<Arc<str>>,
    /// Workload name.
    pub workload: Option<Arc<str>>,
    /// `x-gatehouse-tag`.
    pub tag: Option<Arc<str>>,
    /// The Route.
    pub route: Option<Arc<str>>,
    /// The routing rule that matched.
    pub rule: Option<Arc<str>>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The target whose answer the client got.
    pub answered_by: Option<Target>,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// Usage the answer reported (or the estimate).
    pub usage: Option<Usage>,
    /// Whether `usage` and `cost_usd` are estimates.
    pub estimated: bool,
    /// Price in USD.
    pub cost_usd: Option<f64>,
    /// Cache status.
    pub cache: CacheStatus,
    /// Budgets.
    pub budget: Option<Budget>,
    /// Rate limits.
    pub rate_limit: Option<RateLimit>,
    /// Status sent (499 when the client went away first).
    pub status: u16,
    /// The gateway's error code, if it answered one.
    pub error: Option<&'static str>,
    /// How it ended.
    pub end: End,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// `SystemTime` as ns since the Unix epoch (0 before it).
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Record {
    /// `gen_ai.operation.name`.
    pub fn operation_name(&self) -> &'static str {
        self.operation.map_or("", crate::genai::operation_name)
    }

    /// The short form listed by `GET /v1/requests`.
    pub fn summary(&self) -> Value {
        json!({
            "request_id": self.request_id,
            "time_unix_ms": self.start_unix_ns / 1_000_000,
            "route": self.route.as_deref(),
            "provider": self.answered_by.as_ref().map(|t| &*t.provider.name),
            "model": self.answered_by.as_ref().map(|t| &*t.model),
            "status": self.status,
            "attempts": self.attempts.len(),
            "cost_usd": self.cost_usd,
            "duration_ms": ms(self.duration),
        })
    }

    /// The whole record, as `GET /v1/requests/{id}` answers it.
    pub fn to_json(&self) -> Value {
        let tokens = self.usage.map(|u| {
            let t = u.tokens();
            json!({
                "input": t.input,
                "cached_read": t.cached_read,
                "cache_write": t.cache_write,
                "output": t.output,
                "reasoning": t.reasoning,
                "estimated": self.estimated,
            })
        });
        let attempts: Vec<Value> = self
            .attempts
            .iter()
            .map(|a| {
                json!({
                    "provider": &*a.target.provider.name,
                    "provider_type": crate::genai::provider_name(a.target.provider.kind),
                    "model": &*a.target.model,
                    "outcome": a.outcome,
                    "start_ms": ms(a.offset),
                    "duration_ms": ms(a.elapsed),
                })
            })
            .collect();
        let overhead = self.head.map(|h| ms(h.saturating_sub(self.upstream)));
        json!({
            "request_id": self.request_id,
            "trace_id": self.trace.as_ref().map(|t| format!("{:032x}", t.trace_id)),
            "span_id": self.trace.as_ref().map(|t| format!("{:016x}", t.span_id)),
            "time_unix_ms": self.start_unix_ns / 1_000_000,
            "operation": self.operation.map(crate::genai::operation_name),
            "requested_model": self.alias.as_deref(),
            "namespace": self.namespace.as_deref(),
            "workload": self.workload.as_deref(),
            "tag": self.tag.as_deref(),
            "route": self.route.as_deref(),
            "rule": self.rule.as_deref(),
            "stream": self.stream,
            "provider": self.answered_by.as_ref().map(|t| &*t.provider.name),
            "model": self.answered_by.as_ref().map(|t| &*t.model),
            "attempts": attempts,
            "tokens": tokens,
            "cost_usd": self.cost_usd,
            "cache": self.cache.as_str(),
            "budget": self.budget.as_ref().map(|b| json!({
                "outcome": b.outcome,
                "budgets": b.budgets.iter().map(|s| &**s).collect::<Vec<_>>(),
                "downgraded_to": b.downgraded_to.as_deref(),
            })),
            "rate_limit": self.rate_limit.as_ref().map(|r| json!({
                "outcome": r.outcome,
                "applied": r.applied.iter().map(|s| &**s).collect::<Vec<_>>(),
                "refused_by": r.refused_by.as_deref(),
            })),
            "status": self.status,
            "error": self.error,
            "end": self.end.as_str(),
            "timings": {
                "duration_ms": ms(self.duration),
                "response_head_ms": self.head.map(ms),
                "upstream_ms": ms(self.upstream),
                "gateway_overhead_ms": overhead,
            },
        })
    }
}

/// The last N records.
#[derive(Debug)]
pub struct Records {
    capacity: usize,
    ring: Mutex<VecDeque<Arc<Record>>>,
}

impl Records {
    /// Keep the last `capacity` records.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
        }
    }

    /// Keep `record`, forgetting the oldest when full.
    pub fn push(&self, record: Arc<Record>) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    /// The record of request `id`, if still kept.
    pub fn get(&self, id: &str) -> Option<Arc<Record>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().find(|r| r.request_id == id).cloned()
    }

    /// The newest `limit` records, newest first.
    pub fn latest(&self, limit: usize) -> Vec<Arc<Record>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().take(limit).cloned().collect()
    }

    /// How many it keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many are kept now.
    pub fn len(&self) -> usize {
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The admin port's answer to `GET path?query` under `/v1/requests`: status and JSON body.
    pub fn answer(&self, path: &str, query: Option<&str>) -> (http::StatusCode, Value) {
        let rest = path.strip_prefix("/v1/requests").unwrap_or(path);
        match rest {
            "" | "/" => {
                let limit = query
                    .into_iter()
                    .flat_map(|q| q.split('&'))
                    .find_map(|kv| kv.strip_prefix("limit="))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(100)
                    .min(MAX_LIST);
                let requests: Vec<Value> = self.latest(limit).iter().map(|r| r.summary()).collect();
                (
                    http::StatusCode::OK,
                    json!({ "capacity": self.capacity, "requests": requests }),
                )
            }
            id => {
                let id = id.trim_start_matches('/');
                match self.get(id) {
                    Some(record) => (http::StatusCode::OK, record.to_json()),
                    None => (
                        http::StatusCode::NOT_FOUND,
                        json!({ "error": format!(
                            "no record of request {}: unknown, or older than the last {} this sidecar keeps",
                            crate::request::quote(&id.chars().take(64).collect::<String>()),
                            self.capacity
                        ) }),
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Arc<Record> {
        Arc::new(Record {
            request_id: id.to_string(),
            trace: None,
            start_unix_ns: 0,
            duration: Duration::from_millis(3),
            head: Some(Duration::from_millis(2)),
            upstream: Duration::from_millis(1),
            operation: Some(Operation::Chat),
            alias: Some("gpt".into()),
            namespace: None,
            workload: None,
            tag: None,
            route: Some(Arc::from("chat")),
            rule: None,
            stream: false,
            answered_by: None,
            attempts: Vec::new(),
            usage: None,
            estimated: false,
            cost_usd: None,
            cache: CacheStatus::Bypass,
            budget: None,
            rate_limit: None,
            status: 200,
            error: None,
            end: End::Answered,
        })
    }

    #[test]
    fn the_ring_keeps_the_last_n_and_finds_them_by_id() {
        let records = Records::new(3);
        for i in 0..5 {
            records.push(record(&format!("r{i}")));
        }
        assert_eq!(records.len(), 3);
        assert!(records.get("r1").is_none());
        assert_eq!(records.get("r4").unwrap().request_id, "r4");
        let ids: Vec<String> = records
            .latest(10)
            .iter()
            .map(|r| r.request_id.clone())
            .collect();
        assert_eq!(ids, ["r4", "r3", "r2"]);
        let (status, body) = records.answer("/v1/requests/r3", None);
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(body["route"], "chat");
        assert_eq!(body["timings"]["gateway_overhead_ms"], 1.0);
        let (status, body) = records.answer("/v1/requests/r0", None);
        assert_eq!(status, http::StatusCode::NOT_FOUND);
        assert!(body["error"].as_str().unwrap().contains("last 3"));
        let (_, body) = records.answer("/v1/requests", Some("limit=2"));
        assert_eq!(body["requests"].as_array().unwrap().len(), 2);
        assert_eq!(body["requests"][0]["request_id"], "r4");
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let records = Records::new(0);
        records.push(record("a"));
        assert!(records.is_empty());
    }
}
