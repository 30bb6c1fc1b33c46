//! Which target an attempt goes to: priorities in ascending order, weighted random order within a
//! priority, each target once per pass; a new pass starts over after a backoff.

use std::time::Duration;

use gatehouse_crds::config::RetryConfig;
use rand::Rng;

use crate::state::ServedRoute;

/// The order in which one request tries its route's targets.
#[derive(Debug)]
pub struct AttemptPlan {
    order: Vec<usize>,
    position: usize,
    pass: u32,
}

/// The next target to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// Index into the route's targets.
    pub target: usize,
    /// Wait this long before the attempt (zero unless a new pass starts).
    pub backoff: Duration,
}

impl AttemptPlan {
    /// Plan for `route`, drawing weighted choices from `rng`.
    pub fn new(route: &ServedRoute, rng: &mut impl Rng) -> Self {
        Self {
            order: pass_order(route, rng),
            position: 0,
            pass: 0,
        }
    }

    /// The next target, or `None` when the route has no targets.
    pub fn next(
        &mut self,
        route: &ServedRoute,
        retry: &RetryConfig,
        rng: &mut impl Rng,
    ) -> Option<Next> {
        if self.order.is_empty() {
            return None;
        }
        let mut backoff = Duration::ZERO;
        if self.position == self.order.len() {
            self.pass += 1;
            self.position = 0;
            self.order = pass_order(route, rng);
            backoff = backoff_for(retry, self.pass, rng);
        }
        let target = self.order[self.position];
        self.position += 1;
        Some(Next { target, backoff })
    }
}

/// One pass: each priority group in order, shuffled by weight (weight 0 last, in declared order).
fn pass_order(route: &ServedRoute, rng: &mut impl Rng) -> Vec<usize> {
    let mut order = Vec::with_capacity(route.config.targets.len());
    for group in &route.groups {
        let mut weighted: Vec<(usize, u64)> = group
            .iter()
            .filter_map(|&i| route.target(i).map(|t| (i, u64::from(t.weight))))
            .collect();
        // Weighted sampling without replacement: draw one proportional to weight, remove it, repeat.
        while weighted.iter().any(|(_, w)| *w > 0) {
            let total: u64 = weighted.iter().map(|(_, w)| *w).sum();
            let mut pick = rng.random_range(0..total);
            let mut chosen = 0;
            for (pos, (_, w)) in weighted.iter().enumerate() {
                if pick < *w {
                    chosen = pos;
                    break;
                }
                pick -= *w;
            }
            order.push(weighted.remove(chosen).0);
        }
        order.extend(weighted.into_iter().map(|(i, _)| i));
    }
    order
}

/// Exponential backoff for pass `pass` (>= 1), with jitter in [d/2, d].
fn backoff_for(retry: &RetryConfig, pass: u32, rng: &mut impl Rng) -> Duration {
    let exp = retry
        .backoff_base_ms
        .saturating_mul(1u64 << (pass - 1).min(20));
    let capped = exp.min(retry.backoff_max_ms);
    if capped == 0 {
        return Duration::ZERO;
    }
    let half = capped / 2;
    Duration::from_millis(half + rng.random_range(0..=capped - half))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_crds::config::{RouteConfig, TargetConfig, TimeoutConfig};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn route(targets: &[(&str, i32, u32)]) -> ServedRoute {
        let config = RouteConfig {
            aliases: vec!["a".into()],
            targets: targets
                .iter()
                .map(|(p, prio, w)| TargetConfig {
                    provider: (*p).into(),
                    model: "m".into(),
                    priority: *prio,
                    weight: *w,
                })
                .collect(),
            unavailable: vec![],
            retry: RetryConfig::default(),
            timeouts: TimeoutConfig::default(),
        };
        crate::state::tests_support::route("r", config)
    }

    fn names(
        route: &ServedRoute,
        plan: &mut AttemptPlan,
        n: usize,
        rng: &mut StdRng,
    ) -> Vec<String> {
        (0..n)
            .map(|_| {
                let next = plan.next(route, &RetryConfig::default(), rng).unwrap();
                route.target(next.target).unwrap().provider.clone()
            })
            .collect()
    }

    #[test]
    fn priorities_are_tried_in_ascending_order() {
        let r = route(&[("c", 2, 1), ("a", 0, 1), ("b", 1, 1)]);
        let mut rng = StdRng::seed_from_u64(1);
        let mut plan = AttemptPlan::new(&r, &mut rng);
        assert_eq!(names(&r, &mut plan, 3, &mut rng), ["a", "b", "c"]);
    }

    #[test]
    fn second_pass_waits_a_backoff_first_pass_does_not() {
        let r = route(&[("a", 0, 1), ("b", 1, 1)]);
        let mut rng = StdRng::seed_from_u64(1);
        let mut plan = AttemptPlan::new(&r, &mut rng);
        let retry = RetryConfig {
            attempts: 5,
            backoff_base_ms: 100,
            backoff_max_ms: 150,
        };
        let backoffs: Vec<Duration> = (0..6)
            .map(|_| plan.next(&r, &retry, &mut rng).unwrap().backoff)
            .collect();
        assert_eq!(backoffs[0], Duration::ZERO);
        assert_eq!(backoffs[1], Duration::ZERO);
        assert!(
            backoffs[2] >= Duration::from_millis(50) && backoffs[2] <= Duration::from_millis(100)
        );
        assert_eq!(backoffs[3], Duration::ZERO);
        // capped at backoff_max_ms
        assert!(
            backoffs[4] >= Duration::from_millis(75) && backoffs[4] <= Duration::from_millis(150)
        );
    }

    #[test]
    fn weights_split_first_choices_proportionally() {
        let r = route(&[("a", 0, 3), ("b", 0, 1)]);
        let mut rng = StdRng::seed_from_u64(7);
        let mut first_a = 0;
        for _ in 0..4000 {
            let mut plan = AttemptPlan::new(&r, &mut rng);
            let order = names(&r, &mut plan, 2, &mut rng);
            assert_ne!(order[0], order[1], "each target once per pass");
            if order[0] == "a" {
                first_a += 1;
            }
        }
        // expected 3000; allow sampling noise
        assert!(
            (2800..=3200).contains(&first_a),
            "a first {first_a} of 4000"
        );
    }

    #[test]
    fn zero_weight_is_only_a_fallback_within_its_priority() {
        let r = route(&[("spare", 0, 0), ("main", 0, 5)]);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let mut plan = AttemptPlan::new(&r, &mut rng);
            assert_eq!(names(&r, &mut plan, 2, &mut rng), ["main", "spare"]);
        }
    }

    #[test]
    fn empty_route_has_no_next() {
        let r = route(&[]);
        let mut rng = StdRng::seed_from_u64(3);
        let mut plan = AttemptPlan::new(&r, &mut rng);
        assert!(plan.next(&r, &RetryConfig::default(), &mut rng).is_none());
    }
}
