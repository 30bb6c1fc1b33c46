//! What a Budget's status and events say, from a view of the ledger's books: spend, what is
//! left, the period, the previous period, sidecars, and the `Exceeded`, `ThresholdReached`,
//! `Downgraded` and `Degraded` conditions; the Warning events due (one per threshold per period,
//! one when the limit is reached). Pure: [`crate::ledger::reporter`] writes them.
//!
//! Status is written with server-side apply under its own field manager, [`FIELD_MANAGER`], so
//! the ledger owns exactly these fields and the reconcile keeps `Ready` and `observedGeneration`.

use gatehouse_crds::conditions::{
    DEGRADED, DOWNGRADED, EXCEEDED, THRESHOLD_REACHED, set_condition,
};
use gatehouse_crds::config::BudgetConfig;
use gatehouse_crds::ledger::{Amount, Limit, nanos_to_usd};
use gatehouse_crds::{BudgetStatus, budget::BudgetPeriodTotal};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType};

use crate::ledger::account::View;

/// Field manager of the ledger's status fields.
pub const FIELD_MANAGER: &str = "gatehouse-ledger";
/// At most this many degraded sidecars are named in status.
const DEGRADED_LISTED: usize = 20;

/// Reason of the event (and of `Exceeded=True`) when nothing is left to lease.
pub const REASON_LIMIT: &str = "LimitReached";
/// Reason of a threshold's event (and of `ThresholdReached=True`).
pub const REASON_THRESHOLD: &str = "ThresholdReached";

/// Money as a decimal USD string, with at least two decimals: `12.50`, `0.000123`.
pub fn usd(nanos: u64) -> String {
    let full = nanos_to_usd(nanos);
    let trimmed = full.trim_end_matches('0');
    let (int, frac) = trimmed.split_once('.').unwrap_or((trimmed, ""));
    format!("{int}.{frac:0<2}")
}

