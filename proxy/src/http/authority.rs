//! Which authority a request is for: the one it is routed by and the one that goes upstream,
//! made the same.

use http::header::{HeaderValue, HOST};
use http::uri::Authority;
use http::{Request, Version};

use super::error::ProxyError;

/// The authority the request is routed by, made the only one it carries, so that what is
/// routed is what goes upstream: an HTTP/1 absolute-form target (RFC 9112 §3.2.2) or HTTP/2
/// `:authority` (RFC 9113 §8.3.1) wins over Host, and a Host that differs from it is replaced
/// by it. An HTTP/1.1 request carries exactly one Host (RFC 9112 §3.2), and userinfo
/// (`user@host`, deprecated by RFC 9110 §4.2.4) is refused in either.
pub fn request_authority<B>(req: &mut Request<B>) -> Result<Authority, ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("duplicate Host header"));
    }
    if host.is_some_and(|value| value.as_bytes().contains(&b'@')) {
        return Err(ProxyError::BadRequest("userinfo in Host header"));
    }
    let Some(authority) = req.uri().authority() else {
        return match host {
            Some(value) => Authority::try_from(value.as_bytes())
                .map_err(|_| ProxyError::BadRequest("malformed Host header")),
            None if req.version() == Version::HTTP_11 || req.version() == Version::HTTP_2 => {
                Err(ProxyError::BadRequest("missing Host header"))
            }
            // HTTP/1.0 may omit Host; only routes without hostnames can match it.
            None => Ok(Authority::from_static("unknown")),
        };
    };
    if authority.as_str().contains('@') {
        return Err(ProxyError::BadRequest("userinfo in authority"));
    }
    if req.version() == Version::HTTP_11 && host.is_none() {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    let differs = host.is_some_and(|value| value.as_bytes() != authority.as_str().as_bytes());
    let authority = authority.clone();
    if differs {
        let value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| ProxyError::BadRequest("authority"))?;
        req.headers_mut().insert(HOST, value);
    }
    Ok(authority)
}

/// An authority as the access log shows it: without userinfo, which may hold a password (a
/// request carrying it is refused, but still logged).
pub fn without_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The authority and the Host left on a request of `version` to `uri` with `hosts`, or
    /// the refusal.
    fn settle(
        version: Version,
        uri: &str,
        hosts: &[&str],
    ) -> Result<(String, Vec<String>), String> {
        let mut req = Request::get(uri).version(version);
        for host in hosts {
            req = req.header(HOST, *host);
        }
        let mut req = req.body(()).map_err(|e| e.to_string())?;
        let authority = request_authority(&mut req).map_err(|e| e.to_string())?;
        let left = req
            .headers()
            .get_all(HOST)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        Ok((authority.to_string(), left))
    }

    fn ok(authority: &str, host: &[&str]) -> Result<(String, Vec<String>), String> {
        Ok((
            authority.to_owned(),
            host.iter().map(|h| (*h).to_owned()).collect(),
        ))
    }

    const H1: Version = Version::HTTP_11;
    const H2: Version = Version::HTTP_2;

    #[test]
    fn the_target_authority_wins_and_replaces_a_differing_host() {
        assert_eq!(settle(H1, "/a", &["Svc:80"]), ok("Svc:80", &["Svc:80"]));
        assert_eq!(settle(H1, "http://x/a", &["secret"]), ok("x", &["x"]));
        assert_eq!(settle(H1, "http://x:8/a", &["x:8"]), ok("x:8", &["x:8"]));
        assert_eq!(settle(H2, "http://x/a", &["secret"]), ok("x", &["x"]));
        assert_eq!(settle(H2, "http://x/a", &[]), ok("x", &[]));
        assert_eq!(
            settle(Version::HTTP_10, "/a", &[]),
            ok("unknown", &[]),
            "HTTP/1.0 may omit Host"
        );
        assert_eq!(settle(Version::HTTP_10, "http://x/a", &[]), ok("x", &[]));
    }

    #[test]
    fn refusals() {
        let bad = |reason: &str| Err(format!("bad request: {reason}"));
        assert_eq!(settle(H1, "/a", &[]), bad("missing Host header"));
        assert_eq!(settle(H1, "http://x/a", &[]), bad("missing Host header"));
        assert_eq!(settle(H1, "/a", &["x", "x"]), bad("duplicate Host header"));
        assert_eq!(settle(H1, "/a", &["a b"]), bad("malformed Host header"));
        for host in ["u@x", "u:pw@x:80", "@x"] {
            assert_eq!(settle(H1, "/a", &[host]), bad("userinfo in Host header"));
            assert_eq!(
                settle(H2, "http://x/a", &[host]),
                bad("userinfo in Host header"),
                "even when :authority wins"
            );
        }
        for uri in ["http://u@x/a", "http://u:pw@x:80/a"] {
            assert_eq!(settle(H1, uri, &["x"]), bad("userinfo in authority"));
            assert_eq!(settle(H2, uri, &[]), bad("userinfo in authority"));
        }
    }

    #[test]
    fn the_log_shows_no_userinfo() {
        assert_eq!(without_userinfo("u:pw@x:80"), "x:80");
        assert_eq!(without_userinfo("a@b@x"), "x");
        assert_eq!(without_userinfo("x"), "x");
    }
}
