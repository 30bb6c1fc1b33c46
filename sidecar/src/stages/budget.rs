//! Budgets: every request covered by Budgets reserves what it may cost before it is sent, in all
//! of them at once, and settles with its metered cost when it ends.
//!
//! - **Which Budgets** cover a request: its Route, the sidecar's ServiceAccount and pod labels
//!   ([`policy`]). Every one of them must allow the request.
//! - **Reserve** ([`Reserve`], after the routing rules so the targets are known): the
//!   estimate ([`estimate`]) at the price of the most expensive target the request may go to.
//!   A hard Budget without room refuses with 429 `budget_exceeded` in the client's dialect,
//!   `Retry-After` until its period ends (none for period `none`), and the Budget named. A
//!   reservation that does not fit in a lease the ledger may still grow waits for syncs, at
//!   most `--budget-wait-ms` in all, then is refused or let through as the failMode says.
//! - **Warn and downgrade**: where each covering Budget stands decides, before the estimate,
//!   `x-gatehouse-budget: warn` (past its first threshold; a soft Budget past its limit) and a
//!   downgrade: past its `atPercent` the request goes to the downgrade Route's targets instead
//!   (the routing rule that matched no longer applies), and the answer says
//!   `x-gatehouse-budget: downgraded` and `x-gatehouse-downgraded-to: <route>`.
//! - **Settle** ([`Settle`], after metering): the metered cost (`ctx.cost_usd`, an
//!   estimate for a cut stream) and the tokens of `ctx.usage` are spent; the rest of the estimate
//!   returns. A request that ended without an answer spends nothing.
//! - **Ledger unreachable** (cluster mode): leases are spent until they run out or expire; then
//!   a Budget that fails open serves (counted as `fail_open`, reported as degraded) and one that
//!   fails closed answers 503 `budget_unavailable`.
//!
//! Two stages share the ledger: [`Reserve`] and [`Settle`] (`stages::chain` places them).

pub mod client;
pub mod estimate;
pub mod ledger;
pub mod policy;
pub mod remote;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use gatehouse_crds::ledger::{Amount, usd_to_nanos};
use http::{HeaderMap, HeaderValue, StatusCode};
use k8s_openapi::jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::time::Instant;

use self::ledger::{Admission, Grant, Ledger, Standing, Ticket};
use self::policy::{Budgets, Policy};
use super::{Context, End, Flow, Hooks, Stage};
use crate::error::ProxyError;
use crate::metrics::{BudgetLabels, Metrics};
use crate::request::Request;
use crate::state::ServedRoute;

/// The response header saying where the covering Budgets stand.
pub const BUDGET_HEADER: &str = "x-gatehouse-budget";

/// The response header naming the Route a downgraded request went to.
pub const DOWNGRADED_HEADER: &str = "x-gatehouse-downgraded-to";

/// The default of `--budget-wait-ms`: the longest a request waits for a lease.
pub const DEFAULT_WAIT_MS: u64 = 2_000;

/// What the covering Budgets made of a request, most severe last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Within every Budget.
    Ok,
    /// Some Budget is past a soft threshold (or a soft Budget past its limit).
    Warn,
    /// Sent to a downgrade Route's targets.
    Downgraded,
    /// Refused: a hard Budget has no room.
    Exceeded,
    /// Refused: a fail-closed Budget cannot be checked.
    Unavailable,
}

impl Outcome {
    /// The `x-gatehouse-budget` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Downgraded => "downgraded",
            Self::Exceeded => "exceeded",
            Self::Unavailable => "unavailable",
        }
    }
}

/// What one covering Budget made of a request: the `outcome` label of
/// `gatehouse_budget_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Ok,
    Warn,
    Downgraded,
    FailOpen,
    Exceeded,
    FailClosed,
}

impl Decided {
    /// Every outcome, in the order of the discriminants.
    const ALL: [Self; 6] = [
        Self::Ok,
        Self::Warn,
        Self::Downgraded,
        Self::FailOpen,
        Self::Exceeded,
        Self::FailClosed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Downgraded => "downgraded",
            Self::FailOpen => "fail_open",
            Self::Exceeded => "exceeded",
            Self::FailClosed => "fail_closed",
        }
    }
}

