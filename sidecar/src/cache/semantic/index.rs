//! The in-process approximate-nearest-neighbour index of one scope: an inverted-file index
//! (IVF) over unit vectors, bounded in entries, oldest evicted first.
//!
//! - Up to [`Index::train_at`] entries it is a flat scan (exact).
//! - When it first holds that many, it is due to partition itself, once. Training never runs
//!   inside [`Index::insert`]: the owner marks it started ([`Index::start_training`]), copies
//!   the entries ([`Index::training_job`], a read of the index), runs [`TrainJob::run`] with no
//!   lock held (the cache does it on a blocking thread) and hands the result to
//!   [`Index::apply`], a short step under the write lock. Until then searches stay flat scans.
//! - The training picks `nlist` ≈ √maxEntries centroids from the copied entries (spread out:
//!   each next one the entry farthest from those picked, of a sample), refines them with two
//!   rounds of spherical k-means and files every copied entry under its nearest centroid.
//!   Applying keeps those lists for the entries still held unchanged and files the entries
//!   added since under their nearest centroid. From then on an entry is filed under its
//!   nearest centroid when inserted, and a search scans the `nprobe` lists whose centroids are
//!   nearest the query. Centroids are not retrained.
//! - Every entry carries a `context` (the hash of what must match exactly: the conversation
//!   before the last message, the model, the parameters); a search compares vectors only of
//!   entries with the query's context.
//! - Vectors live in one contiguous slab; dot products run 8 lanes wide (the compiler
//!   vectorizes them).
//!
//! The recall against an exact scan, and a search's cost at 10,000 × 384, are in
//! docs/benchmarks.md (`gatehouse-bench --semantic`).

use std::collections::VecDeque;

/// Entries up to which the index stays a flat scan, whatever `maxEntries` is.
pub const FLAT_MAX: usize = 2048;

/// How many lists a search scans (of about √maxEntries).
pub const DEFAULT_NPROBE: usize = 8;

/// One search result: similarity and the entry.
#[derive(Debug)]
pub struct Found<'a, T> {
    /// Cosine similarity of the query and the entry's vector.
    pub similarity: f32,
    /// The entry's value.
    pub value: &'a T,
    /// Its slot, for [`Index::remove`].
    pub slot: usize,
}

/// A copy of an index's entries to partition it from, off its lock ([`Index::training_job`]).
#[derive(Debug)]
pub struct TrainJob {
    dim: usize,
    nlist: usize,
    /// The copied entries' (slot, seq), in slot order.
    entries: Vec<(usize, u64)>,
    /// Their vectors, `dim` each, in the same order.
    vectors: Vec<f32>,
}

/// Centroids and the list of each copied entry ([`TrainJob::run`]), for [`Index::apply`].
#[derive(Debug)]
pub struct Trained {
    dim: usize,
    centroids: Vec<f32>,
    /// (slot, seq, list) of each copied entry.
    assigned: Vec<(usize, u64, u32)>,
}

#[derive(Debug)]
struct Slot<T> {
    seq: u64,
    context: u64,
    list: u32,
    value: T,
}

/// A bounded IVF index of unit vectors of one dimension.
#[derive(Debug)]
pub struct Index<T> {
    dim: usize,
    max_entries: usize,
    nlist: usize,
    nprobe: usize,
    vectors: Vec<f32>,
    slots: Vec<Option<Slot<T>>>,
    free: Vec<usize>,
    order: VecDeque<(usize, u64)>,
    seq: u64,
    len: usize,
    centroids: Vec<f32>,
    lists: Vec<Vec<usize>>,
    training: bool,
}

impl<T> Index<T> {
    /// An empty index of `dim`-dimensional vectors holding at most `max_entries`.
    pub fn new(dim: usize, max_entries: usize) -> Self {
        let max_entries = max_entries.max(1);
        let nlist = ((max_entries as f64).sqrt().round() as usize).clamp(1, 1024);
        Self {
            dim,
            max_entries,
            nlist,
            nprobe: DEFAULT_NPROBE.min(nlist),
            vectors: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            order: VecDeque::new(),
            seq: 0,
            len: 0,
            centroids: Vec::new(),
            lists: Vec::new(),
            training: false,
        }
    }

    /// Lists scanned per search (at least 1; all of them is an exact search).
    pub fn with_nprobe(mut self, nprobe: usize) -> Self {
        self.nprobe = nprobe.clamp(1, self.nlist);
        self
    }

