//! SPIFFE IDs of the form `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, the
//! only form Strait issues, and reading one out of a certificate.

use std::fmt;

/// A workload identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a text or certificate does not hold a SPIFFE ID Strait accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    /// Not of the form `spiffe://TD/ns/NS/sa/SA`.
    #[error("`{0}` is not spiffe://<trust domain>/ns/<namespace>/sa/<service account>")]
    Malformed(String),
    /// A trust domain with characters outside `a-z 0-9 . - _`.
    #[error("trust domain `{0}`: 1-255 characters of a-z, 0-9, `.`, `-`, `_`")]
    TrustDomain(String),
    /// A namespace or service account with characters outside `A-Z a-z 0-9 . - _`.
    #[error("`{0}`: 1-253 characters of letters, digits, `.`, `-`, `_` (not `.` or `..`)")]
    Segment(String),
    /// The certificate does not parse.
    #[error("certificate does not parse: {0}")]
    Certificate(String),
    /// The certificate has no URI SAN, or more than one.
    #[error("certificate must carry exactly one URI SAN, it has {0}")]
    UriCount(usize),
}

/// Checks a trust domain name (SPIFFE: lowercase letters, digits, `.`, `-`, `_`).
pub fn check_trust_domain(td: &str) -> Result<(), SpiffeError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::TrustDomain(td.to_owned()))
    }
}

fn check_segment(s: &str) -> Result<(), SpiffeError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::Segment(s.to_owned()))
    }
}

impl SpiffeId {
    /// The identity of `service_account` in `namespace` of `trust_domain`, checked.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeError> {
        check_trust_domain(trust_domain)?;
        check_segment(namespace)?;
        check_segment(service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Parses `spiffe://TD/ns/NS/sa/SA` (nothing else: no query, fragment, port or extra path).
    pub fn parse(uri: &str) -> Result<Self, SpiffeError> {
        let malformed = || SpiffeError::Malformed(uri.chars().take(300).collect());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed());
        };
        Self::new(td, ns, sa)
    }

    /// The identity in the one URI SAN of a DER certificate.
    pub fn from_certificate(der: &[u8]) -> Result<Self, SpiffeError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| SpiffeError::Certificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| SpiffeError::Certificate(e.to_string()))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|s| s.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [one] => Self::parse(one),
            _ => Err(SpiffeError::UriCount(uris.len())),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_the_ns_sa_form() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").unwrap();
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
        for bad in [
            "https://cluster.local/ns/default/sa/reviews",
            "spiffe://cluster.local/ns/default/sa/reviews/extra",
            "spiffe://cluster.local/ns/default/sa/",
            "spiffe://cluster.local/sa/reviews/ns/default",
            "spiffe://Cluster.Local/ns/default/sa/reviews",
            "spiffe://cluster.local:8080/ns/default/sa/reviews",
            "spiffe://cluster.local/ns/../sa/reviews",
            "spiffe://cluster.local/ns/a b/sa/reviews",
            "spiffe://cluster.local/ns/default/sa/reviews?x=1",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }
}
