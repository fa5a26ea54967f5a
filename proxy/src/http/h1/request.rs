//! Reading what a client sends, for the HTTP/1 fast path ([`super::serve`]): the requests it
//! serves itself (a head, and a small body of announced length read whole with it), and the
//! recognition of everything it leaves to hyper's server.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, TE, TRANSFER_ENCODING,
    UPGRADE,
};
use http::{Method, Uri, Version};
use smallvec::SmallVec;

use crate::http::headers::lists;

/// Most header fields the fast path takes; a head with more goes to hyper's server, whose
/// limit is the configured one.
const MAX_HEADERS: usize = 64;
/// Largest body the fast path reads whole with its head; a larger one streams through hyper's
/// server.
const MAX_BODY: usize = 16 * 1024;

/// What the bytes at the front of the buffer are.
#[derive(Debug)]
// Returned once per request and moved straight into it: boxing `Plain` would cost an
// allocation per request to save a copy.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// Not a complete head yet.
    Partial,
    /// A complete head whose body has not all arrived: the request is `total` bytes long.
    BodyToCome {
        /// Head and body, in bytes.
        total: usize,
    },
    /// A plain request, taken off the buffer.
    Plain(Plain),
    /// Anything else (a chunked or large body, an upgrade, `Expect`, HTTP/1.0, HTTP/2's
    /// preface, a malformed or oversized head...): left in the buffer for hyper's server,
    /// which answers it as before.
    Other,
}

/// An HTTP/1.1 request without upgrade or expectation, whose body (if any) is small and of
/// announced length.
#[derive(Debug)]
pub struct Plain {
    /// Method, target, version and header fields.
    pub head: http::request::Parts,
    /// The body, whole (empty when there is none).
    pub body: Bytes,
    /// The client asked to close the connection after this exchange (`Connection: close`).
    pub close: bool,
}

/// Reads one request off the front of `buf` when the fast path serves it; the buffer is
/// untouched unless a [`Parsed::Plain`] is returned.
pub fn request(buf: &mut BytesMut) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if parsed.version != Some(1) {
        return Parsed::Other;
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Parsed::Other;
    };
    let method = match Method::from_bytes(method.as_bytes()) {
        Ok(m) if m != Method::CONNECT => m,
        _ => return Parsed::Other,
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let mut close = false;
    let mut length = None;
    // Values are sliced out of the head once it is frozen, not copied: note where they are.
    let mut fields: SmallVec<[(HeaderName, usize, usize); 16]> = SmallVec::new();
    for field in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parsed::Other;
        };
        if name == TRANSFER_ENCODING || name == UPGRADE || name == EXPECT || name == TE {
            return Parsed::Other;
        }
        if name == CONTENT_LENGTH {
            // One plain length, small enough to read whole; hyper's server judges the rest
            // (lists, repeats, signs, a body to stream).
            match (length, body_length(field.value)) {
                (None, Some(n)) => length = Some(n),
                _ => return Parsed::Other,
            }
        }
        if name == CONNECTION {
            close |= lists(field.value, "close");
        }
        let start = offset(field.value);
        fields.push((name, start, start + field.value.len()));
    }
    let total = len + length.unwrap_or(0);
    if buf.len() < total {
        return Parsed::BodyToCome { total };
    }
    let target = offset(path.as_bytes())..offset(path.as_bytes()) + path.len();
    let bytes: Bytes = buf.split_to(total).freeze();
    let Some((uri, headers)) = assemble(&bytes, target, fields) else {
        // httparse checked the target's characters, not its form: hyper's server judges it.
        give_back(buf, &bytes);
        return Parsed::Other;
    };
    let mut head = http::Request::new(());
    *head.method_mut() = method;
    *head.uri_mut() = uri;
    *head.version_mut() = Version::HTTP_11;
    *head.headers_mut() = headers;
    Parsed::Plain(Plain {
        head: head.into_parts().0,
        body: if total > len {
            bytes.slice(len..)
        } else {
            Bytes::new()
        },
        close,
    })
}

