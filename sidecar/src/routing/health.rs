//! Health of route targets, shared by every request of the sidecar: outlier ejection (a target
//! that keeps failing leaves the route's choices for a cooldown), half-open recovery (after the
//! cooldown one real request tests it) and what latency-aware choice reads (recent latency,
//! requests in flight).
//!
//! Everything a request touches on the hot path is an atomic: `begin` is one or two loads and an
//! increment, the result one `fetch_add`/`swap` per counter. The only lock is the route's
//! ejection lock, taken when a threshold trips, so two targets of one route are never ejected at
//! once and the last healthy one stays (the route degrades instead).
//!
//! State is kept per (route, provider, model) in a [`Health`] registry that outlives config
//! reloads: a reload does not forgive a target that is down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_crds::config::OutlierConfig;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Serialize;
use tokio::time::Instant;

use crate::state::ServedRoute;

/// How an attempt went, as far as the target's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered (a refusal of the request itself counts: the target is up).
    Success,
    /// A retryable failure other than a timeout.
    Failure,
    /// The attempt (or its first token) timed out.
    Timeout,
}

/// Why a target was ejected, for the log, metrics and `/targets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `consecutiveFailures` failures in a row.
    ConsecutiveFailures,
    /// `consecutiveTimeouts` timeouts in a row.
    ConsecutiveTimeouts,
    /// The failure rate of a window.
    FailureRate,
    /// The half-open test request failed.
    ProbeFailed,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::ConsecutiveFailures => "consecutive_failures",
            Self::ConsecutiveTimeouts => "consecutive_timeouts",
            Self::FailureRate => "failure_rate",
            Self::ProbeFailed => "probe_failed",
        }
    }

    fn code(self) -> u32 {
        match self {
            Self::ConsecutiveFailures => 1,
            Self::ConsecutiveTimeouts => 2,
            Self::FailureRate => 3,
            Self::ProbeFailed => 4,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::ConsecutiveFailures),
            2 => Some(Self::ConsecutiveTimeouts),
            3 => Some(Self::FailureRate),
            4 => Some(Self::ProbeFailed),
            _ => None,
        }
    }
}

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// In rotation.
    Healthy,
    /// Out of rotation until its cooldown ends.
    Ejected,
    /// Cooldown over: the next request tests it.
    HalfOpen,
}

/// Smoothing of the latency average: each sample counts for this share (1/4).
const EWMA_SHIFT: u32 = 2;

/// One target's health. All fields are atomics; see the module docs for the cost.
#[derive(Debug, Default)]
pub struct TargetHealth {
    inflight: AtomicU32,
    /// Recent latency, microseconds; 0 until the first sample.
    ewma_us: AtomicU64,
    consecutive_failures: AtomicU32,
    consecutive_timeouts: AtomicU32,
    /// Start of the failure-rate window, ms since the registry's epoch.
    window_start_ms: AtomicU64,
    /// Attempts (low 32 bits) and failures (high 32 bits) of the window.
    window_counts: AtomicU64,
    /// End of the cooldown, ms since the epoch plus one; 0 when healthy.
    ejected_until: AtomicU64,
    /// Ejections in a row, for the growing cooldown.
    ejections_in_row: AtomicU32,
    /// When the target last healed (ms since the epoch plus one).
    healed_at: AtomicU64,
    /// A half-open test request is in flight.
    probing: AtomicBool,
    last_reason: AtomicU32,
    ejections_total: AtomicU64,
    stalls_total: AtomicU64,
    degraded_total: AtomicU64,
}

