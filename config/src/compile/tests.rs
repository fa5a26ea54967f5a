//! Validation errors: each names file, line, column and field path.

use crate::load_str;

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
";

fn errors_of(extra: &str) -> Vec<String> {
    let text = format!("{HEAD}---\n{extra}");
    match load_str("cfg.yaml", &text) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

fn route(rule: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  rules:
    - {rule}
"
    )
}

#[test]
fn the_contract_example_is_valid() {
    let text = include_str!("../../../deploy/examples/mesh.yaml");
    let snapshot = load_str("mesh.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.listeners.len(), 2);
    assert_eq!(snapshot.services.len(), 3);
}

#[test]
fn a_valid_route_compiles() {
    assert_eq!(
        errors_of(&route("backendRefs: [{name: api}]")),
        Vec::<String>::new()
    );
}

#[test]
fn unknown_service_is_located() {
    let errs = errors_of(&route("backendRefs: [{name: nope}]"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("cfg.yaml:22:28: spec.rules[0].backendRefs[0].name: no Service `nope`"),
        "{}",
        errs[0]
    );
}

#[test]
fn unknown_field_is_located() {
    let errs = errors_of(&route(
        "backendRefs: [{name: api}]\n      retires: {attempts: 1}",
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("cfg.yaml:23:7: spec.rules[0].retires: unknown field `retires`"),
        "{}",
        errs[0]
    );
}

#[test]
fn duplicate_key_is_an_error() {
    let errs = errors_of(&route(
        "backendRefs: [{name: api}]\n      backendRefs: [{name: api}]",
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("cfg.yaml:23:7: spec.rules[0].backendRefs: duplicate key"),
        "{}",
        errs[0]
    );
}

#[test]
fn bad_regex_and_zero_weights_and_bad_durations() {
    let errs = errors_of(&route(
        "matches: [{path: {type: RegularExpression, value: \"/a(\"}}]
      backendRefs: [{name: api, weight: 0}]
      timeouts: {request: 5parsecs}",
    ));
    assert_eq!(
        errs.len(),
        1,
        "duration errors stop typed parsing first: {errs:?}"
    );
    assert!(
        errs[0].contains("spec.rules[0].timeouts.request") && errs[0].contains("unknown unit"),
        "{}",
        errs[0]
    );

    let errs = errors_of(&route(
        "matches: [{path: {type: RegularExpression, value: \"/a(\"}}]
      backendRefs: [{name: api, weight: 0}]",
    ));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs
        .iter()
        .any(|e| e.contains("spec.rules[0].matches[0].path.value: invalid regular expression")));
    assert!(errs
        .iter()
        .any(|e| e.contains("spec.rules[0].backendRefs: backend weights sum to 0")));
}

#[test]
fn route_to_tcp_service_and_unknown_listener() {
    let svc = "apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: pg}
spec: {protocol: tcp, endpoints: [{address: 127.0.0.1:5432}]}
---
";
    let errs = errors_of(&format!(
        "{svc}apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: nope}}, {{name: db}}]
  rules: [{{backendRefs: [{{name: pg}}]}}]
"
    ));
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs
        .iter()
        .any(|e| e.contains("spec.parentRefs[0].name: no listener `nope`")));
    assert!(errs.iter().any(
        |e| e.contains("spec.parentRefs[1].name: listener `db` is not a `protocol: http` listener")
    ));
    assert!(errs
        .iter()
        .any(|e| e.contains("spec.rules[0].backendRefs[0].name: Service `pg` is not an HTTP")));
}

#[test]
fn every_error_is_reported_at_once() {
    let errs = errors_of(&route(
        "backendRefs: [{name: a}, {name: b}]
      rateLimit: {requestsPerSecond: 0, burst: 1, key: bogus}",
    ));
    assert_eq!(errs.len(), 4, "{errs:?}");
}

#[test]
fn missing_proxy_config_is_an_error() {
    let err = load_str("x.yaml", "apiVersion: strait.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {protocol: http1}\n").unwrap_err();
    assert!(err.to_string().contains("no ProxyConfig"), "{err}");
}

#[test]
fn unknown_kind_and_bad_api_version() {
    let err = load_str(
        "x.yaml",
        "apiVersion: strait.dev/v1alpha1\nkind: Gateway\nmetadata: {name: a}\n",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("x.yaml:2:7: kind: unknown kind `Gateway`"),
        "{err}"
    );
    let err = load_str(
        "x.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("x.yaml:1:13: apiVersion: unsupported apiVersion `v1`"),
        "{err}"
    );
}

fn validate_str(text: &str) -> Vec<String> {
    let docs = crate::load::parse_sources(&[crate::Source {
        file: "store.yaml".into(),
        text: text.to_owned(),
    }])
    .expect("parses");
    match super::validate(&docs) {
        Ok(()) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn validate_needs_no_proxy_config_and_accepts_one_per_node() {
    let service_only = HEAD.split("---\n").nth(1).unwrap();
    assert!(validate_str(service_only).is_empty());
    let two_nodes = format!(
        "{HEAD}---\n{}",
        HEAD.split("---\n")
            .next()
            .unwrap()
            .replace("name: p", "name: q")
    );
    assert!(
        validate_str(&two_nodes).is_empty(),
        "{:?}",
        validate_str(&two_nodes)
    );
    let bad = format!(
        "{service_only}---\n{}",
        route("backendRefs: [{name: nope}]")
    );
    let errors = validate_str(&bad);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("store.yaml:"), "{errors:?}");
    assert!(
        errors[0].contains("spec.rules[0].backendRefs[0].name"),
        "{errors:?}"
    );
}

fn listener_errors(listener: &str) -> Vec<String> {
    let text = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: p}}
spec:
  admin: 127.0.0.1:0
  listeners:
    - {listener}
"
    );
    match load_str("cfg.yaml", &text) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn intercepting_listeners_compile_with_their_mode() {
    let text = "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: p}
spec:
  admin: 127.0.0.1:0
  listeners:
    - {name: in, address: 0.0.0.0:15302, protocol: http, mode: inbound}
    - {name: out, address: 127.0.0.1:15301, protocol: http, mode: outbound}
    - {name: web, address: 127.0.0.1:0, protocol: http}
";
    let snapshot = load_str("cfg.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    let modes: Vec<_> = snapshot.listeners.iter().map(|l| l.mode).collect();
    use crate::spec::ListenerMode;
    assert_eq!(
        modes,
        [
            ListenerMode::Inbound,
            ListenerMode::Outbound,
            ListenerMode::Explicit
        ]
    );
}

#[test]
fn intercepting_listeners_need_a_fixed_port_and_inbound_a_non_loopback_address() {
    let errs = listener_errors("{name: out, address: 127.0.0.1:0, protocol: http, mode: outbound}");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("spec.listeners[0].address") && errs[0].contains("fixed port"),
        "{errs:?}"
    );
    let errs =
        listener_errors("{name: in, address: 127.0.0.1:15302, protocol: tcp, mode: inbound}");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("spec.listeners[0].address") && errs[0].contains("loopback"),
        "{errs:?}"
    );
    let errs = listener_errors("{name: in, address: 0.0.0.0:1, protocol: http, mode: sideways}");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("spec.listeners[0].mode"), "{errs:?}");
}

