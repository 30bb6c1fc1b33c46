//! The budget ledger's contract between the sidecars and the operator's leader: money as integers,
//! budget periods on UTC boundaries, and the one sync call a sidecar makes.
//!
//! A sidecar spends only within a lease, a slice of a Budget's remaining amount granted to it by
//! the leader. Each sidecar process is one *instance* and, per Budget and period, reports two
//! cumulative numbers: what it has spent (settled) and what it has been granted. Cumulative
//! numbers make a sync idempotent: a report that arrives twice, late or out of order is applied
//! as `max(old, new)` and counted once. The ledger counts an instance as committed for
//! `max(granted, spent)`, so a lease is charged against the Budget from the moment it is granted.

use k8s_openapi::jiff::civil::Date;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

/// Path of the sync call on the operator's ledger listener (`POST`, JSON both ways).
pub const SYNC_PATH: &str = "/ledger/v1/sync";

/// Audience of the projected ServiceAccount token a sidecar presents (checked by TokenReview).
pub const TOKEN_AUDIENCE: &str = "gatehouse-ledger";

/// Nano-USD in one USD: money on the ledger is an integer count of 10⁻⁹ USD.
pub const NANOS_PER_USD: f64 = 1e9;

/// USD as nano-USD, rounded to the nearest; negative or not-a-number is 0, too large saturates.
pub fn usd_to_nanos(usd: f64) -> u64 {
    if usd.is_nan() || usd <= 0.0 {
        return 0;
    }
    let n = (usd * NANOS_PER_USD).round();
    if n >= u64::MAX as f64 {
        u64::MAX
    } else {
        n as u64
    }
}

/// Nano-USD as a decimal USD string with nine decimals, e.g. `12.345000000`.
pub fn nanos_to_usd(nanos: u64) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

/// An amount in both of a Budget's units. A Budget limits one or both; the ledger tracks both.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Amount {
    /// Money, in nano-USD.
    #[serde(default)]
    pub nano_usd: u64,
    /// Tokens (input plus output, every type).
    #[serde(default)]
    pub tokens: u64,
}

impl Amount {
    /// Component-wise maximum: how a repeated cumulative report is applied.
    pub fn max(self, other: Self) -> Self {
        Self {
            nano_usd: self.nano_usd.max(other.nano_usd),
            tokens: self.tokens.max(other.tokens),
        }
    }

    /// Component-wise saturating difference.
    pub fn saturating_sub(self, other: Self) -> Self {
        Self {
            nano_usd: self.nano_usd.saturating_sub(other.nano_usd),
            tokens: self.tokens.saturating_sub(other.tokens),
        }
    }

    /// Component-wise saturating sum.
    pub fn saturating_add(self, other: Self) -> Self {
        Self {
            nano_usd: self.nano_usd.saturating_add(other.nano_usd),
            tokens: self.tokens.saturating_add(other.tokens),
        }
    }

    /// Whether both components are zero.
    pub fn is_zero(self) -> bool {
        self.nano_usd == 0 && self.tokens == 0
    }
}

/// A Budget's limit: one or both units; a unit without a limit is not limited.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    /// Limit in nano-USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nano_usd: Option<u64>,
    /// Limit in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}

impl Limit {
    /// Whether `amount` reaches the limit in any limited unit.
    pub fn reached_by(self, amount: Amount) -> bool {
        self.nano_usd.is_some_and(|l| amount.nano_usd >= l)
            || self.tokens.is_some_and(|l| amount.tokens >= l)
    }

    /// The largest fraction of the limit `amount` uses, over the limited units (0.0 when none).
    pub fn fraction(self, amount: Amount) -> f64 {
        let usd = self
            .nano_usd
            .map_or(0.0, |l| amount.nano_usd as f64 / l.max(1) as f64);
        let tokens = self
            .tokens
            .map_or(0.0, |l| amount.tokens as f64 / l.max(1) as f64);
        usd.max(tokens)
    }
}