impl TargetHealth {
    /// Where the target stands at `now_ms`.
    pub fn state(&self, now_ms: u64) -> State {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => State::Healthy,
            until if now_ms + 1 < until => State::Ejected,
            _ => State::HalfOpen,
        }
    }

    /// The cost latency-aware choice compares: recent latency × (requests in flight + 1). A
    /// target without a sample yet costs only its in-flight count, so it gets tried.
    pub fn cost(&self) -> u64 {
        let ewma = self.ewma_us.load(Ordering::Relaxed);
        let inflight = u64::from(self.inflight.load(Ordering::Relaxed));
        ewma.saturating_add(1).saturating_mul(inflight + 1)
    }

    /// Recent latency, if any sample was taken.
    pub fn latency(&self) -> Option<Duration> {
        match self.ewma_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Requests in flight.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    fn observe_latency(&self, elapsed: Duration) {
        let sample = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let old = self.ewma_us.load(Ordering::Relaxed);
        // Load then store: two racing samples may lose one; an average does not mind.
        let new = if old == 0 {
            sample
        } else if sample >= old {
            old + ((sample - old) >> EWMA_SHIFT)
        } else {
            old - ((old - sample) >> EWMA_SHIFT)
        };
        self.ewma_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Count an outcome into the window and the streaks; whether a threshold tripped.
    fn count(&self, outcome: Outcome, config: &OutlierConfig, now_ms: u64) -> Option<Reason> {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(start) >= config.window_ms
            && self
                .window_start_ms
                .compare_exchange(start, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.window_counts.store(0, Ordering::Relaxed);
        }
        let failed = outcome != Outcome::Success;
        let add = 1 + if failed { 1 << 32 } else { 0 };
        let counts = self.window_counts.fetch_add(add, Ordering::Relaxed) + add;
        if !failed {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.consecutive_timeouts.store(0, Ordering::Relaxed);
            return None;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let timeouts = if outcome == Outcome::Timeout {
            self.consecutive_timeouts.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_timeouts.store(0, Ordering::Relaxed);
            0
        };
        if config.consecutive_timeouts > 0 && timeouts >= config.consecutive_timeouts {
            return Some(Reason::ConsecutiveTimeouts);
        }
        if config.consecutive_failures > 0 && failures >= config.consecutive_failures {
            return Some(Reason::ConsecutiveFailures);
        }
        let total = counts & u64::from(u32::MAX);
        let failed = counts >> 32;
        if config.failure_rate_percent > 0
            && total >= u64::from(config.failure_rate_min_requests)
            && failed * 100 >= total * u64::from(config.failure_rate_percent)
        {
            return Some(Reason::FailureRate);
        }
        None
    }

    /// Take the target out until its cooldown ends; the cooldown doubles with each ejection in
    /// a row, and the streak is forgiven once the target has stayed healthy for the longest
    /// cooldown. Returns the cooldown.
    fn eject(&self, reason: Reason, config: &OutlierConfig, now_ms: u64) -> Duration {
        let healed = self.healed_at.load(Ordering::Relaxed);
        if healed != 0 && now_ms + 1 - healed > config.max_ejection_ms {
            self.ejections_in_row.store(0, Ordering::Relaxed);
        }
        let streak = self
            .ejections_in_row
            .fetch_add(1, Ordering::Relaxed)
            .min(20);
        let cooldown = config
            .base_ejection_ms
            .saturating_mul(1 << streak)
            .min(config.max_ejection_ms.max(config.base_ejection_ms));
        self.ejected_until
            .store(now_ms + cooldown + 1, Ordering::Release);
        self.last_reason.store(reason.code(), Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.consecutive_timeouts.store(0, Ordering::Relaxed);
        self.window_counts.store(0, Ordering::Relaxed);
        Duration::from_millis(cooldown)
    }

    fn heal(&self, now_ms: u64) -> bool {
        let was = self.ejected_until.swap(0, Ordering::AcqRel);
        if was != 0 {
            self.healed_at.store(now_ms + 1, Ordering::Relaxed);
        }
        was != 0
    }

    /// Count a stream that stalled after its first event.
    pub fn stalled(&self) {
        self.stalls_total.fetch_add(1, Ordering::Relaxed);
    }
}

/// The health of one route's targets (in `ServedRoute::targets` order) and its settings.
#[derive(Debug)]
pub struct RouteHealth {
    route: Arc<str>,
    config: OutlierConfig,
    targets: Vec<Arc<TargetHealth>>,
    names: Vec<(String, String)>,
    epoch: Instant,
    /// Held while deciding an ejection, so that two targets never both leave at once.
    eject_lock: Mutex<()>,
}

/// Whether an attempt may go to a target, and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// A normal attempt.
    Yes,
    /// The half-open test of an ejected target: its result decides.
    Probe,
    /// Skip the target (ejected, or another request is testing it).
    No,
}

impl RouteHealth {
    /// Health of `route`'s targets from the registry.
    fn new(health: &Health, route: &ServedRoute) -> Self {
        let names: Vec<(String, String)> = route
            .config
            .targets
            .iter()
            .map(|t| (t.provider.clone(), t.model.clone()))
            .collect();
        let targets = names
            .iter()
            .map(|(p, m)| health.target(&route.name, p, m))
            .collect();
        Self {
            route: route.name.clone(),
            config: route.config.outlier.clone(),
            targets,
            names,
            epoch: health.epoch,
            eject_lock: Mutex::new(()),
        }
    }

    /// Milliseconds since the registry's epoch.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Target `i`'s health.
    pub fn target(&self, i: usize) -> Option<&TargetHealth> {
        self.targets.get(i).map(|t| &**t)
    }

    /// Whether target `i` is a candidate at all (healthy, or due for its test).
    pub fn available(&self, i: usize, now_ms: u64) -> bool {
        !self.config.enabled
            || self
                .target(i)
                .is_none_or(|t| t.state(now_ms) != State::Ejected)
    }

    /// Whether an attempt may go to target `i` now. `forced`: every target of the route is
    /// out, so the route serves degraded with whatever it has.
    pub fn admit(&self, i: usize, now_ms: u64, forced: bool) -> Admit {
        let Some(t) = self.target(i) else {
            return Admit::Yes;
        };
        if !self.config.enabled || forced {
            return Admit::Yes;
        }
        match t.state(now_ms) {
            State::Healthy => Admit::Yes,
            State::Ejected => Admit::No,
            State::HalfOpen => {
                if t.probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    Admit::Probe
                } else {
                    Admit::No
                }
            }
        }
    }

    /// An attempt to target `i` starts; the guard records how it went (or, dropped without a
    /// result, releases a test it held).
    pub fn begin(self: &Arc<Self>, i: usize, admit: Admit) -> AttemptHealth {
        if let Some(t) = self.target(i) {
            t.inflight.fetch_add(1, Ordering::Relaxed);
        }
        AttemptHealth {
            route: self.clone(),
            index: i,
            probe: admit == Admit::Probe,
            done: false,
        }
    }

    /// Record `outcome` of an attempt to target `i` that took `elapsed` (`None`: a report after
    /// the attempt, no latency). `counted`: whether it goes into the streaks and the window (a
    /// stream's start does not: its end does).
    fn record(
        &self,
        i: usize,
        outcome: Outcome,
        elapsed: Option<Duration>,
        probe: bool,
        counted: bool,
    ) {
        let Some(t) = self.target(i) else { return };
        // A timeout's latency is at least the limit: it steers choice away too.
        if let Some(elapsed) = elapsed {
            t.observe_latency(elapsed);
        }
        if !self.config.enabled {
            return;
        }
        let now = self.now_ms();
        if probe {
            t.probing.store(false, Ordering::Release);
        }
        if outcome == Outcome::Success {
            if counted {
                t.count(outcome, &self.config, now);
            }
            if t.heal(now) {
                let (p, m) = self.name(i);
                tracing::info!(route = %self.route, provider = p, model = m, "target healthy again");
            }
            return;
        }
        let tripped = t.count(outcome, &self.config, now);
        let reason = match (probe, tripped) {
            (true, _) => Reason::ProbeFailed,
            (false, Some(reason)) => reason,
            (false, None) => return,
        };
        if !probe && t.state(now) != State::Healthy {
            // Already out (a late result of an attempt begun before the ejection).
            return;
        }
        self.try_eject(i, reason, now);
    }

    fn try_eject(&self, i: usize, reason: Reason, now: u64) {
        let Some(t) = self.target(i) else { return };
        let _held = self.eject_lock.lock().unwrap_or_else(|e| e.into_inner());
        let others_healthy = self
            .targets
            .iter()
            .enumerate()
            .any(|(j, o)| j != i && o.state(now) == State::Healthy);
        let (p, m) = self.name(i);
        if !others_healthy {
            t.degraded_total.fetch_add(1, Ordering::Relaxed);
            if reason == Reason::ProbeFailed {
                // Its test failed but nothing healthier is left: back in rotation.
                t.heal(now);
            }
            tracing::warn!(route = %self.route, provider = p, model = m, reason = reason.as_str(),
                "target failing but it is the route's last healthy one: not ejected, the route is degraded");
            return;
        }
        let cooldown = t.eject(reason, &self.config, now);
        tracing::warn!(route = %self.route, provider = p, model = m, reason = reason.as_str(),
            cooldown_ms = cooldown.as_millis() as u64, "target ejected");
    }

    fn name(&self, i: usize) -> (&str, &str) {
        self.names
            .get(i)
            .map_or(("", ""), |(p, m)| (p.as_str(), m.as_str()))
    }
}

/// One attempt's hold on its target's health: in-flight count, the half-open test.
#[derive(Debug)]
pub struct AttemptHealth {
    route: Arc<RouteHealth>,
    index: usize,
    probe: bool,
    done: bool,
}

impl AttemptHealth {
    /// The attempt ended with `outcome` after `elapsed`.
    pub fn finish(self, outcome: Outcome, elapsed: Duration) {
        self.end(outcome, elapsed, true);
    }

    /// A stream's first event arrived after `elapsed`: the target is up (a test passes), but
    /// the streaks wait for the stream's end ([`TargetHandle`]).
    pub fn finish_stream_start(self, elapsed: Duration) {
        self.end(Outcome::Success, elapsed, false);
    }

    fn end(mut self, outcome: Outcome, elapsed: Duration, counted: bool) {
        self.done = true;
        if let Some(t) = self.route.target(self.index) {
            t.inflight.fetch_sub(1, Ordering::Relaxed);
        }
        self.route
            .record(self.index, outcome, Some(elapsed), self.probe, counted);
    }

    /// Report a failure that came after the attempt succeeded (a stream that broke or stalled).
    pub fn handle(&self) -> TargetHandle {
        TargetHandle {
            route: self.route.clone(),
            index: self.index,
        }
    }
}

impl Drop for AttemptHealth {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The request went away mid-attempt: no verdict on the target.
        if let Some(t) = self.route.target(self.index) {
            t.inflight.fetch_sub(1, Ordering::Relaxed);
            if self.probe {
                t.probing.store(false, Ordering::Release);
            }
        }
    }
}

