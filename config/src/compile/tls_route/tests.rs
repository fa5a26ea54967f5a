//! TLSRoute validation and attachment.

use crate::load_str;
use crate::snapshot::Snapshot;

const HEAD: &str = "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: p}
spec:
  admin: 127.0.0.1:0
  listeners:
    - {name: web, address: 127.0.0.1:0, protocol: http}
    - {name: db, address: 127.0.0.1:0, protocol: tcp}
    - {name: outbound, address: 127.0.0.1:15301, protocol: http, mode: outbound}
    - {name: edge, address: 127.0.0.1:0, protocol: tcp, tls: {mode: simple, certFile: c.pem, keyFile: k.pem}}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: a}
spec: {protocol: tcp, endpoints: [{address: 127.0.0.1:9001}]}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: b}
spec: {protocol: tcp, endpoints: [{address: 127.0.0.1:9002}]}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: web-api}
spec: {protocol: http1, endpoints: [{address: 127.0.0.1:9003}]}
";

fn tls_route(name: &str, spec: &str) -> String {
    format!("---\napiVersion: strait.dev/v1alpha1\nkind: TLSRoute\nmetadata: {{name: {name}}}\nspec:\n{spec}")
}

fn load(routes: &str) -> Result<Snapshot, Vec<String>> {
    load_str("cfg.yaml", &format!("{HEAD}{routes}"))
        .map_err(|e| e.iter().map(ToString::to_string).collect())
}

fn errors_of(routes: &str) -> Vec<String> {
    load(routes).err().unwrap_or_default()
}

/// `listener: sni -> route` for every listener with TLSRoutes.
fn served(s: &Snapshot, listener: &str, sni: &str) -> Option<String> {
    let l = s.listeners.iter().find(|l| &*l.name == listener)?;
    l.tls_routes
        .as_ref()?
        .find(sni)
        .map(|r| format!("{}/{}", r.namespace, r.name))
}

#[test]
fn a_route_attaches_to_tcp_and_intercepting_listeners_only() {
    let s = load(&tls_route(
        "r",
        "  hostnames: [a.example, \"*.b.example\"]\n  rules: [{backendRefs: [{name: a, weight: 90}, {name: b, weight: 10}]}]\n",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(served(&s, "db", "a.example").as_deref(), Some("default/r"));
    assert_eq!(
        served(&s, "outbound", "x.b.example").as_deref(),
        Some("default/r")
    );
    assert_eq!(served(&s, "db", "other.example"), None);
    for no_routes in ["web", "edge"] {
        let l = s
            .listeners
            .iter()
            .find(|l| &*l.name == no_routes)
            .expect("listener");
        assert!(l.tls_routes.is_none(), "{no_routes}");
    }
    let route = s.listeners[1]
        .tls_routes
        .as_ref()
        .and_then(|t| t.find("a.example"))
        .expect("route");
    let weights: Vec<u32> = route.backends.iter().map(|(_, w)| w).collect();
    assert_eq!(weights, [90, 10]);
}

#[test]
fn no_tls_routes_means_no_table() {
    let s = load("").unwrap_or_else(|e| panic!("{e:?}"));
    assert!(s.listeners.iter().all(|l| l.tls_routes.is_none()));
}

#[test]
fn errors_name_the_field() {
    let errs = errors_of(&tls_route(
        "r",
        "  parentRefs: [{name: web}, {name: edge}, {name: nope}]
  hostnames: [\"a.example:443\", \"*\"]
  rules:
    - backendRefs: [{name: web-api}, {name: missing}]
    - backendRefs: [{name: a}]
",
    ));
    let expect = [
        "cfg.yaml:31:23: spec.parentRefs[0].name: listener `web` is an explicit `protocol: http` listener",
        "cfg.yaml:31:36: spec.parentRefs[1].name: listener `edge` terminates TLS",
        "cfg.yaml:31:50: spec.parentRefs[2].name: no listener `nope`",
        "cfg.yaml:32:15: spec.hostnames[0]: `a.example:443` is not a server name",
        "cfg.yaml:32:32: spec.hostnames[1]: `*` is not a server name",
        "cfg.yaml:35:7: spec.rules[1]: a TLSRoute has one rule",
    ];
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    for (got, want) in errs.iter().zip(expect) {
        assert!(
            got.starts_with(want),
            "{got}\nwanted {want}\nall: {errs:#?}"
        );
    }
    let errs = errors_of(&tls_route(
        "r",
        "  hostnames: [a.example]\n  rules: [{backendRefs: [{name: web-api}, {name: missing}]}]\n",
    ));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].contains(
            "spec.rules[0].backendRefs[0].name: Service `web-api` is not a `protocol: tcp` service"
        ),
        "{errs:#?}"
    );
    assert!(
        errs[1].contains("spec.rules[0].backendRefs[1].name: no Service `missing`"),
        "{errs:#?}"
    );
    let errs = errors_of(&tls_route("r", "  hostnames: []\n  rules: []\n"));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].contains("spec.hostnames: a TLSRoute needs at least one hostname"),
        "{errs:#?}"
    );
    assert!(
        errs[1].contains("spec.rules: a TLSRoute needs one rule"),
        "{errs:#?}"
    );
}

#[test]
fn a_backend_that_originates_tls_is_refused() {
    let svc = "---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: origin}
spec: {protocol: tcp, endpoints: [{address: 127.0.0.1:9004}], tls: {mode: simple, caFile: ca.pem}}
";
    let errs = errors_of(&format!(
        "{svc}{}",
        tls_route(
            "r",
            "  hostnames: [a.example]\n  rules: [{backendRefs: [{name: origin}]}]\n"
        )
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("spec.rules[0].backendRefs[0].name: Service `origin` originates TLS"),
        "{errs:#?}"
    );
}

#[test]
fn the_first_route_by_name_keeps_a_contested_hostname() {
    let routes = [
        tls_route(
            "zz",
            "  hostnames: [a.example]\n  rules: [{backendRefs: [{name: b}]}]\n",
        ),
        tls_route(
            "aa",
            "  hostnames: [A.Example]\n  rules: [{backendRefs: [{name: a}]}]\n",
        ),
    ]
    .concat();
    let s = load(&routes).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(served(&s, "db", "a.example").as_deref(), Some("default/aa"));
}

#[test]
fn the_control_validates_routes_without_listeners() {
    let docs = crate::load::parse_sources(&[crate::Source {
        file: "store.yaml".into(),
        text: format!(
            "{}{}",
            HEAD.split_once("---\n").map_or("", |(_, rest)| rest),
            tls_route("r", "  parentRefs: [{name: anywhere}]\n  hostnames: [a.example]\n  rules: [{backendRefs: [{name: nope}]}]\n")
        ),
    }])
    .expect("parses");
    let errs: Vec<String> = match crate::compile::validate(&docs) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("spec.rules[0].backendRefs[0].name: no Service `nope`"),
        "{errs:#?}"
    );
}
