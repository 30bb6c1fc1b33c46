//! Status conditions: the `Ready` condition every kind carries and how render problems become it,
//! the ModelProvider's `Priced` condition, and the names of the Budget conditions the ledger
//! writes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::render::{ObjectKind, Problem};

/// Type of the condition every Gatehouse object carries.
pub const READY: &str = "Ready";
/// Reason of a `Ready=True` condition.
pub const REASON_READY: &str = "Ready";

/// Type of the ModelProvider condition that says whether every model it is used with has a price.
pub const PRICED: &str = "Priced";
/// Reason of a `Priced=True` condition.
pub const REASON_ALL_PRICED: &str = "AllModelsPriced";
/// Reason of a `Priced=False` condition.
pub const REASON_UNPRICED: &str = "UnpricedModels";

/// Type of the ModelProvider condition that calls out `spec.tls.insecureSkipVerifyDangerous`:
/// False while the provider's certificate is not verified.
pub const TLS_VERIFIED: &str = "TLSVerified";
/// Reason of a `TLSVerified=False` condition.
pub const REASON_VERIFICATION_DISABLED: &str = "VerificationDisabled";
/// Reason of a `TLSVerified=True` condition (after verification was turned back on).
pub const REASON_VERIFIED: &str = "Verified";

/// The `TLSVerified` condition of a ModelProvider: False (a Warning event) while
/// `insecureSkipVerifyDangerous` is set, True once it is removed again.
pub fn tls_verified_condition(
    insecure: bool,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    let (status, reason, message) = if insecure {
        (
            "False",
            REASON_VERIFICATION_DISABLED,
            "spec.tls.insecureSkipVerifyDangerous is true: the provider's certificate is NOT \
             verified, anyone on the network path can read and change prompts, answers and the \
             API key. Use spec.tls.caBundle instead",
        )
    } else {
        (
            "True",
            REASON_VERIFIED,
            "the provider's certificate is verified",
        )
    };
    Condition {
        type_: TLS_VERIFIED.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Budget condition: True when nothing is left to lease (spent plus the sidecars' unspent leases
/// reach the limit in a limited unit), so requests that do not fit a sidecar's lease are refused
/// (hard) or warned about (soft) until the period ends.
pub const EXCEEDED: &str = "Exceeded";
/// Budget condition, with thresholds: True once spend passes the lowest threshold.
pub const THRESHOLD_REACHED: &str = "ThresholdReached";
/// Budget condition, with a downgrade: True once spend passes `downgrade.atPercent`.
pub const DOWNGRADED: &str = "Downgraded";
/// Budget condition: True while sidecars recently served requests without a valid lease.
pub const DEGRADED: &str = "Degraded";

/// Longest list of model names a `Priced` message spells out, in bytes; the rest are counted.
const UNPRICED_LIST_MAX: usize = 512;

/// The `Priced` condition of a ModelProvider, given the models it is used with that have no price
/// ([`crate::Rendered::unpriced`], sorted).
///
/// False names them (as many as fit in about half a kilobyte, then how many more), so a platform
/// team sees which models' cost is reported as unknown; unpriced models are still served.
pub fn priced_condition(
    unpriced: &[String],
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    let (status, reason, message) = if unpriced.is_empty() {
        (
            "True",
            REASON_ALL_PRICED,
            "every model used with this provider has a price".to_string(),
        )
    } else {
        let mut listed = String::new();
        let mut shown = 0;
        for model in unpriced {
            if shown > 0 && listed.len() + model.len() + 2 > UNPRICED_LIST_MAX {
                break;
            }
            if shown > 0 {
                listed.push_str(", ");
            }
            // A single name is at most 256 bytes (CRD bound), so the first always fits.
            listed.push_str(model);
            shown += 1;
        }
        let more = unpriced.len() - shown;
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let message = format!(
            "no price in spec.models[].pricing or the built-in catalog for {listed}{more}; \
             these models are served but their cost is reported as unknown"
        );
        ("False", REASON_UNPRICED, message)
    };
    Condition {
        type_: PRICED.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation,
        last_transition_time: now,
    }
}

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
    fn priced_names_unpriced_models_and_bounds_the_list() {
        let c = priced_condition(&[], Some(4), time(1));
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Priced", "True", "AllModelsPriced")
        );
        assert_eq!(c.observed_generation, Some(4));

        let c = priced_condition(&["my-llama".into(), "other".into()], None, time(1));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "UnpricedModels")
        );
        assert!(c.message.contains("my-llama, other;"), "{}", c.message);

        let many: Vec<String> = (0..200).map(|i| format!("model-{i:03}")).collect();
        let c = priced_condition(&many, None, time(1));
        assert!(c.message.len() < 700, "{} bytes", c.message.len());
        assert!(c.message.contains("model-000, model-001"));
        let shown = c.message.matches("model-").count();
        assert!(
            c.message.contains(&format!(" and {} more", 200 - shown)),
            "{}",
            c.message
        );
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
