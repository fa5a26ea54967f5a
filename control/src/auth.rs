//! Bearer-token authentication of every API call.
//!
//! The token comes from `--token-file` (or is generated into `DATA_DIR/token`, mode 0600, when
//! none is given). It is compared in constant time and never logged.
//!
//! Tokens and ids that grant anything come from the operating system's random source
//! ([`random_hex`]), never from `fastrand`, whose state a few outputs give away.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use subtle::ConstantTimeEq;

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

/// Middleware: 401 unless `Authorization: Bearer <token>`.
pub async fn require(State(token): State<Token>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(p) if token.matches(p) => next.run(request).await,
        _ => {
            let mut resp = (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": "missing or invalid bearer token"})),
            )
                .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
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
}
