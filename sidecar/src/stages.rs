//! The policies on the request path, as stages with the same few hooks.
//!
//! A stage is a small type in its own module under `stages/`; [`chain`] lists them in order, once.
//! Every hook runs in that order:
//!
//! - [`Stage::on_head`]: the request head arrived, before its body is read (every request,
//!   whatever its path); the stage may refuse it (a malformed `x-gatehouse-tag`).
//! - [`Stage::on_request`]: the request is parsed and its route known; the stage may answer early
//!   (a cache hit, a 429 of a rate limit, a 400 of a block), change the request, or wait for
//!   something (a budget's ledger; bounded by the stage) and be asked again.
//! - [`Stage::before_attempt`]: before each upstream attempt; may change the target or the body
//!   (a downgrade, redaction).
//! - [`Stage::on_answer`] / [`Stage::on_events`]: the winning buffered answer, or each batch of
//!   complete stream events as the relay forwards them; may read or rewrite them (usage capture,
//!   response redaction).
//! - [`Stage::on_response`]: the response head, just before it leaves (the `x-gatehouse-*`
//!   headers).
//! - [`Stage::on_end`]: exactly once per request, however it ended: answered, failed, stream
//!   complete or broken, timed out, or the client went away (also while attempts were running,
//!   or mid-stream). Metering, metrics and the access line live here.
//!
//! The per-request [`Context`] carries what the stages share. An [`Exchange`] owns it for the
//! life of the request (the stream body takes it over) and runs `on_end` when the request ends,
//! at the latest when it is dropped. A stage declares its hooks ([`Hooks`]); the chain calls only
//! those, so a hook no stage uses costs a branch, and a stage that is not configured is not in
//! the chain at all.

pub mod audit;
pub mod budget;
pub mod cache;
pub mod headers;
pub mod identity;
pub mod metering;
pub mod ratelimit;
pub mod redaction;
pub mod rules;
pub mod telemetry;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::dialect::Dialect;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::request::Request;
use crate::state::{ServedRoute, Snapshot, Target};
use crate::usage::{Measured, Usage};
use crate::warnings::Warnings;
use crate::workload::Workload;

