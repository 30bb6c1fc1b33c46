//! One account's book: what every sidecar instance has spent and been granted, per period, and
//! the grant policy. Pure: no I/O and no clock of its own (`now` is passed in), so the rules
//! are unit- and property-tested here and the rest of the ledger only stores and serves them.
//!
//! Every instance reports cumulative `spent` and `granted`; a report is applied as
//! `max(old, new)`, so a repeated, late or reordered report counts once. An instance is
//! committed for `max(granted, spent)`; the account's committed total is the sum over its
//! instances, and the ledger grants only from `limit - committed`, so grants never exceed the
//! limit. Spend beyond a grant (an estimate that fell short, a fail-open sidecar) is counted
//! as reported and is the only way the total can pass the limit.

use std::collections::BTreeMap;

use gatehouse_crds::ledger::{AccountSync, Amount, Limit, Period};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// How far ahead of the ledger's clock a sidecar's period may start and still be taken as the
/// current one (another leader's clock ran ahead and already rolled over).
const MAX_SKEW: SignedDuration = SignedDuration::from_secs(300);

/// Timing rules of the book, from the operator's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a lease is valid after the sidecar sent the sync that returned it.
    pub lease_ttl_ms: u64,
    /// Silence after which an instance's unspent grant is reclaimed: the lease TTL plus a margin
    /// for clock-rate differences, so the sidecar's own lease has surely expired by then.
    pub reclaim_after_ms: u64,
    /// How long an instance that reported serving without a lease stays listed as degraded.
    pub degraded_hold_ms: u64,
    /// Instances kept per period; past it, the longest-silent reclaimed ones are folded into
    /// `retired` (their spend stays counted) to bound the stored state.
    pub max_instances: usize,
}

impl Policy {
    /// The policy for a lease TTL: reclaim after the TTL plus 2 s and a tenth of it.
    pub fn for_ttl(lease_ttl_ms: u64) -> Self {
        Self {
            lease_ttl_ms,
            reclaim_after_ms: lease_ttl_ms + 2_000 + lease_ttl_ms / 10,
            degraded_hold_ms: 300_000,
            max_instances: 4_000,
        }
    }
}

/// `Amount` stored as `[nanoUsd, tokens]`: the book holds thousands of them.
mod pair {
    use gatehouse_crds::ledger::Amount;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(a: &Amount, s: S) -> Result<S::Ok, S::Error> {
        [a.nano_usd, a.tokens].serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        let [nano_usd, tokens] = <[u64; 2]>::deserialize(d)?;
        Ok(Amount { nano_usd, tokens })
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One sidecar process in one period.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Instance {
    /// Cumulative settled spend it reported.
    #[serde(rename = "s", with = "pair")]
    pub spent: Amount,
    /// Cumulative grant.
    #[serde(rename = "g", with = "pair")]
    pub granted: Amount,
    /// When the ledger last heard from it, in ms since the epoch.
    #[serde(rename = "t", default)]
    pub seen_ms: i64,
    /// Its unspent grant was reclaimed in this period: from then on the `granted` it reports
    /// (a number it heard before the reclaim) is ignored, or the reclaimed grant would return.
    #[serde(rename = "r", default, skip_serializing_if = "is_false")]
    pub reclaimed: bool,
    /// When it last reported serving without a valid lease (fail-open), in ms since the epoch.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub degraded_ms: Option<i64>,
}

impl Instance {
    /// What it holds against the limit: its grant, or its spend where that is higher.
    pub fn committed(&self) -> Amount {
        self.granted.max(self.spent)
    }
}

/// One period of an account.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PeriodBook {
    /// Start of the period.
    pub start: Timestamp,
    /// End of the period; `None` for a period that never ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Timestamp>,
    /// Instances by id (`<pod>/<hex>`).
    #[serde(default)]
    pub instances: BTreeMap<String, Instance>,
    /// Spend of instances dropped from `instances` (see [`Policy::max_instances`]).
    #[serde(default, with = "pair")]
    pub retired: Amount,
    /// Thresholds (percent of the limit; 100 for the limit itself) whose Warning event has been
    /// recorded in this period. Persisted before the event is published, so a leader change
    /// never repeats one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notified: Vec<u8>,
}

impl PeriodBook {
    /// An empty period.
    pub fn new(start: Timestamp, end: Option<Timestamp>) -> Self {
        Self {
            start,
            end,
            instances: BTreeMap::new(),
            retired: Amount::default(),
            notified: Vec::new(),
        }
    }