/// A `Content-Length` value the fast path reads the body of: digits only, at most
/// [`MAX_BODY`].
fn body_length(value: &[u8]) -> Option<usize> {
    // Not `str::parse`, which takes a leading `+`.
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value.iter().fold(0usize, |n, &digit| {
        n.saturating_mul(10)
            .saturating_add(usize::from(digit - b'0'))
    });
    (n <= MAX_BODY).then_some(n)
}

/// The target and the header map, sliced out of the frozen head.
fn assemble(
    bytes: &Bytes,
    target: std::ops::Range<usize>,
    fields: SmallVec<[(HeaderName, usize, usize); 16]>,
) -> Option<(Uri, HeaderMap)> {
    let uri = Uri::from_maybe_shared(bytes.slice(target)).ok()?;
    // Room for the forwarding headers the proxy adds.
    let mut headers = HeaderMap::with_capacity(fields.len() + 3);
    for (name, start, end) in fields {
        headers.append(
            name,
            HeaderValue::from_maybe_shared(bytes.slice(start..end)).ok()?,
        );
    }
    Some((uri, headers))
}

/// Puts a head taken off the buffer back in front of what followed it.
fn give_back(buf: &mut BytesMut, head: &[u8]) {
    let mut restored = BytesMut::with_capacity(head.len() + buf.len());
    restored.extend_from_slice(head);
    restored.extend_from_slice(buf);
    *buf = restored;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(text);
        (request(&mut buf), buf)
    }

    #[test]
    fn a_plain_request_is_taken_off_the_buffer() {
        let (parsed, rest) = parse(
            "GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nX-One: 1\r\nContent-Length: 0\r\n\r\nGET /next",
        );
        let Parsed::Plain(Plain { head, body, close }) = parsed else {
            panic!("{parsed:?}");
        };
        assert!(body.is_empty());
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri, "/a?b=1");
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers["host"], "svc");
        assert_eq!(head.headers["x-one"], "1");
        assert_eq!(head.headers["content-length"], "0");
        assert!(!close);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn connection_close_is_noted() {
        let (parsed, _) =
            parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(
            matches!(parsed, Parsed::Plain(Plain { close: true, .. })),
            "{parsed:?}"
        );
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        let (parsed, rest) = parse("GET / HTTP/1.1\r\nHost: h\r\n");
        assert!(matches!(parsed, Parsed::Partial), "{parsed:?}");
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\nHost: h\r\n");
    }

    #[test]
    fn a_small_body_is_taken_whole_with_its_head() {
        let (parsed, rest) =
            parse("POST /a HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhelloGET /next");
        let Parsed::Plain(Plain { head, body, .. }) = parsed else {
            panic!("{parsed:?}");
        };
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.headers["content-length"], "5");
        assert_eq!(&body[..], b"hello");
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn a_body_still_arriving_is_waited_for_with_the_head_left_in_place() {
        let text = "PUT /a HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nhello";
        let (parsed, rest) = parse(text);
        assert!(
            matches!(parsed, Parsed::BodyToCome { total } if total == text.len() + 5),
            "{parsed:?}"
        );
        assert_eq!(&rest[..], text.as_bytes());
    }

    #[test]
    fn the_largest_body_read_whole_is_max_body() {
        let head = |n: usize| format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n");
        let whole = head(MAX_BODY) + &"x".repeat(MAX_BODY);
        let (parsed, _) = parse(&whole);
        assert!(
            matches!(&parsed, Parsed::Plain(p) if p.body.len() == MAX_BODY),
            "{parsed:?}"
        );
        let over = head(MAX_BODY + 1) + &"x".repeat(MAX_BODY + 1);
        assert!(matches!(parse(&over).0, Parsed::Other));
    }

    #[test]
    fn everything_else_stays_in_the_buffer_for_hyper() {
        for text in [
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET http://[::1 HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n",
        ] {
            let (parsed, rest) = parse(text);
            assert!(matches!(parsed, Parsed::Other), "{text:?}: {parsed:?}");
            assert_eq!(&rest[..], text.as_bytes(), "{text:?}");
        }
    }

    #[test]
    fn too_many_fields_go_to_hyper() {
        let mut text = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            text.push_str(&format!("x-{i}: v\r\n"));
        }
        text.push_str("\r\n");
        assert!(matches!(parse(&text).0, Parsed::Other));
    }
}