/// Builds the chain: the one place that says which stages run and in which order.
///
/// The eventual order (docs/architecture.md) is identity → rate limit → redaction (request) →
/// cache lookup → budget reserve → route rules / downgrade → *attempts* → redaction (response) →
/// metering → budget settle → cache fill → metrics, audit line, traces. Stages that have not
/// landed yet are marked where they go.
///
/// `metering: false` leaves metering out (`--metering off`, for the bench to measure what it
/// costs): no usage is asked for or stripped, nothing is priced. The budget stage is always in
/// the chain: Budgets come with the config, and a request no Budget covers costs it a check.
/// costs): no usage is asked for or stripped, nothing is priced. Without an `audit` sink there is
/// no audit stage.
pub fn chain(
    metrics: Arc<Metrics>,
    workload: Arc<Workload>,
    max_tags: usize,
    metering: bool,
    budget: (budget::Reserve, budget::Settle),
    audit: Option<Arc<crate::audit::Sink>>,
    cache: Arc<crate::cache::Cache>,
) -> Chain {
    let (reserve, settle) = budget;
    // Cluster rate limits are accounts on the remote budget ledger (standalone: a bucket here).
    let cluster_ledger = Some(reserve.ledger()).filter(|l| l.mode() == "remote");
    let mut stages: Vec<Box<dyn Stage>> = vec![
        // Identity: first, everything after keys on who is calling (and a malformed tag is
        // refused before any work is spent on the request).
        Box::new(identity::Identify::new(
            workload.clone(),
            max_tags,
            &metrics,
        )),
        // Rate limits: right after identity (a limit may apply to some workloads only), before
        // any work is spent on a request that will be refused; the token estimate is of the
        // client's own body.
        Box::new(ratelimit::RateLimit::new(
            metrics.clone(),
            workload,
            cluster_ledger,
        )),
        //
        // Redaction: on the request, before anything stores or sends the prompt (cache,
        // upstream); on the answer (its answer and event hooks run right after the attempts,
        // first of all stages), before anything reads or stores it.
        Box::new(redaction::Redaction::new(metrics.clone())),
        // Cache lookup: after redaction so keys hold no secrets (and the prompt is the one that
        // would leave); before the budget reserve, so a hit reserves and spends nothing. A hit
        // skips what follows.
        Box::new(cache::Lookup::new(cache.clone())),
        // Route rules: they pick the targets the attempts use.
        Box::new(rules::Rules),
        // Budget reserve: only for requests that will go upstream (after a cache lookup), and
        // after the rules so the targets it prices are known; last before the attempts, since a
        // downgrade replaces those targets.
        Box::new(reserve),
        // -- attempts --
        // (redaction, response side: the answer and event hooks of the stage above)
        //
        // Metering: cost from the usage the answer reported, before anything reads the cost
        // (the cost header on a buffered answer, budget settle, the access line).
        Box::new(metering::Metering::new(metrics.clone())),
        // Budget settle: after metering, so the metered cost (or a cut stream's estimate) is
        // what is spent.
        Box::new(settle),
        // Cache fill: after metering (an entry keeps the usage and the model that answered,
        // for the saved-USD of later hits), and after response redaction (it stores the answer
        // as the client got it); before the record.
        Box::new(cache::Fill::new(cache)),
        //
        // The `x-gatehouse-*` headers: on the response head, after metering so a buffered
        // answer's cost is known.
        Box::new(headers::Headers),
        // Metrics and the access line: last, so they see everything the stages before them
        // did; one record per request whatever happened.
        Box::new(telemetry::Telemetry::new(metrics)),
    ];
    // The audit line, with the access line: it sees every decision, and the prompt and answer
    // (when the route opts in) as redaction left them.
    if let Some(sink) = audit {
        stages.push(Box::new(audit::Audit::new(sink)));
    }
    if !metering {
        stages.retain(|s| s.name() != "metering");
    }
    Chain::new(stages)
}

/// Which hooks a stage implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooks {
    /// [`Stage::on_head`].
    pub head: bool,
    /// [`Stage::on_request`].
    pub request: bool,
    /// [`Stage::before_attempt`].
    pub attempt: bool,
    /// [`Stage::on_answer`].
    pub answer: bool,
    /// [`Stage::on_events`].
    pub events: bool,
    /// [`Stage::on_response`].
    pub response: bool,
    /// [`Stage::on_end`].
    pub end: bool,
}

/// What a request hook decided.
pub enum Flow {
    /// Go on with the next stage, then the attempts.
    Continue,
    /// Answer with this buffered body (a JSON answer in the client's dialect), no attempt.
    Answer(Bytes),
    /// Answer from the cache (JSON, or a whole stream), no attempt and no answer hooks: it is
    /// stored as those hooks left it.
    Cached(cache::Hit),
    /// Wait for this, then ask the same stage again. The stage bounds the wait and must not
    /// wait forever (the budget stage waits at most `--budget-wait-ms` per request in all).
    Wait(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Continue => f.write_str("Continue"),
            Self::Answer(body) => f.debug_tuple("Answer").field(body).finish(),
            Self::Cached(hit) => f.debug_tuple("Cached").field(hit).finish(),
            Self::Wait(_) => f.write_str("Wait"),
        }
    }
}

/// A policy on the request path. Every hook has a default that does nothing; [`Stage::hooks`]
/// says which ones the stage overrides, and only those are called.
pub trait Stage: Send + Sync + std::fmt::Debug {
    /// Name, for logs and tests.
    fn name(&self) -> &'static str;

    /// The hooks this stage implements.
    fn hooks(&self) -> Hooks;

    /// The request head arrived (any path, body not read yet); refuse it or let it go on.
    fn on_head(&self, _ctx: &mut Context, _headers: &HeaderMap) -> Result<(), ProxyError> {
        Ok(())
    }

