//! Status of the custom resources: the `Ready` condition (and the ModelProvider's `Priced`),
//! `observedGeneration` and the observed fields of [`gatehouse_crds::observed`] (Route: aliases and
//! usable/total targets; ModelProvider: endpoint and model count), written with server-side apply
//! only when they change, and an Event whenever `Ready` changes or `Priced` turns (or stays) False
//! with a new message.
//!
//! Only those fields are owned by this field manager, so the budget ledger can own the rest of
//! `Budget.status` (spent, remaining, period) without the two fighting.

use std::fmt::Debug;

use gatehouse_crds::conditions::{
    READY, TLS_VERIFIED, priced_condition, ready_condition, set_condition, tls_verified_condition,
};
use gatehouse_crds::config::SidecarConfig;
use gatehouse_crds::{
    Budget, ModelProvider, ModelProviderStatus, ObjectKind, Problem, Rendered, Route, RouteStatus,
    observed,
};
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
    /// The other status fields this field manager owns, as `config` says they should be: a JSON
    /// object (empty for kinds without any).
    fn desired_fields(&self, config: &SidecarConfig) -> serde_json::Value;
    /// The same fields as they are now, in the same shape.
    fn current_fields(&self) -> serde_json::Value;
    /// Conditions besides `Ready` this kind carries, fresh from the render (transition times are
    /// reconciled with the live ones by [`desired_patch`]).
    fn other_conditions(&self, rendered: &Rendered, now: &Time) -> Vec<Condition>;
}

macro_rules! conditioned {
    ($ty:ty, $kind:expr, |$obj:ident, $config:ident| $desired:expr, |$status:ident| $current:expr,
     |$o:ident, $rendered:ident, $now:ident| $others:expr) => {
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
            fn desired_fields(&self, $config: &SidecarConfig) -> serde_json::Value {
                let $obj = self;
                $desired
            }
            fn current_fields(&self) -> serde_json::Value {
                match &self.status {
                    Some($status) => $current,
                    None => json!({}),
                }
            }
            fn other_conditions(&self, $rendered: &Rendered, $now: &Time) -> Vec<Condition> {
                let $o = self;
                $others
            }
        }
    };
}

// Serializing a status whose conditions are empty and observedGeneration unset yields exactly
// the observed fields (both are skipped when empty), so desired and current compare as JSON.
conditioned!(
    ModelProvider,
    ObjectKind::ModelProvider,
    |p, config| json!(observed::provider_status(&p.name_any(), config)),
    |s| json!(ModelProviderStatus {
        endpoint: s.endpoint.clone(),
        models: s.models,
        ..ModelProviderStatus::default()
    }),
    |p, rendered, now| {
        let unpriced = rendered
            .unpriced
            .get(&p.name_any())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut conditions = vec![priced_condition(unpriced, p.meta().generation, now.clone())];
        // Called out while verification is off; once it is back on, said so once (the stale
        // False would otherwise stay).
        let insecure = rendered.insecure_tls.contains(&p.name_any());
        let shown = p
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == TLS_VERIFIED));
        if insecure || shown {
            conditions.push(tls_verified_condition(
                insecure,
                p.meta().generation,
                now.clone(),
            ));
        }
        conditions
    }
);
conditioned!(
    Route,
    ObjectKind::Route,
    |r, config| json!(observed::route_status(&r.name_any(), &r.spec, config)),
    |s| json!(RouteStatus {
        aliases: s.aliases.clone(),
        usable_targets: s.usable_targets,
        total_targets: s.total_targets,
        targets: s.targets.clone(),
        ..RouteStatus::default()
    }),
    |_r, _rendered, _now| Vec::new()
);
// Budget.status.spent/remaining/period belong to the ledger, not to this field manager.
conditioned!(
    Budget,
    ObjectKind::Budget,
    |_b, _config| json!({}),
    |_s| json!({}),
    |_b, _rendered, _now| Vec::new()
);

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

/// Every condition `object` should carry (`Ready` first), each keeping its live transition time
/// when its status did not flip.
pub fn desired_conditions<K: Conditioned>(
    object: &K,
    rendered: &Rendered,
    now: Time,
) -> Vec<Condition> {
    let mut out = vec![desired_ready(object, &rendered.problems, now.clone())];
    for fresh in object.other_conditions(rendered, &now) {
        let mut live = object.conditions().to_vec();
        let type_ = fresh.type_.clone();
        set_condition(&mut live, fresh.clone());
        out.push(live.into_iter().find(|c| c.type_ == type_).unwrap_or(fresh));
    }
    out
}

