//! The leader's books: one slot per account in use, each with its [`Record`] in memory and a
//! committer task that persists it.
//!
//! **Group commit.** A sync changes the book under a short lock and notes the record's new
//! version; the committer writes the latest record as soon as its previous write is done, so
//! every sync that arrived during one write is persisted by the next (one API write per
//! account covers any number of syncs). A sync is answered only once the version it produced
//! is persisted: a grant the sidecar hears of is never lost by a crash or a leader change.
//!
//! **Claim and fencing.** Before a slot grants anything, its committer claims the record
//! (see [`crate::ledger::store`]). A conflict on any later write means someone else wrote: a
//! record with a newer term fences this leader (every waiting sync gets `not_leader` and the
//! ledger stops serving); one with an older or equal term is merged (cumulative numbers, so
//! the larger of each wins) and written again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gatehouse_crds::ledger::{AccountGrant, Limit, Period, SyncRequest, SyncResponse};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::ledger::account::{AccountBook, PeriodBook, Policy};
use crate::ledger::store::{AccountKey, Read, Record, Records, Written};
use crate::metrics::Metrics;

/// How long a sync waits for its account to be claimed or its changes to be persisted: below
/// the sidecar's default sync timeout (2 s), so a slow API server is answered `unavailable`
/// rather than left to time out. A grant made meanwhile is not lost: grants are cumulative, and
/// the next answer carries it.
pub const PERSIST_WAIT: Duration = Duration::from_millis(1_500);

/// Why a sync could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// Another leader took over.
    #[error("this replica is no longer the ledger's leader")]
    NotLeader,
    /// The changes could not be persisted in time.
    #[error("failed to persist the ledger in time: {0}")]
    Unavailable(String),
}

/// How far a slot's record has been written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Progress {
    /// The record has been claimed for this leader.
    claimed: bool,
    /// The last version written.
    persisted: u64,
    /// A newer leader wrote it: this one must stop.
    fenced: bool,
}

/// The record and its version (bumped by every change that must be persisted).
#[derive(Debug)]
pub struct SlotState {
    /// The record.
    pub record: Record,
    /// Its version.
    pub version: u64,
}

/// One account in use.
#[derive(Debug)]
pub struct Slot {
    key: AccountKey,
    /// The record's last resourceVersion, once written.
    resource_version: Mutex<Option<String>>,
    state: Mutex<SlotState>,
    progress: watch::Sender<Progress>,
    dirty: Notify,
}

impl Slot {
    /// The account.
    pub fn key(&self) -> &AccountKey {
        &self.key
    }

    /// The record's last resourceVersion, once written.
    pub fn resource_version(&self) -> Option<String> {
        self.resource_version.lock().ok().and_then(|r| r.clone())
    }

    /// The account's state, locked. Held for microseconds: never across an await.
    pub fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding it would leave the state as it was before the panicking change
        // at worst; keep serving rather than poison every later sync.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mark the state changed: bump its version and wake the committer. Returns the version.
    pub fn changed(&self, state: &mut SlotState) -> u64 {
        state.version += 1;
        self.dirty.notify_one();
        state.version
    }

    async fn wait(&self, done: impl Fn(&Progress) -> bool) -> Result<(), SyncError> {
        let mut rx = self.progress.subscribe();
        let waited = tokio::time::timeout(PERSIST_WAIT, rx.wait_for(|p| p.fenced || done(p))).await;
        match waited {
            Ok(Ok(p)) if p.fenced => Err(SyncError::NotLeader),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(SyncError::NotLeader),
            Err(_) => Err(SyncError::Unavailable(format!(
                "the record of {} was not written within {PERSIST_WAIT:?}",
                self.key
            ))),
        }
    }

    /// Wait until the record is claimed by this leader.
    pub async fn claimed(&self) -> Result<(), SyncError> {
        self.wait(|p| p.claimed).await
    }

