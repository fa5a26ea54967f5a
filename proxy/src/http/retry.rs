//! Retries: which outcomes are retried, how long to back off, and the request body kept so it
//! can be sent again.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::Body;
use http_body_util::BodyExt;
use strait_config::snapshot::RetryPolicy;

use super::body::{ClientBody, UpstreamBody};
use super::error::ProxyError;

/// The request body, either streamed once or kept whole for retries.
#[derive(Debug)]
pub enum RequestBody {
    /// Streamed as it arrives: can be sent once.
    Once(Option<ClientBody>),
    /// Read whole (small enough to keep): can be sent again.
    Kept(Bytes),
}

impl RequestBody {
    /// Keeps the body when its announced size is at most `limit` bytes; otherwise it streams
    /// and the request is not retried (a body is never replayed after it started flowing).
    /// A body already read whole is kept whatever its size (it costs nothing more).
    pub async fn keep_if_small(body: ClientBody, limit: u64) -> Result<Self, ProxyError> {
        let body = match body {
            ClientBody::Whole(bytes) => return Ok(Self::Kept(bytes)),
            streamed => streamed,
        };
        if body.is_end_stream() {
            return Ok(Self::Kept(Bytes::new()));
        }
        match body.size_hint().exact() {
            Some(n) if n <= limit => {
                let bytes = body
                    .collect()
                    .await
                    .map_err(ProxyError::RequestBody)?
                    .to_bytes();
                Ok(Self::Kept(bytes))
            }
            _ => Ok(Self::Once(Some(body))),
        }
    }

    /// The body for the next attempt (None once a streamed body has been used).
    pub fn for_attempt(&mut self) -> Option<UpstreamBody> {
        match self {
            Self::Once(body) => body.take().map(UpstreamBody::Streamed),
            Self::Kept(bytes) => Some(UpstreamBody::Full(Some(bytes.clone()))),
        }
    }

    /// The body, when it is kept in memory.
    pub fn kept(&self) -> Option<&Bytes> {
        match self {
            Self::Kept(bytes) => Some(bytes),
            Self::Once(_) => None,
        }
    }

    /// Whether another attempt may send the body again: it is kept, and within `limit` bytes
    /// (a body kept for a mirror may be larger than the retry policy allows).
    pub fn replayable(&self, limit: u64) -> bool {
        matches!(self, Self::Kept(bytes) if bytes.len() as u64 <= limit)
    }
}

/// Whether `outcome` of an attempt is retried under `policy`.
pub fn retryable(policy: &RetryPolicy, outcome: Result<StatusCode, &ProxyError>) -> bool {
    let on = &policy.on;
    match outcome {
        Ok(status) => on.status(status.as_u16()),
        // A failed handshake sent nothing: retried as a connect failure.
        Err(ProxyError::Connect(_) | ProxyError::TlsFailure(_)) => {
            on.connect_failure || on.any_5xx || on.gateway_error
        }
        Err(ProxyError::UpstreamReset(_)) => on.reset || on.any_5xx || on.gateway_error,
        // A per-try timeout is always worth another try.
        Err(ProxyError::Timeout) => true,
        Err(_) => false,
    }
}

/// Backoff before retry number `retry` (1-based): exponential from `base`, capped at `max`,
/// jittered over its upper half so that clients retrying together spread out.
pub fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let exp = policy
        .backoff_base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(policy.backoff_max);
    exp.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_config::snapshot::RetryOn;

    fn policy(on: RetryOn) -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            on,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget: None,
            max_body_bytes: 65536,
        }
    }

    fn answer(status: u16) -> Result<StatusCode, &'static ProxyError> {
        Ok(StatusCode::from_u16(status).unwrap())
    }

    #[test]
    fn conditions() {
        let gateway = policy(RetryOn {
            gateway_error: true,
            ..Default::default()
        });
        assert!(retryable(&gateway, answer(503)));
        assert!(!retryable(&gateway, answer(500)));
        assert!(!retryable(&gateway, answer(200)));
        let refused = ProxyError::Connect(std::io::Error::other("refused"));
        assert!(retryable(&gateway, Err(&refused)));
        let codes = policy(RetryOn {
            statuses: vec![409],
            ..Default::default()
        });
        assert!(retryable(&codes, answer(409)));
        assert!(!retryable(&codes, Err(&refused)));
        assert!(retryable(&codes, Err(&ProxyError::Timeout)));
        assert!(!retryable(&codes, Err(&ProxyError::NoRoute)));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy(RetryOn::default());
        for _ in 0..100 {
            let first = backoff(&p, 1);
            assert!(first >= Duration::from_micros(12_500) && first <= Duration::from_millis(25));
            let third = backoff(&p, 3);
            assert!(third >= Duration::from_millis(50) && third <= Duration::from_millis(100));
            assert!(backoff(&p, 30) <= Duration::from_millis(250));
        }
    }
}
