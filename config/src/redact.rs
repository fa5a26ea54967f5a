//! Hiding secrets before config is shown (`/config`, logs).

use crate::spec::{HeaderEditsSpec, Resource};

/// What replaces a secret value.
pub const REDACTED: &str = "<redacted>";

/// Whether a header's value is a credential by its name.
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || [
        "token",
        "secret",
        "key",
        "password",
        "credential",
        "session",
    ]
    .iter()
    .any(|word| n.contains(word))
}

/// A copy of `resource` with secret values replaced by [`REDACTED`].
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
                for h in &mut m.headers {
                    if is_secret_header(&h.name) {
                        h.value = REDACTED.to_owned();
                    }
                }
            }
        }
    }
    r
}

fn redact_edits(edits: &mut HeaderEditsSpec) {
    for map in [&mut edits.set, &mut edits.add] {
        for (name, value) in map.iter_mut() {
            if is_secret_header(name) {
                *value = REDACTED.to_owned();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_secret_header;

    #[test]
    fn recognises_credentials() {
        assert!(is_secret_header("Authorization"));
        assert!(is_secret_header("x-api-key"));
        assert!(is_secret_header("x-auth-token"));
        assert!(!is_secret_header("x-mesh"));
        assert!(!is_secret_header("x-served-by"));
    }
}