    /// Settled spend of every instance.
    pub fn spent(&self) -> Amount {
        self.instances
            .values()
            .fold(self.retired, |sum, i| sum.saturating_add(i.spent))
    }

    /// Spend plus unspent grants of every instance.
    pub fn committed(&self) -> Amount {
        self.instances
            .values()
            .fold(self.retired, |sum, i| sum.saturating_add(i.committed()))
    }

    /// Instances heard from within the lease TTL.
    pub fn active(&self, now_ms: i64, policy: &Policy) -> usize {
        self.instances
            .values()
            .filter(|i| silence(now_ms, i.seen_ms) <= policy.lease_ttl_ms)
            .count()
    }

    /// Apply one instance's cumulative report. Returns whether the book changed.
    fn report(&mut self, id: &str, report: &AccountSync, now_ms: i64) -> bool {
        let mut changed = false;
        let instance = self.instances.entry(id.to_string()).or_insert_with(|| {
            changed = true;
            Instance::default()
        });
        let spent = instance.spent.max(report.spent);
        changed |= spent != instance.spent;
        instance.spent = spent;
        if !instance.reclaimed {
            // The ledger persists every grant before answering, so a sidecar cannot have heard
            // more than this; a higher number means the stored state was lost, and counting it
            // keeps that lease committed.
            let granted = instance.granted.max(report.granted);
            changed |= granted != instance.granted;
            instance.granted = granted;
        }
        if report.degraded {
            instance.degraded_ms = Some(now_ms);
            changed = true;
        }
        changed
    }
}

fn silence(now_ms: i64, seen_ms: i64) -> u64 {
    u64::try_from(now_ms.saturating_sub(seen_ms)).unwrap_or(0)
}

/// An account's book: the current period and the one before it (reports for it that arrive
/// after the rollover still count there).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AccountBook {
    /// The current period.
    pub current: PeriodBook,
    /// The period before, once there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PeriodBook>,
}

/// What applying one sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Whether the book changed (and must be persisted before answering).
    pub changed: bool,
    /// The report named a period the ledger no longer keeps: its amounts were not counted.
    pub stale: bool,
    /// The instance's cumulative grant in the current period.
    pub granted: Amount,
}

/// The state of an account for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Start of the current period.
    pub period_start: Timestamp,
    /// Its end.
    pub period_end: Option<Timestamp>,
    /// Spent in it.
    pub spent: Amount,
    /// Spent plus unspent grants.
    pub committed: Amount,
    /// Instances heard from within the lease TTL.
    pub active: usize,
    /// Instances that recently served without a lease, sorted.
    pub degraded: Vec<String>,
    /// The previous period: start, end and spend.
    pub previous: Option<(Timestamp, Option<Timestamp>, Amount)>,
    /// Thresholds already announced in the current period.
    pub notified: Vec<u8>,
}

impl AccountBook {
    /// A fresh book whose current period contains `now`.
    pub fn new(period: Period, now: Timestamp) -> Self {
        let (start, end) = period.bounds(now);
        Self {
            current: PeriodBook::new(start, end),
            previous: None,
        }
    }

    /// Move to the period containing `now` if the current one is over (or the Budget's period
    /// changed). The period just ended becomes `previous`. Returns whether anything moved.
    pub fn roll(&mut self, period: Period, now: Timestamp) -> bool {
        let (start, end) = period.bounds(now);
        self.roll_to(start, end, period)
    }

    fn roll_to(&mut self, start: Timestamp, end: Option<Timestamp>, period: Period) -> bool {
        if start == self.current.start && end == self.current.end {
            return false;
        }
        if start < self.current.start {
            // The clock went back (another leader's clock is behind the one that rolled over):
            // keep the later period rather than reopen an earlier one.
            return false;
        }
        let old = std::mem::replace(&mut self.current, PeriodBook::new(start, end));
        let contiguous = old.end == Some(start);
        self.previous = if contiguous || !old.instances.is_empty() || !old.retired.is_zero() {
            // The period just before, or the last one with activity (the Budget's period was
            // changed, or nothing was reported for whole periods in between).
            Some(old)
        } else {
            let before = start
                .checked_sub(SignedDuration::from_secs(1))
                .unwrap_or(start);
            let (s, e) = period.bounds(before);
            Some(PeriodBook::new(s, e))
        };
        true
    }

