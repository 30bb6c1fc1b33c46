//! The cluster side of the ledger: the sidecar spends within leases the operator's leader grants,
//! and reports what it spent (`gatehouse_crds::ledger`).
//!
//! One task syncs, so one call is in flight at most, and requests never call the ledger
//! themselves: they read and update the book under a lock, and a request whose reservation does
//! not fit in its lease nudges the task and waits for the next sync that starts after it, then
//! tries again (the budget stage bounds those waits, `--budget-wait-ms` in all). The task syncs
//!
//! - at least every `sync_after_ms` of the last answer, and before a lease has a quarter of its
//!   time left;
//! - at once when a request found no room, or a reservation left the lease less than one sync
//!   interval of recent demand (the low-water mark), at most one sync per [`MIN_GAP`];
//! - after a failed sync, with a backoff from [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`]; while
//!   it fails the ledger is unreachable: leases are spent until they run out or expire, then each
//!   Budget's failMode decides (no request waits on an unreachable ledger);
//! - once more when the process shuts down, to report what is unreported.
//!
//! Per Budget it reports its cumulative `spent` and `granted` in the period the ledger last named
//! and asks (`want`) for about two sync intervals of recent demand, at least four times the
//! largest recent reservation, minus what its lease still holds. A lease is valid for
//! `lease_ttl_ms` after the sync that returned it was *sent* (monotonic clock). When the answer
//! names a new period, spend settled after the report was sent starts the new period (it is
//! counted once, there) and the rest starts from zero.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gatehouse_crds::ledger::{
    AccountGrant, AccountKind, AccountSync, Amount, SyncRequest, SyncResponse,
};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::{ClientError, LedgerClient, Settings as ClientSettings, SyncError};
use super::ledger::{
    AccountKey, Accounts, Admission, Grant, Ledger, Room, Standing, Ticket, Verdict, Wait, fits_in,
    verdict,
};
use super::policy::{Budgets, Policy};
use crate::metrics::{Metrics, SyncLabels};
use crate::state::Store;

/// Shortest time between two syncs asked for by requests: near a Budget's limit, where leases
/// are small, every reservation may ask for one; this caps a sidecar at 20 syncs a second.
pub const MIN_GAP: Duration = Duration::from_millis(50);

/// First backoff after a failed sync.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);

/// Longest backoff after failed syncs.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Sync interval until the ledger said one (and when it says 0).
const DEFAULT_SYNC_AFTER: Duration = Duration::from_secs(1);

/// How often the task looks for Budgets in the config while it has none.
const CONFIG_POLL: Duration = Duration::from_secs(1);

/// What the remote ledger needs besides the client's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `<pod>/<random hex>`: this process on the ledger.
    pub instance: String,
    /// The sidecar's namespace.
    pub namespace: String,
    /// The sync client's settings.
    pub client: ClientSettings,
}

/// The remote ledger: a book of accounts shared with the sync task.
#[derive(Debug)]
pub struct Remote {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    book: Mutex<Book>,
    /// Wakes the task: a request found no room, a lease ran low, the process is closing.
    wake: Notify,
    /// Syncs finished (answered or failed).
    finished: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Book> {
        // Updates are a few assignments: a panic cannot leave the book half-written.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A wait for the first sync prepared after now.
    fn wait_next(&self, book: &Book) -> Wait {
        let target = book.started + 1;
        let mut finished = self.finished.subscribe();
        self.wake.notify_one();
        Box::pin(async move {
            let _ = finished.wait_for(|n| *n >= target).await;
        })
    }
}

/// Every account and the state of the connection to the ledger.
#[derive(Debug, Default)]
struct Book {
    accounts: Accounts<Entry>,
    /// Syncs prepared so far.
    started: u64,
    /// Whether the last sync answered (`None`: none finished yet).
    reachable: Option<bool>,
    lease_ttl: Duration,
    sync_after: Duration,
    /// When the last sync was sent.
    last_sent: Option<Instant>,
    /// Woken since the last sync was prepared.
    nudged: bool,
    /// The process is shutting down: one last sync, then the task ends.
    closing: bool,
    /// The config's Budgets the accounts were last matched with.
    budgets: Option<Arc<Budgets>>,
}

/// What one sync reported for an account.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    spent: Amount,
    degraded: bool,
}