    /// Wait until `version` is persisted.
    pub async fn persisted(&self, version: u64) -> Result<(), SyncError> {
        self.wait(|p| p.claimed && p.persisted >= version).await
    }

    /// Whether the record was claimed (and not fenced).
    pub fn is_claimed(&self) -> bool {
        let p = *self.progress.borrow();
        p.claimed && !p.fenced
    }
}

/// A Budget's account as the ledger needs it.
#[derive(Debug, Clone)]
pub struct Terms {
    /// UID of the Budget.
    pub uid: String,
    /// Its limit.
    pub limit: Limit,
    /// Its period.
    pub period: Period,
}

/// The leader's books.
pub struct Book {
    records: Records,
    identity: String,
    term: i64,
    policy: Policy,
    sync_after_ms: u64,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<AccountKey, Arc<Slot>>>,
    /// Records listed at takeover and not yet in a slot, by object name.
    loaded: Mutex<HashMap<String, Read>>,
    committers: Mutex<Vec<JoinHandle<()>>>,
    /// Turns true to make committers write what is dirty and stop (graceful shutdown), and
    /// stays so.
    closing: watch::Sender<bool>,
    fenced: watch::Sender<bool>,
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Book")
            .field("identity", &self.identity)
            .field("term", &self.term)
            .finish_non_exhaustive()
    }
}

impl Drop for Book {
    fn drop(&mut self) {
        // Leadership ended without a graceful stop: committers must not write any more.
        if let Ok(committers) = self.committers.get_mut() {
            for c in committers.drain(..) {
                c.abort();
            }
        }
    }
}

/// Merge `other` into `book`: every period kept by either, matched by start; within a period
/// the larger of each cumulative number wins (a reclaim is kept when either side made it).
pub fn merge(book: &mut AccountBook, other: &AccountBook) {
    let mut periods: BTreeMap<Timestamp, PeriodBook> = BTreeMap::new();
    let all = [Some(&book.current), book.previous.as_ref()]
        .into_iter()
        .chain([Some(&other.current), other.previous.as_ref()])
        .flatten();
    for p in all {
        match periods.get_mut(&p.start) {
            None => {
                periods.insert(p.start, p.clone());
            }
            Some(into) => {
                for (id, i) in &p.instances {
                    let e = into.instances.entry(id.clone()).or_default();
                    e.spent = e.spent.max(i.spent);
                    e.granted = e.granted.max(i.granted);
                    e.seen_ms = e.seen_ms.max(i.seen_ms);
                    e.reclaimed |= i.reclaimed;
                    e.degraded_ms = e.degraded_ms.max(i.degraded_ms);
                }
                into.retired = into.retired.max(p.retired);
                for t in &p.notified {
                    if !into.notified.contains(t) {
                        into.notified.push(*t);
                    }
                }
                into.notified.sort_unstable();
            }
        }
    }
    let mut latest = periods.into_values().rev();
    if let Some(current) = latest.next() {
        book.current = current;
        book.previous = latest.next();
    }
}

impl Book {
    /// The books of a leader `identity` in term `term`, starting from the records listed at
    /// takeover.
    pub fn new(
        records: Records,
        identity: String,
        term: i64,
        policy: Policy,
        sync_after_ms: u64,
        metrics: Arc<Metrics>,
        loaded: Vec<(String, Read)>,
    ) -> Self {
        Self {
            records,
            identity,
            term,
            policy,
            sync_after_ms,
            metrics,
            slots: Mutex::default(),
            loaded: Mutex::new(loaded.into_iter().collect()),
            committers: Mutex::default(),
            closing: watch::Sender::new(false),
            fenced: watch::Sender::new(false),
        }
    }

    /// The timing rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether a newer leader has fenced this one.
    pub fn is_fenced(&self) -> bool {
        *self.fenced.borrow()
    }

    /// Resolves once a newer leader has fenced this one.
    pub async fn fenced(&self) {
        let mut rx = self.fenced.subscribe();
        let _ = rx.wait_for(|f| *f).await;
    }