/// How often a Budget resets, on UTC boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// At every full hour.
    Hourly,
    /// At 00:00 UTC.
    Daily,
    /// At Monday 00:00 UTC.
    Weekly,
    /// At 00:00 UTC on the 1st of the month.
    Monthly,
    /// Never.
    None,
    /// Every this many seconds, counted from the Unix epoch (`period: custom`).
    Seconds(u64),
}

impl Period {
    /// Parses the rendered config's `period` (and `periodSeconds` for `custom`).
    pub fn parse(period: &str, seconds: Option<u64>) -> Option<Self> {
        match period {
            "hourly" => Some(Self::Hourly),
            "daily" => Some(Self::Daily),
            "weekly" => Some(Self::Weekly),
            "monthly" => Some(Self::Monthly),
            "none" => Some(Self::None),
            "custom" => seconds.filter(|s| *s > 0).map(Self::Seconds),
            _ => None,
        }
    }

    /// The period containing `now`: its start, and its end (`None` for a period that never
    /// ends). The start of period `none` is the Unix epoch.
    pub fn bounds(self, now: Timestamp) -> (Timestamp, Option<Timestamp>) {
        let secs = now.as_second();
        let aligned = |step: i64| {
            let start = secs.div_euclid(step) * step;
            (
                Timestamp::from_second(start).unwrap_or(now),
                Timestamp::from_second(start.saturating_add(step)).ok(),
            )
        };
        match self {
            Self::None => (Timestamp::UNIX_EPOCH, None),
            Self::Hourly => aligned(3600),
            Self::Daily => aligned(86_400),
            Self::Seconds(s) => aligned(i64::try_from(s).unwrap_or(i64::MAX).max(1)),
            Self::Weekly => {
                let date = now.to_zoned(TimeZone::UTC).date();
                let back = i64::from(date.weekday().to_monday_zero_offset());
                let monday = date.checked_sub(back.days()).unwrap_or(date);
                let start = midnight(monday).unwrap_or(now);
                (
                    start,
                    start.checked_add(SignedDuration::from_hours(168)).ok(),
                )
            }
            Self::Monthly => {
                let date = now.to_zoned(TimeZone::UTC).date();
                let first = date.first_of_month();
                let next = first.checked_add(1.month()).ok();
                (midnight(first).unwrap_or(now), next.and_then(midnight))
            }
        }
    }
}

fn midnight(date: Date) -> Option<Timestamp> {
    date.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
}

/// What an account on the ledger is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "camelCase")]
pub enum AccountKind {
    /// A `Budget` in the sidecar's namespace, by name.
    #[default]
    Budget,
    /// A `scope: cluster` rate limit of a Route in the sidecar's namespace, named
    /// `<route>/<limit name>` ([`rate_limit_account`]). Its period is [`RATE_LIMIT_WINDOW`]
    /// (fixed minute windows from the epoch) and its units are requests and tokens: on this
    /// kind's [`Amount`] and [`Limit`], **`nano_usd` counts requests** (the wire keeps one shape
    /// for every kind) and `tokens` counts tokens.
    RateLimit,
}

/// The window of a rate-limit account: fixed minutes aligned to the Unix epoch. A fixed window
/// lets up to twice the limit through around a boundary (the end of one minute and the start of
/// the next); per window, what is admitted stays within the limit plus the leases' slack.
pub const RATE_LIMIT_WINDOW: Period = Period::Seconds(60);

/// The account name of rate limit `limit` of Route `route`: `<route>/<limit>`.
pub fn rate_limit_account(route: &str, limit: &str) -> String {
    format!("{route}/{limit}")
}

/// The ledger limit of a rate limit: requests per minute (carried as `nano_usd`, see
/// [`AccountKind::RateLimit`]) and tokens per minute.
pub fn rate_limit(requests_per_minute: Option<u64>, tokens_per_minute: Option<u64>) -> Limit {
    Limit {
        nano_usd: requests_per_minute,
        tokens: tokens_per_minute,
    }
}

/// A sidecar's sync: its reports and lease requests for every account it uses. Sent at least
/// every `sync_after_ms` of the last answer, and at once when a lease runs low.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SyncRequest {
    /// This sidecar process: `<pod name>/<random hex chosen at start>`; stable for the life of
    /// the process, new after a restart.
    pub instance: String,
    /// The sidecar's namespace; must match the namespace of its ServiceAccount token.
    pub namespace: String,
    /// One entry per account.
    #[serde(default)]
    pub accounts: Vec<AccountSync>,
}