    /// The request is parsed and routed; answer early or let it go on.
    fn on_request(&self, _ctx: &mut Context, _request: &mut Request) -> Result<Flow, ProxyError> {
        Ok(Flow::Continue)
    }

    /// Before each attempt: may change the target or the request.
    fn before_attempt(&self, _ctx: &mut Context, _target: &mut Target, _request: &mut Request) {}

    /// The winning buffered answer, in the client's dialect (`ctx.usage` already read from it).
    fn on_answer(&self, _ctx: &mut Context, _body: &mut Bytes) {}

    /// A batch of complete stream events, in the client's dialect, about to be forwarded.
    fn on_events(&self, _ctx: &mut Context, _events: &mut Bytes) {}

    /// The response head, about to leave.
    fn on_response(&self, _ctx: &Context, _status: StatusCode, _headers: &mut HeaderMap) {}

    /// The request ended; called exactly once.
    fn on_end(&self, _ctx: &mut Context, _end: End) {}
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A buffered answer or an error response was handed to the connection.
    Answered,
    /// A relayed stream finished with its end marker.
    StreamComplete,
    /// A relayed stream broke (upstream cut, garbage, deadline); the client got an error event.
    StreamBroken,
    /// The client went away: before the answer, or in the middle of a stream.
    ClientGone,
}

impl End {
    /// Label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::StreamComplete => "complete",
            Self::StreamBroken => "broken",
            Self::ClientGone => "client_gone",
        }
    }
}

/// Whether the answer came from a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheStatus {
    /// No cache on this route (until caching lands, always).
    #[default]
    Bypass,
    /// Answered from the cache.
    Hit,
    /// Looked up, not found.
    Miss,
}

impl CacheStatus {
    /// The `x-gatehouse-cache` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

/// Who is calling. The sidecar serves one pod, so this is the pod's workload, the sidecar's own
/// (flags / downward API), never taken from the request; the identity stage fills it in.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The workload (namespace, name, ServiceAccount, pod, labels); `None` only before the
    /// identity stage ran (a request refused before it, or a chain without it).
    pub workload: Option<Arc<Workload>>,
    /// The `x-gatehouse-tag` the app attributed the request to, validated, or `other` past the
    /// `--max-tags` cap; `None` when the request carried none.
    pub tag: Option<Arc<str>>,
}

/// One finished upstream attempt.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// Where it went.
    pub target: Target,
    /// `success` or the failure's metric label (`AttemptError::metric_label`).
    pub outcome: &'static str,
    /// How long it took.
    pub elapsed: Duration,
}

/// What the stages share about one request.
#[derive(Debug)]
pub struct Context {
    /// Random 128-bit id, hex (`x-gatehouse-request-id`).
    pub request_id: String,
    /// When the request arrived.
    pub start: Instant,
    /// The client's dialect (the shape of errors).
    pub dialect: Dialect,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Who is calling.
    pub identity: Identity,
    /// The config snapshot the request is served with (loaded once, when it arrived).
    pub snapshot: Option<Arc<Snapshot>>,
    /// The route the model alias resolved to.
    pub route: Option<Arc<ServedRoute>>,
    /// The Route whose targets serve the request instead of `route`'s (a budget's downgrade).
    pub downgraded_to: Option<Arc<ServedRoute>>,
    /// What the covering Budgets decided (`stages::budget`); `None` when none covers it.
    pub budget: Option<Box<budget::Decision>>,
    /// Every attempt so far, in order.
    pub attempts: Vec<AttemptRecord>,
    /// The target whose answer the client gets.
    pub answered_by: Option<Target>,
    /// Time spent waiting for upstreams.
    pub upstream_wait: Duration,
    /// Usage the answer reported (for streams: once the stream ended).
    pub usage: Option<Usage>,
    /// Price of the answer in USD, when the model is priced.
    pub cost_usd: Option<f64>,
    /// Whether `usage` (and so `cost_usd`) is an estimate: a stream cut upstream or dropped by
    /// the client before the provider reported its usage.
    pub usage_estimated: bool,
    /// What the gateway measured itself (request size, relayed text), for estimates.
    pub measured: Measured,
    /// Cache status.
    pub cache: CacheStatus,
    /// Parameters dropped or not forwarded, for `x-gatehouse-warning` (bounded).
    pub warnings: Warnings,
    /// The gateway error answered, by code (`ProxyError::code`).
    pub error: Option<&'static str>,
    /// The status sent to the client, once the response head left.
    pub status: Option<StatusCode>,
    /// Time from arrival to the response head.
    pub head_elapsed: Option<Duration>,
    /// Whether the answer is a relayed stream.
    pub streaming: bool,
    /// The request headers routing rules name (only those; see `Snapshot::rule_headers`).
    pub rule_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The routing rule that matched (`stages::rules`).
    pub rule: Option<Arc<str>>,
    /// The targets that rule allows (indices into the route's targets); `None`: every target.
    pub rule_targets: Option<Vec<usize>>,
    /// Redaction of this request (`stages::redaction`): placeholders, counts, stream hold-back.
    pub redaction: Option<Box<redaction::State>>,
    /// The rate limits' decision (`stages::ratelimit`), when any limit applied.
    pub rate_limit: Option<Box<ratelimit::Decision>>,
    /// The prompt and answer for the audit line, when the route opts in (`stages::audit`).
    pub audit: Option<Box<audit::Capture>>,
    /// What the cache stages know of this request (`stages::cache`).
    pub cache_pending: Option<Box<cache::Pending>>,
}