/// One account as this sidecar holds it.
#[derive(Debug)]
struct Entry {
    policy: Arc<Policy>,
    /// Still in the config (else it is reported until nothing is left to report, then dropped).
    configured: bool,
    /// The ledger knows the Budget (until an answer says otherwise).
    known: bool,
    period_start: Option<Timestamp>,
    period_end: Option<Timestamp>,
    /// Cumulative settled spend of this process in the period.
    spent: Amount,
    /// Reserved by requests in flight.
    reserved: Amount,
    /// Cumulative lease granted in the period, as last answered.
    granted: Amount,
    lease_until: Option<Instant>,
    /// The ledger's totals over every instance at the last answer, and our `spent` in them.
    spent_total: Amount,
    committed_total: Amount,
    base_spent: Amount,
    /// Reserved since the last sync was prepared, its decayed maximum per interval, and the
    /// largest single reservation recently; what found no room since the last sync.
    demand: Amount,
    recent: Amount,
    largest: Amount,
    short: Amount,
    /// Served without a lease (fail-open) since the last report.
    degraded: bool,
    /// What the sync in flight reported.
    sent: Option<Sent>,
}

impl Entry {
    fn new(policy: &Arc<Policy>) -> Self {
        Self {
            policy: policy.clone(),
            configured: true,
            known: true,
            period_start: None,
            period_end: None,
            spent: Amount::default(),
            reserved: Amount::default(),
            granted: Amount::default(),
            lease_until: None,
            spent_total: Amount::default(),
            committed_total: Amount::default(),
            base_spent: Amount::default(),
            demand: Amount::default(),
            recent: Amount::default(),
            largest: Amount::default(),
            short: Amount::default(),
            degraded: false,
            sent: None,
        }
    }

    fn live(&self, now: Instant) -> bool {
        self.known && self.lease_until.is_some_and(|until| now < until)
    }

    /// What the lease still holds.
    fn available(&self) -> Amount {
        self.granted
            .saturating_sub(self.spent)
            .saturating_sub(self.reserved)
    }

    /// Whether no grant could give this account `amount` more than its lease holds: the ledger
    /// said the Budget is committed (spent or leased over every instance) up to where `amount`
    /// no longer fits, and the period it said that for has not ended.
    fn exhausted(&self, amount: Amount, wall: Timestamp) -> bool {
        if self.period_end.is_some_and(|end| wall >= end) {
            return false;
        }
        let limit = self.policy.limit;
        let headroom = |l: Option<u64>, committed: u64| l.map(|l| l.saturating_sub(committed));
        let avail = self.available();
        let over = |room: Option<u64>, have: u64, need: u64| {
            room.is_some_and(|room| room.saturating_add(have) < need)
        };
        (limit.reached_by(self.committed_total) && !fits_in(limit, avail, amount))
            || over(
                headroom(limit.nano_usd, self.committed_total.nano_usd),
                avail.nano_usd,
                amount.nano_usd,
            )
            || over(
                headroom(limit.tokens, self.committed_total.tokens),
                avail.tokens,
                amount.tokens,
            )
    }

    fn room(
        &self,
        amount: Amount,
        now: Instant,
        wall: Timestamp,
        may_wait: bool,
        reachable: Option<bool>,
    ) -> Room {
        let unreachable = reachable == Some(false);
        let live = self.live(now);
        if !self.policy.hard {
            // A soft Budget never refuses for its limit; it needs the ledger only to fail closed.
            return if live || (self.known && !unreachable) {
                Room::Fits
            } else {
                Room::Unreachable
            };
        }
        if !self.known {
            // The ledger does not know this Budget (yet): as if it could not be reached.
            return Room::Unreachable;
        }
        if live {
            if fits_in(self.policy.limit, self.available(), amount) {
                return Room::Fits;
            }
            if self.exhausted(amount, wall) {
                return Room::Exhausted;
            }
            if unreachable {
                return Room::Unreachable;
            }
            // The ledger answered but has not granted enough in the time the request may wait.
            return if may_wait {
                Room::Short
            } else {
                Room::Exhausted
            };
        }
        if unreachable || !may_wait {
            // No live lease within the time the request may wait: as if unreachable.
            return Room::Unreachable;
        }
        Room::Short
    }

