//! The live connections of one listener, and the cap on them.
//!
//! At the cap the accept loop first makes room by evicting connections with no request in flight,
//! the longest-unused first; only when every connection is serving a request does it stop
//! accepting until one closes. New connections then wait in the kernel's backlog instead of
//! failing with "too many open files", and a new request is served as soon as a slot frees.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::connection::{Connection, Phase};

/// The live connections of a listener.
#[derive(Debug)]
pub struct Registry {
    max: usize,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Connections asked to close that have not closed yet.
    evicting: AtomicUsize,
    /// Notified when a connection closes or goes idle.
    room: Arc<Notify>,
}

impl Registry {
    /// A registry allowing `max` connections (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            evicting: AtomicUsize::new(0),
            room: Arc::new(Notify::new()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        // A poisoned map is still a consistent map: entries are only inserted and removed.
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.live().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a new connection would exceed the cap.
    pub fn full(&self) -> bool {
        self.len() >= self.max
    }

    /// Track a connection accepted now; returns its id and state.
    pub fn insert(&self) -> (u64, Arc<Connection>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Connection::new(self.room.clone()));
        self.live().insert(id, conn.clone());
        (id, conn)
    }

    /// Forget a closed connection.
    pub fn remove(&self, id: u64) {
        if let Some(conn) = self.live().remove(&id)
            && conn.evicting()
        {
            self.evicting.fetch_sub(1, Ordering::AcqRel);
        }
        self.room.notify_one();
    }

    /// Wait until a connection closes or goes idle.
    pub async fn room(&self) {
        self.room.notified().await;
    }

    /// Make room for one more connection: ask enough connections without a request in flight to
    /// close, the longest-unused first, counting those already closing. At least `batch` are
    /// asked at once so a flood does not scan the whole table for every accept. Returns how many
    /// were asked now.
    pub fn make_room(&self, batch: usize) -> usize {
        let live = self.live();
        let closing = self.evicting.load(Ordering::Acquire);
        let needed = (live.len() + 1).saturating_sub(self.max);
        if needed <= closing {
            return 0;
        }
        let want = (needed - closing).max(batch);
        let mut candidates: Vec<(Instant, &Arc<Connection>)> = live
            .values()
            .filter(|c| !c.evicting())
            .filter_map(|c| match c.phase() {
                Phase::Idle(since) | Phase::Headers(since) => Some((since, c)),
                Phase::Busy(_) => None,
            })
            .collect();
        if candidates.len() > want {
            candidates.select_nth_unstable_by_key(want - 1, |(since, _)| *since);
            candidates.truncate(want);
        }
        let mut asked = 0;
        for (_, conn) in candidates {
            if conn.request_eviction() {
                asked += 1;
            }
        }
        self.evicting.fetch_add(asked, Ordering::AcqRel);
        asked
    }

    /// Ask every connection without a request in flight to close, e.g. when the process ran out
    /// of file descriptors below the cap. Returns how many were asked.
    pub fn shed_idle(&self) -> usize {
        let live = self.live();
        let mut asked = 0;
        for conn in live.values() {
            if !matches!(conn.phase(), Phase::Busy(_)) && conn.request_eviction() {
                asked += 1;
            }
        }
        self.evicting.fetch_add(asked, Ordering::AcqRel);
        asked
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_longest_unused_idle_connections_are_asked_to_close() {
        let reg = Registry::new(3);
        let (a, ca) = reg.insert();
        std::thread::sleep(Duration::from_millis(2));
        let (_b, cb) = reg.insert();
        std::thread::sleep(Duration::from_millis(2));
        let (_c, cc) = reg.insert();
        let _busy = cb.begin_request();
        assert!(reg.full());
        assert_eq!(reg.make_room(1), 1);
        assert!(ca.evicting() && !cb.evicting() && !cc.evicting());
        // Already closing: nothing more is needed for one new connection.
        assert_eq!(reg.make_room(1), 0);
        reg.remove(a);
        assert!(!reg.full());
    }

    #[tokio::test]
    async fn busy_connections_are_never_evicted() {
        let reg = Registry::new(1);
        let (_a, ca) = reg.insert();
        let guard = ca.begin_request();
        assert_eq!(reg.make_room(4), 0);
        assert_eq!(reg.shed_idle(), 0);
        drop(guard);
        assert_eq!(reg.make_room(4), 1);
    }

    #[tokio::test]
    async fn a_batch_asks_more_than_one_under_a_flood() {
        let reg = Registry::new(4);
        let conns: Vec<_> = (0..4).map(|_| reg.insert()).collect();
        assert_eq!(reg.make_room(2), 2);
        assert_eq!(conns.iter().filter(|(_, c)| c.evicting()).count(), 2);
    }
}