impl Context {
    /// The context of a request that just arrived.
    pub fn new(dialect: Dialect) -> Self {
        use rand::Rng;
        Self {
            request_id: format!("{:032x}", rand::rng().random::<u128>()),
            start: Instant::now(),
            dialect,
            stream: false,
            identity: Identity::default(),
            snapshot: None,
            route: None,
            downgraded_to: None,
            budget: None,
            attempts: Vec::new(),
            answered_by: None,
            upstream_wait: Duration::ZERO,
            usage: None,
            cost_usd: None,
            usage_estimated: false,
            measured: Measured::default(),
            cache: CacheStatus::Bypass,
            warnings: Warnings::default(),
            error: None,
            status: None,
            head_elapsed: None,
            streaming: false,
            rule_headers: Vec::new(),
            rule: None,
            rule_targets: None,
            redaction: None,
            rate_limit: None,
            audit: None,
            cache_pending: None,
        }
    }

    /// Route name, empty when none matched.
    pub fn route_name(&self) -> &str {
        self.route.as_deref().map_or("", |r| &*r.name)
    }
}

/// The stages in order, with the indices of those implementing each hook.
#[derive(Debug)]
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    head: Vec<usize>,
    request: Vec<usize>,
    attempt: Vec<usize>,
    answer: Vec<usize>,
    events: Vec<usize>,
    response: Vec<usize>,
    end: Vec<usize>,
    metered: bool,
}

impl Chain {
    /// A chain of `stages`, in that order.
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Self {
        let with = |f: fn(Hooks) -> bool| -> Vec<usize> {
            stages
                .iter()
                .enumerate()
                .filter(|(_, s)| f(s.hooks()))
                .map(|(i, _)| i)
                .collect()
        };
        Self {
            head: with(|h| h.head),
            request: with(|h| h.request),
            attempt: with(|h| h.attempt),
            answer: with(|h| h.answer),
            events: with(|h| h.events),
            response: with(|h| h.response),
            end: with(|h| h.end),
            metered: stages.iter().any(|s| s.name() == "metering"),
            stages,
        }
    }

    /// Names of the stages, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    fn each(&self, indices: &[usize]) -> impl Iterator<Item = &dyn Stage> {
        indices
            .iter()
            .filter_map(|&i| self.stages.get(i).map(|s| &**s))
    }
}

/// One request in flight: its context and the chain it goes through. Ends exactly once: by
/// [`Exchange::end`], or when dropped (the client went away).
#[derive(Debug)]
pub struct Exchange {
    chain: Arc<Chain>,
    /// The request's context.
    pub ctx: Context,
    ended: bool,
}

