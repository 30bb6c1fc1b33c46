//! Status conditions shared by every kind: the `Ready` condition and how render problems become it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::render::{ObjectKind, Problem};

/// Type of the condition every Gatehouse object carries.
pub const READY: &str = "Ready";
/// Reason of a `Ready=True` condition.
pub const REASON_READY: &str = "Ready";

/// The `Ready` condition of one object, given every problem found while rendering its namespace.
///
/// True when no problem names the object; otherwise False with the first problem's reason (problems
/// are sorted) and every message of that object joined with `"; "`. Messages never contain secret
/// material, so they are safe for status and events.
pub fn ready_condition(
    problems: &[Problem],
    kind: ObjectKind,
    name: &str,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    let mine: Vec<&Problem> = problems
        .iter()
        .filter(|p| p.kind == kind && p.name == name)
        .collect();
    let (status, reason, message) = match mine.first() {
        None => ("True", REASON_READY.to_string(), "ready".to_string()),
        Some(first) => {
            let messages: Vec<&str> = mine.iter().map(|p| p.message.as_str()).collect();
            ("False", first.reason.clone(), messages.join("; "))
        }
    };
    Condition {
        type_: READY.to_string(),
        status: status.to_string(),
        reason,
        message,
        observed_generation,
        last_transition_time: now,
    }
}

/// Put `new` into `conditions`, replacing the condition of the same type. The previous
/// `lastTransitionTime` is kept when the status did not change, as Kubernetes conventions ask.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn problem(kind: ObjectKind, name: &str, reason: &str, message: &str) -> Problem {
        Problem {
            kind,
            name: name.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn ready_without_problems() {
        let other = [problem(ObjectKind::Route, "other", "ProviderNotFound", "x")];
        let c = ready_condition(&other, ObjectKind::Route, "chat", Some(3), time(10));
        assert_eq!(c.status, "True");
        assert_eq!(c.reason, "Ready");
        assert_eq!(c.observed_generation, Some(3));
    }

    #[test]
    fn not_ready_with_first_reason_and_all_messages() {
        let problems = [
            problem(ObjectKind::Route, "chat", "DuplicateAlias", "a"),
            problem(ObjectKind::Route, "chat", "ProviderNotFound", "b"),
            problem(ObjectKind::ModelProvider, "chat", "SecretNotFound", "c"),
        ];
        let c = ready_condition(&problems, ObjectKind::Route, "chat", None, time(10));
        assert_eq!(c.status, "False");
        assert_eq!(c.reason, "DuplicateAlias");
        assert_eq!(c.message, "a; b");
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_unchanged() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ready_condition(&[], ObjectKind::Budget, "b", None, time(1)),
        );
        set_condition(
            &mut conditions,
            ready_condition(&[], ObjectKind::Budget, "b", None, time(2)),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, time(1));
        let bad = [problem(ObjectKind::Budget, "b", "InvalidSpec", "m")];
        set_condition(
            &mut conditions,
            ready_condition(&bad, ObjectKind::Budget, "b", None, time(3)),
        );
        assert_eq!(conditions[0].last_transition_time, time(3));
        assert_eq!(conditions[0].status, "False");
    }
}