    /// What to ask for: about two intervals of demand, at least four of the largest recent
    /// reservation, less what the lease holds; only in limited units, only for hard Budgets.
    fn want(&self) -> Amount {
        if !self.policy.hard || !self.configured {
            return Amount::default();
        }
        let busy = self.demand.saturating_add(self.short).max(self.recent);
        let target = Amount {
            nano_usd: busy
                .nano_usd
                .saturating_mul(2)
                .max(self.largest.nano_usd.saturating_mul(4)),
            tokens: busy
                .tokens
                .saturating_mul(2)
                .max(self.largest.tokens.saturating_mul(4)),
        };
        let want = target.saturating_sub(self.available());
        let limit = self.policy.limit;
        Amount {
            nano_usd: if limit.nano_usd.is_some() {
                want.nano_usd
            } else {
                0
            },
            tokens: if limit.tokens.is_some() {
                want.tokens
            } else {
                0
            },
        }
    }

    /// Spent by every instance as far as this sidecar knows: the ledger's total at its last
    /// answer plus what this sidecar settled since the report it counted.
    fn spent_estimate(&self) -> Amount {
        self.spent_total
            .saturating_add(self.spent.saturating_sub(self.base_spent))
    }

    fn answered(&mut self, grant: &AccountGrant, lease_until: Instant) {
        let sent = self.sent.take().unwrap_or_default();
        if !grant.known {
            if self.known {
                tracing::warn!(budget = %self.policy.name,
                    "the budget ledger does not know this budget; it is treated as unreachable (failMode decides)");
            }
            self.known = false;
            self.lease_until = None;
            return;
        }
        if !self.known {
            tracing::info!(budget = %self.policy.name, "the budget ledger knows this budget now");
        }
        self.known = true;
        if self.period_start.is_some() && grant.period_start != self.period_start {
            // The report counted for the period it named; what was settled after it was sent
            // starts the new one.
            let carried = self.spent.saturating_sub(sent.spent);
            tracing::info!(budget = %self.policy.name, period_start = ?grant.period_start,
                carried_usd = %gatehouse_crds::ledger::nanos_to_usd(carried.nano_usd),
                carried_tokens = carried.tokens, "budget period ended, spend starts from zero");
            self.spent = carried;
            self.base_spent = Amount::default();
        } else {
            self.base_spent = sent.spent;
        }
        self.period_start = grant.period_start;
        self.period_end = grant.period_end;
        self.granted = grant.granted;
        self.spent_total = grant.spent_total;
        self.committed_total = grant.committed_total;
        self.lease_until = Some(lease_until);
    }

    /// The sync failed or did not cover this account: its report is made again next time.
    fn unanswered(&mut self) {
        if let Some(sent) = self.sent.take() {
            self.degraded |= sent.degraded;
        }
    }

    /// Nothing left to report or settle.
    fn drained(&self) -> bool {
        self.reserved.is_zero()
            && self.sent.is_none()
            && (self.spent == self.base_spent || !self.known)
    }
}

impl Book {
    fn entry(&mut self, policy: &Arc<Policy>) -> &mut Entry {
        let entry = self
            .accounts
            .entry(AccountKey::of(policy))
            .or_insert_with(|| Entry::new(policy));
        if !Arc::ptr_eq(&entry.policy, policy) {
            entry.policy = policy.clone();
            entry.configured = true;
        }
        entry
    }

    /// Match the accounts with the config's Budgets, so that a Budget gets its lease before its
    /// first request and one that left the config is reported, then dropped.
    fn observe(&mut self, budgets: Option<Arc<Budgets>>) {
        let same = match (&self.budgets, &budgets) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        // Rate-limit accounts come from Routes, not Budgets: the rate-limit stage keeps them.
        for entry in self
            .accounts
            .values_mut()
            .filter(|e| e.policy.kind == AccountKind::Budget)
        {
            entry.configured = false;
        }
        for policy in budgets.iter().flat_map(|b| b.all()) {
            self.entry(policy).configured = true;
        }
        self.budgets = budgets;
    }

