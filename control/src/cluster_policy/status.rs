//! The status the control writes on each object: `status.conditions` (Accepted, ResolvedRefs)
//! on Strait resources; on Gateway API routes, the same conditions in the control's own entry
//! of `status.parents` (one per parentRef, other controllers' entries kept), as Gateway API
//! lays them out. Pure: the runner sends what these functions build.

use serde_json::{json, Value};

use super::reconcile::{Origin, Verdict};
use crate::crd::condition::{Condition, ConditionStatus};

/// `controllerName` of the control's entries in a Gateway API route's `status.parents`.
pub const CONTROLLER: &str = "strait.dev/control";

/// The conditions `verdict` means, keeping each one's `lastTransitionTime` from `existing`
/// while its status stays the same.
pub fn conditions(
    verdict: &Verdict,
    generation: Option<i64>,
    existing: &[Condition],
    now: &str,
) -> Vec<Condition> {
    let (accepted, accepted_reason, accepted_message) = if verdict.accepted() {
        (
            ConditionStatus::True,
            "Accepted",
            "Accepted by the Strait control and pushed to the proxies.".to_owned(),
        )
    } else {
        let reason = if verdict.problems.iter().any(|p| p.unsupported) {
            "UnsupportedValue"
        } else {
            "Invalid"
        };
        let mut message = join(verdict.problems.iter().map(ToString::to_string));
        if verdict.previous_serves {
            message.push_str(" (the last accepted version keeps serving)");
        }
        (ConditionStatus::False, reason, message)
    };
    let unresolved: Vec<String> = verdict
        .problems
        .iter()
        .filter(|p| p.reference)
        .map(ToString::to_string)
        .collect();
    let (resolved, resolved_reason, resolved_message) = if unresolved.is_empty() {
        (
            ConditionStatus::True,
            "ResolvedRefs",
            "Every reference resolves.".to_owned(),
        )
    } else {
        let reason = if unresolved.iter().any(|p| p.contains("backendRef")) {
            "BackendNotFound"
        } else {
            "RefNotFound"
        };
        (ConditionStatus::False, reason, join(unresolved.into_iter()))
    };
    [
        ("Accepted", accepted, accepted_reason, accepted_message),
        ("ResolvedRefs", resolved, resolved_reason, resolved_message),
    ]
    .into_iter()
    .map(|(kind, status, reason, message)| {
        let since = existing
            .iter()
            .find(|c| c.kind == kind && c.status == status)
            .map_or_else(|| now.to_owned(), |c| c.last_transition_time.clone());
        Condition {
            kind: kind.to_owned(),
            status,
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        }
    })
    .collect()
}

/// Condition messages are bounded (the CRD and Gateway API allow 32768 bytes).
fn join(parts: impl Iterator<Item = String>) -> String {
    let mut text = parts.collect::<Vec<_>>().join("; ");
    if text.len() > 8192 {
        let mut end = 8192;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The conditions the control last wrote on `object`.
pub fn written(origin: Origin, object: &Value) -> Vec<Condition> {
    let conditions = match origin {
        Origin::Strait(_) => object.pointer("/status/conditions"),
        Origin::GatewayHttpRoute => object
            .pointer("/status/parents")
            .and_then(Value::as_array)
            .and_then(|parents| parents.iter().find(|p| p["controllerName"] == CONTROLLER))
            .and_then(|p| p.get("conditions")),
    };
    conditions
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

/// The merge patch of `/status` that records `conditions` on `object`.
pub fn patch(origin: Origin, object: &Value, conditions: &[Condition]) -> Value {
    match origin {
        Origin::Strait(_) => json!({"status": {"conditions": conditions}}),
        Origin::GatewayHttpRoute => {
            let mut parents: Vec<Value> = object
                .pointer("/status/parents")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|p| p["controllerName"] != CONTROLLER)
                .cloned()
                .collect();
            for parent_ref in object
                .pointer("/spec/parentRefs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                parents.push(json!({
                    "parentRef": parent_ref,
                    "controllerName": CONTROLLER,
                    "conditions": conditions,
                }));
            }
            json!({"status": {"parents": parents}})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_policy::reconcile::Problem;

    fn problem(path: &str, reference: bool) -> Problem {
        Problem {
            path: path.into(),
            message: "unknown Service `nope`".into(),
            reference,
            unsupported: false,
        }
    }

    #[test]
    fn a_dangling_backend_is_not_accepted_and_not_resolved() {
        let verdict = Verdict {
            problems: vec![problem("spec.rules[0].backendRefs[0].name", true)],
            previous_serves: false,
        };
        let c = conditions(&verdict, Some(3), &[], "2026-01-01T00:00:00Z");
        assert_eq!(
            (c[0].kind.as_str(), c[0].status),
            ("Accepted", ConditionStatus::False)
        );
        assert_eq!(c[0].reason, "Invalid");
        assert!(
            c[0].message
                .contains("backendRefs[0].name: unknown Service"),
            "{}",
            c[0].message
        );
        assert_eq!(
            (c[1].status, c[1].reason.as_str()),
            (ConditionStatus::False, "BackendNotFound")
        );
        assert_eq!(c[1].observed_generation, Some(3));
    }

    #[test]
    fn transition_times_move_only_when_the_status_does() {
        let ok = Verdict::default();
        let first = conditions(&ok, Some(1), &[], "t1");
        let again = conditions(&ok, Some(2), &first, "t2");
        assert_eq!(again[0].last_transition_time, "t1");
        let bad = Verdict {
            problems: vec![problem("spec.protocol", false)],
            previous_serves: true,
        };
        let flipped = conditions(&bad, Some(3), &again, "t3");
        assert_eq!(flipped[0].last_transition_time, "t3");
        assert!(flipped[0].message.ends_with("keeps serving)"));
        assert_eq!(flipped[1].last_transition_time, "t1", "refs still resolve");
    }

    #[test]
    fn gateway_routes_get_one_parent_entry_each_and_keep_others() {
        let object = json!({
            "spec": {"parentRefs": [{"name": "web"}]},
            "status": {"parents": [
                {"parentRef": {"name": "x"}, "controllerName": "example.com/other", "conditions": []},
                {"parentRef": {"name": "web"}, "controllerName": CONTROLLER, "conditions": []},
            ]},
        });
        let c = conditions(&Verdict::default(), Some(1), &[], "t");
        let body = patch(Origin::GatewayHttpRoute, &object, &c);
        let parents = body["status"]["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0]["controllerName"], "example.com/other");
        assert_eq!(parents[1]["parentRef"], json!({"name": "web"}));
        let patched = json!({"status": body["status"].clone(), "spec": object["spec"].clone()});
        assert_eq!(written(Origin::GatewayHttpRoute, &patched), c);
    }
}
