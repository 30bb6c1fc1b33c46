//! Which target an attempt goes to: priorities in ascending order, weighted random order within a
//! priority, each target once per pass; a new pass starts over after a backoff.
//!
//! Within a priority, the first choice is latency-aware: it is drawn with probability proportional
//! to weight ÷ cost (`health::TargetHealth::cost`: recent latency × (requests in flight + 1)).
//! Equal costs split exactly by weight; a target twice as slow (or twice as busy) gets half its
//! weight's share, never none, so it keeps being measured. The rest of the priority follows by
//! weight alone. (Power of two choices was the first design: with two targets both are always
//! drawn, so weights stopped counting and the faster of two identical targets took everything.)
//! Ejected targets (`health`) are left out of a pass unless every target of the request's set is
//! out: then the route serves degraded with all of them.

pub mod health;

use std::time::Duration;

use gatehouse_crds::config::RetryConfig;
use rand::Rng;

use crate::state::ServedRoute;
use health::RouteHealth;

/// The order in which one request tries its route's targets.
#[derive(Debug)]
pub struct AttemptPlan {
    order: Vec<usize>,
    position: usize,
    pass: u32,
    /// The targets this request may use (a rule's set), or all.
    subset: Option<Vec<usize>>,
    /// Every target of the set is ejected: try them anyway.
    forced: bool,
}

/// The next target to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// Index into the route's targets.
    pub target: usize,
    /// Wait this long before the attempt (zero unless a new pass starts).
    pub backoff: Duration,
    /// The route is degraded (every target ejected): the target is tried whatever its health.
    pub forced: bool,
}

impl AttemptPlan {
    /// Plan for `route` over all its targets, drawing weighted choices from `rng`.
    pub fn new(route: &ServedRoute, rng: &mut impl Rng) -> Self {
        Self::with(route, None, None, rng)
    }

    /// Plan for `route` over `subset` of its targets (all when `None`), leaving out what `health`
    /// says is ejected and choosing by latency where it knows some.
    pub fn with(
        route: &ServedRoute,
        health: Option<&RouteHealth>,
        subset: Option<Vec<usize>>,
        rng: &mut impl Rng,
    ) -> Self {
        let mut plan = Self {
            order: Vec::new(),
            position: 0,
            pass: 0,
            subset,
            forced: false,
        };
        plan.order = plan.pass_order(route, health, rng);
        plan
    }

    /// Every target of this plan was skipped for its health: serve degraded from now on.
    pub fn force(&mut self) {
        self.forced = true;
    }

    /// Targets in one pass.
    pub fn pass_len(&self) -> usize {
        self.order.len()
    }

    /// One pass: each priority group in order, drawn by weight, the first pick weighted by
    /// latency too (weight 0 last, in declared order).
    fn pass_order(
        &mut self,
        route: &ServedRoute,
        health: Option<&RouteHealth>,
        rng: &mut impl Rng,
    ) -> Vec<usize> {
        let now = health.map_or(0, RouteHealth::now_ms);
        let in_set = |i: usize| self.subset.as_ref().is_none_or(|s| s.contains(&i));
        let usable = |i: usize| health.is_none_or(|h| h.available(i, now));
        if !self.forced
            && !(0..route.config.targets.len()).any(|i| in_set(i) && usable(i))
            && (0..route.config.targets.len()).any(in_set)
        {
            self.forced = true;
            tracing::warn!(route = %route.name, "every target is ejected: serving degraded");
        }
        let forced = self.forced;
        pass_order(
            route,
            rng,
            |i| in_set(i) && (forced || usable(i)),
            |i| health.and_then(|h| h.target(i)).map_or(0, |t| t.cost()),
        )
    }

    /// The next target, or `None` when the route has no targets.
    pub fn next(
        &mut self,
        route: &ServedRoute,
        health: Option<&RouteHealth>,
        retry: &RetryConfig,
        rng: &mut impl Rng,
    ) -> Option<Next> {
        if self.order.is_empty() {
            return None;
        }
        let mut backoff = Duration::ZERO;
        if self.position >= self.order.len() {
            self.pass += 1;
            self.position = 0;
            self.order = self.pass_order(route, health, rng);
            backoff = backoff_for(retry, self.pass, rng);
        }
        let target = *self.order.get(self.position)?;
        self.position += 1;
        Some(Next {
            target,
            backoff,
            forced: self.forced,
        })
    }
}

