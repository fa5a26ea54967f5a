//! Reading what a client sends, for the HTTP/1 fast path ([`super::serve`]): the request heads
//! it serves itself, and the recognition of everything it leaves to hyper's server.

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

/// What the bytes at the front of the buffer are.
#[derive(Debug)]
// Returned once per request and moved straight into it: boxing `Plain` would cost an
// allocation per request to save a copy.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// Not a complete head yet.
    Partial,
    /// A plain request, taken off the buffer.
    Plain(Plain),
    /// Anything else (a body, an upgrade, `Expect`, HTTP/1.0, HTTP/2's preface, a malformed or
    /// oversized head...): left in the buffer for hyper's server, which answers it as before.
    Other,
}

/// An HTTP/1.1 request without a body, upgrade or expectation.
#[derive(Debug)]
pub struct Plain {
    /// Method, target, version and header fields.
    pub head: http::request::Parts,
    /// The client asked to close the connection after this exchange (`Connection: close`).
    pub close: bool,
}

/// Reads one request head off the front of `buf` when the fast path serves it; the buffer is
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
    // Values are sliced out of the head once it is frozen, not copied: note where they are.
    let mut fields: SmallVec<[(HeaderName, usize, usize); 16]> = SmallVec::new();
    for field in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parsed::Other;
        };
        if name == TRANSFER_ENCODING || name == UPGRADE || name == EXPECT || name == TE {
            return Parsed::Other;
        }
        if name == CONTENT_LENGTH && field.value != b"0" {
            return Parsed::Other;
        }
        if name == CONNECTION {
            close |= lists(field.value, "close");
        }
        let start = offset(field.value);
        fields.push((name, start, start + field.value.len()));
    }
    let target = offset(path.as_bytes())..offset(path.as_bytes()) + path.len();
    let bytes: Bytes = buf.split_to(len).freeze();
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
        close,
    })
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
        let Parsed::Plain(Plain { head, close }) = parsed else {
            panic!("{parsed:?}");
        };
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
    fn everything_else_stays_in_the_buffer_for_hyper() {
        for text in [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
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
