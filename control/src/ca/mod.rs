//! The mesh's certificate authority, in the control (`serve --trust-domain D`).
//!
//! It issues short-lived certificates whose only SAN is a SPIFFE ID
//! (`spiffe://D/ns/NS/sa/SA`) for CSRs: a proxy keeps its key, proves who it is with a join
//! token the first time ([`join`]) and with its current certificate afterwards, and gets a
//! leaf, the issuer chain and the trust bundle. The control serves its own API over TLS with
//! a certificate from the same CA ([`tls`]).
//!
//! ```text
//!  spiffe   SPIFFE IDs: parse, print, read from a certificate           (pure)
//!  bundle   the roots, their hash, PEM                                   (pure)
//!  join     join tokens: format, mint, check against the stored hash     (pure)
//!  state    roots + issuer as stored (CaState), the rotation steps      (pure)
//!  authority  CSR checks, issuance, chain checks                          (pure)
//!  service  the shell: store (redb), issuer files, bundle file, swaps     (I/O)
//!  tls      the control's HTTPS listener: serving certificate, client certificates
//!  token_review  Kubernetes ServiceAccount tokens, checked with TokenReview   (I/O)
//!  api      /v1/identity/* handlers
//! ```

pub mod api;
pub mod authority;
pub mod bundle;
pub mod join;
pub mod service;
pub mod spiffe;
pub mod state;
pub mod tls;
pub mod token_review;

use std::path::PathBuf;
use std::time::Duration;

pub use service::Ca;
pub use spiffe::SpiffeId;

/// Default lifetime of issued certificates.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Namespace of the control's own identity.
pub const CONTROL_NAMESPACE: &str = "strait-system";
/// Service account of the control's own identity.
pub const CONTROL_SERVICE_ACCOUNT: &str = "strait-control";

/// How the CA runs.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// The trust domain (`spiffe://<this>/...`).
    pub trust_domain: String,
    /// The user's issuer; the control makes and stores its own when absent.
    pub issuer: Option<IssuerFiles>,
    /// Lifetime of issued certificates.
    pub cert_ttl: Duration,
    /// Extra DNS names and IP addresses of the control's serving certificate.
    pub server_names: Vec<String>,
}

/// An issuer (intermediate) the user's PKI made.
#[derive(Debug, Clone)]
pub struct IssuerFiles {
    /// PEM: the issuer certificate first, then any intermediates (and optionally the root).
    pub cert: PathBuf,
    /// PEM private key of the issuer.
    pub key: PathBuf,
    /// PEM roots; default: the self-signed certificates at the end of `cert`.
    pub trust_bundle: Option<PathBuf>,
}

/// One step of a root rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    /// A new root joins the bundle.
    AddRoot,
    /// A new issuer, signed by the newest root.
    SwitchIssuer,
    /// Every root but the newest leaves the bundle.
    RemoveOldRoots,
}

impl RotationStep {
    /// Parses `add-root`, `switch-issuer` or `remove-old-roots`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "add-root" => Some(Self::AddRoot),
            "switch-issuer" => Some(Self::SwitchIssuer),
            "remove-old-roots" => Some(Self::RemoveOldRoots),
            _ => None,
        }
    }

    /// The name [`parse`](Self::parse) takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::AddRoot => "add-root",
            Self::SwitchIssuer => "switch-issuer",
            Self::RemoveOldRoots => "remove-old-roots",
        }
    }
}

/// Parses a lifetime such as `90s`, `30m`, `24h` or `7d` (one number, one unit).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}`: add a unit (s, m, h or d), e.g. 24h"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: want a number then s, m, h or d, e.g. 24h"))?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86400),
        _ => None,
    }
    .filter(|s| *s > 0)
    .ok_or_else(|| format!("`{text}`: want a positive number then s, m, h or d, e.g. 24h"))?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_have_one_unit() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172800)));
        for bad in ["", "24", "h", "0h", "1h30m", "-1h", "1w"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
