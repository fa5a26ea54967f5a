//! Reading a request head off a client connection (RFC 9112 §2–§7), strictly: what this
//! parser takes is what the proxy routes and what the upstream receives, so anything two
//! parsers could read differently is refused rather than guessed.
//!
//! Refused with 400: a bare CR or LF anywhere in the head, obs-fold, a malformed request line
//! or field, `Content-Length` that is not one plain number, `Content-Length` together with
//! `Transfer-Encoding`, `Transfer-Encoding` on HTTP/1.0 or without `chunked` last. With 501:
//! a transfer coding other than `chunked`. With 405: `CONNECT`. With 431: more fields than
//! the configured limit.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING,
};
use http::{Method, Uri, Version};
use smallvec::SmallVec;

use crate::http::error::ProxyError;
use crate::http::headers::lists;

/// Field slots parsed on the stack; a head with more is parsed again with room for the
/// configured limit.
const INLINE_HEADERS: usize = 64;
/// Largest body of announced length read whole with its head (waited for, when it is still
/// arriving, within the head's time); a larger one streams.
pub const MAX_WHOLE_BODY: u64 = 16 * 1024;

/// How a request's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A request head, taken off the buffer.
#[derive(Debug)]
pub struct Head {
    /// Method, target, version and header fields.
    pub parts: http::request::Parts,
    /// How the body that follows is delimited.
    pub framing: BodyFraming,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
}

/// What the bytes at the front of the buffer are.
#[derive(Debug)]
// Returned once per request and moved straight into it: boxing `Head` would cost an
// allocation per request to save a copy.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// Not a complete head yet.
    Partial,
    /// A complete head whose small body (at most [`MAX_WHOLE_BODY`]) has not all arrived:
    /// the request is `total` bytes long. The head stays in the buffer.
    BodyToCome {
        /// Head and body, in bytes.
        total: usize,
    },
    /// A complete head, taken off the buffer.
    Head(Head),
    /// The head is refused: the answer to send before the connection closes.
    Refused(ProxyError),
}

/// Reads one request head off the front of `buf`; the buffer is untouched unless a
/// [`Parsed::Head`] is returned. `max_headers`: the configured field count limit.
/// `whole_small_bodies`: a head whose small body is still arriving is left in the buffer
/// ([`Parsed::BodyToCome`]) rather than taken.
pub fn parse(buf: &mut BytesMut, max_headers: usize, whole_small_bodies: bool) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; INLINE_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let checked = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => {
            check(buf, &request, len, max_headers).map(|c| (c, len))
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return parse_many(buf, max_headers, whole_small_bodies)
        }
        Err(e) => return Parsed::Refused(ProxyError::BadRequest(describe(e))),
    };
    take(buf, checked, whole_small_bodies)
}

/// [`parse`] for a head with more fields than the stack holds (rare: heap slots).
#[cold]
fn parse_many(buf: &mut BytesMut, max_headers: usize, whole_small_bodies: bool) -> Parsed {
    let mut slots = vec![httparse::EMPTY_HEADER; max_headers];
    let mut request = httparse::Request::new(&mut slots);
    let checked = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            check(buf, &request, len, max_headers).map(|c| (c, len))
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refused(ProxyError::HeadersTooLarge("too many headers"))
        }
        Err(e) => return Parsed::Refused(ProxyError::BadRequest(describe(e))),
    };
    take(buf, checked, whole_small_bodies)
}