    /// Apply one instance's sync of this account at `now`: its report (into the period it
    /// names), then a grant from what is left if it wants more.
    pub fn apply(
        &mut self,
        now: Timestamp,
        id: &str,
        report: &AccountSync,
        limit: Limit,
        period: Period,
        policy: &Policy,
    ) -> Applied {
        let now_ms = now.as_millisecond();
        let mut changed = self.roll(period, now);
        // A sidecar only knows periods a ledger told it. One that starts after ours came from a
        // leader whose clock ran ahead; take it as current rather than count the report nowhere.
        if let Some(ps) = report.period_start
            && ps > self.current.start
            && now.checked_add(MAX_SKEW).is_ok_and(|limit| ps <= limit)
        {
            let (start, end) = period.bounds(ps);
            if start == ps {
                changed |= self.roll_to(start, end, period);
            }
        }
        let target = match report.period_start {
            None => Some(&mut self.current),
            Some(ps) if ps == self.current.start => Some(&mut self.current),
            Some(ps) => self.previous.as_mut().filter(|p| p.start == ps),
        };
        let stale = match target {
            Some(book) => {
                changed |= book.report(id, report, now_ms);
                false
            }
            None => !(report.spent.is_zero() && report.granted.is_zero()),
        };

        let committed = self.current.committed();
        let mut active = self.current.active(now_ms, policy);
        let instance = self
            .current
            .instances
            .entry(id.to_string())
            .or_insert_with(|| {
                changed = true;
                Instance::default()
            });
        if silence(now_ms, instance.seen_ms) > policy.lease_ttl_ms {
            active += 1;
        }
        // Not a change to persist: after a leader change every instance gets a fresh window.
        instance.seen_ms = now_ms;
        let grant = grant(limit, committed, active, report.want);
        if !grant.is_zero() {
            instance.granted = instance.committed().saturating_add(grant);
            changed = true;
        }
        Applied {
            changed,
            stale,
            granted: instance.granted,
        }
    }

    /// Reclaim the unspent grant of every instance silent for longer than
    /// [`Policy::reclaim_after_ms`] (its own lease has expired by then), and retire the
    /// longest-silent instances past [`Policy::max_instances`]. Returns how many were reclaimed.
    pub fn reclaim(&mut self, now: Timestamp, policy: &Policy) -> usize {
        let now_ms = now.as_millisecond();
        let mut reclaimed = 0;
        for i in self.current.instances.values_mut() {
            let unspent = i.granted.saturating_sub(i.spent);
            if !unspent.is_zero() && silence(now_ms, i.seen_ms) > policy.reclaim_after_ms {
                i.granted = i.granted.saturating_sub(unspent);
                i.reclaimed = true;
                reclaimed += 1;
            }
        }
        let book = &mut self.current;
        if book.instances.len() > policy.max_instances {
            let mut silent: Vec<(i64, String)> = book
                .instances
                .iter()
                .filter(|(_, i)| {
                    silence(now_ms, i.seen_ms) > policy.reclaim_after_ms
                        && i.granted.saturating_sub(i.spent).is_zero()
                })
                .map(|(id, i)| (i.seen_ms, id.clone()))
                .collect();
            silent.sort();
            let excess = book.instances.len() - policy.max_instances;
            for (_, id) in silent.into_iter().take(excess) {
                if let Some(i) = book.instances.remove(&id) {
                    book.retired = book.retired.saturating_add(i.spent);
                }
            }
        }
        reclaimed
    }