    fn wake(&mut self, shared_wake: &Notify) {
        if !self.nudged {
            self.nudged = true;
            shared_wake.notify_one();
        }
    }

    /// When the next sync is due. `woken`: a request asked for one.
    fn next_due(&self, now: Instant, backoff: Duration, woken: bool) -> Instant {
        if self.accounts.is_empty() {
            return now + CONFIG_POLL;
        }
        let Some(last) = self.last_sent else {
            return now;
        };
        if self.reachable == Some(false) {
            return last + backoff;
        }
        if woken {
            return last + MIN_GAP;
        }
        let renew = self
            .accounts
            .values()
            .filter(|e| e.configured)
            .filter_map(|e| e.lease_until)
            .map(|until| until.checked_sub(self.lease_ttl / 4).unwrap_or(until))
            .min();
        let regular = last + self.sync_after;
        renew.map_or(regular, |r| r.min(regular))
    }

    /// The next sync's request; `None` when there is nothing to sync. Counts as started either way.
    fn prepare(&mut self, settings: &Settings, now: Instant) -> Option<SyncRequest> {
        self.started += 1;
        self.nudged = false;
        if self.accounts.is_empty() {
            return None;
        }
        let mut names: Vec<&AccountKey> = self.accounts.keys().collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<AccountKey> = names.into_iter().cloned().collect();
        let mut accounts = Vec::with_capacity(names.len());
        for key in names {
            let Some(e) = self.accounts.get_mut(&key) else {
                continue;
            };
            let want = if self.closing {
                Amount::default()
            } else {
                e.want()
            };
            e.recent = e.demand.max(Amount {
                nano_usd: e.recent.nano_usd / 2,
                tokens: e.recent.tokens / 2,
            });
            e.largest = Amount {
                nano_usd: e.largest.nano_usd / 2,
                tokens: e.largest.tokens / 2,
            };
            e.demand = Amount::default();
            e.short = Amount::default();
            let sent = Sent {
                spent: e.spent,
                degraded: e.degraded,
            };
            e.degraded = false;
            e.sent = Some(sent);
            accounts.push(AccountSync {
                kind: key.kind,
                name: key.name.to_string(),
                period_start: e.period_start,
                spent: e.spent,
                granted: e.granted,
                want,
                degraded: sent.degraded,
            });
        }
        self.last_sent = Some(now);
        Some(SyncRequest {
            instance: settings.instance.clone(),
            namespace: settings.namespace.clone(),
            accounts,
        })
    }

    /// Take a sync's outcome in; whether it answered.
    fn apply(&mut self, result: &Result<SyncResponse, SyncError>, sent_at: Instant) -> bool {
        let ok = match result {
            Ok(answer) => {
                if self.reachable == Some(false) {
                    tracing::info!("the budget ledger answers again");
                }
                self.reachable = Some(true);
                self.lease_ttl = Duration::from_millis(answer.lease_ttl_ms);
                self.sync_after = match answer.sync_after_ms {
                    0 => DEFAULT_SYNC_AFTER,
                    ms => Duration::from_millis(ms),
                };
                let lease_until = sent_at + self.lease_ttl;
                for grant in &answer.accounts {
                    let key = AccountKey {
                        kind: grant.kind,
                        name: Arc::from(grant.name.as_str()),
                    };
                    if let Some(e) = self.accounts.get_mut(&key)
                        && e.sent.is_some()
                    {
                        e.answered(grant, lease_until);
                    }
                }
                true
            }
            Err(e) => {
                if self.reachable != Some(false) {
                    tracing::warn!(error = %e,
                        "the budget ledger cannot be reached; budgets spend within their leases, then as their failMode says");
                }
                self.reachable = Some(false);
                false
            }
        };
        for e in self.accounts.values_mut() {
            e.unanswered();
        }
        self.accounts.retain(|_, e| e.configured || !e.drained());
        ok
    }
}

