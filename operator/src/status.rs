//! Status of the custom resources: the `Ready` condition and `observedGeneration`, written with
//! server-side apply only when they change, and an Event whenever `Ready` changes.
//!
//! Only `conditions[type=Ready]` and `observedGeneration` are owned by this field manager, so the
//! budget ledger can own the rest of `Budget.status` without the two fighting.

use std::fmt::Debug;

use gatehouse_crds::conditions::{READY, ready_condition, set_condition};
use gatehouse_crds::{Budget, ModelProvider, ObjectKind, Problem, Route};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::objects::FIELD_MANAGER;

/// A Gatehouse kind whose status carries the `Ready` condition.
pub trait Conditioned:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
    /// Which kind render problems name.
    const KIND: ObjectKind;
    /// Current conditions.
    fn conditions(&self) -> &[Condition];
    /// Current `status.observedGeneration`.
    fn observed_generation(&self) -> Option<i64>;
}

macro_rules! conditioned {
    ($ty:ty, $kind:expr) => {
        impl Conditioned for $ty {
            const KIND: ObjectKind = $kind;
            fn conditions(&self) -> &[Condition] {
                self.status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default()
            }
            fn observed_generation(&self) -> Option<i64> {
                self.status.as_ref().and_then(|s| s.observed_generation)
            }
        }
    };
}

conditioned!(ModelProvider, ObjectKind::ModelProvider);
conditioned!(Route, ObjectKind::Route);
conditioned!(Budget, ObjectKind::Budget);

/// The `Ready` condition `object` should carry, keeping its transition time when the status
/// did not flip.
pub fn desired_ready<K: Conditioned>(object: &K, problems: &[Problem], now: Time) -> Condition {
    let generation = object.meta().generation;
    let fresh = ready_condition(problems, K::KIND, &object.name_any(), generation, now);
    let mut conditions = object.conditions().to_vec();
    set_condition(&mut conditions, fresh.clone());
    conditions
        .into_iter()
        .find(|c| c.type_ == READY)
        .unwrap_or(fresh)
}

/// Patch the status of `object` if its `Ready` condition or `observedGeneration` differ from what
/// the problems say, and publish an Event when `Ready` changed. Returns whether status was written.
pub async fn update<K: Conditioned>(
    api: &Api<K>,
    object: &K,
    problems: &[Problem],
    recorder: &Recorder,
    metrics: &Metrics,
) -> Result<bool, Error> {
    let ready = desired_ready(object, problems, Time(k8s_openapi::jiff::Timestamp::now()));
    let generation = object.meta().generation;
    let current = object.conditions().iter().find(|c| c.type_ == READY);
    if current == Some(&ready) && object.observed_generation() == generation {
        return Ok(false);
    }
    let name = object.name_any();
    let what = || {
        format!(
            "{} {}/{}",
            K::kind(&()),
            object.namespace().unwrap_or_default(),
            name
        )
    };
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": {
            "conditions": [ready],
            "observedGeneration": generation,
        },
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::kube(format!("patch status of {}", what()), e))?;
    metrics.write("status", "apply");

    let changed = current.is_none_or(|c| {
        (&c.status, &c.reason, &c.message) != (&ready.status, &ready.reason, &ready.message)
    });
    if changed {
        let event = Event {
            type_: if ready.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: ready.reason.clone(),
            note: Some(truncate(&ready.message, 1000)),
            action: "Render".to_string(),
            secondary: None,
        };
        // An event is best effort: failing to record one must not fail the reconcile.
        match recorder.publish(&event, &object.object_ref(&())).await {
            Ok(()) => metrics.write("event", "create"),
            Err(e) => tracing::warn!(object = %what(), error = %e, "failed to publish event"),
        }
    }
    Ok(true)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_crds::RouteStatus;

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn route() -> Route {
        let mut r: Route = serde_json::from_value(json!({
            "apiVersion": "gatehouse.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "chat", "namespace": "ns", "generation": 2},
            "spec": {"targets": [{"provider": "p", "model": "m"}]}
        }))
        .unwrap();
        r.status = Some(RouteStatus::default());
        r
    }

    #[test]
    fn unchanged_ready_keeps_its_transition_time() {
        let mut r = route();
        let first = desired_ready(&r, &[], time(1));
        r.status.as_mut().unwrap().conditions = vec![first.clone()];
        assert_eq!(desired_ready(&r, &[], time(50)), first);
    }

    #[test]
    fn problem_flips_ready() {
        let r = route();
        let problems = [Problem {
            kind: ObjectKind::Route,
            name: "chat".into(),
            reason: "ProviderNotFound".into(),
            message: "no provider p".into(),
        }];
        let c = desired_ready(&r, &problems, time(1));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ProviderNotFound")
        );
        assert_eq!(c.observed_generation, Some(2));
    }
}
