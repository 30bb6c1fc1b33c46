//! The ledger the budget stage spends against: a [`Ledger`] trait and its two sides.
//!
//! - [`Local`] (standalone `--manifests` mode without `--ledger-url`): the sidecar is the only
//!   spender, so it is the authoritative ledger itself. Exact (a reservation fits in what the
//!   limit leaves, or the request is refused) and persisted nowhere: a restart starts every
//!   Budget's period from zero. Periods from the sidecar's clock ([`Period::bounds`]).
//! - [`super::remote::Remote`] (cluster mode): spends within leases the operator's ledger grants
//!   and reports to it (`gatehouse_crds::ledger`).
//!
//! Every request covered by Budgets reserves its estimate in all of them at once, or in none
//! ([`Ledger::reserve`]), and settles when it ends ([`Ledger::settle`]): the metered cost is
//! spent, the rest of the estimate returns to what the sidecar may spend.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use gatehouse_crds::ledger::{AccountKind, Amount, Limit};
use k8s_openapi::jiff::Timestamp;

use super::policy::Policy;

/// A wait for the ledger (a sync); the budget stage bounds it.
pub type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The accounts of a ledger by key. foldhash rather than SipHash: the names come from the
/// config, and the lookups are on every covered request.
pub(super) type Accounts<V> = HashMap<AccountKey, V, foldhash::fast::RandomState>;

/// An account on the ledger: its kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountKey {
    /// What kind of account.
    pub kind: AccountKind,
    /// Its name.
    pub name: Arc<str>,
}

impl AccountKey {
    /// The account of `policy`.
    pub fn of(policy: &Policy) -> Self {
        Self {
            kind: policy.kind,
            name: policy.name.clone(),
        }
    }
}

/// Where a Budget stands, as far as this sidecar knows: the fraction of its limit spent in the
/// current period (the largest over its limited units).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Standing {
    /// Spent ÷ limit.
    pub fraction: f64,
}

/// How one account let a reservation through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Within the limit (local) or the lease (remote); always for a soft Budget.
    Lease,
    /// Without a lease: the ledger is unreachable, the lease is gone and the Budget fails open.
    FailOpen,
}

/// A reservation in every covering account; settled once, when the request ends.
#[derive(Debug)]
pub struct Ticket {
    /// The accounts, each with how it let the request through.
    pub accounts: Vec<(Arc<Policy>, Grant)>,
    /// What was reserved in each.
    pub amount: Amount,
}

/// What [`Ledger::reserve`] decided.
pub enum Admission {
    /// Reserved in every account.
    Reserved(Ticket),
    /// Nothing reserved: some lease has no room but the ledger may grant more. Wait for this
    /// (a sync that starts after the call), then ask again.
    Wait(Wait),
    /// A hard Budget has no room for the request in this period.
    Exceeded {
        /// The Budget.
        budget: Arc<str>,
        /// When its period ends (`None`: period `none`, it never resets).
        resets: Option<Timestamp>,
    },
    /// A fail-closed Budget cannot be checked: its lease is gone and the ledger is unreachable.
    Unavailable {
        /// The Budget.
        budget: Arc<str>,
    },
}

impl Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reserved(t) => f.debug_tuple("Reserved").field(t).finish(),
            Self::Wait(_) => f.write_str("Wait"),
            Self::Exceeded { budget, resets } => f
                .debug_struct("Exceeded")
                .field("budget", budget)
                .field("resets", resets)
                .finish(),
            Self::Unavailable { budget } => f
                .debug_struct("Unavailable")
                .field("budget", budget)
                .finish(),
        }
    }
}

/// Where the budget stage spends.
pub trait Ledger: Send + Sync + Debug {
    /// `local` or `remote`, for logs.
    fn mode(&self) -> &'static str;

    /// Where each of `policies` stands, in order, into `out`.
    fn standing(&self, policies: &[Arc<Policy>], out: &mut Vec<Standing>);

    /// Reserve `amount` in every one of `policies`, or in none. `may_wait`: the request's time
    /// to wait for the ledger is not up; without it, no room is a refusal (or the failMode).
    fn reserve(&self, policies: &[Arc<Policy>], amount: Amount, may_wait: bool) -> Admission;