/// A target of a route, for reports after its attempt ended (stream stalls and breaks).
#[derive(Debug, Clone)]
pub struct TargetHandle {
    route: Arc<RouteHealth>,
    index: usize,
}

impl TargetHandle {
    /// The stream stalled (`timeouts.idle`): counted, and a failure of the target.
    pub fn stalled(&self) {
        if let Some(t) = self.route.target(self.index) {
            t.stalled();
        }
        self.route
            .record(self.index, Outcome::Timeout, None, false, true);
    }

    /// The stream broke upstream after it started: a failure of the target.
    pub fn broke(&self) {
        self.route
            .record(self.index, Outcome::Failure, None, false, true);
    }

    /// The stream ended properly: a success of the target.
    pub fn completed(&self) {
        self.route
            .record(self.index, Outcome::Success, None, false, true);
    }
}

/// The registry of every target's health, by (route, provider, model).
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    targets: Mutex<HashMap<(String, String, String), Arc<TargetHealth>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            targets: Mutex::new(HashMap::new()),
        }
    }
}

impl Health {
    fn target(&self, route: &str, provider: &str, model: &str) -> Arc<TargetHealth> {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets
            .entry((route.to_string(), provider.to_string(), model.to_string()))
            .or_default()
            .clone()
    }

    /// The health of `route`'s targets (built once per route and snapshot).
    pub fn route(&self, route: &ServedRoute) -> Arc<RouteHealth> {
        route
            .health
            .get_or_init(|| Arc::new(RouteHealth::new(self, route)))
            .clone()
    }