/// One account in a [`SyncRequest`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccountSync {
    /// What kind of account.
    #[serde(default)]
    pub kind: AccountKind,
    /// Its name (the Budget's name).
    pub name: String,
    /// Start of the period `spent` and `granted` belong to (RFC 3339), as the ledger last said;
    /// `None` on the first sync. A report for a period that has since ended still counts for
    /// that period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<Timestamp>,
    /// Cumulative settled spend of this instance in that period (monotonic).
    #[serde(default)]
    pub spent: Amount,
    /// Cumulative lease granted to this instance in that period, as the sidecar last heard it.
    #[serde(default)]
    pub granted: Amount,
    /// How much more lease the sidecar asks for (zero: only report).
    #[serde(default)]
    pub want: Amount,
    /// Whether the sidecar served requests of this account without a valid lease (fail-open)
    /// since its previous successful sync.
    #[serde(default)]
    pub degraded: bool,
}

/// The leader's answer to a [`SyncRequest`]; sent only once everything it grants is persisted.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SyncResponse {
    /// One entry per requested account, in the request's order.
    #[serde(default)]
    pub accounts: Vec<AccountGrant>,
    /// A lease is valid for this long after the sidecar *sent* the sync that returned it.
    pub lease_ttl_ms: u64,
    /// Sync again within this long.
    pub sync_after_ms: u64,
}

/// The state of one account, as the leader answers it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccountGrant {
    /// What kind of account.
    #[serde(default)]
    pub kind: AccountKind,
    /// Its name.
    pub name: String,
    /// Whether the ledger knows the account (a Budget of that name in that namespace). An unknown
    /// account grants nothing; the sidecar drops it once its config no longer lists it.
    pub known: bool,
    /// Start of the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<Timestamp>,
    /// End of the current period; `None` for period `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<Timestamp>,
    /// The limit.
    #[serde(default)]
    pub limit: Limit,
    /// Cumulative lease granted to this instance in the current period. The instance may spend
    /// up to `granted - spent` (its own) until the lease expires. Take it as is, not as the
    /// larger of it and an earlier answer: after the ledger reclaimed the unspent lease of an
    /// instance it had not heard from for longer than the lease TTL, this restarts from the
    /// instance's spend and can be lower than before.
    #[serde(default)]
    pub granted: Amount,
    /// Spent in the current period by every instance, as persisted.
    #[serde(default)]
    pub spent_total: Amount,
    /// Committed (spent or leased) in the current period by every instance.
    #[serde(default)]
    pub committed_total: Amount,
}

