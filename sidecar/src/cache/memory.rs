//! The in-process backend: per route, entries by key, bounded by the route's `maxBytes`, the
//! least recently used evicted first; an entry past its TTL is a miss and is dropped when seen.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::{Entry, Key};
use crate::metrics::Metrics;

/// Bytes an entry is charged besides its body: key, bookkeeping, the maps' slots.
const OVERHEAD: usize = 160;

/// Every route's entries.
#[derive(Debug, Default)]
pub struct Memory {
    routes: RwLock<HashMap<Arc<str>, Arc<Mutex<Store>>>>,
}

/// One route's entries.
#[derive(Debug, Default)]
struct Store {
    entries: HashMap<Key, Slot>,
    /// Keys by last use, oldest first.
    lru: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    used: u64,
    size: usize,
}

impl Memory {
    fn store(&self, route: &Arc<str>) -> Option<Arc<Mutex<Store>>> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(route)
            .cloned()
    }

    /// The fresh entry of `key` in `route`, if any (marked as just used).
    pub fn get(
        &self,
        route: &Arc<str>,
        key: &Key,
        ttl_ms: u64,
        metrics: &Metrics,
    ) -> Option<Entry> {
        let store = self.store(route)?;
        let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
        let store = &mut *store;
        let slot = store.entries.get_mut(key)?;
        if !slot.entry.fresh(ttl_ms) {
            let (used, size) = (slot.used, slot.size);
            store.entries.remove(key);
            store.lru.remove(&used);
            store.bytes -= size;
            metrics
                .cache
                .set_size(route, "memory", store.entries.len(), store.bytes);
            return None;
        }
        store.tick += 1;
        store.lru.remove(&slot.used);
        slot.used = store.tick;
        store.lru.insert(store.tick, key.clone());
        Some(slot.entry.clone())
    }

    /// Store `entry` under `key` in `route`, evicting the least recently used until the route's
    /// entries fit in `max_bytes`. An entry bigger than `max_bytes` on its own is not stored.
    pub fn put(&self, route: &Arc<str>, key: Key, entry: Entry, max_bytes: u64, metrics: &Metrics) {
        let size = entry.size() + OVERHEAD;
        let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        if size > max {
            return;
        }
        let store = match self.store(route) {
            Some(s) => s,
            None => self
                .routes
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(route.clone())
                .or_default()
                .clone(),
        };
        let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
        let store = &mut *store;
        if let Some(old) = store.entries.remove(&key) {
            store.lru.remove(&old.used);
            store.bytes -= old.size;
        }
        while store.bytes + size > max {
            let Some((_, oldest)) = store.lru.pop_first() else {
                break;
            };
            if let Some(old) = store.entries.remove(&oldest) {
                store.bytes -= old.size;
            }
        }
        store.tick += 1;
        store.lru.insert(store.tick, key.clone());
        store.entries.insert(
            key,
            Slot {
                entry,
                used: store.tick,
                size,
            },
        );
        store.bytes += size;
        metrics
            .cache
            .set_size(route, "memory", store.entries.len(), store.bytes);
    }
}
