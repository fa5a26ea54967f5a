//! Join tokens: `strait-join.<id>.<secret>.<bundle-sha256>`, each good for certificates of one
//! identity until it expires. The store keeps the id, the identity, the expiry and a SHA-256
//! of the secret — never the secret, so a dump of the store cannot be replayed.
//!
//! - `id`: 16 hex digits (8 random bytes), the lookup key;
//! - `secret`: 64 hex digits (32 random bytes from the system CSPRNG);
//! - `bundle-sha256`: [`TrustBundle::sha256`](super::bundle::TrustBundle::sha256) when the
//!   token was made, so its holder can check the bundle it fetches on first contact.

use std::fmt;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::bundle::sha256_hex;
use super::spiffe::SpiffeId;

/// The text every join token starts with.
pub const PREFIX: &str = "strait-join";

/// A join token as its holder has it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: String,
    bundle_sha256: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}.{}",
            self.id, self.secret, self.bundle_sha256
        )
    }
}

/// Why a join token is refused (each is a 401 at the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Not `strait-join.<16 hex>.<64 hex>.<64 hex>`.
    #[error("malformed join token")]
    Malformed,
    /// No such token, or a wrong secret.
    #[error("unknown join token")]
    Unknown,
    /// Past its expiry.
    #[error("expired join token")]
    Expired,
    /// No randomness available.
    #[error("no randomness for a token")]
    Random,
}

/// What the store keeps of a join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// Identity's namespace.
    pub namespace: String,
    /// Identity's service account.
    pub service_account: String,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn random_hex(bytes: usize) -> Result<String, JoinError> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| JoinError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl JoinToken {
    /// A new random token for a bundle with hash `bundle_sha256`, and the record to store
    /// under [`id`](Self::id).
    pub fn mint(
        identity: &SpiffeId,
        expires_at: u64,
        bundle_sha256: &str,
    ) -> Result<(Self, TokenRecord), JoinError> {
        let token = Self {
            id: random_hex(8)?,
            secret: random_hex(32)?,
            bundle_sha256: bundle_sha256.to_owned(),
        };
        let record = TokenRecord {
            namespace: identity.namespace().to_owned(),
            service_account: identity.service_account().to_owned(),
            expires_at,
            secret_sha256: sha256_hex(token.secret.as_bytes()),
        };
        Ok((token, record))
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Self, JoinError> {
        let mut parts = text.trim().split('.');
        let (Some(PREFIX), Some(id), Some(secret), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(JoinError::Malformed);
        };
        if !is_hex(id, 16) || !is_hex(secret, 64) || !is_hex(hash, 64) {
            return Err(JoinError::Malformed);
        }
        Ok(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
            bundle_sha256: hash.to_owned(),
        })
    }

    /// The lookup key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bundle hash it carries.
    pub fn bundle_sha256(&self) -> &str {
        &self.bundle_sha256
    }

    /// The identity `record` grants when it is this token's and still valid at `now` (unix s).
    pub fn check(
        &self,
        record: &TokenRecord,
        trust_domain: &str,
        now: u64,
    ) -> Result<SpiffeId, JoinError> {
        let presented = sha256_hex(self.secret.as_bytes());
        if !bool::from(presented.as_bytes().ct_eq(record.secret_sha256.as_bytes())) {
            return Err(JoinError::Unknown);
        }
        if now >= record.expires_at {
            return Err(JoinError::Expired);
        }
        SpiffeId::new(trust_domain, &record.namespace, &record.service_account)
            .map_err(|_| JoinError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_secret_and_expiry() {
        let id = SpiffeId::new("example.org", "default", "reviews").unwrap();
        let hash = "ab".repeat(32);
        let (token, record) = JoinToken::mint(&id, 100, &hash).unwrap();
        let text = token.to_string();
        assert!(text.starts_with("strait-join."));
        assert!(!format!("{record:?}").contains(&token.secret));
        assert!(!format!("{token:?}").contains(&token.secret));
        let parsed = JoinToken::parse(&text).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.check(&record, "example.org", 99), Ok(id));
        assert_eq!(
            parsed.check(&record, "example.org", 100),
            Err(JoinError::Expired)
        );
        let (other, _) = JoinToken::mint(
            &parsed.check(&record, "example.org", 0).unwrap(),
            100,
            &hash,
        )
        .unwrap();
        assert_eq!(
            other.check(&record, "example.org", 0),
            Err(JoinError::Unknown)
        );
    }

    #[test]
    fn rejects_malformed_tokens() {
        let hex64 = "0".repeat(64);
        for bad in [
            String::new(),
            "strait-join".into(),
            format!("strait-join.{}.{hex64}.{hex64}", "0".repeat(15)),
            format!("strait-join.{}.{hex64}.{hex64}.x", "0".repeat(16)),
            format!("other.{}.{hex64}.{hex64}", "0".repeat(16)),
            format!("strait-join.{}.{}.{hex64}", "0".repeat(16), "G".repeat(64)),
        ] {
            assert_eq!(JoinToken::parse(&bad), Err(JoinError::Malformed), "{bad}");
        }
    }
}