/// One pass over the targets `keep` admits: each priority group in order, shuffled by weight
/// (weight 0 last, in declared order); the first of a group is drawn by weight ÷ `cost`.
fn pass_order(
    route: &ServedRoute,
    rng: &mut impl Rng,
    keep: impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> u64,
) -> Vec<usize> {
    let mut order = Vec::with_capacity(route.config.targets.len());
    for group in &route.groups {
        let mut weighted: Vec<(usize, u64)> = group
            .iter()
            .filter(|&&i| keep(i))
            .filter_map(|&i| route.target(i).map(|t| (i, u64::from(t.weight))))
            .collect();
        // The first pick: proportional to weight ÷ cost (only worth computing with a choice).
        if weighted.iter().filter(|(_, w)| *w > 0).count() >= 2 {
            let shares: Vec<f64> = weighted
                .iter()
                .map(|&(i, w)| w as f64 / cost(i).max(1) as f64)
                .collect();
            let total: f64 = shares.iter().sum();
            let mut pick = rng.random::<f64>() * total;
            let mut chosen = shares.iter().rposition(|s| *s > 0.0).unwrap_or(0);
            for (pos, share) in shares.iter().enumerate() {
                if pick < *share {
                    chosen = pos;
                    break;
                }
                pick -= share;
            }
            order.push(weighted.remove(chosen).0);
        }
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
    use gatehouse_crds::config::{RouteConfig, TargetConfig};
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
            ..RouteConfig::default()
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
                let next = plan
                    .next(route, None, &RetryConfig::default(), rng)
                    .unwrap();
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
            .map(|_| plan.next(&r, None, &retry, &mut rng).unwrap().backoff)
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

    fn health_of(r: &ServedRoute) -> std::sync::Arc<RouteHealth> {
        health::Health::default().route(r)
    }

    #[test]
    fn the_first_pick_prefers_the_faster_target_and_weights_still_count() {
        let r = route(&[("slow", 0, 1), ("fast", 0, 1)]);
        let h = health_of(&r);
        // Teach the health 10 ms for "fast", 200 ms for "slow".
        for (i, ms) in [(0, 200), (1, 10)] {
            h.begin(i, health::Admit::Yes)
                .finish(health::Outcome::Success, Duration::from_millis(ms));
        }
        let mut rng = StdRng::seed_from_u64(9);
        let first = |rng: &mut StdRng| {
            let mut plan = AttemptPlan::with(&r, Some(&h), None, rng);
            let next = plan
                .next(&r, Some(&h), &RetryConfig::default(), rng)
                .unwrap();
            r.target(next.target).unwrap().provider.clone()
        };
        // 20x faster: first in 20 of 21 draws (about 952 of 1000), never all of them.
        let fast = (0..1000).filter(|_| first(&mut rng) == "fast").count();
        assert!((900..1000).contains(&fast), "fast first {fast} of 1000");
        // In flight counts too: 59 requests on "fast" make it 3x the cost of "slow".
        let held: Vec<_> = (0..59).map(|_| h.begin(1, health::Admit::Yes)).collect();
        let fast = (0..1000).filter(|_| first(&mut rng) == "fast").count();
        assert!(
            (170..330).contains(&fast),
            "fast first {fast} of 1000 (expected 250)"
        );
        drop(held);

        // Equal latencies: exactly the weights (8:1:1).
        let r = route(&[("a", 0, 8), ("b", 0, 1), ("c", 0, 1)]);
        let h = health_of(&r);
        for i in 0..3 {
            h.begin(i, health::Admit::Yes)
                .finish(health::Outcome::Success, Duration::from_millis(50));
        }
        let mut firsts = std::collections::HashMap::new();
        for _ in 0..2000 {
            let mut plan = AttemptPlan::with(&r, Some(&h), None, &mut rng);
            let next = plan
                .next(&r, Some(&h), &RetryConfig::default(), &mut rng)
                .unwrap();
            *firsts.entry(next.target).or_insert(0) += 1;
        }
        assert!((1520..1680).contains(&firsts[&0]), "{firsts:?}");
    }

    #[test]
    fn ejected_targets_leave_the_plan_unless_every_target_is_out() {
        let r = route(&[("a", 0, 1), ("b", 1, 1)]);
        let h = health_of(&r);
        for _ in 0..5 {
            h.begin(0, health::Admit::Yes)
                .finish(health::Outcome::Failure, Duration::from_millis(1));
        }
        let mut rng = StdRng::seed_from_u64(1);
        let mut plan = AttemptPlan::with(&r, Some(&h), None, &mut rng);
        assert_eq!(plan.pass_len(), 1);
        let next = plan
            .next(&r, Some(&h), &RetryConfig::default(), &mut rng)
            .unwrap();
        assert_eq!((next.target, next.forced), (1, false));
        // A rule's set holding only the ejected target: served degraded.
        let mut plan = AttemptPlan::with(&r, Some(&h), Some(vec![0]), &mut rng);
        let next = plan
            .next(&r, Some(&h), &RetryConfig::default(), &mut rng)
            .unwrap();
        assert_eq!((next.target, next.forced), (0, true));
    }

    #[test]
    fn empty_route_has_no_next() {
        let r = route(&[]);
        let mut rng = StdRng::seed_from_u64(3);
        let mut plan = AttemptPlan::new(&r, &mut rng);
        assert!(
            plan.next(&r, None, &RetryConfig::default(), &mut rng)
                .is_none()
        );
    }
}
