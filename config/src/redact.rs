//! Hiding secrets before config is shown (`/config`, logs).

use crate::spec::{HeaderEditsSpec, Resource, ValueMatchSpec};

/// What replaces a secret value.
pub const REDACTED: &str = "<redacted>";

/// Words that make a header or query parameter name a credential's wherever they appear in it,
/// in any case: `Authorization`, `x-api-key`, `access_token`, `X-Hub-Signature-256`. A name
/// wrongly taken for a credential only hides a value from display; one that contains none of
/// them (`sid`) is shown.
const CREDENTIAL_WORDS: [&str; 11] = [
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "auth",
    "session",
    "cookie",
    "credential",
    "signature",
    "apikey",
];

/// Whether a header's or query parameter's value is a credential, judged by its name.
pub fn is_credential_name(name: &str) -> bool {
    CREDENTIAL_WORDS.iter().any(|word| {
        name.as_bytes()
            .windows(word.len())
            .any(|part| part.eq_ignore_ascii_case(word.as_bytes()))
    })
}

/// A copy of `resource` with credential values replaced by [`REDACTED`]: the values of route
/// header and query parameter matches and of header edits whose name looks like a credential's.
pub fn redacted(resource: &Resource) -> Resource {
    let mut r = resource.clone();
    if let Resource::HttpRoute(route) = &mut r {
        for rule in &mut route.spec.rules {
            for edits in [
                rule.request_headers.as_mut(),
                rule.response_headers.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                redact_edits(edits);
            }
            for m in &mut rule.matches {
                redact_matches(&mut m.headers);
                redact_matches(&mut m.query_params);
            }
        }
    }
    r
}

fn redact_matches(matches: &mut [ValueMatchSpec]) {
    for m in matches {
        if is_credential_name(&m.name) {
            m.value = REDACTED.to_owned();
        }
    }
}

fn redact_edits(edits: &mut HeaderEditsSpec) {
    for map in [&mut edits.set, &mut edits.add] {
        for (name, value) in map.iter_mut() {
            if is_credential_name(name) {
                *value = REDACTED.to_owned();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_str;

    #[test]
    fn credential_names_are_recognised_in_any_case_and_position() {
        for name in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "set-cookie",
            "x-api-key",
            "X-APIKEY",
            "x-auth-token",
            "x-amz-security-token",
            "X-Hub-Signature-256",
            "access_token",
            "api_key",
            "client_secret",
            "passwd",
            "JSESSIONID",
            "x-credentials",
        ] {
            assert!(is_credential_name(name), "{name}");
        }
        for name in ["x-mesh", "x-served-by", "version", "user", "page", ""] {
            assert!(!is_credential_name(name), "{name}");
        }
    }

    #[test]
    fn match_and_edit_values_with_credential_names_are_hidden_and_others_kept() {
        let snapshot = load_str(
            "r.yaml",
            "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: p}
spec:
  admin: 127.0.0.1:0
  listeners: [{name: web, address: 127.0.0.1:0, protocol: http}]
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: up}
spec: {protocol: http1, endpoints: [{address: 127.0.0.1:9}]}
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules:
    - matches:
        - headers: [{name: X-Session-Id, value: s1}, {name: x-env, value: prod}]
          queryParams: [{name: access_token, value: t1}, {name: page, value: '2'}]
      backendRefs: [{name: up}]
      requestHeaders: {add: {x-upstream-auth: a1, x-mesh: strait}}
      responseHeaders: {set: {Set-Cookie: c1}}
",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let shown: Vec<String> = snapshot
            .resources
            .iter()
            .map(|r| format!("{:?}", redacted(r)))
            .collect();
        let shown = shown.join("\n");
        for secret in ["\"s1\"", "\"t1\"", "\"a1\"", "\"c1\""] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        for kept in ["\"prod\"", "\"2\"", "\"strait\""] {
            assert!(shown.contains(kept), "{kept} hidden in {shown}");
        }
    }
}
