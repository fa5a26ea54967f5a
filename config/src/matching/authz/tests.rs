use std::sync::Arc;

use http::Method;

use super::*;
use crate::matching::normalize_path;

const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/productpage";
const FRONTEND: &str = "spiffe://cluster.local/ns/frontend/sa/web";

fn names(patterns: &[&str]) -> Option<NamePatterns> {
    (!patterns.is_empty()).then(|| NamePatterns::new(patterns.iter().copied()))
}

fn from(identities: &[&str], namespaces: &[&str]) -> SourceMatch {
    SourceMatch {
        identities: names(identities),
        namespaces: names(namespaces),
    }
}

fn to(methods: &[&str], paths: &[&str]) -> OperationMatch {
    OperationMatch {
        methods: (!methods.is_empty()).then(|| {
            methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).expect("method"))
                .collect()
        }),
        paths: names(paths),
    }
}

fn policy(id: usize, action: AuthorizationAction, rules: Vec<AuthzRule>) -> Arc<AuthzPolicy> {
    Arc::new(AuthzPolicy {
        name: format!("default/p{id}").into(),
        id,
        action,
        rules,
    })
}

fn rule(from: Vec<SourceMatch>, to: Vec<OperationMatch>) -> AuthzRule {
    AuthzRule { from, to }
}

fn http<'a>(identity: Option<&'a str>, method: &'a Method, path: &'a str) -> AuthzRequest<'a> {
    AuthzRequest {
        peer_identity: identity,
        operation: Some(Operation { method, path }),
    }
}

fn connection(identity: Option<&str>) -> AuthzRequest<'_> {
    AuthzRequest {
        peer_identity: identity,
        operation: None,
    }
}

/// The id of the deciding policy, or `None` for a default decision.
fn decided(d: Decision<'_>) -> (bool, Option<usize>) {
    match d {
        Decision::Allowed(p) => (true, p.map(|p| p.id)),
        Decision::Denied(p) => (false, p.map(|p| p.id)),
    }
}

#[test]
fn deny_policies_are_checked_before_allow_policies() {
    let authz = Authorization::new([
        policy(0, AuthorizationAction::Allow, vec![rule(vec![], vec![])]),
        policy(
            1,
            AuthorizationAction::Deny,
            vec![rule(vec![], vec![to(&[], &["/admin*"])])],
        ),
    ]);
    let get = Method::GET;
    assert_eq!(
        decided(authz.decide(&http(None, &get, "/admin/users"))),
        (false, Some(1))
    );
    assert_eq!(
        decided(authz.decide(&http(None, &get, "/api"))),
        (true, Some(0))
    );
}

#[test]
fn once_an_allow_policy_is_in_force_what_no_allow_rule_matches_is_denied() {
    let authz = Authorization::new([policy(
        0,
        AuthorizationAction::Allow,
        vec![rule(
            vec![],
            vec![to(&["GET", "HEAD"], &["/api/*", "/healthz"])],
        )],
    )]);
    let (get, post) = (Method::GET, Method::POST);
    assert_eq!(
        decided(authz.decide(&http(None, &get, "/api/x"))),
        (true, Some(0))
    );
    assert_eq!(
        decided(authz.decide(&http(None, &post, "/api/x"))),
        (false, None),
        "method not allowed by any rule: the default deny"
    );
    assert_eq!(
        decided(authz.decide(&http(None, &get, "/admin"))),
        (false, None)
    );
}

#[test]
fn with_only_deny_policies_what_none_matches_is_allowed() {
    let authz = Authorization::new([policy(
        0,
        AuthorizationAction::Deny,
        vec![rule(vec![], vec![to(&["DELETE"], &[])])],
    )]);
    let (get, delete) = (Method::GET, Method::DELETE);
    assert_eq!(decided(authz.decide(&http(None, &get, "/x"))), (true, None));
    assert_eq!(
        decided(authz.decide(&http(None, &delete, "/x"))),
        (false, Some(0))
    );
}

#[test]
fn a_trailing_star_is_a_prefix_and_anything_else_is_exact() {
    let paths = NamePatterns::new(["/api/*", "/healthz", "/v*"]);
    assert!(paths.matches("/api/"));
    assert!(paths.matches("/api/users/1"));
    assert!(!paths.matches("/api"), "`/api/*` needs the slash");
    assert!(paths.matches("/healthz"));
    assert!(!paths.matches("/healthz/"));
    assert!(!paths.matches("/healthzz"));
    assert!(paths.matches("/v2/x"));
    assert!(NamePatterns::new(["*"]).matches(""));
    let ids = NamePatterns::new(["spiffe://cluster.local/ns/default/*"]);
    assert!(ids.matches(PRODUCTPAGE));
    assert!(!ids.matches(FRONTEND));
}