impl Remote {
    /// The remote ledger and its sync task, which reads the Budgets of `store`'s config.
    pub fn start(
        settings: Settings,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Self>, JoinHandle<()>), ClientError> {
        let client = LedgerClient::new(&settings.client)?;
        let shared = Arc::new(Shared {
            book: Mutex::new(Book {
                sync_after: DEFAULT_SYNC_AFTER,
                ..Book::default()
            }),
            wake: Notify::new(),
            finished: watch::Sender::new(0),
        });
        let task = tokio::spawn(run(shared.clone(), client, settings, store, metrics));
        Ok((Arc::new(Self { shared }), task))
    }
}

/// The sync task.
async fn run(
    shared: Arc<Shared>,
    mut client: LedgerClient,
    settings: Settings,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
) {
    // Without `--ledger-url` the first sync (made once the config has a Budget) fails with
    // `NoUrl` and says so, once.
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut woken = false;
        loop {
            let budgets = store.load().map(|s| s.budgets.clone());
            let (due, closing) = {
                let mut book = shared.lock();
                book.observe(budgets);
                (book.next_due(Instant::now(), backoff, woken), book.closing)
            };
            if closing || Instant::now() >= due {
                break;
            }
            tokio::select! {
                () = shared.wake.notified() => woken = true,
                () = tokio::time::sleep_until(due) => break,
            }
        }
        let sent_at = Instant::now();
        let (request, closing) = {
            let mut book = shared.lock();
            (book.prepare(&settings, sent_at), book.closing)
        };
        if let Some(request) = request {
            let result = client.sync(&request).await;
            let label = match &result {
                Ok(_) => "ok",
                Err(e) => {
                    tracing::debug!(error = %e, "ledger sync failed");
                    e.metric_label()
                }
            };
            metrics
                .ledger_syncs
                .get_or_create(&SyncLabels { result: label })
                .inc();
            let ok = shared.lock().apply(&result, sent_at);
            backoff = if ok {
                BACKOFF_MIN
            } else {
                (backoff * 2).min(BACKOFF_MAX)
            };
        }
        shared.finished.send_modify(|n| *n += 1);
        if closing {
            return;
        }
    }
}

