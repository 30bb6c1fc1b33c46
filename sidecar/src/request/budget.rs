//! The global byte budget for request bodies in flight. Every body is charged for as long as its
//! bytes live (read, parsed, forwarded); a request that would take the total over the budget is
//! shed with a 503 before more of it is read, so a burst of big bodies cannot take the sidecar's
//! memory with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of request bodies in flight, shared by every request of the proxy port.
#[derive(Debug)]
pub struct BodyBudget {
    capacity: usize,
    used: AtomicUsize,
}

impl BodyBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes currently charged.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty charge, grown as the body arrives.
    pub fn permit(self: &Arc<Self>) -> BodyPermit {
        BodyPermit {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn try_take(&self, bytes: usize) -> bool {
        let mut current = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = current.checked_add(bytes).filter(|n| *n <= self.capacity) else {
                return false;
            };
            match self.used.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

/// One request's charge against the [`BodyBudget`]; given back when dropped.
#[derive(Debug)]
pub struct BodyPermit {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyPermit {
    /// Make the charge at least `total` bytes. `false` (nothing changed) when the budget cannot
    /// cover it.
    pub fn grow_to(&mut self, total: usize) -> bool {
        if total <= self.bytes {
            return true;
        }
        let more = total - self.bytes;
        if !self.budget.try_take(more) {
            return false;
        }
        self.bytes = total;
        true
    }

    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_and_given_back() {
        let budget = BodyBudget::new(100);
        let mut a = budget.permit();
        assert!(a.grow_to(60));
        let mut b = budget.permit();
        assert!(!b.grow_to(41), "60 + 41 is over the budget");
        assert_eq!(b.bytes(), 0);
        assert!(b.grow_to(40));
        assert_eq!(budget.used(), 100);
        assert!(a.grow_to(50), "shrinking is a no-op that succeeds");
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
