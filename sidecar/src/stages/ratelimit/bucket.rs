//! A local rate limit's allowance: a token bucket per unit (requests or tokens) that holds at
//! most one minute's limit and refills continuously at the limit per minute.
//!
//! So a fresh bucket admits a burst of the whole limit, and after that the limit per minute; in
//! any 60 s window at most twice the limit gets through (a full bucket plus a minute of refill),
//! and over longer spans the limit per minute. A request larger than the whole limit (a TPM
//! estimate over the limit) is admitted only into a full bucket, which it then leaves in debt.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Pool, Status, Take};

/// One unit of one local limit.
#[derive(Debug)]
pub struct Bucket {
    /// Per minute.
    limit: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Units available; negative after a correction that charged more than was left.
    level: f64,
    /// When `level` was last brought up to date.
    at: Instant,
}

impl Bucket {
    /// A full bucket of `limit` per minute.
    pub fn new(limit: u64, now: Instant) -> Self {
        Self {
            limit,
            state: Mutex::new(State {
                level: limit as f64,
                at: now,
            }),
        }
    }

    fn per_second(&self) -> f64 {
        self.limit as f64 / 60.0
    }

    fn refill(&self, state: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(state.at).as_secs_f64();
        state.level = (state.level + elapsed * self.per_second()).min(self.limit as f64);
        state.at = now;
    }

    fn status_of(&self, state: &State) -> Status {
        let missing = (self.limit as f64 - state.level).max(0.0);
        Status {
            limit: self.limit,
            remaining: state.level.max(0.0).floor() as u64,
            reset: secs(missing / self.per_second()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic cannot leave the state half-updated (plain numbers): a poisoned lock is fine.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

impl Pool for Bucket {
    fn take(&self, amount: u64, now: Instant) -> Take {
        let mut state = self.lock();
        self.refill(&mut state, now);
        // A request larger than the whole limit needs a full bucket, not more than exists.
        let need = amount.min(self.limit) as f64;
        if state.level >= need {
            state.level -= amount as f64;
            return Take::Granted(self.status_of(&state));
        }
        let wait = secs((need - state.level) / self.per_second());
        Take::Refused {
            retry_after: wait,
            status: self.status_of(&state),
        }
    }

    fn adjust(&self, delta: i64, now: Instant) {
        let mut state = self.lock();
        self.refill(&mut state, now);
        state.level = (state.level - delta as f64).min(self.limit as f64);
    }

    fn status(&self, now: Instant) -> Status {
        let mut state = self.lock();
        self.refill(&mut state, now);
        self.status_of(&state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_limit_then_refills_per_minute() {
        let t0 = Instant::now();
        let b = Bucket::new(60, t0);
        for left in (0..60).rev() {
            match b.take(1, t0) {
                Take::Granted(s) => assert_eq!(s.remaining, left),
                Take::Refused { .. } => panic!("refused with {left} left"),
            }
        }
        let Take::Refused {
            retry_after,
            status,
        } = b.take(1, t0)
        else {
            panic!("the 61st request went through");
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        assert_eq!(
            (status.remaining, status.reset),
            (0, Duration::from_secs(60))
        );
        // One per second comes back.
        assert!(matches!(
            b.take(1, t0 + Duration::from_secs(1)),
            Take::Granted(_)
        ));
        assert!(matches!(
            b.take(1, t0 + Duration::from_secs(1)),
            Take::Refused { .. }
        ));
        assert_eq!(b.status(t0 + Duration::from_secs(61)).remaining, 60);
    }

    #[test]
    fn corrections_refund_or_go_into_debt() {
        let t0 = Instant::now();
        let b = Bucket::new(1000, t0);
        assert!(matches!(b.take(600, t0), Take::Granted(_)));
        // It used 100 more than estimated, then another request refunds 200.
        b.adjust(100, t0);
        assert_eq!(b.status(t0).remaining, 300);
        b.adjust(-200, t0);
        assert_eq!(b.status(t0).remaining, 500);
        // Bigger than the whole limit: only into a full bucket, then in debt.
        assert!(matches!(b.take(5000, t0), Take::Refused { .. }));
        let later = t0 + Duration::from_secs(30);
        assert!(matches!(b.take(5000, later), Take::Granted(_)));
        assert_eq!(b.status(later).remaining, 0);
        assert!(b.status(later).reset > Duration::from_secs(60));
    }
}
