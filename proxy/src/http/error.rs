//! Why the proxy answered a request itself, and the one function that turns that into a response.

use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::StatusCode;

use super::body::{BodyError, ResponseBody};
use super::response::{Fields, Reply};
use crate::service::breaker::Refusal;

/// Header naming the reason for a proxy-made answer.
pub const REASON_HEADER: &str = "x-strait-reason";

/// A request the proxy could not (or would not) forward, classified by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Downstream: the request is malformed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Downstream: headers exceed the configured limits.
    #[error("request headers too large: {0}")]
    HeadersTooLarge(&'static str),
    /// Downstream: the request body broke off, stalled or was malformed mid-stream.
    #[error("request body aborted: {0}")]
    RequestBody(#[source] BodyError),
    /// Downstream: a method the proxy does not forward (`CONNECT`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Downstream: a transfer coding other than chunked.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// Downstream: an `Expect` other than `100-continue`.
    #[error("expectation not supported")]
    ExpectationFailed,
    /// Config: no rule matches.
    #[error("no route matches")]
    NoRoute,
    /// Policy: an AuthorizationPolicy denies the request.
    #[error("forbidden by authorization policy")]
    Forbidden,
    /// Upstream: the service has no endpoint to send to.
    #[error("no healthy endpoints")]
    NoHealthyEndpoints,
    /// Policy: the service's circuit breaker is open.
    #[error("circuit open")]
    CircuitOpen,
    /// Policy: a circuit-breaker concurrency limit is reached.
    #[error("circuit-breaker limit reached")]
    Overflow,
    /// Upstream: connecting failed.
    #[error("connect to upstream failed: {0}")]
    Connect(#[source] std::io::Error),
    /// Upstream: the TLS handshake failed, or the peer's certificate is not one the service
    /// accepts (`tls.identities`, `caFile`/`sni`). Counts as an upstream failure; retried as a
    /// connect failure (nothing was sent).
    #[error("upstream tls failed: {0}")]
    TlsFailure(#[source] std::io::Error),
    /// Upstream: connection reset or closed before a complete response, or a response that
    /// is not valid HTTP.
    #[error("upstream reset: {0}")]
    UpstreamReset(#[source] UpstreamError),
    /// The route's request timeout expired.
    #[error("request timed out")]
    Timeout,
    /// Policy: the route's rate-limit bucket for this key is empty.
    #[error("rate limited")]
    RateLimited(std::time::Duration),
    /// Policy: fault injection answered instead of the upstream.
    #[error("fault injected: {0}")]
    Fault(StatusCode),
    /// A state config validation should have made impossible.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// How an upstream exchange broke, by the client that carried it.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Over HTTP/1 (Strait's own client).
    #[error(transparent)]
    Http1(#[from] super::h1::Error),
    /// Over HTTP/2 (hyper's client).
    #[error(transparent)]
    Http2(#[from] hyper::Error),
}

impl From<super::h1::Error> for ProxyError {
    fn from(e: super::h1::Error) -> Self {
        use super::h1::Error;
        match e {
            Error::RequestBody(e) => Self::RequestBody(e),
            Error::RequestBodyLength => Self::BadRequest("request body does not match its length"),
            other => Self::UpstreamReset(UpstreamError::Http1(other)),
        }
    }
}

impl From<Refusal> for ProxyError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Open => Self::CircuitOpen,
            Refusal::Overflow => Self::Overflow,
        }
    }
}

impl ProxyError {
    /// Status code of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RequestBody(BodyError::Stalled(_)) => StatusCode::REQUEST_TIMEOUT,
            Self::BadRequest(_) | Self::RequestBody(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NoHealthyEndpoints | Self::CircuitOpen | Self::Overflow => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Connect(_) | Self::TlsFailure(_) | Self::UpstreamReset(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Fault(status) => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Value of `x-strait-reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RequestBody(BodyError::Stalled(_)) => "body-timeout",
            Self::BadRequest(_) | Self::RequestBody(_) => "bad-request",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::NotImplemented(_) => "not-implemented",
            Self::ExpectationFailed => "expectation-failed",
            Self::HeadersTooLarge(_) => "header-too-large",
            Self::NoRoute => "no-route",
            Self::Forbidden => "forbidden",
            Self::NoHealthyEndpoints => "no-healthy-endpoints",
            Self::CircuitOpen => "circuit-open",
            Self::Overflow => "overflow",
            Self::Connect(_) => "connect-failure",
            Self::TlsFailure(_) => "tls-failure",
            Self::UpstreamReset(_) => "upstream-reset",
            Self::Timeout => "timeout",
            Self::RateLimited(_) => "rate-limited",
            Self::Fault(_) => "fault-injected",
            Self::Internal(_) => "internal",
        }
    }

    /// Whether the failure is the upstream's (it counts against the endpoint).
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::TlsFailure(_) | Self::UpstreamReset(_) | Self::Timeout
        )
    }

    /// Whether an HTTP/1 connection should close after this answer: the client's framing or
    /// headers cannot be trusted any more.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BadRequest(_)
                | Self::RequestBody(_)
                | Self::HeadersTooLarge(_)
                | Self::MethodNotAllowed
                | Self::NotImplemented(_)
                | Self::ExpectationFailed
        )
    }

    /// The response the client gets.
    pub fn into_response(self) -> Reply<ResponseBody> {
        let status = self.status();
        let reason = self.reason();
        let mut body = String::with_capacity(64);
        body.push_str(status.canonical_reason().unwrap_or("error"));
        body.push_str(" (");
        body.push_str(reason);
        body.push_str(")\n");
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert(REASON_HEADER, HeaderValue::from_static(reason));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Self::MethodNotAllowed = self {
            // RFC 9110 §15.5.6: a 405 names the methods that are allowed.
            headers.insert(
                http::header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
            );
        }
        if let Self::RateLimited(wait) = self {
            // Whole seconds, rounded up: a client that waits this long will be accepted.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        Reply {
            status,
            fields: Fields::Map(headers),
            body: ResponseBody::local(body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_match_the_contract_table() {
        let cases = [
            (ProxyError::NoRoute, 404, "no-route"),
            (ProxyError::Forbidden, 403, "forbidden"),
            (ProxyError::NoHealthyEndpoints, 503, "no-healthy-endpoints"),
            (
                ProxyError::Connect(std::io::Error::other("refused")),
                502,
                "connect-failure",
            ),
            (
                ProxyError::TlsFailure(std::io::Error::other("bad peer")),
                502,
                "tls-failure",
            ),
            (ProxyError::Timeout, 504, "timeout"),
            (ProxyError::CircuitOpen, 503, "circuit-open"),
            (ProxyError::Overflow, 503, "overflow"),
            (ProxyError::HeadersTooLarge("size"), 431, "header-too-large"),
            (ProxyError::BadRequest("host"), 400, "bad-request"),
            (
                ProxyError::RequestBody(BodyError::Stalled(std::time::Duration::from_secs(30))),
                408,
                "body-timeout",
            ),
            (ProxyError::MethodNotAllowed, 405, "method-not-allowed"),
            (ProxyError::NotImplemented("gzip"), 501, "not-implemented"),
            (
                ProxyError::RateLimited(std::time::Duration::from_millis(1500)),
                429,
                "rate-limited",
            ),
        ];
        for (err, status, reason) in cases {
            let resp = err.into_response();
            assert_eq!(resp.status.as_u16(), status);
            let headers = resp.fields.into_map();
            assert_eq!(headers[REASON_HEADER], reason);
            if status == 429 {
                assert_eq!(headers["retry-after"], "2");
            }
        }
    }
}