    /// A new bound (the Route's `maxEntries` changed); the next insert evicts down to it.
    pub fn set_max_entries(&mut self, max_entries: usize) {
        self.max_entries = max_entries.max(1);
    }

    /// The vectors' dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether searches go through centroids (false: a flat scan).
    pub fn is_partitioned(&self) -> bool {
        !self.centroids.is_empty()
    }

    /// Entries at which the index partitions itself; never, when `maxEntries` ≤ [`FLAT_MAX`].
    pub fn train_at(&self) -> Option<usize> {
        (self.max_entries > FLAT_MAX).then(|| (self.nlist * 16).clamp(FLAT_MAX, self.max_entries))
    }

    /// Whether it should partition itself now: not partitioned, no training under way, and at
    /// least [`Index::train_at`] entries.
    pub fn training_due(&self) -> bool {
        !self.is_partitioned() && !self.training && self.train_at().is_some_and(|n| self.len >= n)
    }

    /// Whether a training started and was neither applied nor abandoned.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// When training is due, marks it under way (no other starts until it is applied or
    /// abandoned) and returns true; the caller then takes [`Index::training_job`].
    pub fn start_training(&mut self) -> bool {
        let due = self.training_due();
        if due {
            self.training = true;
        }
        due
    }

    /// A training that will not be applied (its thread could not start): it may start again.
    pub fn abandon_training(&mut self) {
        self.training = false;
    }

    /// A copy of the entries held to train on, while a training is under way and the index is
    /// not partitioned yet; `None` otherwise.
    pub fn training_job(&self) -> Option<TrainJob> {
        if !self.training || self.is_partitioned() {
            return None;
        }
        let mut entries = Vec::with_capacity(self.len);
        let mut vectors = Vec::with_capacity(self.len * self.dim);
        for (slot, s) in self.slots.iter().enumerate() {
            if let Some(s) = s {
                entries.push((slot, s.seq));
                vectors.extend_from_slice(&self.vectors[slot * self.dim..(slot + 1) * self.dim]);
            }
        }
        Some(TrainJob {
            dim: self.dim,
            nlist: self.nlist,
            entries,
            vectors,
        })
    }

    /// Partitions the index with `trained` (from this index's [`Index::training_job`]): the
    /// copied entries still held unchanged go to the lists computed for them, entries added
    /// since to their nearest centroid. Ends the training either way.
    pub fn apply(&mut self, trained: Trained) {
        self.training = false;
        if self.is_partitioned() || trained.dim != self.dim || trained.centroids.is_empty() {
            return;
        }
        let nlist = trained.centroids.len() / self.dim;
        self.centroids = trained.centroids;
        self.lists = vec![Vec::new(); nlist];
        let mut filed = vec![false; self.slots.len()];
        for (slot, seq, list) in trained.assigned {
            let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            // Evicted since, and the slot reused: the new entry is filed below.
            if s.seq != seq || list as usize >= nlist {
                continue;
            }
            s.list = list;
            self.lists[list as usize].push(slot);
            filed[slot] = true;
        }
        for (slot, filed) in filed.into_iter().enumerate() {
            if filed || self.slots[slot].is_none() {
                continue;
            }
            let v = &self.vectors[slot * self.dim..(slot + 1) * self.dim];
            let l = nearest(&self.centroids, self.dim, v, 1)[0];
            self.lists[l].push(slot);
            if let Some(s) = self.slots[slot].as_mut() {
                s.list = l as u32;
            }
        }
    }

    /// Trains in place when due (holding the index the whole time): for a caller with no
    /// readers to keep serving, such as the benchmark. Returns whether it trained.
    pub fn train_if_due(&mut self) -> bool {
        if !self.start_training() {
            return false;
        }
        match self.training_job() {
            Some(job) => self.apply(job.run()),
            None => self.abandon_training(),
        }
        true
    }

    /// Bytes held by vectors and bookkeeping (not the values' own heap).
    pub fn approx_bytes(&self) -> usize {
        self.vectors.capacity() * 4
            + self.slots.capacity() * std::mem::size_of::<Option<Slot<T>>>()
            + self.order.capacity() * 16
            + self.centroids.capacity() * 4
            + self.lists.iter().map(|l| l.capacity() * 8).sum::<usize>()
    }