    /// The slot of `key` if it is in use.
    pub fn slot(&self, key: &AccountKey) -> Option<Arc<Slot>> {
        self.slots.lock().ok().and_then(|s| s.get(key).cloned())
    }

    /// Every slot in use.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The book of `key` as listed at takeover, if it was and is not in a slot yet (for status
    /// of accounts nobody has synced since).
    pub fn listed(&self, key: &AccountKey, uid: &str) -> Option<AccountBook> {
        let loaded = self.loaded.lock().ok()?;
        match loaded.get(&key.object_name()) {
            Some((Some(r), _)) if r.uid == uid && r.key() == *key => Some(r.book.clone()),
            _ => None,
        }
    }

    /// Names and resourceVersions of listed records not in a slot, with the account each is for
    /// (`None` when it does not parse).
    pub fn listed_records(&self) -> Vec<(String, String, Option<AccountKey>)> {
        self.loaded
            .lock()
            .map(|l| {
                l.iter()
                    .map(|(name, (r, rv))| (name.clone(), rv.clone(), r.as_ref().map(Record::key)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forget a listed record (it was deleted).
    pub fn forget_listed(&self, name: &str) {
        if let Ok(mut l) = self.loaded.lock() {
            l.remove(name);
        }
    }

    /// Stop using the slot of `key` (its account is gone); its committer ends with it.
    pub fn drop_slot(&self, key: &AccountKey) -> Option<Arc<Slot>> {
        let slot = self.slots.lock().ok()?.remove(key)?;
        slot.dirty.notify_one();
        Some(slot)
    }

    /// The slot of `key`, created (and its claim started) when not in use yet.
    pub fn slot_for(
        self: &Arc<Self>,
        key: &AccountKey,
        terms: &Terms,
        now: Timestamp,
    ) -> Arc<Slot> {
        let Ok(mut slots) = self.slots.lock() else {
            // Unreachable in practice (nothing panics under this lock); serve from a detached
            // slot that will never be claimed, so the sync times out as unavailable.
            return Arc::new(self.new_slot(key, terms, now, None).0);
        };
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        let listed = self
            .loaded
            .lock()
            .ok()
            .and_then(|mut l| l.remove(&key.object_name()));
        let (slot, rv) = self.new_slot(key, terms, now, listed);
        let slot = Arc::new(slot);
        slots.insert(key.clone(), slot.clone());
        drop(slots);
        let task = tokio::spawn(commit(self.clone(), slot.clone(), rv));
        if let Ok(mut c) = self.committers.lock() {
            c.retain(|h| !h.is_finished());
            c.push(task);
        }
        slot
    }

    fn new_slot(
        &self,
        key: &AccountKey,
        terms: &Terms,
        now: Timestamp,
        listed: Option<Read>,
    ) -> (Slot, Option<String>) {
        let (record, rv) = match listed {
            Some((Some(r), rv)) if r.uid == terms.uid && r.key() == *key => (r, Some(rv)),
            // A record of a Budget deleted and created again, or one that does not parse:
            // replaced by a fresh book.
            Some((_, rv)) => (self.fresh(key, terms, now), Some(rv)),
            None => (self.fresh(key, terms, now), None),
        };
        let slot = Slot {
            key: key.clone(),
            resource_version: Mutex::new(rv.clone()),
            state: Mutex::new(SlotState { record, version: 0 }),
            progress: watch::Sender::new(Progress::default()),
            dirty: Notify::new(),
        };
        (slot, rv)
    }

    fn fresh(&self, key: &AccountKey, terms: &Terms, now: Timestamp) -> Record {
        Record {
            format: 1,
            kind: key.kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            uid: terms.uid.clone(),
            term: self.term,
            writer: self.identity.clone(),
            book: AccountBook::new(terms.period, now),
        }
    }

    /// Apply a sync. `terms` says, per account of the request (same order), what the ledger
    /// knows of it (`None`: no such Budget). Returns once every change it made is persisted.
    pub async fn sync(
        self: &Arc<Self>,
        req: &SyncRequest,
        terms: &[Option<Terms>],
        now: Timestamp,
    ) -> Result<SyncResponse, SyncError> {
        if self.is_fenced() || *self.closing.borrow() {
            return Err(SyncError::NotLeader);
        }
        let mut grants = Vec::with_capacity(req.accounts.len());
        let mut waits = Vec::new();
        for (account, terms) in req.accounts.iter().zip(terms) {
            let Some(terms) = terms else {
                grants.push(AccountGrant {
                    kind: account.kind,
                    name: account.name.clone(),
                    known: false,
                    ..AccountGrant::default()
                });
                continue;
            };
            let key = AccountKey {
                kind: account.kind,
                namespace: req.namespace.clone(),
                name: account.name.clone(),
            };
            let slot = self.slot_for(&key, terms, now);
            slot.claimed().await?;
            let (grant, version) = {
                let mut state = slot.lock();
                let mut reset = false;
                if state.record.uid != terms.uid {
                    state.record.uid = terms.uid.clone();
                    state.record.book = AccountBook::new(terms.period, now);
                    reset = true;
                }
                let applied = state.record.book.apply(
                    now,
                    &req.instance,
                    account,
                    terms.limit,
                    terms.period,
                    &self.policy,
                );
                if applied.stale {
                    self.metrics.ledger.stale_reports.inc();
                    tracing::info!(
                        account = %key,
                        instance = %req.instance,
                        "a report for a period the ledger no longer keeps was not counted"
                    );
                }
                let version = if applied.changed || reset {
                    slot.changed(&mut state)
                } else {
                    state.version
                };
                let current = &state.record.book.current;
                let grant = AccountGrant {
                    kind: account.kind,
                    name: account.name.clone(),
                    known: true,
                    period_start: Some(current.start),
                    period_end: current.end,
                    limit: terms.limit,
                    granted: applied.granted,
                    spent_total: current.spent(),
                    committed_total: current.committed(),
                };
                (grant, version)
            };
            grants.push(grant);
            waits.push((slot, version));
        }
        for (slot, version) in waits {
            slot.persisted(version).await?;
        }
        Ok(SyncResponse {
            accounts: grants,
            lease_ttl_ms: self.policy.lease_ttl_ms,
            sync_after_ms: self.sync_after_ms,
        })
    }

    /// Stop granting, write what is dirty, and wait (at most `grace`) for the committers.
    pub async fn close(&self, grace: Duration) {
        self.closing.send_replace(true);
        let handles: Vec<JoinHandle<()>> = self
            .committers
            .lock()
            .map(|mut c| c.drain(..).collect())
            .unwrap_or_default();
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        let all = futures::future::join_all(handles);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("the ledger could not write every record before stopping");
            for a in aborts {
                a.abort();
            }
        }
    }

    fn fence(&self, slot: &Slot, by: &Record) {
        tracing::warn!(
            account = %slot.key,
            writer = %by.writer,
            term = by.term,
            our_term = self.term,
            "a newer ledger leader wrote this account: this replica stops serving the ledger"
        );
        slot.progress.send_modify(|p| p.fenced = true);
        self.fenced.send_replace(true);
    }
}

/// What to do after a write conflicted: read the record again and either stop (a newer term)
/// or merge it and go on from its resourceVersion.
async fn reconcile_conflict(book: &Book, slot: &Slot) -> Result<Option<String>, ()> {
    let read = match book.records.get(&slot.key).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(account = %slot.key, error = %e, "failed to read the ledger record after a conflict");
            return Err(());
        }
    };
    let Some((record, rv)) = read else {
        // Deleted: create it again.
        return Ok(None);
    };
    if let Some(theirs) = record {
        if theirs.term > book.term {
            book.fence(slot, &theirs);
            return Err(());
        }
        let mut state = slot.lock();
        if theirs.uid == state.record.uid && theirs.key() == slot.key {
            merge(&mut state.record.book, &theirs.book);
        }
        slot.changed(&mut state);
    }
    Ok(Some(rv))
}

/// A slot's committer: claims the record, then writes each new version as soon as the previous
/// write is done, until the book closes (after a last write) or is fenced.
async fn commit(book: Arc<Book>, slot: Arc<Slot>, mut rv: Option<String>) {
    let mut closing = book.closing.subscribe();
    let mut backoff = Duration::from_millis(100);
    let mut claimed = false;
    let mut last_error: Option<Instant> = None;
    loop {
        let next = {
            let mut state = slot.lock();
            let dirty = state.version > slot.progress.borrow().persisted;
            if *closing.borrow() && !(claimed && dirty) {
                // Stopping: nothing to write, or nothing claimed to write it to.
                return;
            }
            if Arc::strong_count(&slot) == 1 {
                // The slot was dropped (its account is gone).
                return;
            }
            if claimed && !dirty {
                None
            } else {
                state.record.term = book.term;
                state.record.writer = book.identity.clone();
                Some((state.record.clone(), state.version))
            }
        };
        let Some((record, version)) = next else {
            tokio::select! {
                () = slot.dirty.notified() => {}
                _ = closing.changed() => {}
            }
            continue;
        };
        let started = Instant::now();
        let written = match &rv {
            Some(rv) => book.records.replace(&record, rv).await,
            None => book.records.create(&record).await,
        };
        book.metrics
            .ledger
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        match written {
            Ok(Written::Ok(new)) => {
                book.metrics.ledger.commit("ok");
                if let Ok(mut r) = slot.resource_version.lock() {
                    *r = Some(new.clone());
                }
                rv = Some(new);
                claimed = true;
                backoff = Duration::from_millis(100);
                slot.progress.send_modify(|p| {
                    p.claimed = true;
                    p.persisted = p.persisted.max(version);
                });
            }
            Ok(Written::Conflict | Written::Gone) => {
                book.metrics.ledger.commit("conflict");
                match reconcile_conflict(&book, &slot).await {
                    Ok(new_rv) => rv = new_rv,
                    Err(()) if book.is_fenced() => return,
                    Err(()) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            Err(e) => {
                book.metrics.ledger.commit("error");
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(account = %slot.key, error = %e, "failed to write the ledger record; retrying");
                    last_error = Some(Instant::now());
                }
                if *closing.borrow() && claimed {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::account::Instance;
    use gatehouse_crds::ledger::Amount;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn usd(n: u64) -> Amount {
        Amount {
            nano_usd: n,
            tokens: 0,
        }
    }

    fn instance(spent: u64, granted: u64) -> Instance {
        Instance {
            spent: usd(spent),
            granted: usd(granted),
            ..Instance::default()
        }
    }

    #[test]
    fn merging_keeps_the_larger_number_and_the_latest_two_periods() {
        let day1 = ts("2026-11-29T00:00:00Z");
        let day2 = ts("2026-11-30T00:00:00Z");
        let mut ours = AccountBook::new(Period::Daily, day2);
        ours.current.instances.insert("a".into(), instance(5, 10));
        ours.current.notified = vec![80];
        let mut theirs = AccountBook::new(Period::Daily, day1);
        theirs.current.instances.insert("b".into(), instance(7, 7));
        theirs.previous = None;
        let mut theirs_now = AccountBook::new(Period::Daily, day2);
        theirs_now
            .current
            .instances
            .insert("a".into(), instance(8, 9));
        theirs_now.current.notified = vec![50];
        theirs_now.previous = Some(theirs.current.clone());
        merge(&mut ours, &theirs_now);
        assert_eq!(ours.current.start, day2);
        assert_eq!(ours.current.instances["a"], instance(8, 10));
        assert_eq!(ours.current.notified, [50, 80]);
        assert_eq!(ours.previous.as_ref().map(|p| p.start), Some(day1));
        assert_eq!(ours.previous.unwrap().spent(), usd(7));
    }
}