#[test]
fn pool_idle_timeout_defaults_to_a_minute_and_zero_is_rejected_at_its_field() {
    let pool = |spec: &str| {
        format!(
            "apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: pooled}}
spec:
  protocol: http1
  endpoints: [{{address: 127.0.0.1:9002}}]
{spec}"
        )
    };
    let idle_timeout = |spec: &str| {
        let text = format!("{HEAD}---\n{}", pool(spec));
        let snapshot = load_str("cfg.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
        let service = snapshot.services.iter().find(|s| &*s.name == "pooled");
        service.expect("service pooled").pool_idle_timeout
    };
    assert_eq!(idle_timeout(""), std::time::Duration::from_secs(60));
    assert_eq!(
        idle_timeout("  connectionPool: {idleTimeout: 1500ms}"),
        std::time::Duration::from_millis(1500)
    );
    let errs = errors_of(&pool("  connectionPool: {idleTimeout: 0s}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("spec.connectionPool.idleTimeout: must be greater than 0")
            && errs[0].contains("cfg.yaml:"),
        "{}",
        errs[0]
    );
}

fn proxy_spec_errors(spec: &str) -> Vec<String> {
    let text = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: p}}
spec:
  admin: 127.0.0.1:15300
  listeners:
    - {{name: web, address: 127.0.0.1:15400, protocol: http}}
{spec}
"
    );
    match load_str("cfg.yaml", &text) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_telemetry_listener_and_the_readiness_fallback_compile() {
    assert_eq!(
        proxy_spec_errors("  telemetry: 0.0.0.0:15303\n  readyWithoutControlAfter: 60s"),
        Vec::<String>::new()
    );
}