    /// Adds `vector` (unit length, `dim` long; others are refused) under `context`; evicts the
    /// oldest entries past `maxEntries`. Returns the slot, or `None` for a vector of another
    /// dimension or not finite.
    pub fn insert(&mut self, context: u64, vector: &[f32], value: T) -> Option<usize> {
        if vector.len() != self.dim || !vector.iter().all(|x| x.is_finite()) {
            return None;
        }
        while self.len >= self.max_entries {
            let Some((slot, seq)) = self.order.pop_front() else {
                break;
            };
            if self.slots[slot].as_ref().is_some_and(|s| s.seq == seq) {
                self.remove(slot);
            }
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                if self.slots.len() == self.slots.capacity() {
                    // Grow geometrically, but never past maxEntries (the slab is the index's
                    // memory: no doubling beyond the bound).
                    let target = (self.slots.len() * 2).clamp(16, self.max_entries.max(16));
                    let more = target.saturating_sub(self.slots.len()).max(1);
                    self.slots.reserve_exact(more);
                    self.vectors.reserve_exact(more * self.dim);
                }
                self.slots.push(None);
                self.vectors.resize(self.slots.len() * self.dim, 0.0);
                self.slots.len() - 1
            }
        };
        self.vectors[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(vector);
        self.seq += 1;
        let list = if self.is_partitioned() {
            let l = self.nearest_centroids(vector, 1)[0];
            self.lists[l].push(slot);
            l as u32
        } else {
            0
        };
        self.slots[slot] = Some(Slot {
            seq: self.seq,
            context,
            list,
            value,
        });
        self.order.push_back((slot, self.seq));
        self.len += 1;
        Some(slot)
    }

    /// Removes the entry in `slot` (a value the cache no longer holds).
    pub fn remove(&mut self, slot: usize) {
        let Some(s) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let list = self.lists.get_mut(s.list as usize);
        if let Some((list, p)) =
            list.and_then(|l| l.iter().position(|&x| x == slot).map(|p| (l, p)))
        {
            list.swap_remove(p);
        }
        self.free.push(slot);
        self.len -= 1;
    }

    /// The `k` entries of `context` most similar to `query` with a similarity of at least
    /// `min_similarity`, most similar first.
    pub fn search(
        &self,
        context: u64,
        query: &[f32],
        k: usize,
        min_similarity: f32,
    ) -> Vec<Found<'_, T>> {
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
        if query.len() != self.dim || k == 0 {
            return Vec::new();
        }
        let consider = |slot: usize, best: &mut Vec<(f32, usize)>| {
            let Some(s) = &self.slots[slot] else { return };
            if s.context != context {
                return;
            }
            let sim = dot(query, &self.vectors[slot * self.dim..(slot + 1) * self.dim]);
            if sim < min_similarity || (best.len() == k && sim <= best[k - 1].0) {
                return;
            }
            let at = best.partition_point(|(b, _)| *b >= sim);
            best.insert(at, (sim, slot));
            best.truncate(k);
        };
        if self.is_partitioned() {
            for l in self.nearest_centroids(query, self.nprobe) {
                for &slot in &self.lists[l] {
                    consider(slot, &mut best);
                }
            }
        } else {
            for slot in 0..self.slots.len() {
                consider(slot, &mut best);
            }
        }
        best.into_iter()
            .filter_map(|(similarity, slot)| {
                self.slots[slot].as_ref().map(|s| Found {
                    similarity,
                    value: &s.value,
                    slot,
                })
            })
            .collect()
    }

    /// Indices of the `n` centroids nearest `v`, nearest first.
    fn nearest_centroids(&self, v: &[f32], n: usize) -> Vec<usize> {
        nearest(&self.centroids, self.dim, v, n)
    }
}

