//! Who may call what: authentication and the roles of every API call, in one place.
//!
//! Two kinds of callers ([`Caller`]):
//! - the **operator** presents the bearer token (from `--token-file`, or generated into
//!   `DATA_DIR/token`, mode 0600; compared in constant time, never logged) and may do
//!   everything;
//! - a **proxy** presents a client certificate of the mesh's trust domain (only over the
//!   control's TLS, `--trust-domain`) and may only do what a sidecar needs ([`proxy_may`]):
//!   read its own push stream and answer it, register/heartbeat/deregister registry instances
//!   of its own namespace, publish events. Everything else is 403.
//!
//! Certificate issuance and the trust bundle (`/v1/identity/certificates`, `/bundle`) sit
//! outside this check: they authenticate with a join token or the caller's certificate
//! themselves (see `ca::api`).
//!
//! Tokens and ids that grant anything come from the operating system's random source
//! ([`random_hex`]), never from `fastrand`, whose state a few outputs give away.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::Method;
use http::{header, StatusCode};
use subtle::ConstantTimeEq;

use crate::ca::tls::PeerIdentity;
use crate::ca::SpiffeId;

/// The bearer token the API requires.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads a token file (surrounding whitespace ignored; empty is an error).
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Self(token.as_bytes().into()))
    }

    /// Generates a random token into `path` (readable by the owner only).
    pub fn generate(path: &Path) -> std::io::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let token = random_hex::<32>()?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(token.as_bytes())?;
        file.sync_all()?;
        Ok(Self(token.as_bytes().into()))
    }

    /// Whether `presented` is the token (constant time in the token's length).
    pub fn matches(&self, presented: &[u8]) -> bool {
        presented.ct_eq(&self.0).into()
    }
}

/// `N` bytes from the operating system's cryptographic random source, in lowercase hex.
pub fn random_hex<const N: usize>() -> std::io::Result<String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Who is calling; handlers find it in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The bearer token's holder: may do everything.
    Operator,
    /// A proxy with a certificate of this identity: may do only what [`proxy_may`] allows.
    Proxy(SpiffeId),
}

/// Whether a proxy may call `method path` at all (ownership of the node or namespace is
/// checked by the handler, with [`may_stream`] and [`may_register`]).
pub fn proxy_may(method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    matches!(
        (method.as_str(), segments.as_slice()),
        ("GET", ["v1", "push", "stream"])
            | ("POST", ["v1", "push", "ack"])
            | ("POST", ["v1", "push", "report"])
            | ("POST", ["v1", "registry", "instances"])
            | ("PUT", ["v1", "registry", "instances", _, "heartbeat"])
            | ("DELETE", ["v1", "registry", "instances", _])
            | ("POST", ["v1", "events", _])
    )
}

/// Whether `caller` may read node `node`'s push stream (and answer it). A proxy may when the
/// node's ProxyConfig (`proxy_config`: its `spec.identity`, if the control stores one named
/// after the node) names the proxy's namespace and service account; with no such ProxyConfig
/// the stream holds only what every proxy gets (Services, routes of the listeners it names),
/// so any proxy may read it.
pub fn may_stream(caller: &Caller, proxy_config: Option<&serde_json::Value>) -> bool {
    match (caller, proxy_config) {
        (Caller::Operator, _) | (Caller::Proxy(_), None) => true,
        (Caller::Proxy(id), Some(document)) => {
            let identity = &document["spec"]["identity"];
            identity["namespace"].as_str() == Some(id.namespace())
                && identity["serviceAccount"].as_str() == Some(id.service_account())
        }
    }
}

/// Whether `caller` may register an instance in `namespace` (a proxy: its own only).
pub fn may_register(caller: &Caller, namespace: &str) -> bool {
    match caller {
        Caller::Operator => true,
        Caller::Proxy(id) => id.namespace() == namespace,
    }
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut resp = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// Middleware: the operator's bearer token, or a proxy's client certificate for what a proxy
/// may do (403 for the rest); 401 without either. Puts the [`Caller`] into the request.
pub async fn require(State(token): State<Token>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let caller = match (presented, request.extensions().get::<PeerIdentity>()) {
        (Some(p), _) if token.matches(p) => Caller::Operator,
        (_, Some(PeerIdentity(id))) => Caller::Proxy(id.clone()),
        _ => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token".into(),
            )
        }
    };
    if let Caller::Proxy(id) = &caller {
        if !proxy_may(request.method(), request.uri().path()) {
            tracing::info!(peer = %id, method = %request.method(), path = request.uri().path(), "refused a proxy identity");
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "{id} is a proxy identity: it may not {} {}",
                    request.method(),
                    request.uri().path()
                ),
            );
        }
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_tokens_only() {
        let t = Token(b"secret-token".as_slice().into());
        assert!(t.matches(b"secret-token"));
        assert!(!t.matches(b"secret-toke"));
        assert!(!t.matches(b"secret-token2"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn generated_tokens_are_256_bit_hex_and_distinct() {
        let dir = std::env::temp_dir().join(format!("strait-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..64 {
            // Seeded alike, fastrand (which made tokens before) would repeat itself here.
            fastrand::seed(7);
            let path = dir.join(format!("token-{i}"));
            let token = Token::generate(&path).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(token.matches(text.as_bytes()));
            assert_eq!(text.len(), 64, "{text}");
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{text}"
            );
            assert!(seen.insert(text), "a token repeated");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn proxies_may_only_stream_register_and_publish() {
        for (method, path) in [
            (Method::GET, "/v1/push/stream"),
            (Method::POST, "/v1/push/ack"),
            (Method::POST, "/v1/push/report"),
            (Method::POST, "/v1/registry/instances"),
            (Method::PUT, "/v1/registry/instances/abc/heartbeat"),
            (Method::DELETE, "/v1/registry/instances/abc"),
            (Method::POST, "/v1/events/orders"),
        ] {
            assert!(proxy_may(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::POST, "/v1/apply"),
            (Method::GET, "/v1/resources"),
            (Method::GET, "/v1/resources/Service/default/a"),
            (Method::DELETE, "/v1/resources/Service/default/a"),
            (Method::GET, "/v1/registry/instances"),
            (Method::GET, "/v1/proxies"),
            (Method::GET, "/v1/live"),
            (Method::GET, "/v1/live/stream"),
            (Method::GET, "/v1/events/orders/history"),
            (Method::GET, "/v1/subscribe"),
            (Method::POST, "/v1/identity/tokens"),
            (Method::POST, "/v1/identity/rotate"),
            (Method::GET, "/v1/identity/status"),
            (Method::POST, "/v1/registry/instances/abc/heartbeat"),
        ] {
            assert!(!proxy_may(&method, path), "{method} {path}");
        }
    }

    #[test]
    fn a_proxy_streams_only_its_own_proxy_config() {
        let proxy = Caller::Proxy(SpiffeId::new("td", "default", "reviews").unwrap());
        let own = serde_json::json!({"spec": {"identity": {"namespace": "default", "serviceAccount": "reviews"}}});
        let other = serde_json::json!({"spec": {"identity": {"namespace": "default", "serviceAccount": "ratings"}}});
        let none = serde_json::json!({"spec": {}});
        assert!(may_stream(&proxy, None));
        assert!(may_stream(&proxy, Some(&own)));
        assert!(!may_stream(&proxy, Some(&other)));
        assert!(!may_stream(&proxy, Some(&none)));
        assert!(may_stream(&Caller::Operator, Some(&other)));
        assert!(may_register(&proxy, "default"));
        assert!(!may_register(&proxy, "payments"));
    }
}