/// What the budget stage decided for one request (in `Context::budget`).
#[derive(Debug)]
pub struct Decision {
    covering: Vec<Arc<Policy>>,
    standings: Vec<Standing>,
    amount: Amount,
    /// The Budget that downgrades the request, and to which Route.
    downgrade: Option<(Arc<str>, Arc<ServedRoute>)>,
    /// Until when the request may wait for the ledger, from its first wait.
    deadline: Option<Instant>,
    ticket: Option<Ticket>,
    /// Set once decided.
    pub outcome: Option<Outcome>,
}

impl Decision {
    /// What was reserved.
    pub fn reserved(&self) -> Amount {
        self.amount
    }

    /// The Route the request was downgraded to.
    pub fn downgraded_to(&self) -> Option<&str> {
        self.downgrade.as_ref().map(|(_, r)| &*r.name)
    }

    /// The names of the Budgets covering the request.
    pub fn covering(&self) -> impl Iterator<Item = &str> {
        self.covering.iter().map(|p| &*p.name)
    }
}

/// Settings of the budget stage (flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--budget-wait-ms`.
    pub wait: Duration,
    /// `--budget-default-output-tokens`.
    pub default_output_tokens: u64,
    /// `--workload-labels`: the pod labels the identity carries, the only ones a workload
    /// selector can see.
    pub carried_labels: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            wait: Duration::from_millis(DEFAULT_WAIT_MS),
            default_output_tokens: estimate::DEFAULT_OUTPUT_TOKENS,
            carried_labels: crate::workload::DEFAULT_LABELS
                .split(',')
                .map(str::to_string)
                .collect(),
        }
    }
}

/// The budget stages: reserve before the attempts, settle after metering.
pub fn stages(
    ledger: Arc<dyn Ledger>,
    metrics: Arc<Metrics>,
    settings: Settings,
) -> (Reserve, Settle) {
    (
        Reserve {
            ledger: ledger.clone(),
            metrics,
            settings,
            checked: Mutex::new(Weak::new()),
        },
        Settle { ledger },
    )
}

/// Reserves, refuses, warns and downgrades; writes the `x-gatehouse-budget` headers.
#[derive(Debug)]
pub struct Reserve {
    ledger: Arc<dyn Ledger>,
    metrics: Arc<Metrics>,
    settings: Settings,
    /// The Budgets last checked for selectors on labels the identity does not carry (one
    /// warning per config, not per request; weak, so it keeps no old config alive).
    checked: Mutex<Weak<Budgets>>,
}

impl Reserve {
    /// The ledger it reserves on (the rate-limit stage keeps cluster limits there too).
    pub fn ledger(&self) -> Arc<dyn Ledger> {
        self.ledger.clone()
    }
}

/// Settles a request's reservation with its metered cost.
#[derive(Debug)]
pub struct Settle {
    ledger: Arc<dyn Ledger>,
}

impl Reserve {
    /// Warn, once per config, about a workload selector on a label outside `--workload-labels`:
    /// the sidecar sees such a label as absent, so the Budget may cover less than meant.
    fn check_selectors(&self, budgets: &Arc<Budgets>) {
        // Contended: another request is checking (or just checked) this config.
        let Ok(mut checked) = self.checked.try_lock() else {
            return;
        };
        if std::ptr::eq(checked.as_ptr(), Arc::as_ptr(budgets)) {
            return;
        }
        *checked = Arc::downgrade(budgets);
        drop(checked);
        for policy in budgets.all() {
            for key in policy.selector_keys() {
                if !self.settings.carried_labels.iter().any(|l| l == key) {
                    tracing::warn!(budget = %policy.name, label = key,
                        "the budget's workload selector reads a pod label the sidecar does not carry (--workload-labels); it is seen as absent");
                }
            }
        }
    }