impl TrainJob {
    /// Entries copied.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was copied.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Picks the centroids from the copied entries and files each under one (the expensive
    /// part, run with no lock held).
    pub fn run(self) -> Trained {
        let dim = self.dim;
        let n = self.entries.len();
        if n == 0 || dim == 0 {
            return Trained {
                dim,
                centroids: Vec::new(),
                assigned: Vec::new(),
            };
        }
        let nlist = self.nlist.min(n).max(1);
        let vec_of = |i: usize| &self.vectors[i * dim..(i + 1) * dim];
        // Farthest-point seeding over an evenly spaced sample: centroids spread over the data.
        let sample: Vec<usize> = (0..n).step_by((n / (nlist * 8)).max(1)).collect();
        let mut centroids: Vec<f32> = Vec::with_capacity(nlist * dim);
        centroids.extend_from_slice(vec_of(sample[0]));
        let mut closest: Vec<f32> = sample
            .iter()
            .map(|&i| dot(vec_of(i), vec_of(sample[0])))
            .collect();
        while centroids.len() < nlist * dim {
            let Some((far, _)) = closest.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1))
            else {
                break;
            };
            let c = vec_of(sample[far]).to_vec();
            for (k, &i) in sample.iter().enumerate() {
                closest[k] = closest[k].max(dot(vec_of(i), &c));
            }
            centroids.extend_from_slice(&c);
        }
        let nlist = centroids.len() / dim;
        // Two rounds of spherical k-means over every copied entry.
        let mut assign = vec![0usize; n];
        for round in 0..3 {
            for (i, a) in assign.iter_mut().enumerate() {
                *a = nearest(&centroids, dim, vec_of(i), 1)[0];
            }
            if round == 2 {
                break;
            }
            let mut sums = vec![0f32; nlist * dim];
            for (i, &c) in assign.iter().enumerate() {
                for (acc, x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(vec_of(i)) {
                    *acc += x;
                }
            }
            for (c, sum) in sums.chunks_exact_mut(dim).enumerate() {
                let norm = dot(sum, sum).sqrt();
                if norm > 1e-6 {
                    sum.iter_mut().for_each(|x| *x /= norm);
                    centroids[c * dim..(c + 1) * dim].copy_from_slice(sum);
                }
            }
        }
        let assigned = self
            .entries
            .iter()
            .zip(&assign)
            .map(|(&(slot, seq), &l)| (slot, seq, l as u32))
            .collect();
        Trained {
            dim,
            centroids,
            assigned,
        }
    }
}

/// Indices of the `n` centroids (`dim` floats each) nearest `v`, nearest first.
fn nearest(centroids: &[f32], dim: usize, v: &[f32], n: usize) -> Vec<usize> {
    let mut sims: Vec<(f32, usize)> = centroids
        .chunks_exact(dim.max(1))
        .enumerate()
        .map(|(i, c)| (dot(v, c), i))
        .collect();
    let n = n.min(sims.len()).max(1);
    if sims.len() > n {
        sims.select_nth_unstable_by(n - 1, |a, b| b.0.total_cmp(&a.0));
        sims.truncate(n);
    }
    sims.sort_by(|a, b| b.0.total_cmp(&a.0));
    sims.into_iter().map(|(_, i)| i).collect()
}