impl Ledger for Remote {
    fn mode(&self) -> &'static str {
        "remote"
    }

    fn standing(&self, policies: &[Arc<Policy>], out: &mut Vec<Standing>) {
        let book = self.shared.lock();
        for policy in policies {
            let fraction = book
                .accounts
                .get(&AccountKey::of(policy))
                .map_or(0.0, |e| policy.limit.fraction(e.spent_estimate()));
            out.push(Standing { fraction });
        }
    }

    fn reserve(&self, policies: &[Arc<Policy>], amount: Amount, may_wait: bool) -> Admission {
        let now = Instant::now();
        let wall = Timestamp::now();
        let mut book = self.shared.lock();
        let reachable = book.reachable;
        let mut rooms = Vec::with_capacity(policies.len());
        for policy in policies {
            let e = book.entry(policy);
            rooms.push((
                e.room(amount, now, wall, may_wait, reachable),
                &**policy,
                e.period_end,
            ));
        }
        match verdict(&rooms) {
            Verdict::Reserve(grants) => {
                let mut low = false;
                for (policy, grant) in policies.iter().zip(&grants) {
                    let e = book.entry(policy);
                    e.reserved = e.reserved.saturating_add(amount);
                    e.demand = e.demand.saturating_add(amount);
                    e.largest = e.largest.max(amount);
                    if *grant == Grant::FailOpen {
                        e.degraded = true;
                    } else if policy.hard {
                        // The low-water mark: less than about one more interval of demand.
                        let mark = e.recent.max(e.demand).max(amount);
                        low |= !fits_in(policy.limit, e.available(), mark);
                    }
                }
                if low && book.reachable != Some(false) {
                    book.wake(&self.shared.wake);
                }
                Admission::Reserved(Ticket {
                    accounts: policies.iter().cloned().zip(grants).collect(),
                    amount,
                })
            }
            Verdict::Wait => {
                for ((room, _, _), policy) in rooms.iter().zip(policies) {
                    if *room == Room::Short {
                        let e = book.entry(policy);
                        e.short = e.short.saturating_add(amount);
                        e.largest = e.largest.max(amount);
                    }
                }
                book.nudged = true;
                Admission::Wait(self.shared.wait_next(&book))
            }
            Verdict::Exceeded(i) => {
                let (budget, resets) = rooms
                    .get(i)
                    .map_or((Arc::from(""), None), |(_, p, r)| (p.name.clone(), *r));
                Admission::Exceeded { budget, resets }
            }
            Verdict::Unavailable(i) => Admission::Unavailable {
                budget: rooms
                    .get(i)
                    .map_or_else(|| Arc::from(""), |(_, p, _)| p.name.clone()),
            },
        }
    }

    fn settle(&self, ticket: Ticket, actual: Amount) {
        let mut book = self.shared.lock();
        for (policy, _) in &ticket.accounts {
            if let Some(e) = book.accounts.get_mut(&AccountKey::of(policy)) {
                e.reserved = e.reserved.saturating_sub(ticket.amount);
                e.spent = e.spent.saturating_add(actual);
            }
        }
    }

    fn degraded(&self) -> Vec<(Arc<str>, bool)> {
        let now = Instant::now();
        let book = self.shared.lock();
        let unreachable = book.reachable == Some(false);
        book.accounts
            .values()
            .filter(|e| e.configured)
            .map(|e| {
                (
                    e.policy.name.clone(),
                    !e.known || (unreachable && !e.live(now)),
                )
            })
            .collect()
    }

    fn account_view(&self, policy: &Policy) -> Option<(Amount, Option<Timestamp>)> {
        let book = self.shared.lock();
        let e = book.accounts.get(&AccountKey::of(policy))?;
        e.period_start?;
        if e.period_end.is_some_and(|end| Timestamp::now() >= end) {
            // The window ended; the ledger has not named the next one yet.
            return Some((e.reserved, None));
        }
        Some((e.spent_estimate().saturating_add(e.reserved), e.period_end))
    }

    fn flush(&self) -> Option<Wait> {
        let mut book = self.shared.lock();
        book.closing = true;
        Some(self.shared.wait_next(&book))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::super::ledger::tests::{policy, usd};
    use super::*;

    fn remote() -> Remote {
        Remote {
            shared: Arc::new(Shared {
                book: Mutex::new(Book {
                    sync_after: DEFAULT_SYNC_AFTER,
                    ..Book::default()
                }),
                wake: Notify::new(),
                finished: watch::Sender::new(0),
            }),
        }
    }

    fn settings() -> Settings {
        Settings {
            instance: "web-0/1".into(),
            namespace: "ns".into(),
            client: ClientSettings {
                urls: vec![],
                token_file: PathBuf::from("/nonexistent"),
                ca_file: None,
                timeout: Duration::from_secs(1),
            },
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// The task's part: prepare a sync, let `answer` (given the request) answer it.
    fn sync(
        r: &Remote,
        sent_at: Instant,
        answer: impl FnOnce(&SyncRequest) -> Result<SyncResponse, SyncError>,
    ) -> SyncRequest {
        let request = r.shared.lock().prepare(&settings(), sent_at).unwrap();
        let result = answer(&request);
        r.shared.lock().apply(&result, sent_at);
        request
    }

    fn granted(request: &SyncRequest, period: &str, granted: u64, committed: u64) -> SyncResponse {
        SyncResponse {
            accounts: request
                .accounts
                .iter()
                .map(|a| AccountGrant {
                    kind: a.kind,
                    name: a.name.clone(),
                    known: true,
                    period_start: Some(ts(period)),
                    period_end: Some(ts("2099-01-01T00:00:00Z")),
                    granted: usd(granted),
                    spent_total: a.spent,
                    committed_total: usd(committed),
                    ..AccountGrant::default()
                })
                .collect(),
            lease_ttl_ms: 60_000,
            sync_after_ms: 1_000,
        }
    }

    fn unreachable() -> Result<SyncResponse, SyncError> {
        Err(SyncError::Transport {
            url: "http://ledger".into(),
            reason: "connection refused".into(),
        })
    }

    fn reserved(a: Admission) -> Ticket {
        match a {
            Admission::Reserved(t) => t,
            other => panic!("expected a reservation, got {other:?}"),
        }
    }

    const PERIOD: &str = "2026-11-01T00:00:00Z";

    #[test]
    fn a_request_without_room_waits_for_a_sync_that_asks_for_it() {
        let r = remote();
        let p = policy("b", serde_json::json!({"limitUsd": 1.0}));
        let ps = std::slice::from_ref(&p);
        assert!(matches!(r.reserve(ps, usd(600), true), Admission::Wait(_)));
        let request = sync(&r, Instant::now(), |req| {
            Ok(granted(req, PERIOD, 2_400, 2_400))
        });
        assert_eq!(request.instance, "web-0/1");
        assert_eq!(request.accounts[0].name, "b");
        assert_eq!(
            request.accounts[0].want,
            usd(2_400),
            "four times the largest request"
        );
        assert_eq!(request.accounts[0].period_start, None);
        let tickets: Vec<Ticket> = (0..4)
            .map(|_| reserved(r.reserve(ps, usd(600), true)))
            .collect();
        // The lease is spent; the ledger said the budget has more room, so wait for it once.
        assert!(matches!(r.reserve(ps, usd(600), true), Admission::Wait(_)));
        assert!(
            matches!(r.reserve(ps, usd(600), false), Admission::Exceeded { ref budget, resets }
                if &**budget == "b" && resets == Some(ts("2099-01-01T00:00:00Z"))),
            "once the request may not wait any longer, no room is a refusal"
        );
        for t in tickets {
            r.settle(t, usd(100));
        }
        // 400 spent of 2400 granted: room again, and the report says so.
        reserved(r.reserve(ps, usd(600), true));
        let request = sync(&r, Instant::now(), |req| {
            Ok(granted(req, PERIOD, 2_400, 2_400))
        });
        assert_eq!(request.accounts[0].spent, usd(400));
        assert_eq!(request.accounts[0].granted, usd(2_400));
        assert_eq!(request.accounts[0].period_start, Some(ts(PERIOD)));
    }

    #[test]
    fn a_budget_the_ledger_says_is_committed_refuses_without_waiting() {
        let r = remote();
        let p = policy("b", serde_json::json!({"limitUsd": 0.000_001}));
        let ps = std::slice::from_ref(&p);
        assert!(matches!(r.reserve(ps, usd(600), true), Admission::Wait(_)));
        // The ledger grants 300 and says 900 of the 1000 are committed: at most 100 more could
        // ever come, 400 is not enough for 600.
        sync(&r, Instant::now(), |req| Ok(granted(req, PERIOD, 300, 900)));
        assert!(matches!(
            r.reserve(ps, usd(600), true),
            Admission::Exceeded { .. }
        ));
        reserved(r.reserve(ps, usd(300), true));
    }

    #[test]
    fn an_unreachable_ledger_leaves_the_lease_then_the_fail_mode() {
        let r = remote();
        let open = policy("open", serde_json::json!({}));
        let closed = policy("closed", serde_json::json!({"failMode": "closed"}));
        let soft_closed = policy(
            "soft",
            serde_json::json!({"enforcement": "soft", "failMode": "closed"}),
        );
        let all = [open.clone(), closed.clone(), soft_closed.clone()];
        assert!(matches!(r.reserve(&all, usd(10), true), Admission::Wait(_)));
        sync(&r, Instant::now(), |req| {
            Ok(granted(req, PERIOD, 1_000, 3_000))
        });
        // The ledger goes away: the leases are still good.
        sync(&r, Instant::now(), |_| unreachable());
        let t = reserved(r.reserve(&all, usd(10), true));
        assert!(t.accounts.iter().all(|(_, g)| *g == Grant::Lease));
        r.settle(t, usd(10));
        assert!(r.degraded().iter().all(|(_, d)| !d));
        // The leases expire (their sync was sent long ago).
        // Just over the 60 s lease ago.
        let long_ago = Instant::now() - Duration::from_secs(61);
        sync(&r, long_ago, |req| Ok(granted(req, PERIOD, 1_000, 3_000)));
        sync(&r, Instant::now(), |_| unreachable());
        assert!(matches!(
            r.reserve(&all, usd(10), true),
            Admission::Unavailable { ref budget } if &**budget == "closed"
        ));
        assert!(matches!(
            r.reserve(std::slice::from_ref(&soft_closed), usd(10), true),
            Admission::Unavailable { ref budget } if &**budget == "soft"
        ));
        let t = reserved(r.reserve(std::slice::from_ref(&open), usd(10), true));
        assert_eq!(t.accounts[0].1, Grant::FailOpen);
        r.settle(t, usd(10));
        let degraded: HashMap<_, _> = r.degraded().into_iter().collect();
        assert_eq!(degraded.get("open"), Some(&true));
        assert_eq!(degraded.get("closed"), Some(&true));
        // Once it answers again, the spend made without a lease is reported as degraded.
        let request = sync(&r, Instant::now(), |req| {
            Ok(granted(req, PERIOD, 1_000, 3_000))
        });
        let open_report = request.accounts.iter().find(|a| a.name == "open").unwrap();
        assert!(open_report.degraded);
        assert_eq!(open_report.spent, usd(20));
        assert!(r.degraded().iter().all(|(_, d)| !d));
        let request = sync(&r, Instant::now(), |req| {
            Ok(granted(req, PERIOD, 1_000, 3_000))
        });
        assert!(
            request.accounts.iter().all(|a| !a.degraded),
            "reported once"
        );
    }

    #[test]
    fn a_failed_report_is_made_again_and_a_new_period_keeps_what_came_after_the_report() {
        let r = remote();
        let p = policy("b", serde_json::json!({"limitUsd": 1.0}));
        let ps = std::slice::from_ref(&p);
        assert!(matches!(r.reserve(ps, usd(100), true), Admission::Wait(_)));
        sync(&r, Instant::now(), |req| {
            Ok(granted(req, PERIOD, 10_000, 10_000))
        });
        let t = reserved(r.reserve(ps, usd(100), true));
        r.settle(t, usd(70));
        let failed = sync(&r, Instant::now(), |_| unreachable());
        let again = sync(&r, Instant::now(), |req| {
            // While this sync is in flight another request settles.
            let t = reserved(r.reserve(ps, usd(100), true));
            r.settle(t, usd(30));
            let mut answer = granted(req, "2026-12-01T00:00:00Z", 5_000, 5_000);
            answer.accounts[0].spent_total = usd(0);
            Ok(answer)
        });
        assert_eq!(failed.accounts[0].spent, usd(70));
        assert_eq!(
            again.accounts[0].spent,
            usd(70),
            "cumulative, reported again"
        );
        // The answer named a new period: the 30 settled after the report start it.
        let next = sync(&r, Instant::now(), |req| {
            Ok(granted(req, "2026-12-01T00:00:00Z", 5_000, 5_000))
        });
        assert_eq!(
            next.accounts[0].period_start,
            Some(ts("2026-12-01T00:00:00Z"))
        );
        assert_eq!(next.accounts[0].spent, usd(30));
        assert_eq!(next.accounts[0].granted, usd(5_000));
        let mut out = Vec::new();
        r.standing(ps, &mut out);
        assert!((out[0].fraction - 30e-9).abs() < 1e-15, "{out:?}");
    }

    #[test]
    fn a_budget_unknown_to_the_ledger_or_gone_from_the_config() {
        let r = remote();
        let p = policy("b", serde_json::json!({"failMode": "closed"}));
        let ps = std::slice::from_ref(&p);
        assert!(matches!(r.reserve(ps, usd(1), true), Admission::Wait(_)));
        sync(&r, Instant::now(), |req| {
            let mut answer = granted(req, PERIOD, 0, 0);
            answer.accounts[0].known = false;
            Ok(answer)
        });
        assert!(matches!(
            r.reserve(ps, usd(1), true),
            Admission::Unavailable { .. }
        ));
        // Gone from the config and nothing left to report: dropped.
        r.shared.lock().observe(Some(Arc::new(Budgets::default())));
        sync(&r, Instant::now(), |req| Ok(granted(req, PERIOD, 0, 0)));
        assert!(r.shared.lock().accounts.is_empty());
        assert!(
            r.shared
                .lock()
                .prepare(&settings(), Instant::now())
                .is_none()
        );
    }
}