#[test]
fn the_telemetry_listener_needs_its_own_valid_address() {
    let errs = proxy_spec_errors("  telemetry: 127.0.0.1:15300");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("spec.telemetry") && errs[0].contains("admin address"),
        "{errs:?}"
    );
    let errs = proxy_spec_errors("  telemetry: 127.0.0.1:15400");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("spec.listeners[0].address"), "{errs:?}");
    let errs = proxy_spec_errors("  telemetry: everywhere");
    assert!(errs[0].contains("spec.telemetry"), "{errs:?}");
    let errs = proxy_spec_errors("  readyWithoutControlAfter: 0s");
    assert!(
        errs[0].contains("spec.readyWithoutControlAfter"),
        "{errs:?}"
    );
}

#[test]
fn listener_tls_compiles_each_mode() {
    use crate::snapshot::ListenerTls;
    let text = "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: p}
spec:
  admin: 127.0.0.1:0
  identity: {certFile: id.crt, keyFile: id.key, trustBundleFile: roots.pem}
  listeners:
    - {name: a, address: 127.0.0.1:0, protocol: http, tls: {mode: mutual}}
    - {name: b, address: 127.0.0.1:0, protocol: tcp, tls: {mode: permissive}}
    - {name: c, address: 127.0.0.1:0, protocol: http, tls: {mode: simple, certFile: e.crt, keyFile: e.key}}
    - {name: d, address: 127.0.0.1:0, protocol: http, tls: {}}
    - {name: e, address: 127.0.0.1:0, protocol: http}
";
    let snapshot = load_str("dir/cfg.yaml", text).expect("valid");
    let tls: Vec<_> = snapshot.listeners.iter().map(|l| l.tls.clone()).collect();
    assert_eq!(
        tls,
        [
            ListenerTls::Mutual,
            ListenerTls::Permissive,
            ListenerTls::Simple {
                cert: "dir/e.crt".into(),
                key: "dir/e.key".into()
            },
            ListenerTls::Disabled,
            ListenerTls::Disabled,
        ]
    );
}

#[test]
fn mesh_tls_needs_an_identity_and_simple_needs_its_files() {
    let errs =
        listener_errors("{name: a, address: 127.0.0.1:0, protocol: http, tls: {mode: mutual}}");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("spec.listeners[0].tls.mode") && errs[0].contains("spec.identity"),
        "{errs:?}"
    );
    let errs = listener_errors(
        "{name: a, address: 127.0.0.1:0, protocol: http, tls: {mode: simple, certFile: e.crt}}",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("spec.listeners[0].tls.keyFile"),
        "{errs:?}"
    );
    let errs = listener_errors(
        "{name: a, address: 127.0.0.1:0, protocol: http, tls: {mode: disabled, certFile: e.crt}}",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("spec.listeners[0].tls.certFile"),
        "{errs:?}"
    );
    let errs =
        listener_errors("{name: a, address: 127.0.0.1:0, protocol: http, tls: {mode: strict}}");
    assert_eq!(errs.len(), 1, "{errs:?}");
}

fn service_tls(tls: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: secure}}
spec:
  protocol: http1
  endpoints: [{{address: 127.0.0.1:9443}}]
  tls: {tls}
"
    )
}

#[test]
fn service_tls_compiles_mesh_and_simple_with_a_relative_ca_file() {
    let text = format!(
        "{HEAD}---\n{}---\n{}",
        service_tls(
            "{mode: mesh, identities: [\"spiffe://td/ns/a/sa/b\", \"spiffe://td/ns/c/*\"]}"
        ),
        service_tls("{mode: simple, sni: api.example, caFile: roots.pem}")
            .replace("name: secure", "name: origin")
    );
    let snapshot = load_str("dir/cfg.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let tls = |name: &str| {
        snapshot
            .services
            .iter()
            .find(|s| &*s.name == name)
            .and_then(|s| s.tls.clone())
    };
    assert_eq!(
        tls("secure"),
        Some(crate::snapshot::ServiceTls::Mesh {
            identities: vec!["spiffe://td/ns/a/sa/b".into(), "spiffe://td/ns/c/*".into()]
        })
    );
    assert_eq!(
        tls("origin"),
        Some(crate::snapshot::ServiceTls::Simple {
            sni: Some("api.example".into()),
            ca_file: "dir/roots.pem".into()
        })
    );
    assert_eq!(tls("api"), None, "plaintext by default");
}