    /// Where the covering Budgets stand, the downgrade, the estimate.
    fn decide(&self, ctx: &Context, request: &Request, covering: Vec<Arc<Policy>>) -> Decision {
        let mut standings = Vec::with_capacity(covering.len());
        self.ledger.standing(&covering, &mut standings);
        let route = ctx.route.as_deref();
        let downgrade = covering
            .iter()
            .zip(&standings)
            .find_map(|(policy, standing)| {
                let d = policy.downgrade.as_ref()?;
                // A Route downgraded to itself, or to one with nothing to serve it, stays.
                (standing.fraction * 100.0 >= f64::from(d.at_percent)
                    && route.is_none_or(|r| r.name != d.route.name)
                    && !d.route.targets.is_empty())
                .then(|| (policy.name.clone(), d.route.clone()))
            });
        let tokens = estimate::tokens(request, self.settings.default_output_tokens);
        let amount = match (&downgrade, route, &ctx.rule_targets) {
            (Some((_, to)), _, _) => estimate::amount(tokens, &to.targets),
            (None, Some(route), Some(subset)) => {
                estimate::amount(tokens, subset.iter().filter_map(|&i| route.resolved(i)))
            }
            (None, Some(route), None) => estimate::amount(tokens, &route.targets),
            (None, None, _) => estimate::amount(tokens, []),
        };
        Decision {
            covering,
            standings,
            amount,
            downgrade,
            deadline: None,
            ticket: None,
            outcome: None,
        }
    }

    fn count(&self, policy: &Policy, outcome: Decided) {
        let counters = policy.decisions.get_or_init(|| {
            Decided::ALL
                .iter()
                .map(|o| {
                    self.metrics
                        .budget_decisions
                        .get_or_create(&BudgetLabels {
                            budget: policy.name.clone(),
                            outcome: o.as_str(),
                        })
                        .clone()
                })
                .collect()
        });
        if let Some(counter) = counters.get(outcome as usize) {
            counter.inc();
        }
    }

    /// The covering Budget named `budget`, for counting a refusal.
    fn named<'a>(d: &'a Decision, budget: &str) -> Option<&'a Policy> {
        d.covering.iter().find(|p| &*p.name == budget).map(|p| &**p)
    }

    /// Reserve; the decision goes back into `ctx` whatever happens.
    fn admit(&self, ctx: &mut Context, d: &mut Decision) -> Result<Flow, ProxyError> {
        let may_wait = d.deadline.is_none_or(|deadline| Instant::now() < deadline);
        match self.ledger.reserve(&d.covering, d.amount, may_wait) {
            Admission::Reserved(ticket) => {
                let mut outcome = Outcome::Ok;
                for ((policy, grant), standing) in ticket.accounts.iter().zip(&d.standings) {
                    let decided = match grant {
                        Grant::FailOpen => Decided::FailOpen,
                        Grant::Lease
                            if d.downgrade.as_ref().is_some_and(|(b, _)| *b == policy.name) =>
                        {
                            Decided::Downgraded
                        }
                        Grant::Lease if policy.warns_at(standing.fraction) => Decided::Warn,
                        Grant::Lease => Decided::Ok,
                    };
                    self.count(policy, decided);
                    if decided == Decided::Warn {
                        outcome = outcome.max(Outcome::Warn);
                    }
                }
                if let Some((budget, route)) = &d.downgrade {
                    tracing::debug!(request_id = %ctx.request_id, %budget, to = %route.name,
                        "budget past its downgrade threshold, request downgraded");
                    outcome = Outcome::Downgraded;
                    ctx.downgraded_to = Some(route.clone());
                    // The rule picked targets of the Route asked for; they no longer apply.
                    ctx.rule = None;
                    ctx.rule_targets = None;
                }
                d.outcome = Some(outcome);
                d.ticket = Some(ticket);
                Ok(Flow::Continue)
            }
            Admission::Wait(wait) => {
                // Waits for syncs until the lease has room, at most `--budget-wait-ms` in all:
                // a sync may grant only part of what is needed (a fair share near the limit).
                let deadline = *d
                    .deadline
                    .get_or_insert_with(|| Instant::now() + self.settings.wait);
                Ok(Flow::Wait(Box::pin(async move {
                    let _ = tokio::time::timeout_at(deadline, wait).await;
                })))
            }
            Admission::Exceeded { budget, resets } => {
                if let Some(policy) = Self::named(d, &budget) {
                    self.count(policy, Decided::Exceeded);
                }
                d.outcome = Some(Outcome::Exceeded);
                tracing::debug!(request_id = %ctx.request_id, %budget, "budget exhausted, request refused");
                Err(ProxyError::BudgetExceeded {
                    budget: budget.to_string(),
                    resets: resets.map(|t| t.to_string()),
                    retry_after: resets.map(until),
                })
            }
            Admission::Unavailable { budget } => {
                if let Some(policy) = Self::named(d, &budget) {
                    self.count(policy, Decided::FailClosed);
                }
                d.outcome = Some(Outcome::Unavailable);
                Err(ProxyError::BudgetUnavailable {
                    budget: budget.to_string(),
                })
            }
        }
    }
}