    /// The request ended: `actual` is spent in each account of `ticket`, the rest of its
    /// reservation returns.
    fn settle(&self, ticket: Ticket, actual: Amount);

    /// Each account's name and whether it runs degraded (lease gone, ledger unreachable).
    fn degraded(&self) -> Vec<(Arc<str>, bool)>;

    /// Report what is unreported, before the process exits (the caller bounds the wait).
    fn flush(&self) -> Option<Wait> {
        None
    }

    /// What this sidecar knows of `policy`'s account in the current period: used by every
    /// instance (the ledger's last total, plus what this sidecar settled and reserves since),
    /// and when the period ends. `None` before the ledger answered for it.
    fn account_view(&self, _policy: &Policy) -> Option<(Amount, Option<Timestamp>)> {
        None
    }
}

/// How one account can take a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Room {
    /// It fits.
    Fits,
    /// Not in the lease as it is; a sync may grant more.
    Short,
    /// Not in this period.
    Exhausted,
    /// The lease is gone and the ledger cannot be reached: the Budget's failMode decides.
    Unreachable,
}

/// What the accounts' rooms add up to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Reserve, with these grants (in the accounts' order).
    Reserve(Vec<Grant>),
    /// Wait for a sync.
    Wait,
    /// Refuse: this account (index) is exhausted.
    Exceeded(usize),
    /// Refuse: this account (index) fails closed.
    Unavailable(usize),
}

/// Every account must allow the request. An exhausted hard Budget refuses first (the one that
/// resets last, so `Retry-After` holds for every one of them), then a fail-closed one that
/// cannot be checked; only then is waiting for a sync worth it.
pub(super) fn verdict(rooms: &[(Room, &Policy, Option<Timestamp>)]) -> Verdict {
    let resets_last = rooms
        .iter()
        .enumerate()
        .filter(|(_, (room, p, _))| *room == Room::Exhausted && p.hard)
        .max_by_key(|(_, (_, _, resets))| resets.map_or(i128::MAX, |t| t.as_nanosecond()));
    if let Some((i, _)) = resets_last {
        return Verdict::Exceeded(i);
    }
    if let Some(i) = rooms
        .iter()
        .position(|(room, p, _)| *room == Room::Unreachable && p.fail_closed)
    {
        return Verdict::Unavailable(i);
    }
    if rooms.iter().any(|(room, _, _)| *room == Room::Short) {
        return Verdict::Wait;
    }
    Verdict::Reserve(
        rooms
            .iter()
            .map(|(room, _, _)| match room {
                Room::Unreachable => Grant::FailOpen,
                _ => Grant::Lease,
            })
            .collect(),
    )
}

/// Whether `amount` more fits under `limit` with `committed` already spent or held: every
/// limited unit stays within its limit, and none is already at it (a request estimated at 0 USD,
/// an unpriced model, is not let through a USD budget that is spent).
pub(super) fn fits_under(limit: Limit, committed: Amount, amount: Amount) -> bool {
    !limit.reached_by(committed)
        && limit
            .nano_usd
            .is_none_or(|l| committed.nano_usd.saturating_add(amount.nano_usd) <= l)
        && limit
            .tokens
            .is_none_or(|l| committed.tokens.saturating_add(amount.tokens) <= l)
}

/// Whether `amount` fits in `available` in every unit `limit` limits (and some is available).
pub(super) fn fits_in(limit: Limit, available: Amount, amount: Amount) -> bool {
    limit
        .nano_usd
        .is_none_or(|_| available.nano_usd > 0 && available.nano_usd >= amount.nano_usd)
        && limit
            .tokens
            .is_none_or(|_| available.tokens > 0 && available.tokens >= amount.tokens)
}

/// The ledger of a sidecar that is the only spender: exact, in memory.
#[derive(Debug, Default)]
pub struct Local {
    accounts: Mutex<Accounts<LocalAccount>>,
}

/// One Budget's period on the local ledger.
#[derive(Debug)]
struct LocalAccount {
    policy: Arc<Policy>,
    start: Timestamp,
    end: Option<Timestamp>,
    spent: Amount,
    reserved: Amount,
}

