//! Authorization enforcement: the config crate decides ([`Authorization::decide`]), this module
//! counts the decision in `strait_authz_decisions_total` and tells the caller whether to go on.
//!
//! Where it runs: for HTTP, the pipeline's `authorize` phase (the listener's policies for every
//! request, then the route's for requests a route serves); for opaque TCP, once per connection
//! before any upstream is dialled. Listeners and routes without a policy pay one `Option` check.

use std::sync::Arc;

use metrics::Counter;
use strait_config::matching::authz::{Authorization, AuthzPolicy, AuthzRequest, Decision};
use strait_config::snapshot::Listener;
use strait_config::spec::AuthorizationAction;

use crate::metrics::AUTHZ_DECISIONS;

/// The `policy` label of decisions no policy made (no ALLOW policy matched, or none is in
/// force and no DENY policy matched).
pub const DEFAULT_POLICY: &str = "default";

/// Counter handles of one config version, made at reload so a decision only touches an atomic.
#[derive(Debug)]
pub struct DecisionCounters {
    /// By [`AuthzPolicy::id`]: the policy's one outcome (an ALLOW policy only allows, a DENY
    /// policy only denies).
    by_policy: Vec<Counter>,
    /// `{policy="default", action="DENY", result="deny"}` (ALLOW policies in force, none
    /// matched) and `{policy="default", action="ALLOW", result="allow"}` (only DENY policies,
    /// none matched); none without any policy, so a proxy without one shows no such series.
    defaults: Option<[Counter; 2]>,
}

impl DecisionCounters {
    /// Registers the counters of `policies` (the snapshot's, in `id` order).
    pub fn new(policies: &[Arc<AuthzPolicy>]) -> Self {
        let by_policy = policies
            .iter()
            .map(|p| {
                let result = match p.action {
                    AuthorizationAction::Allow => "allow",
                    AuthorizationAction::Deny => "deny",
                };
                counter(p.name.to_string(), p.action, result)
            })
            .collect();
        let defaults = (!policies.is_empty()).then(|| {
            [
                counter(DEFAULT_POLICY.into(), AuthorizationAction::Deny, "deny"),
                counter(DEFAULT_POLICY.into(), AuthorizationAction::Allow, "allow"),
            ]
        });
        Self {
            by_policy,
            defaults,
        }
    }

    fn record(&self, decision: &Decision<'_>) {
        let counter = match decision {
            Decision::Allowed(Some(p)) | Decision::Denied(Some(p)) => self.by_policy.get(p.id),
            Decision::Denied(None) => self.defaults.as_ref().map(|[deny, _]| deny),
            Decision::Allowed(None) => self.defaults.as_ref().map(|[_, allow]| allow),
        };
        if let Some(c) = counter {
            c.increment(1);
        }
    }
}

fn counter(policy: String, action: AuthorizationAction, result: &'static str) -> Counter {
    metrics::counter!(AUTHZ_DECISIONS, "policy" => policy, "action" => action.as_str(), "result" => result)
}

/// Decides `request` against `authorization` and counts the decision; true when allowed.
pub fn check(
    authorization: &Authorization,
    request: &AuthzRequest<'_>,
    counters: &DecisionCounters,
) -> bool {
    let decision = authorization.decide(request);
    counters.record(&decision);
    if let Decision::Denied(policy) = decision {
        tracing::debug!(
            policy = policy.map_or(DEFAULT_POLICY, |p| &*p.name),
            peer_identity = request.peer_identity.unwrap_or("-"),
            "denied by authorization policy"
        );
    }
    decision.is_allowed()
}

/// Whether an opaque TCP connection on `listener` from `peer_identity` may go on (only the
/// policies' `from` can be checked: see [`strait_config::matching::authz`]).
pub fn admit_connection(
    listener: &Listener,
    peer_identity: Option<&str>,
    counters: &DecisionCounters,
) -> bool {
    let Some(authorization) = &listener.authorization else {
        return true;
    };
    let request = AuthzRequest {
        peer_identity,
        operation: None,
    };
    check(authorization, &request, counters)
}