#[test]
fn rules_need_any_from_and_any_to_and_every_field_of_an_entry() {
    let authz = Authorization::new([policy(
        0,
        AuthorizationAction::Allow,
        vec![rule(
            vec![from(&[PRODUCTPAGE], &[]), from(&[], &["frontend"])],
            vec![to(&["GET"], &["/api/*"]), to(&["POST"], &["/submit"])],
        )],
    )]);
    let (get, post) = (Method::GET, Method::POST);
    let other = "spiffe://cluster.local/ns/default/sa/other";
    let allowed = |id, m, p| authz.decide(&http(Some(id), m, p)).is_allowed();
    assert!(allowed(PRODUCTPAGE, &get, "/api/x"));
    assert!(allowed(FRONTEND, &post, "/submit"));
    assert!(!allowed(other, &get, "/api/x"), "no from entry matches");
    assert!(
        !allowed(PRODUCTPAGE, &post, "/api/x"),
        "method and path of one entry"
    );
    assert!(!allowed(PRODUCTPAGE, &get, "/submit"));
}

#[test]
fn a_peer_without_an_identity_matches_no_identity_or_namespace_pattern() {
    let allow_any_peer = Authorization::new([policy(
        0,
        AuthorizationAction::Allow,
        vec![rule(vec![from(&["*"], &[])], vec![])],
    )]);
    let get = Method::GET;
    assert!(!allow_any_peer.decide(&http(None, &get, "/")).is_allowed());
    assert!(allow_any_peer
        .decide(&http(Some(PRODUCTPAGE), &get, "/"))
        .is_allowed());
    let by_namespace = Authorization::new([policy(
        0,
        AuthorizationAction::Allow,
        vec![rule(vec![from(&[], &["*"])], vec![])],
    )]);
    assert!(!by_namespace.decide(&http(None, &get, "/")).is_allowed());
    // An entry naming neither matches every source, identified or not.
    let open = Authorization::new([policy(
        0,
        AuthorizationAction::Allow,
        vec![rule(vec![from(&[], &[])], vec![])],
    )]);
    assert!(open.decide(&http(None, &get, "/")).is_allowed());
}

#[test]
fn namespaces_are_read_from_the_spiffe_id() {
    assert_eq!(spiffe_namespace(PRODUCTPAGE), Some("default"));
    assert_eq!(spiffe_namespace(FRONTEND), Some("frontend"));
    assert_eq!(spiffe_namespace("spiffe://td/ns//sa/x"), None);
    assert_eq!(spiffe_namespace("spiffe://td/ns/a"), None);
    assert_eq!(spiffe_namespace("spiffe://td/sa/x/ns/y"), None);
    assert_eq!(spiffe_namespace("https://td/ns/a/sa/b"), None);
    let authz = Authorization::new([policy(
        0,
        AuthorizationAction::Allow,
        vec![rule(vec![from(&[], &["front*"])], vec![])],
    )]);
    let get = Method::GET;
    assert!(authz.decide(&http(Some(FRONTEND), &get, "/")).is_allowed());
    assert!(!authz
        .decide(&http(Some(PRODUCTPAGE), &get, "/"))
        .is_allowed());
    assert!(!authz
        .decide(&http(Some("spiffe://front/x"), &get, "/"))
        .is_allowed());
}

#[test]
fn paths_match_in_their_normalised_form() {
    let authz = Authorization::new([policy(
        0,
        AuthorizationAction::Deny,
        vec![rule(vec![], vec![to(&[], &["/admin", "/admin/*"])])],
    )]);
    let get = Method::GET;
    for raw in [
        "/admin",
        "/api/../admin",
        "/api/%2e%2e/admin",
        "//admin",
        "/./admin/x",
        "/%61dmin",
    ] {
        let path = normalize_path(raw);
        assert!(
            !authz.decide(&http(None, &get, &path)).is_allowed(),
            "{raw} reaches /admin"
        );
    }
    assert!(authz
        .decide(&http(None, &get, &normalize_path("/api/%2fadmin")))
        .is_allowed());
}

#[test]
fn connections_have_no_operation_and_fail_closed() {
    let get_only = || vec![rule(vec![], vec![to(&["GET"], &[])])];
    let allow = Authorization::new([policy(0, AuthorizationAction::Allow, get_only())]);
    assert_eq!(decided(allow.decide(&connection(None))), (false, None));
    let deny = Authorization::new([policy(0, AuthorizationAction::Deny, get_only())]);
    assert_eq!(decided(deny.decide(&connection(None))), (false, Some(0)));
    let by_identity = Authorization::new([policy(
        0,
        AuthorizationAction::Allow,
        vec![rule(vec![from(&[PRODUCTPAGE], &[])], vec![])],
    )]);
    assert!(by_identity
        .decide(&connection(Some(PRODUCTPAGE)))
        .is_allowed());
    assert!(!by_identity.decide(&connection(Some(FRONTEND))).is_allowed());
    assert!(!by_identity.decide(&connection(None)).is_allowed());
}

#[test]
fn the_first_policy_by_name_decides_and_a_policy_is_counted_once() {
    let a = policy(0, AuthorizationAction::Deny, vec![rule(vec![], vec![])]);
    let b = policy(1, AuthorizationAction::Deny, vec![rule(vec![], vec![])]);
    let authz = Authorization::new([b.clone(), a.clone(), b]);
    assert_eq!(authz.policies().count(), 2);
    assert_eq!(decided(authz.decide(&connection(None))), (false, Some(0)));
}