fn tokens(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// "12.50 of 50.00 USD", "1200 of 5000 tokens", or both joined.
fn of_limit(amount: Amount, limit: Limit) -> String {
    let mut parts = Vec::new();
    if let Some(l) = limit.nano_usd {
        parts.push(format!("{} of {} USD", usd(amount.nano_usd), usd(l)));
    }
    if let Some(l) = limit.tokens {
        parts.push(format!("{} of {l} tokens", amount.tokens));
    }
    parts.join(" and ")
}

/// "12.50 USD", "300 tokens", or both, in the units the limit has.
fn amount(amount: Amount, limit: Limit) -> String {
    let mut parts = Vec::new();
    if limit.nano_usd.is_some() {
        parts.push(format!("{} USD", usd(amount.nano_usd)));
    }
    if limit.tokens.is_some() {
        parts.push(format!("{} tokens", amount.tokens));
    }
    parts.join(" and ")
}

fn percent(fraction: f64) -> u64 {
    // A display value: floor, so 79.99% does not read as 80%.
    (fraction * 100.0).floor().max(0.0) as u64
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn condition(
    type_: &str,
    on: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
    live: &[Condition],
) -> Condition {
    let fresh = Condition {
        type_: type_.to_string(),
        status: if on { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    let mut conditions = live.to_vec();
    set_condition(&mut conditions, fresh.clone());
    conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .unwrap_or(fresh)
}

/// The status fields the ledger owns, from a view of the book (conditions keep their live
/// transition time when their status did not flip).
pub fn desired_status(
    view: &View,
    config: &BudgetConfig,
    generation: Option<i64>,
    live: &[Condition],
    now: &Time,
) -> BudgetStatus {
    let limit = config.limit();
    let left = |l: Option<u64>, spent: u64| l.map(|l| l.saturating_sub(spent));
    let remaining = match (
        left(limit.nano_usd, view.spent.nano_usd),
        left(limit.tokens, view.spent.tokens),
    ) {
        (Some(n), _) => Some(usd(n)),
        (None, Some(t)) => Some(t.to_string()),
        (None, None) => None,
    };
    let fraction = limit.fraction(view.spent);
    let end = view
        .period_end
        .map_or_else(|| "never".to_string(), |e| e.to_string());
    let hard = config.enforcement != "soft";

    let mut conditions = Vec::new();
    let exceeded = limit.reached_by(view.committed);
    let message = if exceeded {
        let leased = view.committed.saturating_sub(view.spent);
        let then = if hard {
            "requests that do not fit what a sidecar still holds are refused"
        } else {
            "requests are served with a warning (soft)"
        };
        format!(
            "nothing left to lease: spent {}, and {} is leased to sidecars; {then} until the \
             period ends ({end})",
            of_limit(view.spent, limit),
            amount(leased, limit),
        )
    } else {
        format!(
            "spent {} ({}%) in the period ending {end}",
            of_limit(view.spent, limit),
            percent(fraction)
        )
    };
    conditions.push(condition(
        EXCEEDED,
        exceeded,
        if exceeded {
            REASON_LIMIT
        } else {
            "WithinLimit"
        },
        message,
        generation,
        now,
        live,
    ));
    if !config.thresholds.is_empty() {
        let passed: Vec<String> = config
            .thresholds
            .iter()
            .filter(|t| fraction * 100.0 >= f64::from(**t))
            .map(|t| format!("{t}%"))
            .collect();
        let on = !passed.is_empty();
        let message = if on {
            format!(
                "spent {}% of the limit: past {}",
                percent(fraction),
                passed.join(", ")
            )
        } else {
            format!("spent {}% of the limit", percent(fraction))
        };
        conditions.push(condition(
            THRESHOLD_REACHED,
            on,
            if on {
                REASON_THRESHOLD
            } else {
                "BelowThresholds"
            },
            message,
            generation,
            now,
            live,
        ));
    }
    if let Some(d) = &config.downgrade {
        let on = fraction * 100.0 >= f64::from(d.at_percent);
        let message = if on {
            format!(
                "spent {}% of the limit, past {}%: covered requests are served by Route {}",
                percent(fraction),
                d.at_percent,
                d.route
            )
        } else {
            format!(
                "spent {}% of the limit; requests move to Route {} from {}%",
                percent(fraction),
                d.route,
                d.at_percent
            )
        };
        conditions.push(condition(
            DOWNGRADED,
            on,
            if on { "Downgrading" } else { "NotDowngrading" },
            message,
            generation,
            now,
            live,
        ));
    }
    let degraded = !view.degraded.is_empty();
    let message = if degraded {
        format!(
            "{} sidecar(s) served requests without a lease because they could not reach the \
             ledger (failMode {}); their spend counts once they report it",
            view.degraded.len(),
            config.fail_mode
        )
    } else {
        "every sidecar spends within a lease".to_string()
    };
    conditions.push(condition(
        DEGRADED,
        degraded,
        if degraded {
            "SidecarsDegraded"
        } else {
            "AllSidecarsLeased"
        },
        message,
        generation,
        now,
        live,
    ));

    BudgetStatus {
        spent: Some(usd(view.spent.nano_usd)),
        spent_tokens: Some(tokens(view.spent.tokens)),
        remaining,
        remaining_tokens: left(limit.tokens, view.spent.tokens).map(tokens),
        period_start: Some(time(view.period_start)),
        period_end: view.period_end.map(time),
        previous_period: view.previous.map(|(start, end, spent)| BudgetPeriodTotal {
            start: time(start),
            end: end.map(time),
            spent: usd(spent.nano_usd),
            spent_tokens: tokens(spent.tokens),
        }),
        sidecars: Some(i32::try_from(view.active).unwrap_or(i32::MAX)),
        degraded_sidecars: view
            .degraded
            .iter()
            .take(DEGRADED_LISTED)
            .cloned()
            .collect(),
        conditions,
        observed_generation: None,
    }
}

/// Whether `live` already shows every field of `desired` (conditions compared by type,
/// status, reason, message and generation).
pub fn shows(live: Option<&BudgetStatus>, desired: &BudgetStatus) -> bool {
    let Some(live) = live else {
        return false;
    };
    let fields = |s: &BudgetStatus| {
        (
            s.spent.clone(),
            s.spent_tokens,
            s.remaining.clone(),
            s.remaining_tokens,
            s.period_start.clone(),
            s.period_end.clone(),
            s.previous_period.clone(),
            s.sidecars,
            s.degraded_sidecars.clone(),
        )
    };
    fields(live) == fields(desired)
        && desired.conditions.iter().all(|d| {
            live.conditions.iter().any(|l| {
                (
                    &l.type_,
                    &l.status,
                    &l.reason,
                    &l.message,
                    l.observed_generation,
                ) == (
                    &d.type_,
                    &d.status,
                    &d.reason,
                    &d.message,
                    d.observed_generation,
                )
            })
        })
}

/// The Warning events due: every threshold passed and the limit reached (as 100) that the
/// period has not announced yet, with their message.
pub fn due_events(view: &View, config: &BudgetConfig) -> Vec<(u8, Event)> {
    let limit = config.limit();
    let fraction = limit.fraction(view.spent);
    let end = view
        .period_end
        .map_or_else(|| "never".to_string(), |e| e.to_string());
    let mut due = Vec::new();
    for &t in &config.thresholds {
        if fraction * 100.0 >= f64::from(t) && !view.notified.contains(&t) {
            due.push((
                t,
                Event {
                    type_: EventType::Warning,
                    reason: REASON_THRESHOLD.to_string(),
                    note: Some(format!(
                        "spent {}% of the limit ({}), past the {t}% threshold, in the period \
                         ending {end}",
                        percent(fraction),
                        of_limit(view.spent, limit)
                    )),
                    action: "Meter".to_string(),
                    secondary: None,
                },
            ));
        }
    }
    if limit.reached_by(view.committed) && !view.notified.contains(&100) {
        let then = if config.enforcement == "soft" {
            "requests are served with a warning (soft)"
        } else {
            "requests that do not fit a sidecar's lease are refused with HTTP 429"
        };
        due.push((
            100,
            Event {
                type_: EventType::Warning,
                reason: REASON_LIMIT.to_string(),
                note: Some(format!(
                    "nothing left to lease (spent {}); {then} until the period ends ({end})",
                    of_limit(view.spent, limit)
                )),
                action: "Meter".to_string(),
                secondary: None,
            },
        ));
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_crds::config::DowngradeConfig;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn config() -> BudgetConfig {
        BudgetConfig {
            limit_usd: Some(50.0),
            limit_tokens: None,
            period: "monthly".into(),
            enforcement: "hard".into(),
            routes: Vec::new(),
            service_accounts: Vec::new(),
            workload_selector: None,
            fail_mode: "open".into(),
            period_seconds: None,
            thresholds: vec![50, 80],
            downgrade: Some(DowngradeConfig {
                at_percent: 90,
                route: "cheap".into(),
            }),
        }
    }

    fn view(spent: u64, committed: u64) -> View {
        View {
            period_start: ts("2026-11-01T00:00:00Z"),
            period_end: Some(ts("2026-12-01T00:00:00Z")),
            spent: Amount {
                nano_usd: spent,
                tokens: 1234,
            },
            committed: Amount {
                nano_usd: committed,
                tokens: 1234,
            },
            active: 3,
            degraded: vec!["web-0/ab".into()],
            previous: Some((
                ts("2026-10-01T00:00:00Z"),
                Some(ts("2026-11-01T00:00:00Z")),
                Amount {
                    nano_usd: 49_990_000_000,
                    tokens: 9,
                },
            )),
            notified: vec![50],
        }
    }

    fn cond<'a>(s: &'a BudgetStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn usd_strings_keep_two_decimals_and_every_nano() {
        assert_eq!(usd(0), "0.00");
        assert_eq!(usd(12_500_000_000), "12.50");
        assert_eq!(usd(123_456), "0.000123456");
        assert_eq!(usd(50_000_000_000), "50.00");
    }

    #[test]
    fn status_shows_spend_what_is_left_the_periods_and_the_conditions() {
        let now = Time(ts("2026-11-20T00:00:00Z"));
        // 41 of 50 USD spent, 45 committed.
        let s = desired_status(
            &view(41_000_000_000, 45_000_000_000),
            &config(),
            Some(3),
            &[],
            &now,
        );
        assert_eq!(s.spent.as_deref(), Some("41.00"));
        assert_eq!(s.spent_tokens, Some(1234));
        assert_eq!(s.remaining.as_deref(), Some("9.00"));
        assert_eq!(s.remaining_tokens, None);
        assert_eq!(s.period_end, Some(Time(ts("2026-12-01T00:00:00Z"))));
        let prev = s.previous_period.as_ref().unwrap();
        assert_eq!((prev.spent.as_str(), prev.spent_tokens), ("49.99", 9));
        assert_eq!(s.sidecars, Some(3));
        assert_eq!(s.degraded_sidecars, ["web-0/ab"]);
        let e = cond(&s, EXCEEDED);
        assert_eq!(
            (e.status.as_str(), e.reason.as_str()),
            ("False", "WithinLimit")
        );
        assert!(
            e.message.contains("41.00 of 50.00 USD (82%)"),
            "{}",
            e.message
        );
        let t = cond(&s, THRESHOLD_REACHED);
        assert_eq!(t.status, "True");
        assert!(t.message.contains("past 50%, 80%"), "{}", t.message);
        assert_eq!(cond(&s, DOWNGRADED).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(e.observed_generation, Some(3));

        // Everything leased: Exceeded, with the transition time kept on the next pass.
        let s = desired_status(
            &view(46_000_000_000, 50_000_000_000),
            &config(),
            Some(3),
            &[],
            &now,
        );
        let e = cond(&s, EXCEEDED).clone();
        assert_eq!(
            (e.status.as_str(), e.reason.as_str()),
            ("True", REASON_LIMIT)
        );
        assert!(e.message.contains("nothing left to lease"), "{}", e.message);
        assert_eq!(cond(&s, DOWNGRADED).status, "True");
        let later = Time(ts("2026-11-21T00:00:00Z"));
        let again = desired_status(
            &view(46_000_000_000, 50_000_000_000),
            &config(),
            Some(3),
            &s.conditions,
            &later,
        );
        assert_eq!(cond(&again, EXCEEDED).last_transition_time, now);
        assert!(shows(Some(&s), &again));
        assert!(!shows(
            Some(&s),
            &desired_status(&view(1, 1), &config(), Some(3), &[], &later)
        ));
    }

    #[test]
    fn each_threshold_and_the_limit_are_due_once_per_period() {
        let mut v = view(41_000_000_000, 45_000_000_000);
        // 50% was announced; 80% is due.
        let due = due_events(&v, &config());
        assert_eq!(due.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [80]);
        assert!(matches!(due[0].1.type_, EventType::Warning));
        assert!(
            due[0]
                .1
                .note
                .as_deref()
                .unwrap()
                .contains("past the 80% threshold")
        );
        v.notified.push(80);
        assert!(due_events(&v, &config()).is_empty());
        v.committed.nano_usd = 50_000_000_000;
        let due = due_events(&v, &config());
        assert_eq!(due.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [100]);
        assert_eq!(due[0].1.reason, REASON_LIMIT);
    }
}
