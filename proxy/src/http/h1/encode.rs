//! Writing a request for an upstream: the head (RFC 9112 §3, §5) and how its body is
//! delimited (§6).

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http_body::Body as _;

use crate::http::body::{ClientBody, UpstreamBody};

/// How a request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body and no framing header.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`: the length is not known ahead.
    Chunked,
}

/// The framing for sending `body` with `head`: its length when known, chunked otherwise. An
/// empty body keeps a `Content-Length: 0` the client sent and adds none.
pub fn framing(head: &Parts, body: &UpstreamBody) -> Framing {
    if body.is_end_stream() {
        return if head.headers.contains_key(CONTENT_LENGTH) {
            Framing::Length(0)
        } else {
            Framing::None
        };
    }
    match body.size_hint().exact() {
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

/// Appends the request head to `out`: request line in origin form, the header fields as
/// they are (names lowercase, as `HeaderMap` keeps them), the field lines in `extra` (already
/// formatted), and `framing`'s field in place of any `Content-Length` or `Transfer-Encoding`
/// the head carries.
pub fn head(out: &mut Vec<u8>, head: &Parts, extra: &[u8], framing: Framing) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the line that opens a chunk of `len` bytes.
pub fn chunk_start(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends the CRLF that closes a chunk's data.
pub fn chunk_end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and the trailer fields, ending a chunked body.
pub fn last_chunk(out: &mut Vec<u8>, trailers: Option<&http::HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A copy of `body` to send again on another connection, when nothing of it has been consumed
/// that could not be had again: a body kept in memory, or none at all.
pub fn replayable(body: &UpstreamBody) -> Option<UpstreamBody> {
    match body {
        UpstreamBody::Full(bytes) => Some(UpstreamBody::Full(bytes.clone())),
        UpstreamBody::Streamed(ClientBody::Whole(bytes)) => {
            Some(UpstreamBody::Full(Some(bytes.clone())))
        }
        UpstreamBody::Streamed(b) if b.is_end_stream() => {
            Some(UpstreamBody::Full(Some(Bytes::new())))
        }
        UpstreamBody::Streamed(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn head_in_origin_form_with_own_framing() {
        let head_parts = parts(
            Request::post("/a/b?q=1")
                .header("host", "svc")
                .header("x-custom", "v")
                .header("content-length", "999")
                .header("transfer-encoding", "chunked")
                .body(())
                .unwrap(),
        );
        let mut out = Vec::new();
        head(&mut out, &head_parts, b"x-extra: e\r\n", Framing::Length(3));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a/b?q=1 HTTP/1.1\r\nhost: svc\r\nx-custom: v\r\nx-extra: e\r\ncontent-length: 3\r\n\r\n"
        );
        let mut out = Vec::new();
        head(
            &mut out,
            &parts(Request::get("/").body(()).unwrap()),
            b"",
            Framing::Chunked,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn framing_of_bodies() {
        let get = parts(Request::get("/").body(()).unwrap());
        let declared = parts(
            Request::post("/")
                .header("content-length", "0")
                .body(())
                .unwrap(),
        );
        assert_eq!(framing(&get, &UpstreamBody::Full(None)), Framing::None);
        assert_eq!(
            framing(&declared, &UpstreamBody::Full(Some(Bytes::new()))),
            Framing::Length(0)
        );
        assert_eq!(
            framing(&get, &UpstreamBody::Full(Some(Bytes::from_static(b"abc")))),
            Framing::Length(3)
        );
    }

    #[test]
    fn chunks_are_framed_in_hex() {
        let mut out = Vec::new();
        chunk_start(&mut out, 0x1a2b);
        chunk_end(&mut out);
        chunk_start(&mut out, 0);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-sum", "9".parse().unwrap());
        last_chunk(&mut out, Some(&trailers));
        assert_eq!(out, b"1a2b\r\n\r\n0\r\n0\r\nx-sum: 9\r\n\r\n");
    }
}