/// The ledger's error body (any non-2xx answer).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LedgerError {
    /// `unauthenticated` (401), `forbidden` (403), `invalid_request` (400), `not_leader` (503),
    /// `unavailable` (503).
    pub code: String,
    /// Human-readable detail (never a token).
    pub message: String,
    /// With `not_leader`: the leader's ledger URL, when known; retry there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn periods_start_and_end_on_utc_boundaries() {
        let now = ts("2026-11-29T21:37:12Z");
        let cases = [
            (
                Period::Hourly,
                "2026-11-29T21:00:00Z",
                Some("2026-11-29T22:00:00Z"),
            ),
            (
                Period::Daily,
                "2026-11-29T00:00:00Z",
                Some("2026-11-30T00:00:00Z"),
            ),
            // 2026-11-29 is a Sunday: the week began on Monday the 23rd.
            (
                Period::Weekly,
                "2026-11-23T00:00:00Z",
                Some("2026-11-30T00:00:00Z"),
            ),
            (
                Period::Monthly,
                "2026-11-01T00:00:00Z",
                Some("2026-12-01T00:00:00Z"),
            ),
            (Period::None, "1970-01-01T00:00:00Z", None),
            (
                Period::Seconds(300),
                "2026-11-29T21:35:00Z",
                Some("2026-11-29T21:40:00Z"),
            ),
        ];
        for (period, start, end) in cases {
            let (s, e) = period.bounds(now);
            assert_eq!(s, ts(start), "{period:?} start");
            assert_eq!(e, end.map(ts), "{period:?} end");
        }
    }

    #[test]
    fn a_boundary_instant_starts_the_next_period() {
        let (s, _) = Period::Monthly.bounds(ts("2026-12-01T00:00:00Z"));
        assert_eq!(s, ts("2026-12-01T00:00:00Z"));
        let (s, e) = Period::Monthly.bounds(ts("2026-12-31T23:59:59Z"));
        assert_eq!(
            (s, e),
            (ts("2026-12-01T00:00:00Z"), Some(ts("2027-01-01T00:00:00Z")))
        );
        let (s, _) = Period::Weekly.bounds(ts("2026-11-30T00:00:00Z"));
        assert_eq!(s, ts("2026-11-30T00:00:00Z"));
    }

    #[test]
    fn money_is_integer_nanos() {
        assert_eq!(usd_to_nanos(0.000_000_000_4), 0);
        assert_eq!(usd_to_nanos(0.000_000_000_6), 1);
        assert_eq!(usd_to_nanos(12.5), 12_500_000_000);
        assert_eq!(usd_to_nanos(-1.0), 0);
        assert_eq!(usd_to_nanos(f64::NAN), 0);
        assert_eq!(usd_to_nanos(f64::INFINITY), u64::MAX);
        assert_eq!(nanos_to_usd(12_500_000_001), "12.500000001");
        assert_eq!(nanos_to_usd(5), "0.000000005");
    }

    #[test]
    fn limits_compare_in_every_limited_unit() {
        let limit = Limit {
            nano_usd: Some(100),
            tokens: Some(10),
        };
        assert!(!limit.reached_by(Amount {
            nano_usd: 99,
            tokens: 9
        }));
        assert!(limit.reached_by(Amount {
            nano_usd: 100,
            tokens: 0
        }));
        assert!(limit.reached_by(Amount {
            nano_usd: 0,
            tokens: 10
        }));
        assert!(
            (limit.fraction(Amount {
                nano_usd: 50,
                tokens: 8
            }) - 0.8)
                .abs()
                < 1e-9
        );
        assert!(!Limit::default().reached_by(Amount {
            nano_usd: u64::MAX,
            tokens: 1
        }));
    }

    #[test]
    fn a_rate_limit_account_is_named_by_route_and_limit_and_counts_minutes() {
        assert_eq!(rate_limit_account("chat", "per-team"), "chat/per-team");
        let (s, e) = RATE_LIMIT_WINDOW.bounds(ts("2026-11-29T21:37:12Z"));
        assert_eq!(
            (s, e),
            (ts("2026-11-29T21:37:00Z"), Some(ts("2026-11-29T21:38:00Z")))
        );
        let sync = AccountSync {
            kind: AccountKind::RateLimit,
            name: rate_limit_account("chat", "rpm"),
            ..AccountSync::default()
        };
        let json = serde_json::to_string(&sync).unwrap();
        assert!(json.contains("\"kind\":\"rateLimit\""), "{json}");
        let limit = rate_limit(Some(10), None);
        assert!(limit.reached_by(Amount {
            nano_usd: 10,
            tokens: 0
        }));
        assert!(!limit.reached_by(Amount {
            nano_usd: 9,
            tokens: u64::MAX
        }));
    }

    #[test]
    fn a_sync_round_trips_through_json() {
        let req = SyncRequest {
            instance: "web-0/9f2c".into(),
            namespace: "team-a".into(),
            accounts: vec![AccountSync {
                name: "monthly".into(),
                period_start: Some(ts("2026-11-01T00:00:00Z")),
                spent: Amount {
                    nano_usd: 7,
                    tokens: 3,
                },
                ..AccountSync::default()
            }],
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(
            json.contains("\"periodStart\":\"2026-11-01T00:00:00Z\""),
            "{json}"
        );
        assert!(json.contains("\"kind\":\"budget\""), "{json}");
        let back: SyncRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, req);
    }
}