    fn entries(&self) -> Vec<((String, String, String), Arc<TargetHealth>)> {
        let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = targets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every target's state, as JSON for the admin port's `/targets`.
    pub fn report(&self) -> serde_json::Value {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let targets: Vec<serde_json::Value> = self
            .entries()
            .into_iter()
            .map(|((route, provider, model), t)| {
                let state = t.state(now);
                let until = t.ejected_until.load(Ordering::Relaxed);
                serde_json::json!({
                    "route": route,
                    "provider": provider,
                    "model": model,
                    "state": state,
                    "cooldown_remaining_ms": (state == State::Ejected).then(|| until - 1 - now),
                    "last_reason": Reason::from_code(t.last_reason.load(Ordering::Relaxed)),
                    "ejections": t.ejections_total.load(Ordering::Relaxed),
                    "ejections_in_row": t.ejections_in_row.load(Ordering::Relaxed),
                    "consecutive_failures": t.consecutive_failures.load(Ordering::Relaxed),
                    "inflight": t.inflight(),
                    "latency_ms": t.latency().map(|d| d.as_secs_f64() * 1000.0),
                    "stream_stalls": t.stalls_total.load(Ordering::Relaxed),
                    "degraded": t.degraded_total.load(Ordering::Relaxed),
                })
            })
            .collect();
        serde_json::json!({ "targets": targets })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    route: String,
    provider: String,
    model: String,
}

/// The registry as Prometheus metrics, read at scrape time (nothing on the request path).
#[derive(Debug)]
pub struct HealthCollector(pub Arc<Health>);

impl Collector for HealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let entries = self.0.entries();
        let now = u64::try_from(self.0.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let labels = |k: &(String, String, String)| TargetLabels {
            route: k.0.clone(),
            provider: k.1.clone(),
            model: k.2.clone(),
        };
        type Read = fn(&TargetHealth, u64) -> u64;
        let counters: [(&str, &str, Read); 3] = [
            ("target_ejections", "Times a target was ejected", |t, _| {
                t.ejections_total.load(Ordering::Relaxed)
            }),
            (
                "stream_stalls",
                "Streams ended because the upstream went silent for timeouts.idle",
                |t, _| t.stalls_total.load(Ordering::Relaxed),
            ),
            (
                "target_ejections_refused",
                "Ejections not made because the target was its route's last healthy one",
                |t, _| t.degraded_total.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (key, t) in &entries {
                let l = labels(key);
                ConstCounter::new(read(t, now)).encode(family.encode_family(&l)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "target_ejected",
            "1 while a target is ejected (cooldown running), else 0",
            None,
            MetricType::Gauge,
        )?;
        for (key, t) in &entries {
            let l = labels(key);
            let ejected = i64::from(t.state(now) == State::Ejected);
            ConstGauge::new(ejected).encode(family.encode_family(&l)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OutlierConfig {
        OutlierConfig {
            enabled: true,
            consecutive_failures: 3,
            consecutive_timeouts: 2,
            failure_rate_percent: 50,
            failure_rate_min_requests: 10,
            window_ms: 1_000,
            base_ejection_ms: 100,
            max_ejection_ms: 350,
        }
    }

    fn route(n: usize) -> RouteHealth {
        RouteHealth {
            route: "r".into(),
            config: config(),
            targets: (0..n).map(|_| Arc::default()).collect(),
            names: (0..n).map(|i| (format!("p{i}"), "m".into())).collect(),
            epoch: Instant::now(),
            eject_lock: Mutex::new(()),
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_streak() {
        let t = TargetHealth::default();
        let c = config();
        assert_eq!(t.count(Outcome::Failure, &c, 0), None);
        assert_eq!(t.count(Outcome::Failure, &c, 0), None);
        assert_eq!(t.count(Outcome::Success, &c, 0), None);
        assert_eq!(t.count(Outcome::Failure, &c, 0), None);
        assert_eq!(t.count(Outcome::Failure, &c, 0), None);
        assert_eq!(
            t.count(Outcome::Failure, &c, 0),
            Some(Reason::ConsecutiveFailures)
        );
    }

    #[test]
    fn timeouts_trip_sooner_than_other_failures() {
        let t = TargetHealth::default();
        let c = config();
        assert_eq!(t.count(Outcome::Timeout, &c, 0), None);
        assert_eq!(
            t.count(Outcome::Timeout, &c, 0),
            Some(Reason::ConsecutiveTimeouts)
        );
        // A failure between two timeouts breaks the timeout streak.
        let t = TargetHealth::default();
        t.count(Outcome::Timeout, &c, 0);
        t.count(Outcome::Success, &c, 0);
        assert_eq!(t.count(Outcome::Timeout, &c, 0), None);
    }

    #[test]
    fn failure_rate_needs_the_minimum_attempts_within_one_window() {
        let t = TargetHealth::default();
        let c = OutlierConfig {
            consecutive_failures: 0,
            consecutive_timeouts: 0,
            ..config()
        };
        // Alternate: 50% failures, never two in a row that matter (streaks are off).
        let mut tripped = None;
        for i in 0..10 {
            let outcome = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            tripped = tripped.or(t.count(outcome, &c, 10));
        }
        // The 10th attempt is a success: no trip on successes; the 11th (a failure) trips.
        assert_eq!(tripped, None);
        assert_eq!(t.count(Outcome::Failure, &c, 20), Some(Reason::FailureRate));
        // A new window starts empty.
        assert_eq!(t.count(Outcome::Failure, &c, 2_000), None);
    }

    #[test]
    fn cooldown_doubles_on_repeats_up_to_the_cap_and_is_forgiven_after_a_quiet_spell() {
        let t = TargetHealth::default();
        let c = config();
        let ms = |d: Duration| d.as_millis() as u64;
        assert_eq!(ms(t.eject(Reason::ConsecutiveFailures, &c, 0)), 100);
        assert_eq!(t.state(50), State::Ejected);
        assert_eq!(t.state(100), State::HalfOpen);
        assert_eq!(ms(t.eject(Reason::ProbeFailed, &c, 100)), 200);
        assert_eq!(ms(t.eject(Reason::ProbeFailed, &c, 300)), 350);
        assert_eq!(ms(t.eject(Reason::ProbeFailed, &c, 650)), 350);
        assert!(t.heal(1_000));
        assert_eq!(t.state(1_000), State::Healthy);
        // Healthy for longer than the cap: the next ejection starts over.
        assert_eq!(ms(t.eject(Reason::ConsecutiveFailures, &c, 2_000)), 100);
    }

    #[test]
    fn the_last_healthy_target_is_never_ejected() {
        let r = Arc::new(route(2));
        for _ in 0..3 {
            r.begin(0, Admit::Yes)
                .finish(Outcome::Failure, Duration::from_millis(1));
        }
        assert_eq!(r.target(0).unwrap().state(r.now_ms()), State::Ejected);
        for _ in 0..10 {
            r.begin(1, Admit::Yes)
                .finish(Outcome::Failure, Duration::from_millis(1));
        }
        assert_eq!(r.target(1).unwrap().state(r.now_ms()), State::Healthy);
        assert!(r.target(1).unwrap().degraded_total.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn half_open_admits_one_test_whose_result_decides() {
        let r = Arc::new(route(2));
        let t0 = r.target(0).unwrap();
        t0.eject(Reason::ConsecutiveFailures, &r.config, 0);
        // Cooldown over (the epoch is now; pretend the clock moved on).
        t0.ejected_until.store(1, Ordering::Release);
        let now = r.now_ms();
        assert_eq!(r.admit(0, now, false), Admit::Probe);
        assert_eq!(r.admit(0, now, false), Admit::No, "one test at a time");
        let probe = r.begin(0, Admit::Probe);
        probe.finish(Outcome::Success, Duration::from_millis(5));
        assert_eq!(t0.state(r.now_ms()), State::Healthy);
        assert_eq!(r.admit(0, r.now_ms(), false), Admit::Yes);

        // A failed test ejects again, longer.
        t0.eject(Reason::ConsecutiveFailures, &r.config, 0);
        t0.ejected_until.store(1, Ordering::Release);
        assert_eq!(r.admit(0, r.now_ms(), false), Admit::Probe);
        r.begin(0, Admit::Probe)
            .finish(Outcome::Failure, Duration::from_millis(5));
        assert_eq!(t0.state(r.now_ms()), State::Ejected);
        assert_eq!(
            Reason::from_code(t0.last_reason.load(Ordering::Relaxed)),
            Some(Reason::ProbeFailed)
        );

        // A test dropped without a result frees the slot.
        t0.ejected_until.store(1, Ordering::Release);
        assert_eq!(r.admit(0, r.now_ms(), false), Admit::Probe);
        drop(r.begin(0, Admit::Probe));
        assert_eq!(r.admit(0, r.now_ms(), false), Admit::Probe);
        assert_eq!(t0.inflight(), 0);
    }

    #[test]
    fn latency_average_and_cost() {
        let t = TargetHealth::default();
        assert_eq!(t.cost(), 1);
        t.observe_latency(Duration::from_millis(100));
        assert_eq!(t.latency(), Some(Duration::from_millis(100)));
        t.observe_latency(Duration::from_millis(20));
        assert_eq!(t.latency(), Some(Duration::from_millis(80)));
        t.inflight.store(3, Ordering::Relaxed);
        assert_eq!(t.cost(), 80_001 * 4);
    }
}
