//! Building test configs: small helpers that write the contract's YAML.

/// A proxy's bootstrap for a control to fill: admin and one HTTP listener `web`.
pub const BOOTSTRAP: &str = "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: bootstrap}
spec:
  admin: 127.0.0.1:0
  listeners:
    - {name: web, address: 127.0.0.1:0, protocol: http}
";

/// A ProxyConfig with admin and listeners `web` (http) and `db` (tcp) on free ports, plus
/// `extra` lines appended under `spec:` (indented by two spaces by the caller).
pub fn proxy(extra: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: test}}
spec:
  admin: 127.0.0.1:0
  drainTimeout: 5s
  listeners:
    - {{name: web, address: 127.0.0.1:0, protocol: http}}
    - {{name: db, address: 127.0.0.1:0, protocol: tcp}}
{extra}
"
    )
}

/// A Service document; `endpoints` are `(address, weight)`.
pub fn service(name: &str, protocol: &str, endpoints: &[(String, u32)], extra: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, w)| format!("{{address: \"{a}\", weight: {w}}}"))
        .collect();
    format!(
        "---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  protocol: {protocol}
  endpoints: [{}]
{extra}
",
        eps.join(", ")
    )
}

/// An HTTPRoute document with `spec` given as YAML lines (indented two spaces).
/// A Service `name` with one HTTP/1 endpoint at `address`.
pub fn http1_service(name: &str, address: &str) -> String {
    format!(
        "---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  protocol: http1
  endpoints: [{{address: \"{address}\"}}]
"
    )
}

/// An HTTPRoute `name` on `listener` sending requests for `host` to Service `backend`.
pub fn host_route(name: &str, listener: &str, host: &str, backend: &str) -> String {
    format!(
        "---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: {listener}}}]
  hostnames: [\"{host}\"]
  rules: [{{backendRefs: [{{name: {backend}}}]}}]
"
    )
}

pub fn http_route(name: &str, spec: &str) -> String {
    format!("---\napiVersion: strait.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n{spec}\n")
}