/// Time from now until `t`, at least one second (a period that ended by this clock but not yet
/// by the ledger's).
fn until(t: Timestamp) -> Duration {
    let ms = t
        .as_millisecond()
        .saturating_sub(Timestamp::now().as_millisecond());
    Duration::from_millis(u64::try_from(ms).unwrap_or(0).max(1_000))
}

/// What a request spent: its metered cost and its tokens (nothing without an answer).
fn actual(ctx: &Context) -> Amount {
    let Some(usage) = ctx.usage.filter(|_| ctx.answered_by.is_some()) else {
        return Amount::default();
    };
    // With metering on its cost is already there; with `--metering off` it is priced here.
    let usd = ctx
        .cost_usd
        .or_else(|| super::metering::cost_of(ctx, &usage));
    Amount {
        nano_usd: usd.map_or(0, usd_to_nanos),
        tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
    }
}

impl Stage for Reserve {
    fn name(&self) -> &'static str {
        "budget_reserve"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            response: true,
            ..Hooks::default()
        }
    }

    fn on_request(&self, ctx: &mut Context, request: &mut Request) -> Result<Flow, ProxyError> {
        let mut d = match ctx.budget.take() {
            // Asked again after waiting for the ledger.
            Some(d) => d,
            None => {
                let covering = match (&ctx.snapshot, &ctx.route, &ctx.identity.workload) {
                    (Some(snapshot), Some(route), Some(workload))
                        if !snapshot.budgets.is_empty() =>
                    {
                        self.check_selectors(&snapshot.budgets);
                        snapshot.budgets.covering(&route.name, workload)
                    }
                    _ => return Ok(Flow::Continue),
                };
                if covering.is_empty() {
                    return Ok(Flow::Continue);
                }
                Box::new(self.decide(ctx, request, covering))
            }
        };
        let flow = if d.outcome.is_some() {
            Ok(Flow::Continue)
        } else {
            self.admit(ctx, &mut d)
        };
        ctx.budget = Some(d);
        flow
    }

    fn on_response(&self, ctx: &Context, _status: StatusCode, headers: &mut HeaderMap) {
        let Some(d) = &ctx.budget else { return };
        let Some(outcome) = d.outcome else { return };
        headers.insert(BUDGET_HEADER, HeaderValue::from_static(outcome.as_str()));
        if outcome == Outcome::Downgraded
            && let Some(to) = d.downgraded_to()
            && let Ok(v) = HeaderValue::from_str(to)
        {
            headers.insert(DOWNGRADED_HEADER, v);
        }
    }
}

impl Stage for Settle {
    fn name(&self) -> &'static str {
        "budget_settle"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            end: true,
            ..Hooks::default()
        }
    }

    fn on_end(&self, ctx: &mut Context, _end: End) {
        let Some(ticket) = ctx.budget.as_mut().and_then(|d| d.ticket.take()) else {
            return;
        };
        self.ledger.settle(ticket, actual(ctx));
    }
}

/// `gatehouse_budget_degraded{budget}`, read from the ledger at scrape time: 1 while the sidecar
/// serves a Budget without a lease because the ledger cannot be reached (or does not know it).
/// The ledger is set once it exists (it records into the metrics this is registered with).
#[derive(Debug)]
pub struct DegradedCollector(pub Arc<std::sync::OnceLock<Arc<dyn Ledger>>>);

impl Collector for DegradedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(ledger) = self.0.get() else {
            return Ok(());
        };
        let accounts = ledger.degraded();
        if accounts.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "budget_degraded",
            "1 while a budget's lease is gone and the budget ledger cannot be reached (failMode decides), else 0",
            None,
            MetricType::Gauge,
        )?;
        for (budget, degraded) in accounts {
            #[derive(
                prometheus_client::encoding::EncodeLabelSet, Clone, Debug, Hash, PartialEq, Eq,
            )]
            struct Labels {
                budget: Arc<str>,
            }
            ConstGauge::new(i64::from(degraded))
                .encode(family.encode_family(&Labels { budget })?)?;
        }
        Ok(())
    }
}