/// Dot product, 8 lanes wide.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `v` scaled to unit length; `None` for a zero or non-finite vector.
pub fn normalized(v: &[f32]) -> Option<Vec<f32>> {
    let norm = dot(v, v).sqrt();
    (norm.is_finite() && norm > 1e-12).then(|| v.iter().map(|x| x / norm).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random unit vector.
    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        normalized(&v).unwrap()
    }

    #[test]
    fn finds_the_nearest_above_the_threshold_in_its_context() {
        let mut idx = Index::new(16, 100);
        for i in 0..50 {
            idx.insert(i % 2, &unit(i, 16), i).unwrap();
        }
        let q = unit(10, 16);
        let found = idx.search(0, &q, 3, 0.99);
        assert_eq!(found.len(), 1);
        assert_eq!(*found[0].value, 10);
        assert!((found[0].similarity - 1.0).abs() < 1e-5);
        // Another context never sees it.
        assert!(idx.search(1, &q, 3, 0.99).is_empty());
        // Results are most similar first.
        let all = idx.search(0, &q, 5, -1.0);
        assert_eq!(all.len(), 5);
        assert!(all.windows(2).all(|w| w[0].similarity >= w[1].similarity));
    }

    #[test]
    fn stays_within_max_entries_evicting_the_oldest() {
        let mut idx = Index::new(8, 10);
        for i in 0..25u64 {
            idx.insert(0, &unit(i, 8), i).unwrap();
            assert!(idx.len() <= 10);
        }
        assert_eq!(idx.len(), 10);
        // The first 15 are gone, the last 10 are there.
        for i in 0..25u64 {
            let found = idx.search(0, &unit(i, 8), 1, 0.999);
            assert_eq!(found.len(), usize::from(i >= 15), "entry {i}");
        }
        // Slots are reused, not grown.
        assert!(idx.slots.len() <= 10);
    }

    #[test]
    fn removed_entries_are_not_found_and_refused_vectors_not_stored() {
        let mut idx = Index::new(8, 10);
        let slot = idx.insert(0, &unit(1, 8), 1).unwrap();
        idx.remove(slot);
        idx.remove(slot);
        assert!(idx.search(0, &unit(1, 8), 1, 0.5).is_empty());
        assert!(idx.is_empty());
        assert!(idx.insert(0, &[1.0; 7], 2).is_none());
        assert!(idx.insert(0, &[f32::NAN; 8], 2).is_none());
        assert!(idx.search(0, &[1.0; 7], 1, 0.0).is_empty());
    }

    #[test]
    fn partitioned_index_finds_near_duplicates_and_stays_bounded() {
        let dim = 32;
        let mut idx = Index::new(dim, 5000);
        let n = 6000u64;
        for i in 0..n {
            idx.insert(7, &unit(i, dim), i).unwrap();
            idx.train_if_due();
        }
        assert!(idx.is_partitioned());
        assert_eq!(idx.len(), 5000);
        let lists: usize = idx.lists.iter().map(Vec::len).sum();
        assert_eq!(lists, 5000, "every live entry is in exactly one list");
        // A slightly perturbed copy of a held vector finds it (its list is the nearest).
        let mut hits = 0;
        for i in (n - 5000..n).step_by(50) {
            let mut q = unit(i, dim);
            q[0] += 0.05;
            let q = normalized(&q).unwrap();
            if idx.search(7, &q, 1, 0.9).first().map(|f| *f.value) == Some(i) {
                hits += 1;
            }
        }
        assert!(hits >= 95, "found {hits} of 100 near-duplicates");
    }

    #[test]
    fn insert_never_trains_and_a_training_applied_later_files_what_changed_meanwhile() {
        let dim = 16;
        let mut idx = Index::new(dim, 2100);
        let at = idx.train_at().unwrap();
        assert_eq!(at, 2048);
        for i in 0..at as u64 {
            idx.insert(0, &unit(i, dim), i).unwrap();
        }
        // Due, but inserting alone never partitions.
        assert!(idx.training_due());
        assert!(!idx.is_partitioned());
        assert!(
            idx.training_job().is_none(),
            "no copy before a training starts"
        );
        assert!(idx.start_training());
        assert!(!idx.start_training(), "at most one training at a time");
        assert!(!idx.training_due());
        let job = idx.training_job().unwrap();
        assert_eq!(job.len(), at);
        // Meanwhile: 100 more (48 oldest evicted, their slots reused) and one removed.
        let mut slot_of_1000 = None;
        for i in at as u64..at as u64 + 100 {
            idx.insert(0, &unit(i, dim), i).unwrap();
        }
        for f in idx.search(0, &unit(1000, dim), 1, 0.999) {
            slot_of_1000 = Some(f.slot);
        }
        idx.remove(slot_of_1000.unwrap());
        // Searches stay flat scans until applied.
        assert!(!idx.is_partitioned());
        assert_eq!(idx.search(0, &unit(2100, dim), 1, 0.999).len(), 1);
        let trained = job.run();
        assert!(!idx.is_partitioned());
        idx.apply(trained);
        assert!(idx.is_partitioned());
        assert!(!idx.is_training());
        assert!(!idx.training_due(), "partitioned once, never again");
        assert_eq!(idx.len(), 2099);
        // Every held entry is in exactly one list, the one it records.
        let mut seen = vec![0usize; idx.slots.len()];
        for (l, list) in idx.lists.iter().enumerate() {
            for &slot in list {
                seen[slot] += 1;
                assert_eq!(idx.slots[slot].as_ref().unwrap().list as usize, l);
            }
        }
        for (slot, s) in idx.slots.iter().enumerate() {
            assert_eq!(seen[slot], usize::from(s.is_some()), "slot {slot}");
        }
        // Entries added during training are found through the lists; evicted ones are not.
        for i in 0..at as u64 + 100 {
            let found = idx.search(0, &unit(i, dim), 1, 0.999);
            let held = i >= 48 && i != 1000;
            assert_eq!(found.len(), usize::from(held), "entry {i}");
            if held {
                assert_eq!(*found[0].value, i);
            }
        }
        // A stale result (another dimension) is refused and ends the training.
        let mut other = Index::new(dim + 1, 2100);
        for i in 0..at as u64 {
            other.insert(0, &unit(i, dim + 1), i).unwrap();
        }
        assert!(other.start_training());
        other.apply(Trained {
            dim,
            centroids: vec![0.0; dim],
            assigned: Vec::new(),
        });
        assert!(!other.is_partitioned());
        assert!(!other.is_training());
        assert!(other.train_if_due());
        assert!(other.is_partitioned());
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a = unit(3, 389);
        let b = unit(4, 389);
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-5);
    }
}