impl LocalAccount {
    fn new(policy: &Arc<Policy>, now: Timestamp) -> Self {
        let (start, end) = policy.period.bounds(now);
        Self {
            policy: policy.clone(),
            start,
            end,
            spent: Amount::default(),
            reserved: Amount::default(),
        }
    }

    /// Take the config's current version of the Budget, and start a new period when the
    /// current one ended (or the period changed). What is reserved stays: it settles into the
    /// period the request ends in.
    fn update(&mut self, policy: &Arc<Policy>, now: Timestamp) {
        if !Arc::ptr_eq(&self.policy, policy) {
            self.policy = policy.clone();
            self.end = Some(now);
        }
        if self.end.is_some_and(|end| now >= end) {
            let (start, end) = self.policy.period.bounds(now);
            if start != self.start {
                tracing::info!(budget = %self.policy.name, previous_period_start = %self.start,
                    period_start = %start, spent_usd = %gatehouse_crds::ledger::nanos_to_usd(self.spent.nano_usd),
                    spent_tokens = self.spent.tokens, "budget period ended, spend starts from zero");
                self.spent = Amount::default();
            }
            self.start = start;
            self.end = end;
        }
    }
}

impl Local {
    /// An empty local ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Accounts<LocalAccount>> {
        // Every update is a few additions: a panic cannot leave an account half-written.
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Ledger::reserve`] at `now`.
    pub(super) fn reserve_at(
        &self,
        policies: &[Arc<Policy>],
        amount: Amount,
        now: Timestamp,
    ) -> Admission {
        let mut accounts = self.lock();
        let mut rooms = Vec::with_capacity(policies.len());
        for policy in policies {
            let account = accounts
                .entry(AccountKey::of(policy))
                .or_insert_with(|| LocalAccount::new(policy, now));
            account.update(policy, now);
            let room = if !policy.hard
                || fits_under(
                    policy.limit,
                    account.spent.saturating_add(account.reserved),
                    amount,
                ) {
                Room::Fits
            } else {
                Room::Exhausted
            };
            rooms.push((room, &**policy, account.end));
        }
        match verdict(&rooms) {
            Verdict::Reserve(grants) => {
                for policy in policies {
                    if let Some(a) = accounts.get_mut(&AccountKey::of(policy)) {
                        a.reserved = a.reserved.saturating_add(amount);
                    }
                }
                Admission::Reserved(Ticket {
                    accounts: policies.iter().cloned().zip(grants).collect(),
                    amount,
                })
            }
            // Locally no account is short or unreachable: only an exhausted one refuses.
            Verdict::Exceeded(i) | Verdict::Unavailable(i) => {
                let (budget, resets) = rooms
                    .get(i)
                    .map_or((Arc::from(""), None), |(_, p, resets)| {
                        (p.name.clone(), *resets)
                    });
                Admission::Exceeded { budget, resets }
            }
            Verdict::Wait => Admission::Exceeded {
                budget: Arc::from(""),
                resets: None,
            },
        }
    }

    /// [`Ledger::settle`] at `now`.
    pub(super) fn settle_at(&self, ticket: Ticket, actual: Amount, now: Timestamp) {
        let mut accounts = self.lock();
        for (policy, _) in &ticket.accounts {
            if let Some(a) = accounts.get_mut(&AccountKey::of(policy)) {
                a.update(policy, now);
                a.reserved = a.reserved.saturating_sub(ticket.amount);
                a.spent = a.spent.saturating_add(actual);
            }
        }
    }

    /// [`Ledger::standing`] at `now`.
    pub(super) fn standing_at(
        &self,
        policies: &[Arc<Policy>],
        out: &mut Vec<Standing>,
        now: Timestamp,
    ) {
        let mut accounts = self.lock();
        for policy in policies {
            let fraction = accounts.get_mut(&AccountKey::of(policy)).map_or(0.0, |a| {
                a.update(policy, now);
                policy.limit.fraction(a.spent)
            });
            out.push(Standing { fraction });
        }
    }
}

impl Ledger for Local {
    fn mode(&self) -> &'static str {
        "local"
    }

    fn standing(&self, policies: &[Arc<Policy>], out: &mut Vec<Standing>) {
        self.standing_at(policies, out, Timestamp::now());
    }

    fn reserve(&self, policies: &[Arc<Policy>], amount: Amount, _may_wait: bool) -> Admission {
        self.reserve_at(policies, amount, Timestamp::now())
    }

    fn settle(&self, ticket: Ticket, actual: Amount) {
        self.settle_at(ticket, actual, Timestamp::now());
    }

    fn degraded(&self) -> Vec<(Arc<str>, bool)> {
        // The sidecar is its own ledger: never unreachable.
        self.lock()
            .values()
            .map(|a| (a.policy.name.clone(), false))
            .collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;

    use gatehouse_crds::config::BudgetConfig;

    use super::*;

    /// A Budget from the rendered config's JSON (camelCase), over a `limitUsd: 1` daily hard base.
    pub(crate) fn policy(name: &str, json: serde_json::Value) -> Arc<Policy> {
        let mut base =
            serde_json::json!({"limitUsd": 1.0, "period": "daily", "enforcement": "hard"});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), json.as_object()) {
            base.extend(extra.clone());
        }
        let config: BudgetConfig = serde_json::from_value(base).unwrap();
        Arc::new(Policy::build(name, &config, &HashMap::new()).unwrap())
    }

    pub(crate) fn usd(nano_usd: u64) -> Amount {
        Amount {
            nano_usd,
            tokens: 0,
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn ticket(a: Admission) -> Ticket {
        match a {
            Admission::Reserved(t) => t,
            other => panic!("expected a reservation, got {other:?}"),
        }
    }

    #[test]
    fn every_covering_budget_must_allow_and_a_refusal_reserves_nothing() {
        let ledger = Local::new();
        let now = ts("2026-11-29T12:00:00Z");
        let wide = policy("wide", serde_json::json!({"limitUsd": 10.0}));
        let narrow = policy("narrow", serde_json::json!({"limitUsd": 0.000_001}));
        let both = [wide.clone(), narrow.clone()];
        let t = ticket(ledger.reserve_at(&both, usd(600), now));
        match ledger.reserve_at(&both, usd(600), now) {
            Admission::Exceeded { budget, resets } => {
                assert_eq!(&*budget, "narrow");
                assert_eq!(resets, Some(ts("2026-11-30T00:00:00Z")));
            }
            other => panic!("{other:?}"),
        }
        // The refusal left the wide budget untouched: only the first reservation is held.
        let mut out = Vec::new();
        ledger.settle_at(t, usd(300), now);
        ledger.standing_at(&[wide.clone(), narrow.clone()], &mut out, now);
        assert!((out[0].fraction - 300.0 / 10e9).abs() < 1e-15, "{out:?}");
        assert!((out[1].fraction - 0.3).abs() < 1e-9, "{out:?}");
        // What the first request did not use came back: 700 nano-USD are left.
        let t = ticket(ledger.reserve_at(&both, usd(700), now));
        assert!(matches!(
            ledger.reserve_at(&both, usd(1), now),
            Admission::Exceeded { .. }
        ));
        ledger.settle_at(t, usd(700), now);
        // Spent to the nano: nothing more fits, not even a request priced at 0 (unpriced).
        assert!(matches!(
            ledger.reserve_at(&both, usd(0), now),
            Admission::Exceeded { .. }
        ));
        // A soft budget never refuses.
        let soft = policy(
            "soft",
            serde_json::json!({"enforcement": "soft", "limitUsd": 0.000_000_001}),
        );
        for _ in 0..3 {
            let t = ticket(ledger.reserve_at(std::slice::from_ref(&soft), usd(5), now));
            ledger.settle_at(t, usd(5), now);
        }
    }

    #[test]
    fn a_token_limit_counts_tokens_and_a_usd_limit_money() {
        let ledger = Local::new();
        let now = ts("2026-11-29T12:00:00Z");
        let both = policy(
            "both",
            serde_json::json!({"limitUsd": 1.0, "limitTokens": 100}),
        );
        let amount = Amount {
            nano_usd: 1,
            tokens: 60,
        };
        let t = ticket(ledger.reserve_at(std::slice::from_ref(&both), amount, now));
        assert!(matches!(
            ledger.reserve_at(std::slice::from_ref(&both), amount, now),
            Admission::Exceeded { .. }
        ));
        ledger.settle_at(
            t,
            Amount {
                nano_usd: 1,
                tokens: 10,
            },
            now,
        );
        ticket(ledger.reserve_at(std::slice::from_ref(&both), amount, now));
    }

    #[test]
    fn a_new_period_starts_from_zero_and_reservations_in_flight_carry_over() {
        let ledger = Local::new();
        let p = policy(
            "minute",
            serde_json::json!({"period": "custom", "periodSeconds": 60, "limitUsd": 0.000_001}),
        );
        let ps = std::slice::from_ref(&p);
        let t0 = ts("2026-11-29T12:00:10Z");
        let spent = ticket(ledger.reserve_at(ps, usd(600), t0));
        ledger.settle_at(spent, usd(600), t0);
        let held = ticket(ledger.reserve_at(ps, usd(400), t0));
        match ledger.reserve_at(ps, usd(1), t0) {
            Admission::Exceeded { resets, .. } => {
                assert_eq!(resets, Some(ts("2026-11-29T12:01:00Z")));
            }
            other => panic!("{other:?}"),
        }
        // The next minute: spend is back to zero, the 400 still in flight are held.
        let t1 = ts("2026-11-29T12:01:00Z");
        let mut out = Vec::new();
        ledger.standing_at(ps, &mut out, t1);
        assert_eq!(out[0].fraction, 0.0);
        ticket(ledger.reserve_at(ps, usd(600), t1));
        assert!(matches!(
            ledger.reserve_at(ps, usd(1), t1),
            Admission::Exceeded { .. }
        ));
        // The held request ends in the new period and is spent there.
        ledger.settle_at(held, usd(100), t1);
        out.clear();
        ledger.standing_at(ps, &mut out, t1);
        assert!((out[0].fraction - 0.1).abs() < 1e-9, "{out:?}");
    }

    proptest::proptest! {
        /// However reservations and settlements interleave, when no request costs more than
        /// its estimate the spend never passes the limit.
        #[test]
        fn spend_stays_within_the_limit(
            ops in proptest::collection::vec((1u64..400, 0u64..=100, proptest::bool::ANY), 1..200)
        ) {
            let ledger = Local::new();
            let now = ts("2026-11-29T12:00:00Z");
            let p = policy("b", serde_json::json!({"limitUsd": 0.000_002}));
            let ps = std::slice::from_ref(&p);
            let mut open: Vec<(Ticket, u64)> = Vec::new();
            let mut spent = 0u64;
            for (estimate, percent, settle_first) in ops {
                if settle_first && let Some((t, actual)) = open.pop() {
                    spent += actual;
                    ledger.settle_at(t, usd(actual), now);
                }
                if let Admission::Reserved(t) = ledger.reserve_at(ps, usd(estimate), now) {
                    open.push((t, estimate * percent / 100));
                }
            }
            for (t, actual) in open {
                spent += actual;
                ledger.settle_at(t, usd(actual), now);
            }
            proptest::prop_assert!(spent <= 2_000, "spent {spent}");
        }
    }

    #[test]
    fn the_verdict_refuses_first_waits_last() {
        let hard = policy("hard", serde_json::json!({}));
        let closed = policy("closed", serde_json::json!({"failMode": "closed"}));
        let open = policy("open", serde_json::json!({}));
        let early = Some(ts("2026-11-30T00:00:00Z"));
        let late = Some(ts("2026-12-01T00:00:00Z"));
        assert_eq!(
            verdict(&[
                (Room::Short, &hard, None),
                (Room::Exhausted, &hard, early),
                (Room::Unreachable, &closed, None),
                (Room::Exhausted, &hard, late),
            ]),
            Verdict::Exceeded(3),
            "the budget that resets last names the refusal"
        );
        assert_eq!(
            verdict(&[
                (Room::Short, &hard, None),
                (Room::Unreachable, &closed, None)
            ]),
            Verdict::Unavailable(1)
        );
        assert_eq!(
            verdict(&[(Room::Fits, &hard, None), (Room::Short, &hard, None)]),
            Verdict::Wait
        );
        assert_eq!(
            verdict(&[(Room::Fits, &hard, None), (Room::Unreachable, &open, None)]),
            Verdict::Reserve(vec![Grant::Lease, Grant::FailOpen])
        );
    }
}