/// The checked head, taken off `buf` (left there while its small body is still arriving,
/// with `whole_small_bodies`), or the refusal.
fn take(
    buf: &mut BytesMut,
    checked: Result<(Checked, usize), ProxyError>,
    whole_small_bodies: bool,
) -> Parsed {
    let (checked, len) = match checked {
        Ok(checked) => checked,
        Err(refusal) => return Parsed::Refused(refusal),
    };
    if let BodyFraming::Length(n) = checked.framing {
        // (At most MAX_WHOLE_BODY: `n` fits.)
        let total = len + n as usize;
        if whole_small_bodies
            && n <= MAX_WHOLE_BODY
            && !checked.expect_continue
            && buf.len() < total
        {
            return Parsed::BodyToCome { total };
        }
    }
    Parsed::Head(checked.into_head(buf, len))
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "malformed header name",
        httparse::Error::HeaderValue => "malformed header value",
        httparse::Error::NewLine => "malformed line ending",
        httparse::Error::Status | httparse::Error::Token => "malformed request line",
        httparse::Error::Version => "unsupported HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

/// What [`check`] learned of a head, its values noted by position so that they can be sliced
/// out of the head once it is frozen (not copied).
struct Checked {
    method: Method,
    version: Version,
    target: std::ops::Range<usize>,
    fields: SmallVec<[(HeaderName, usize, usize); 16]>,
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
}

fn check(
    buf: &[u8],
    request: &httparse::Request<'_, '_>,
    len: usize,
    max_headers: usize,
) -> Result<Checked, ProxyError> {
    // httparse ends lines at a bare LF too; a peer that does not would see other fields.
    if !crlf_only(&buf[..len]) {
        return Err(ProxyError::BadRequest("bare CR or LF in the request head"));
    }
    let (Some(method), Some(path), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(ProxyError::BadRequest("malformed request line"));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| ProxyError::BadRequest("malformed method"))?;
    if method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let (mut close, mut keep_alive_asked, mut expect_continue) = (false, false, false);
    let mut fields = SmallVec::new();
    for field in request.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| ProxyError::BadRequest("malformed header name"))?;
        if name == CONTENT_LENGTH {
            if length.is_some() {
                return Err(ProxyError::BadRequest("more than one Content-Length"));
            }
            length = Some(
                content_length(field.value)
                    .ok_or(ProxyError::BadRequest("malformed Content-Length"))?,
            );
        } else if name == TRANSFER_ENCODING {
            for coding in field.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if coding.is_empty() || !coding.iter().all(|&b| is_tchar(b)) {
                    return Err(ProxyError::BadRequest("malformed Transfer-Encoding"));
                }
                // Anything but one `chunked` alone is a coding the proxy does not decode.
                coded |= chunked || !coding.eq_ignore_ascii_case(b"chunked");
                chunked = true;
            }
        } else if name == CONNECTION {
            close |= lists(field.value, "close");
            keep_alive_asked |= lists(field.value, "keep-alive");
        } else if name == EXPECT {
            if !field
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue")
            {
                return Err(ProxyError::ExpectationFailed);
            }
            expect_continue = true;
        }
        let start = offset(field.value);
        fields.push((name, start, start + field.value.len()));
    }
    if request.headers.len() > max_headers {
        return Err(ProxyError::HeadersTooLarge("too many headers"));
    }
    let framing = match (chunked, length) {
        (false, None) => BodyFraming::None,
        (false, Some(0)) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
        (true, Some(_)) => {
            return Err(ProxyError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (true, None) if version == Version::HTTP_10 => {
            return Err(ProxyError::BadRequest("Transfer-Encoding in HTTP/1.0"))
        }
        (true, None) if coded => return Err(ProxyError::NotImplemented("transfer coding")),
        (true, None) => BodyFraming::Chunked,
    };
    let keep_alive = match version {
        Version::HTTP_11 => !close,
        _ => keep_alive_asked && !close,
    };
    let target = offset(path.as_bytes())..offset(path.as_bytes()) + path.len();
    Ok(Checked {
        method,
        version,
        target,
        fields,
        framing,
        keep_alive,
        // An HTTP/1.0 client does not wait for 100 (RFC 9110 §10.1.1).
        expect_continue: expect_continue && version == Version::HTTP_11,
    })
}

impl Checked {
    /// The head, taken off `buf` (its first `len` bytes).
    fn into_head(self, buf: &mut BytesMut, len: usize) -> Head {
        let bytes: Bytes = buf.split_to(len).freeze();
        let mut head = http::Request::new(());
        *head.method_mut() = self.method;
        *head.version_mut() = self.version;
        if let Some(uri) = target_uri(&bytes, self.target) {
            *head.uri_mut() = uri;
        }
        // Room for the forwarding fields the proxy adds.
        let headers = head.headers_mut();
        headers.reserve(self.fields.len() + 3);
        for (name, start, end) in self.fields {
            // httparse admits only visible ASCII, tabs and spaces (and obs-text) in values,
            // which `HeaderValue` takes as they are.
            if let Ok(value) = HeaderValue::from_maybe_shared(bytes.slice(start..end)) {
                headers.append(name, value);
            }
        }
        Head {
            parts: head.into_parts().0,
            framing: self.framing,
            keep_alive: self.keep_alive,
            expect_continue: self.expect_continue,
        }
    }
}

/// The request target as a URI; `None` leaves the default (`/`) for a target `Uri` does not
/// take — which the checks before make unreachable for the forms routing accepts.
fn target_uri(bytes: &Bytes, target: std::ops::Range<usize>) -> Option<Uri> {
    Uri::from_maybe_shared(bytes.slice(target)).ok()
}

/// Whether every CR in `head` is followed by LF and every LF preceded by CR.
fn crlf_only(head: &[u8]) -> bool {
    let mut expect_lf_at = None;
    for at in memchr::memchr2_iter(b'\r', b'\n', head) {
        match (head[at], expect_lf_at) {
            (b'\n', Some(want)) if want == at => expect_lf_at = None,
            (b'\r', None) => expect_lf_at = Some(at + 1),
            _ => return false,
        }
    }
    expect_lf_at.is_none()
}

/// A `Content-Length` value: digits only (no sign, no list), at most 19 of them.
fn content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0u64, |n, &digit| n * 10 + u64::from(digit - b'0')),
    )
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn parse_text(text: &str) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(text);
        (parse(&mut buf, 100, true), buf)
    }

    fn head(text: &str) -> Head {
        // Bodies are not waited for here: the head alone is looked at.
        let mut buf = BytesMut::from(text);
        match parse(&mut buf, 100, false) {
            Parsed::Head(head) => head,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn refusal(text: &str) -> StatusCode {
        let (parsed, rest) = parse_text(text);
        assert_eq!(&rest[..], text.as_bytes(), "a refused head stays: {text:?}");
        match parsed {
            Parsed::Refused(e) => e.status(),
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn a_request_is_taken_off_the_buffer() {
        let (parsed, rest) = parse_text(
            "GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nX-One: 1\r\nContent-Length: 0\r\n\r\nGET /next",
        );
        let Parsed::Head(head) = parsed else {
            panic!("{parsed:?}");
        };
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri, "/a?b=1");
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "svc");
        assert_eq!(head.parts.headers["x-one"], "1");
        assert_eq!(head.framing, BodyFraming::None);
        assert!(head.keep_alive && !head.expect_continue);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        let (parsed, rest) = parse_text("GET / HTTP/1.1\r\nHost: h\r\n");
        assert!(matches!(parsed, Parsed::Partial), "{parsed:?}");
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\nHost: h\r\n");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let post = |fields: &str| head(&format!("POST / HTTP/1.1\r\nHost: h\r\n{fields}\r\n"));
        assert_eq!(
            post("Content-Length: 5\r\n").framing,
            BodyFraming::Length(5)
        );
        assert_eq!(post("Content-Length: 0\r\n").framing, BodyFraming::None);
        assert_eq!(
            post("Transfer-Encoding: chunked\r\n").framing,
            BodyFraming::Chunked
        );
        assert_eq!(
            post("Transfer-Encoding: Chunked \r\n").framing,
            BodyFraming::Chunked
        );
        assert_eq!(post("").framing, BodyFraming::None);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(head("GET / HTTP/1.1\r\nHost: h\r\n\r\n").keep_alive);
        assert!(
            !head("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive
        );
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        let old = head("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(old.parts.version, Version::HTTP_10);
    }

    #[test]
    fn expect_100_continue_is_noted_and_other_expectations_refused() {
        let h =
            head("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n");
        assert!(h.expect_continue);
        assert_eq!(
            refusal("PUT / HTTP/1.1\r\nHost: h\r\nExpect: tea\r\nContent-Length: 3\r\n\r\n"),
            StatusCode::EXPECTATION_FAILED
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for text in [
            // Bare LF ends a field for some parsers and not for others.
            "POST / HTTP/1.1\r\nHost: h\r\nDummy: x\nContent-Length: 23\r\n\r\n",
            "GET / HTTP/1.1\nHost: h\n\n",
            "GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
            // obs-fold
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        ] {
            assert_eq!(refusal(text), StatusCode::BAD_REQUEST, "{text:?}");
        }
    }

    #[test]
    fn codings_other_than_chunked_alone_are_not_implemented() {
        for coding in [
            "gzip, chunked",
            "gzip",
            "identity",
            "xchunked",
            "chunked, chunked",
            "chunked\r\nTransfer-Encoding: gzip",
        ] {
            let text = format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {coding}\r\n\r\n");
            assert_eq!(refusal(&text), StatusCode::NOT_IMPLEMENTED, "{coding}");
        }
    }

    #[test]
    fn connect_is_not_allowed() {
        assert_eq!(
            refusal("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn field_count_beyond_the_stack_is_parsed_up_to_the_limit() {
        let with = |n: usize| {
            let mut text = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
            for i in 1..n {
                text.push_str(&format!("x-{i}: v\r\n"));
            }
            text + "\r\n"
        };
        let h = head(&with(100));
        assert_eq!(h.parts.headers.len(), 100);
        assert_eq!(
            refusal(&with(101)),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn a_small_body_still_arriving_leaves_the_head_in_place() {
        let text = "PUT /a HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nhello";
        let (parsed, rest) = parse_text(text);
        assert!(
            matches!(parsed, Parsed::BodyToCome { total } if total == text.len() + 5),
            "{parsed:?}"
        );
        assert_eq!(&rest[..], text.as_bytes());
        let mut buf = BytesMut::from(text);
        assert!(matches!(parse(&mut buf, 100, false), Parsed::Head(_)));
        assert_eq!(&buf[..], b"hello");
        let large = format!(
            "PUT /a HTTP/1.1\r\nHost: svc\r\nContent-Length: {}\r\n\r\nhello",
            MAX_WHOLE_BODY + 1
        );
        assert!(matches!(parse_text(&large).0, Parsed::Head(_)));
    }

    #[test]
    fn crlf_only_accepts_crlf_pairs_alone() {
        assert!(crlf_only(b"a\r\nb\r\n\r\n"));
        assert!(crlf_only(b"abc"));
        assert!(!crlf_only(b"a\nb"));
        assert!(!crlf_only(b"a\rb"));
        assert!(!crlf_only(b"a\r"));
        assert!(!crlf_only(b"a\n\r"));
        assert!(!crlf_only(b"a\r\r\n"));
    }
}