impl Exchange {
    /// Start a request.
    pub fn new(chain: Arc<Chain>, ctx: Context) -> Self {
        Self {
            chain,
            ctx,
            ended: false,
        }
    }

    /// Run the head hooks; the first error wins.
    pub fn head(&mut self, headers: &HeaderMap) -> Result<(), ProxyError> {
        for stage in self.chain.each(&self.chain.head) {
            stage.on_head(&mut self.ctx, headers)?;
        }
        Ok(())
    }

    /// Run the request hooks; the first early answer or error wins. A stage that asks to wait
    /// is asked again once the wait is over. Returns `Continue` or `Answer`.
    pub async fn request(&mut self, request: &mut Request) -> Result<Flow, ProxyError> {
        let chain = self.chain.clone();
        for stage in chain.each(&chain.request) {
            loop {
                match stage.on_request(&mut self.ctx, request)? {
                    Flow::Continue => break,
                    Flow::Answer(body) => return Ok(Flow::Answer(body)),
                    Flow::Cached(hit) => return Ok(Flow::Cached(hit)),
                    Flow::Wait(wait) => wait.await,
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Run the before-attempt hooks.
    pub fn before_attempt(&mut self, target: &mut Target, request: &mut Request) {
        for stage in self.chain.each(&self.chain.attempt) {
            stage.before_attempt(&mut self.ctx, target, request);
        }
    }

    /// Run the buffered-answer hooks.
    pub fn answer(&mut self, body: &mut Bytes) {
        for stage in self.chain.each(&self.chain.answer) {
            stage.on_answer(&mut self.ctx, body);
        }
    }

    /// Whether metering is in the chain (the request path then asks OpenAI providers for the
    /// usage of streams and writes the in-band cost).
    pub fn metered(&self) -> bool {
        self.chain.metered
    }

    /// Whether any stage looks at stream events (the relay skips the hook otherwise).
    pub fn wants_events(&self) -> bool {
        !self.chain.events.is_empty()
    }

    /// Run the stream-event hooks.
    pub fn events(&mut self, events: &mut Bytes) {
        for stage in self.chain.each(&self.chain.events) {
            stage.on_events(&mut self.ctx, events);
        }
    }

    /// The response head is about to leave: note its status and time, run the response hooks.
    pub fn respond(&mut self, status: StatusCode, headers: &mut HeaderMap) {
        self.ctx.status = Some(status);
        self.ctx.head_elapsed = Some(self.ctx.start.elapsed());
        for stage in self.chain.each(&self.chain.response) {
            stage.on_response(&self.ctx, status, headers);
        }
    }

    /// The request ended.
    pub fn end(mut self, end: End) {
        self.finish(end);
    }

    fn finish(&mut self, end: End) {
        if self.ended {
            return;
        }
        self.ended = true;
        for &i in &self.chain.end {
            if let Some(stage) = self.chain.stages.get(i) {
                stage.on_end(&mut self.ctx, end);
            }
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // Dropped without an end: the client went away (hyper dropped the request's future or
        // the stream body).
        self.finish(End::ClientGone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every hook call into a shared log.
    #[derive(Debug)]
    struct Probe {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        hooks: Hooks,
    }

    impl Stage for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn hooks(&self) -> Hooks {
            self.hooks
        }
        fn on_answer(&self, _ctx: &mut Context, _body: &mut Bytes) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}:answer", self.name));
        }
        fn on_end(&self, _ctx: &mut Context, end: End) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}:end:{}", self.name, end.as_str()));
        }
    }

    fn probes(log: &Arc<Mutex<Vec<String>>>) -> Arc<Chain> {
        let all = Hooks {
            answer: true,
            end: true,
            ..Hooks::default()
        };
        let only_end = Hooks {
            end: true,
            ..Hooks::default()
        };
        Arc::new(Chain::new(vec![
            Box::new(Probe {
                name: "a",
                log: log.clone(),
                hooks: all,
            }),
            Box::new(Probe {
                name: "b",
                log: log.clone(),
                hooks: only_end,
            }),
            Box::new(Probe {
                name: "c",
                log: log.clone(),
                hooks: all,
            }),
        ]))
    }

    #[test]
    fn the_chain_is_in_design_order() {
        let budget = || {
            let metrics = Arc::new(Metrics::new());
            budget::stages(
                Arc::new(budget::ledger::Local::new()),
                metrics,
                budget::Settings::default(),
            )
        };
        let cache = || {
            Arc::new(crate::cache::Cache::new(
                &crate::cache::Settings::default(),
                Arc::new(Metrics::new()),
            ))
        };
        let chain = chain(
            Arc::new(Metrics::new()),
            Arc::new(Workload::default()),
            10,
            true,
            budget(),
            None,
            cache(),
        );
        assert_eq!(
            chain.names(),
            [
                "identity",
                "ratelimit",
                "redaction",
                "cache_lookup",
                "rules",
                "budget_reserve",
                "metering",
                "budget_settle",
                "cache_fill",
                "headers",
                "telemetry"
            ]
        );
        assert!(chain.metered);
        let off = super::chain(
            Arc::new(Metrics::new()),
            Arc::new(Workload::default()),
            10,
            false,
            budget(),
            None,
            cache(),
        );
        assert_eq!(
            off.names(),
            [
                "identity",
                "ratelimit",
                "redaction",
                "cache_lookup",
                "rules",
                "budget_reserve",
                "budget_settle",
                "cache_fill",
                "headers",
                "telemetry"
            ]
        );
        assert!(!off.metered);
        // Identity and the cache's bypass headers read the head; the rate limits, redaction,
        // the cache lookup, the rules, then the budget read requests; redaction reads stream
        // events first, right after the attempts, and the cache fill keeps them as they left;
        // buffered answers: redaction, metering, then the fill; the budget settles after
        // metering has priced the answer; nothing reads attempts.
        assert_eq!(chain.head, [0, 3]);
        assert_eq!(chain.request, [1, 2, 3, 4, 5]);
        assert_eq!(chain.events, [2, 8]);
        assert_eq!(chain.answer, [2, 6, 8]);
        assert_eq!(chain.response, [1, 4, 5, 9]);
        assert_eq!(chain.end, [1, 2, 6, 7, 8, 10]);
        assert!(chain.attempt.is_empty());
        // With an audit sink, the audit line comes last.
        let dir = tempfile::tempdir().unwrap();
        let sink = crate::audit::Sink::start(
            crate::audit::Settings {
                stdout: false,
                file: Some(dir.path().join("audit.log")),
                max_bytes: 1 << 20,
                keep: 1,
            },
            Default::default(),
        )
        .unwrap();
        let audited = super::chain(
            Arc::new(Metrics::new()),
            Arc::new(Workload::default()),
            10,
            true,
            budget(),
            Some(Arc::new(sink)),
            cache(),
        );
        assert_eq!(audited.names().last(), Some(&"audit"));
    }

    #[test]
    fn hooks_run_in_order_and_only_where_declared() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut x = Exchange::new(probes(&log), Context::new(Dialect::OpenAi));
        x.answer(&mut Bytes::new());
        x.end(End::Answered);
        assert_eq!(
            *log.lock().unwrap(),
            [
                "a:answer",
                "c:answer",
                "a:end:answered",
                "b:end:answered",
                "c:end:answered"
            ]
        );
    }

    #[test]
    fn end_runs_once_and_a_dropped_exchange_ends_as_client_gone() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let x = Exchange::new(probes(&log), Context::new(Dialect::OpenAi));
        x.end(End::StreamComplete);
        assert_eq!(log.lock().unwrap().len(), 3);
        log.lock().unwrap().clear();
        drop(Exchange::new(probes(&log), Context::new(Dialect::OpenAi)));
        assert_eq!(
            *log.lock().unwrap(),
            [
                "a:end:client_gone",
                "b:end:client_gone",
                "c:end:client_gone"
            ]
        );
    }
}