    /// The account as status shows it at `now` (rolled over first if its period has ended,
    /// without changing the book).
    pub fn view(&self, now: Timestamp, period: Period, policy: &Policy) -> View {
        let mut rolled;
        let book = if period.bounds(now).0 == self.current.start {
            self
        } else {
            rolled = self.clone();
            rolled.roll(period, now);
            &rolled
        };
        let now_ms = now.as_millisecond();
        let current = &book.current;
        let mut degraded: Vec<String> = current
            .instances
            .iter()
            .filter(|(_, i)| {
                i.degraded_ms
                    .is_some_and(|d| silence(now_ms, d) <= policy.degraded_hold_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        degraded.sort();
        View {
            period_start: current.start,
            period_end: current.end,
            spent: current.spent(),
            committed: current.committed(),
            active: current.active(now_ms, policy),
            degraded,
            previous: book.previous.as_ref().map(|p| (p.start, p.end, p.spent())),
            notified: current.notified.clone(),
        }
    }
}

/// How much of `want` to grant, given the limit, what is committed and how many instances
/// are active (the requester included).
///
/// Per limited unit, at most a fair share of what is left: `left / (active + 1)` (one share is
/// kept back for a newcomer), but at least a thousandth of the limit while that much is left,
/// so the last of a budget is handed out instead of approached forever. Leases therefore
/// shrink as the budget nears its limit, and with it what a sidecar can spend before it must
/// ask again. An unlimited unit grants what is wanted. When a limited unit that is wanted has
/// nothing left, nothing is granted in any unit: a sidecar cannot use half a lease.
pub fn grant(limit: Limit, committed: Amount, active: usize, want: Amount) -> Amount {
    let share = |limit: Option<u64>, committed: u64, want: u64| -> Option<u64> {
        if want == 0 {
            return Some(0);
        }
        let Some(limit) = limit else {
            return Some(want);
        };
        let left = limit.saturating_sub(committed);
        if left == 0 {
            return None;
        }
        let fair = left / (active as u64).saturating_add(1).max(2);
        let floor = (limit / 1000).max(1).min(left);
        Some(want.min(fair.max(floor)))
    };
    match (
        share(limit.nano_usd, committed.nano_usd, want.nano_usd),
        share(limit.tokens, committed.tokens, want.tokens),
    ) {
        (Some(nano_usd), Some(tokens)) => Amount { nano_usd, tokens },
        _ => Amount::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn usd(n: u64) -> Amount {
        Amount {
            nano_usd: n,
            tokens: 0,
        }
    }

    fn limit_usd(n: u64) -> Limit {
        Limit {
            nano_usd: Some(n),
            tokens: None,
        }
    }

    fn sync(period_start: Option<Timestamp>, spent: u64, granted: u64, want: u64) -> AccountSync {
        AccountSync {
            name: "b".into(),
            period_start,
            spent: usd(spent),
            granted: usd(granted),
            want: usd(want),
            ..AccountSync::default()
        }
    }

    const POLICY: Policy = Policy {
        lease_ttl_ms: 30_000,
        reclaim_after_ms: 35_000,
        degraded_hold_ms: 300_000,
        max_instances: 4_000,
    };

    #[test]
    fn grants_shrink_as_the_budget_nears_its_limit() {
        let limit = limit_usd(1_000_000);
        let want = usd(1_000_000);
        // Alone: half of what is left (one share kept back for a newcomer).
        assert_eq!(grant(limit, usd(0), 1, want), usd(500_000));
        // Ten active: a tenth-and-one of what is left.
        assert_eq!(grant(limit, usd(0), 10, want), usd(90_909));
        assert_eq!(grant(limit, usd(900_000), 10, want), usd(9_090));
        // Near the end the thousandth-of-the-limit floor hands out the rest.
        assert_eq!(grant(limit, usd(999_500), 10, want), usd(500));
        assert_eq!(grant(limit, usd(1_000_000), 10, want), usd(0));
        // Never more than wanted.
        assert_eq!(grant(limit, usd(0), 1, usd(7)), usd(7));
    }

    #[test]
    fn an_unlimited_unit_grants_what_is_wanted_and_an_exhausted_one_blocks_both() {
        let limit = Limit {
            nano_usd: None,
            tokens: Some(100),
        };
        let want = Amount {
            nano_usd: 5_000,
            tokens: 10,
        };
        assert_eq!(
            grant(limit, Amount::default(), 1, want),
            Amount {
                nano_usd: 5_000,
                tokens: 10
            }
        );
        let spent = Amount {
            nano_usd: 0,
            tokens: 100,
        };
        assert_eq!(grant(limit, spent, 1, want), Amount::default());
    }

    #[test]
    fn a_repeated_report_counts_once() {
        let now = ts("2026-11-29T21:00:00Z");
        let mut book = AccountBook::new(Period::Daily, now);
        let start = book.current.start;
        let limit = limit_usd(1_000);
        let first = book.apply(
            now,
            "a/1",
            &sync(None, 0, 0, 100),
            limit,
            Period::Daily,
            &POLICY,
        );
        assert!(first.changed);
        assert_eq!(first.granted, usd(100));
        let report = sync(Some(start), 60, 100, 0);
        assert!(
            book.apply(now, "a/1", &report, limit, Period::Daily, &POLICY)
                .changed
        );
        let again = book.apply(now, "a/1", &report, limit, Period::Daily, &POLICY);
        assert!(!again.changed, "the same report again changes nothing");
        // An older report arriving late changes nothing either.
        let late = book.apply(
            now,
            "a/1",
            &sync(Some(start), 20, 100, 0),
            limit,
            Period::Daily,
            &POLICY,
        );
        assert!(!late.changed);
        assert_eq!(book.current.spent(), usd(60));
        assert_eq!(book.current.committed(), usd(100));
    }

    #[test]
    fn a_silent_instance_is_reclaimed_and_its_old_grant_does_not_come_back() {
        let t0 = ts("2026-11-29T21:00:00Z");
        let mut book = AccountBook::new(Period::Daily, t0);
        let start = book.current.start;
        let limit = limit_usd(1_000);
        book.apply(
            t0,
            "a/1",
            &sync(None, 0, 0, 400),
            limit,
            Period::Daily,
            &POLICY,
        );
        book.apply(
            t0,
            "a/1",
            &sync(Some(start), 100, 400, 0),
            limit,
            Period::Daily,
            &POLICY,
        );
        assert_eq!(book.current.committed(), usd(400));
        // Within the reclaim time nothing moves.
        assert_eq!(book.reclaim(ts("2026-11-29T21:00:30Z"), &POLICY), 0);
        // Past it, the unspent 300 go back.
        let t1 = ts("2026-11-29T21:00:40Z");
        assert_eq!(book.reclaim(t1, &POLICY), 1);
        assert_eq!(book.current.committed(), usd(100));
        // The instance comes back reporting the grant it heard before: not counted again; it
        // gets a fresh grant on top of its spend.
        let back = book.apply(
            t1,
            "a/1",
            &sync(Some(start), 150, 400, 50),
            limit,
            Period::Daily,
            &POLICY,
        );
        assert_eq!(back.granted, usd(200));
        assert_eq!(book.current.committed(), usd(200));
    }

    #[test]
    fn the_period_rolls_over_and_late_reports_count_in_the_previous_one() {
        let t0 = ts("2026-11-29T23:59:50Z");
        let mut book = AccountBook::new(Period::Daily, t0);
        let day1 = book.current.start;
        let limit = limit_usd(1_000);
        book.apply(
            t0,
            "a/1",
            &sync(None, 0, 0, 300),
            limit,
            Period::Daily,
            &POLICY,
        );
        book.apply(
            t0,
            "a/1",
            &sync(Some(day1), 100, 300, 0),
            limit,
            Period::Daily,
            &POLICY,
        );
        let t1 = ts("2026-11-30T00:00:05Z");
        // A late report for day 1 and a want for day 2 in one sync.
        let applied = book.apply(
            t1,
            "a/1",
            &sync(Some(day1), 250, 300, 100),
            limit,
            Period::Daily,
            &POLICY,
        );
        assert!(applied.changed && !applied.stale);
        assert_eq!(applied.granted, usd(100));
        assert_eq!(book.current.start, ts("2026-11-30T00:00:00Z"));
        let previous = book.previous.as_ref().unwrap();
        assert_eq!((previous.start, previous.spent()), (day1, usd(250)));
        assert_eq!(book.current.spent(), usd(0));
        // Two periods late: counted nowhere, said so.
        let t2 = ts("2026-12-01T00:00:05Z");
        let stale = book.apply(
            t2,
            "a/1",
            &sync(Some(day1), 260, 300, 0),
            limit,
            Period::Daily,
            &POLICY,
        );
        assert!(stale.stale);
        let view = book.view(t2, Period::Daily, &POLICY);
        assert_eq!(view.previous.map(|p| p.2), Some(usd(0)));
    }

    #[test]
    fn the_view_rolls_over_without_a_sync() {
        let t0 = ts("2026-11-29T10:59:00Z");
        let mut book = AccountBook::new(Period::Hourly, t0);
        book.apply(
            t0,
            "a/1",
            &sync(None, 40, 40, 0),
            limit_usd(100),
            Period::Hourly,
            &POLICY,
        );
        let v = book.view(ts("2026-11-29T11:00:01Z"), Period::Hourly, &POLICY);
        assert_eq!(v.period_start, ts("2026-11-29T11:00:00Z"));
        assert_eq!(v.spent, usd(0));
        assert_eq!(
            v.previous,
            Some((
                ts("2026-11-29T10:00:00Z"),
                Some(ts("2026-11-29T11:00:00Z")),
                usd(40)
            ))
        );
        // Three idle hours later the previous period is the hour just before, with nothing.
        let mut idle = book.clone();
        idle.roll(Period::Hourly, ts("2026-11-29T11:00:01Z"));
        idle.roll(Period::Hourly, ts("2026-11-29T14:30:00Z"));
        let p = idle.previous.unwrap();
        assert_eq!((p.start, p.spent()), (ts("2026-11-29T13:00:00Z"), usd(0)));
    }

    #[test]
    fn a_period_from_a_clock_ahead_is_taken_as_current() {
        let t0 = ts("2026-11-29T23:59:58Z");
        let mut book = AccountBook::new(Period::Daily, t0);
        let next = ts("2026-11-30T00:00:00Z");
        let applied = book.apply(
            t0,
            "a/1",
            &sync(Some(next), 5, 5, 0),
            limit_usd(100),
            Period::Daily,
            &POLICY,
        );
        assert!(!applied.stale);
        assert_eq!(book.current.start, next);
        assert_eq!(book.current.spent(), usd(5));
        // A clock behind does not reopen the earlier day.
        assert!(!book.roll(Period::Daily, t0));
        assert_eq!(book.current.start, next);
    }

    #[test]
    fn degraded_instances_are_listed_for_a_while() {
        let t0 = ts("2026-11-29T10:00:00Z");
        let mut book = AccountBook::new(Period::Daily, t0);
        let mut report = sync(None, 1, 0, 0);
        report.degraded = true;
        book.apply(t0, "a/1", &report, limit_usd(100), Period::Daily, &POLICY);
        book.apply(
            t0,
            "b/2",
            &sync(None, 1, 0, 0),
            limit_usd(100),
            Period::Daily,
            &POLICY,
        );
        let v = book.view(t0, Period::Daily, &POLICY);
        assert_eq!(
            (v.degraded.as_slice(), v.active),
            (&["a/1".to_string()][..], 2)
        );
        let later = book.view(ts("2026-11-29T10:06:00Z"), Period::Daily, &POLICY);
        assert!(later.degraded.is_empty());
        assert_eq!(later.active, 0);
    }

    #[test]
    fn the_book_round_trips_through_json_compactly() {
        let t0 = ts("2026-11-29T10:00:00Z");
        let mut book = AccountBook::new(Period::Daily, t0);
        book.apply(
            t0,
            "web-7d9f/0a1b2c3d",
            &sync(None, 12, 0, 30),
            limit_usd(100),
            Period::Daily,
            &POLICY,
        );
        book.current.notified.push(80);
        let json = serde_json::to_string(&book).unwrap();
        assert!(
            json.contains(r#""web-7d9f/0a1b2c3d":{"s":[12,0],"g":[42,0],"t":"#),
            "{json}"
        );
        let back: AccountBook = serde_json::from_str(&json).unwrap();
        assert_eq!(back, book);
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Instance `i` syncs: reports what it has, wants `want`.
        Sync { i: usize, want: u64 },
        /// Instance `i` spends up to `amount` of its lease.
        Spend { i: usize, amount: u64 },
        /// The same sync of instance `i` again (a retry or duplicate).
        Repeat { i: usize },
        /// Time passes.
        Wait { ms: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..8usize, 0..400u64).prop_map(|(i, want)| Step::Sync { i, want }),
            (0..8usize, 0..400u64).prop_map(|(i, amount)| Step::Spend { i, amount }),
            (0..8usize).prop_map(|i| Step::Repeat { i }),
            (0..40_000u64).prop_map(|ms| Step::Wait { ms }),
        ]
    }

    /// A well-behaved sidecar: spends only within what it was granted and while its lease is
    /// valid (the TTL after its last sync), reports cumulatively.
    #[derive(Debug, Clone, Default)]
    struct Sidecar {
        spent: u64,
        reported: u64,
        granted: u64,
        synced_at: Option<Timestamp>,
        last: Option<AccountSync>,
    }

    proptest! {
        /// Whatever the interleaving of syncs, spends, duplicates and silences (with reclaims):
        /// grants never take the committed total past the limit; the ledger's spend is exactly
        /// what the sidecars reported, once; and the total passes the limit by at most what
        /// reclaimed sidecars had spent but not yet reported when their grant was reclaimed
        /// (the stated bound for a sidecar cut off from the ledger).
        #[test]
        fn grants_never_exceed_the_limit(steps in prop::collection::vec(step(), 1..200)) {
            let limit = limit_usd(1_000);
            let mut now = ts("2026-11-29T10:00:00Z");
            let mut book = AccountBook::new(Period::None, now);
            let start = book.current.start;
            let mut sidecars = vec![Sidecar::default(); 8];
            let mut bound = 0;
            for s in steps {
                match s {
                    Step::Sync { i, want } => {
                        let sc = &mut sidecars[i];
                        let report = sync(Some(start), sc.spent, sc.granted, want);
                        let applied = book.apply(now, &format!("p/{i}"), &report, limit, Period::None, &POLICY);
                        sc.granted = applied.granted.nano_usd;
                        sc.reported = sc.spent;
                        sc.synced_at = Some(now);
                        sc.last = Some(report);
                    }
                    Step::Spend { i, amount } => {
                        let sc = &mut sidecars[i];
                        let valid = sc.synced_at.is_some_and(|t| {
                            now.duration_since(t).as_millis() <= i128::from(POLICY.lease_ttl_ms)
                        });
                        if valid {
                            sc.spent += amount.min(sc.granted.saturating_sub(sc.spent));
                        }
                    }
                    Step::Repeat { i } => {
                        if let Some(report) = sidecars[i].last.clone() {
                            let before = book.current.spent();
                            let mut again = report;
                            again.want = usd(0);
                            book.apply(now, &format!("p/{i}"), &again, limit, Period::None, &POLICY);
                            prop_assert_eq!(book.current.spent(), before);
                        }
                    }
                    Step::Wait { ms } => {
                        now = now.checked_add(SignedDuration::from_millis(ms as i64)).unwrap();
                        let before: Vec<u64> = (0..8)
                            .map(|i| book.current.instances.get(&format!("p/{i}")).map_or(0, |x| x.granted.nano_usd))
                            .collect();
                        book.reclaim(now, &POLICY);
                        for (i, sc) in sidecars.iter().enumerate() {
                            let after = book.current.instances.get(&format!("p/{i}")).map_or(0, |x| x.granted.nano_usd);
                            if after < before[i] {
                                bound += sc.spent - sc.reported;
                            }
                        }
                    }
                }
                prop_assert!(book.current.committed().nano_usd <= 1_000 + bound);
            }
            // Everything reported is counted, once.
            for (i, sc) in sidecars.iter().enumerate() {
                let report = sync(Some(start), sc.spent, sc.granted, 0);
                book.apply(now, &format!("p/{i}"), &report, limit, Period::None, &POLICY);
            }
            let total: u64 = sidecars.iter().map(|s| s.spent).sum();
            prop_assert_eq!(book.current.spent().nano_usd, total);
            prop_assert!(total <= 1_000 + bound, "total {} bound {}", total, bound);
        }
    }
}
