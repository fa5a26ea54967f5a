//! AuthorizationPolicy validation and compilation, through the whole pipeline.

use http::Method;

use crate::matching::authz::{AuthzRequest, Decision, Operation};
use crate::snapshot::Serves;
use crate::{load_str, Snapshot};

const HEAD: &str = "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: p}
spec:
  admin: 127.0.0.1:0
  listeners:
    - {name: web, address: 127.0.0.1:0, protocol: http}
    - {name: db, address: 127.0.0.1:0, protocol: tcp}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: api}
spec:
  protocol: http1
  endpoints: [{address: 127.0.0.1:9001}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules: [{backendRefs: [{name: api}]}]
---
";

/// Line number in the file of line `n` (from 1) of a policy appended to [`HEAD`].
fn line(n: usize) -> usize {
    23 + n
}

fn load(policy: &str) -> Result<Snapshot, Vec<String>> {
    load_str("cfg.yaml", &format!("{HEAD}{policy}"))
        .map_err(|e| e.iter().map(ToString::to_string).collect())
}

fn errors_of(policy: &str) -> Vec<String> {
    load(policy).err().unwrap_or_default()
}

fn policy(spec: &str) -> String {
    format!("apiVersion: strait.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n{spec}")
}

#[test]
fn the_contract_policy_compiles_onto_its_listener() {
    let snapshot = load(&policy(
        "  targetRefs: [{kind: Listener, name: web}]
  action: ALLOW
  rules:
    - from:
        - identities: [\"spiffe://cluster.local/ns/default/sa/productpage\"]
        - namespaces: [frontend]
      to:
        - methods: [GET, HEAD]
          paths: [\"/api/*\", \"/healthz\"]
",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(snapshot.authorization_policies.len(), 1);
    assert_eq!(&*snapshot.authorization_policies[0].name, "default/p");
    let web = &snapshot.listeners[0];
    let authz = web.authorization.as_ref().expect("policy on web");
    let get = Method::GET;
    let request = |identity, path| AuthzRequest {
        peer_identity: identity,
        operation: Some(Operation { method: &get, path }),
    };
    let frontend = Some("spiffe://cluster.local/ns/frontend/sa/ui");
    assert!(authz.decide(&request(frontend, "/api/x")).is_allowed());
    assert_eq!(
        authz.decide(&request(None, "/api/x")),
        Decision::Denied(None)
    );
    assert!(snapshot.listeners[1].authorization.is_none());
    let Serves::Http(table) = &web.serves else {
        panic!("web serves HTTP");
    };
    assert!(
        table.rules().all(|r| r.authorization.is_none()),
        "a listener policy is not the route's"
    );
}

#[test]
fn a_route_policy_is_on_every_rule_of_the_route_only() {
    let snapshot = load(&policy(
        "  targetRefs: [{kind: HTTPRoute, name: r}]\n  action: DENY\n  rules: [{}]\n",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(snapshot.listeners[0].authorization.is_none());
    let Serves::Http(table) = &snapshot.listeners[0].serves else {
        panic!("web serves HTTP");
    };
    assert!(table.rules().all(|r| r.authorization.is_some()));
}

#[test]
fn no_policy_means_no_authorization_at_all() {
    let snapshot = load("").unwrap_or_else(|e| panic!("{e:?}"));
    assert!(snapshot.authorization_policies.is_empty());
    assert!(snapshot.listeners.iter().all(|l| l.authorization.is_none()));
}

#[test]
fn bad_targets_are_located() {
    let errs = errors_of(&policy(
        "  targetRefs:
    - {kind: Gateway, name: web}
    - {kind: Listener, name: nope}
    - {kind: HTTPRoute, name: missing}
  rules: [{}]
",
    ));
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!(
            "cfg.yaml:{}:14: spec.targetRefs[0].kind: unknown target kind `Gateway`",
            line(5)
        )),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains(
            "spec.targetRefs[1].name: no listener `nope` in the ProxyConfig; known: web, db"
        ),
        "{}",
        errs[1]
    );
    assert!(
        errs[2].contains("spec.targetRefs[2].name: no HTTPRoute `missing` in namespace `default`")
            && errs[2].contains("known: r"),
        "{}",
        errs[2]
    );
}

#[test]
fn a_policy_needs_targets_and_rules() {
    let errs = errors_of(&policy("  action: DENY\n"));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs
        .iter()
        .any(|e| e.contains("spec.targetRefs: a policy needs at least one target")));
    assert!(errs
        .iter()
        .any(|e| e.contains("spec.rules: a policy needs at least one rule; `rules: [{}]`")));
}

#[test]
fn an_unknown_action_is_refused() {
    let errs = errors_of(&policy(
        "  targetRefs: [{kind: Listener, name: web}]\n  action: AUDIT\n  rules: [{}]\n",
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("spec.action"), "{}", errs[0]);
}

#[test]
fn malformed_patterns_are_located_with_a_fix() {
    let errs = errors_of(&policy(
        "  targetRefs: [{kind: Listener, name: web}]
  rules:
    - from:
        - identities: [productpage, \"spiffe://td/*/sa/x\", \"spiffe://td/ns/a/*\", \"*\"]
          namespaces: [Front, \"team-*\"]
      to:
        - methods: [get, \"G T\", POST]
          paths: [api, \"/api/../admin\", \"/a/*/b\", \"/x?y=1\", \"/%61pi/*\", \"/ok/*\", \"*\"]
",
    ));
    let expected = [
        "spec.rules[0].from[0].identities[0]: `productpage` is not a SPIFFE ID",
        "spec.rules[0].from[0].identities[1]: `spiffe://td/*/sa/x`: `*` is only allowed once, at the end",
        "spec.rules[0].from[0].namespaces[0]: `Front` is not a namespace",
        "spec.rules[0].to[0].methods[0]: `get`: methods are case-sensitive; write `GET`",
        "spec.rules[0].to[0].methods[1]: `G T` is not an HTTP method",
        "spec.rules[0].to[0].paths[0]: `api` is not a path",
        "spec.rules[0].to[0].paths[1]: `/api/../admin` is not a normalised path",
        "spec.rules[0].to[0].paths[2]: `/a/*/b`: `*` is only allowed once",
        "spec.rules[0].to[0].paths[3]: `/x?y=1`: paths are matched without the query",
        "spec.rules[0].to[0].paths[4]: `/%61pi/*` is not a normalised path",
    ];
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    for want in expected {
        assert!(errs.iter().any(|e| e.contains(want)), "{want}\n{errs:#?}");
    }
    assert!(
        errs.iter().any(|e| e.contains("write `/admin`")),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("write `/api/*`")),
        "{errs:#?}"
    );
    let first = &errs[0];
    assert!(
        first.starts_with(&format!("cfg.yaml:{}:24:", line(7))),
        "{first}"
    );
}

#[test]
fn a_tcp_listener_refuses_operations() {
    let errs = errors_of(&policy(
        "  targetRefs: [{kind: Listener, name: db}]
  rules:
    - from: [{namespaces: [backend]}]
    - to: [{methods: [GET]}]
",
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("spec.rules[1].to: listener `db` is a TCP listener"),
        "{}",
        errs[0]
    );
    let ok = load(&policy(
        "  targetRefs: [{kind: Listener, name: db}]\n  action: DENY\n  rules: [{}]\n",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(ok.listeners[1].authorization.is_some());
}

#[test]
fn the_store_checks_routes_but_not_listeners() {
    // The Service and the route, without the ProxyConfig.
    let text = format!(
        "{}{}",
        HEAD.split_once("---\n").map_or("", |(_, rest)| rest),
        policy(
            "  targetRefs: [{kind: Listener, name: anywhere}, {kind: HTTPRoute, name: gone}]\n  rules: [{}]\n"
        )
    );
    let docs = crate::load::parse_sources(&[crate::Source {
        file: "store.yaml".into(),
        text,
    }])
    .expect("parses");
    let errs: Vec<String> = match super::super::validate(&docs) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("spec.targetRefs[1].name: no HTTPRoute `gone`"),
        "{errs:?}"
    );
}

#[test]
fn the_store_refuses_operations_on_a_stored_proxys_tcp_listener() {
    let text = format!(
        "{HEAD}{}",
        policy("  targetRefs: [{kind: Listener, name: db}]\n  rules: [{to: [{methods: [GET]}]}]\n")
    );
    let docs = crate::load::parse_sources(&[crate::Source {
        file: "store.yaml".into(),
        text,
    }])
    .expect("parses");
    let errs: Vec<String> = match super::super::validate(&docs) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("spec.rules[0].to: listener `db` is a TCP listener"),
        "{errs:?}"
    );
}