#[test]
fn service_tls_errors_name_the_field() {
    let cases = [
        (
            "{mode: mesh}",
            "spec.tls.identities",
            "needs the peer identities",
        ),
        (
            "{mode: mesh, identities: [\"https://x\"]}",
            "spec.tls.identities[0]",
            "SPIFFE ID",
        ),
        (
            "{mode: mesh, identities: [\"spiffe://td/*/sa\"]}",
            "spec.tls.identities[0]",
            "only at the end",
        ),
        (
            "{mode: mesh, identities: [\"spiffe://td/a\"], caFile: x.pem}",
            "spec.tls.caFile",
            "applies to `mode: simple`",
        ),
        (
            "{mode: simple, identities: [\"spiffe://td/a\"]}",
            "spec.tls.identities",
            "applies to `mode: mesh`",
        ),
        (
            "{mode: simple, sni: \"bad name\"}",
            "spec.tls.sni",
            "not a DNS name",
        ),
        ("{mode: tls}", "spec.tls.mode", ""),
    ];
    for (tls, path, message) in cases {
        let errs = errors_of(&service_tls(tls));
        assert!(
            errs.iter().any(|e| e.contains(path) && e.contains(message)),
            "{tls}: {errs:?}"
        );
    }
}

#[test]
fn endpoints_are_ip_port_or_host_port() {
    let service = |address: &str| {
        format!(
            "apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: ext}}
spec:
  protocol: http1
  endpoints: [{{address: \"{address}\"}}]
"
        )
    };
    for ok in [
        "10.0.0.7:8080",
        "[::1]:8080",
        "localhost:8443",
        "api.payments.example:443",
        "api.payments.example.:443",
    ] {
        assert_eq!(errors_of(&service(ok)), Vec::<String>::new(), "{ok}");
    }
    for bad in [
        "api.payments.example",
        "api.payments.example:0",
        "api.payments.example:https",
        "::1:80",
        "-bad-.example:80",
        "a_b.example:80",
        ":80",
    ] {
        let errs = errors_of(&service(bad));
        assert!(
            errs.len() == 1
                && errs[0].contains("spec.endpoints[0].address")
                && errs[0].contains("host:port"),
            "{bad}: {errs:?}"
        );
    }
    let text = format!("{HEAD}---\n{}", service("API.Payments.example:443"));
    let snapshot = load_str("cfg.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let ext = snapshot.service_by_name("ext").expect("ext");
    assert_eq!(
        ext.endpoints[0].address,
        crate::snapshot::EndpointAddress::Host {
            name: "api.payments.example".into(),
            port: 443
        }
    );
}

fn discovered(spec: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: reviews, namespace: shop}}
spec:
  protocol: http1
{spec}"
    )
}

#[test]
fn kubernetes_discovery_compiles_with_no_endpoints_and_mesh_peers_from_the_cluster() {
    for spec in [
        "  discovery: kubernetes\n  kubernetes: {service: reviews, port: http}\n",
        "  discovery: kubernetes\n  kubernetes: {service: reviews, namespace: other, port: 9080}\n  tls: {mode: mesh}\n",
    ] {
        assert_eq!(errors_of(&discovered(spec)), Vec::<String>::new(), "{spec}");
    }
}

#[test]
fn kubernetes_discovery_errors_name_the_field() {
    let cases = [
        (
            "  discovery: kubernetes\n",
            "spec.kubernetes:",
            "needs the Kubernetes Service",
        ),
        (
            "  discovery: kubernetes\n  kubernetes: {service: reviews, port: http}\n  endpoints: [{address: 127.0.0.1:1}]\n",
            "spec.endpoints",
            "takes endpoints from the cluster's EndpointSlices",
        ),
        (
            "  kubernetes: {service: reviews, port: http}\n",
            "spec.kubernetes",
            "applies to `discovery: kubernetes`",
        ),
        (
            "  discovery: kubernetes\n  kubernetes: {service: Reviews, port: http}\n",
            "spec.kubernetes.service",
            "not a Kubernetes Service name",
        ),
        (
            "  discovery: kubernetes\n  kubernetes: {service: reviews, namespace: a_b, port: http}\n",
            "spec.kubernetes.namespace",
            "not a Kubernetes namespace",
        ),
        (
            "  discovery: kubernetes\n  kubernetes: {service: reviews, port: 70000}\n",
            "spec.kubernetes.port",
            "out of range",
        ),
        (
            "  discovery: kubernetes\n  kubernetes: {service: reviews, port: \"Not A Name\"}\n",
            "spec.kubernetes.port",
            "neither a port number nor a port name",
        ),
        (
            "  discovery: kubernetes\n  kubernetes: {service: reviews, port: http, extra: 1}\n",
            "spec.kubernetes.extra",
            "unknown field",
        ),
        (
            "  discovery: registry\n  endpoints: [{address: 127.0.0.1:1}]\n  tls: {mode: mesh}\n",
            "spec.tls.identities",
            "needs the peer identities",
        ),
    ];
    for (spec, path, message) in cases {
        let errs = errors_of(&discovered(spec));
        assert!(
            errs.iter().any(|e| e.contains(path) && e.contains(message)),
            "{spec}: expected `{path}` with `{message}` in {errs:?}"
        );
    }
}