/// The status patch for `object`: its conditions, `observedGeneration` and the observed fields.
/// `None` when the live status already says all of it.
pub fn desired_patch<K: Conditioned>(
    object: &K,
    rendered: &Rendered,
    now: Time,
) -> Option<(Vec<Condition>, serde_json::Value)> {
    let conditions = desired_conditions(object, rendered, now);
    let generation = object.meta().generation;
    let fields = object.desired_fields(&rendered.config);
    let live = object.conditions();
    let unchanged = conditions.iter().all(|c| live.iter().any(|l| l == c));
    if unchanged && object.observed_generation() == generation && object.current_fields() == fields
    {
        return None;
    }
    let mut status = match fields {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    status.insert("conditions".into(), json!(conditions));
    status.insert("observedGeneration".into(), json!(generation));
    Some((conditions, serde_json::Value::Object(status)))
}

/// The Event a condition change deserves, if any: every change of `Ready` (Warning when False);
/// `Priced` turning or staying False with a new message (Warning), and turning True again
/// (Normal). A first `Priced=True` is not news.
fn event_for(new: &Condition, old: Option<&Condition>) -> Option<Event> {
    let changed = old.is_none_or(|c| {
        (&c.status, &c.reason, &c.message) != (&new.status, &new.reason, &new.message)
    });
    if !changed {
        return None;
    }
    let worth_it =
        new.type_ == READY || new.status == "False" || old.is_some_and(|o| o.status == "False");
    if !worth_it {
        return None;
    }
    Some(Event {
        type_: if new.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: new.reason.clone(),
        note: Some(truncate(&new.message, 1000)),
        action: "Render".to_string(),
        secondary: None,
    })
}

/// Patch the status of `object` if its conditions, `observedGeneration` or observed fields
/// differ from what the render says, and publish an Event for each condition change worth one
/// (see [`event_for`]). Returns whether status was written.
pub async fn update<K: Conditioned>(
    api: &Api<K>,
    object: &K,
    rendered: &Rendered,
    recorder: &Recorder,
    metrics: &Metrics,
) -> Result<bool, Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let Some((conditions, status)) = desired_patch(object, rendered, now) else {
        return Ok(false);
    };
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
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::kube(format!("patch status of {}", what()), e))?;
    metrics.write("status", "apply");

    for new in &conditions {
        let old = object.conditions().iter().find(|c| c.type_ == new.type_);
        let Some(event) = event_for(new, old) else {
            continue;
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
    use gatehouse_crds::conditions::PRICED;
    use gatehouse_crds::{ProviderKeys, RouteStatus};
    use std::collections::BTreeMap;

    fn rendered(problems: &[Problem], config: SidecarConfig) -> Rendered {
        Rendered {
            config,
            keys: ProviderKeys::new(),
            problems: problems.to_vec(),
            unpriced: BTreeMap::new(),
            insecure_tls: Default::default(),
        }
    }

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

    fn config(usable: bool) -> SidecarConfig {
        serde_json::from_value(json!({
            "apiVersion": "gatehouse.dev/config-v1alpha1", "namespace": "ns",
            "providers": {"p": {"type": "openaiCompatible", "endpoint": "http://x/v1", "models": {}}},
            "routes": {"chat": {
                "aliases": ["chat"],
                "targets": if usable { json!([{"provider": "p", "model": "m", "priority": 0, "weight": 1}]) } else { json!([]) },
                "retry": {"attempts": 1, "backoffBaseMs": 100, "backoffMaxMs": 2000},
                "timeouts": {"requestMs": 1000, "attemptMs": 1000}}},
            "budgets": {}
        }))
        .unwrap()
    }

    #[test]
    fn observed_fields_are_written_only_when_they_change() {
        let mut r = route();
        let (conditions, patch) = desired_patch(&r, &rendered(&[], config(true)), time(1)).unwrap();
        assert_eq!(patch["targets"], "1/1");
        assert_eq!(patch["usableTargets"], 1);
        assert_eq!(patch["totalTargets"], 1);
        assert_eq!(patch["aliases"], json!(["chat"]));
        assert_eq!(patch["observedGeneration"], 2);

        // The live status now says exactly that: nothing to write.
        let mut live: RouteStatus = serde_json::from_value(patch).unwrap();
        live.conditions = conditions;
        r.status = Some(live);
        assert!(desired_patch(&r, &rendered(&[], config(true)), time(9)).is_none());

        // The provider's target became unusable: only the observed fields changed, still a write.
        let (_, patch) = desired_patch(&r, &rendered(&[], config(false)), time(9)).unwrap();
        assert_eq!(patch["targets"], "0/1");
    }

    #[test]
    fn provider_fields_and_budget_owns_none() {
        let p: ModelProvider = serde_json::from_value(json!({
            "apiVersion": "gatehouse.dev/v1alpha1", "kind": "ModelProvider",
            "metadata": {"name": "p", "namespace": "ns", "generation": 1},
            "spec": {"type": "openaiCompatible", "endpoint": "http://x/v1/"}
        }))
        .unwrap();
        let (_, patch) = desired_patch(&p, &rendered(&[], config(true)), time(1)).unwrap();
        assert_eq!(patch["endpoint"], "http://x/v1");
        assert_eq!(patch["models"], 0);
        let b: Budget = serde_json::from_value(json!({
            "apiVersion": "gatehouse.dev/v1alpha1", "kind": "Budget",
            "metadata": {"name": "b", "namespace": "ns", "generation": 1},
            "spec": {"limit": {"usd": "1"}, "period": "daily"},
            "status": {"spent": "0.5"}
        }))
        .unwrap();
        let (_, patch) = desired_patch(&b, &rendered(&[], config(true)), time(1)).unwrap();
        let keys: Vec<&String> = patch.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["conditions", "observedGeneration"]);
    }

    #[test]
    fn provider_carries_priced_and_events_follow_its_changes() {
        let mut p: ModelProvider = serde_json::from_value(json!({
            "apiVersion": "gatehouse.dev/v1alpha1", "kind": "ModelProvider",
            "metadata": {"name": "p", "namespace": "ns", "generation": 1},
            "spec": {"type": "openaiCompatible", "endpoint": "http://x/v1"}
        }))
        .unwrap();
        let mut r = rendered(&[], config(true));
        r.unpriced.insert("p".into(), vec!["my-llama".into()]);
        let (conditions, patch) = desired_patch(&p, &r, time(1)).unwrap();
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, PRICED]);
        assert_eq!(patch["conditions"].as_array().unwrap().len(), 2);
        let unpriced = conditions[1].clone();
        assert_eq!(
            (unpriced.status.as_str(), unpriced.reason.as_str()),
            ("False", "UnpricedModels")
        );
        assert!(unpriced.message.contains("my-llama"));
        // Priced=False does not make the provider unready: its models are still served.
        assert_eq!(conditions[0].status, "True");

        // Turning False is a Warning; the same condition again is not news.
        let e = event_for(&unpriced, None).unwrap();
        assert!(matches!(e.type_, EventType::Warning));
        assert_eq!(e.reason, "UnpricedModels");
        assert!(event_for(&unpriced, Some(&unpriced)).is_none());

        // Live status says it: nothing to write. Then an override prices the model: True, with
        // a Normal event, and a new transition time.
        p.status = Some(ModelProviderStatus {
            conditions: conditions.clone(),
            observed_generation: Some(1),
            ..serde_json::from_value(patch.clone()).unwrap()
        });
        assert!(desired_patch(&p, &r, time(5)).is_none());
        r.unpriced.insert("p".into(), Vec::new());
        let (conditions, _) = desired_patch(&p, &r, time(6)).unwrap();
        let priced = &conditions[1];
        assert_eq!(
            (priced.status.as_str(), priced.reason.as_str()),
            ("True", "AllModelsPriced")
        );
        assert_eq!(priced.last_transition_time, time(6));
        let e = event_for(priced, Some(&unpriced)).unwrap();
        assert!(matches!(e.type_, EventType::Normal));
        // A provider priced from the start gets no Priced event; Ready still gets its first one.
        assert!(event_for(priced, None).is_none());
        assert!(event_for(&conditions[0], None).is_some());
    }
}
