//! Reading what an upstream sends: the response head (RFC 9112 §4–5), how its body is
//! delimited (§6.3), and chunked bodies (§7.1).

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING,
};
use http::{Method, StatusCode, Version};
use smallvec::SmallVec;

use super::Error;

/// Most header fields a response head may carry.
pub const MAX_HEADERS: usize = 128;
/// Longest response head accepted (Envoy's default limit is 60 KiB).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most bytes of trailer fields accepted after a chunked body.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, a 1xx, 204 or 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
    /// 101: the connection now belongs to another protocol.
    Switched,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// Status, version and header fields.
    pub parts: http::response::Parts,
    /// How the body that follows is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request once this response is read.
    pub keep_alive: bool,
}

/// Takes one response head off the front of `buf`; `Ok(None)` when it is not complete yet.
/// `method` is the request's (a response to HEAD has no body).
///
/// The fields that describe this connection rather than the message are consumed here, not
/// returned: `Transfer-Encoding`, `Keep-Alive`, and `Connection` when it lists nothing but
/// `close` and `keep-alive` (one that names other fields is kept, for the hop to strip them).
pub fn head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Malformed("too many headers")),
        Err(_) => return Err(Error::Malformed("response head")),
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(Error::Malformed("status code"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut connection = ConnectionFields::default();
    // Values are sliced out of the head once it is frozen, not copied: note where they are.
    let base = buf.as_ptr() as usize;
    let mut fields: SmallVec<[(HeaderName, usize, usize); 16]> = SmallVec::new();
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Error::Malformed("header name"))?;
        if !connection.read(&name, field.value)? {
            continue;
        }
        let start = field.value.as_ptr() as usize - base;
        fields.push((name, start, start + field.value.len()));
    }
    if connection.chunked.is_some() {
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; never pass both on.
        fields.retain(|(name, _, _)| *name != CONTENT_LENGTH);
    }
    let bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, start, end) in fields {
        let value = HeaderValue::from_maybe_shared(bytes.slice(start..end))
            .map_err(|_| Error::Malformed("header value"))?;
        headers.append(name, value);
    }
    let framing = framing(status, version, method, &connection);
    let keep_alive = framing != Framing::UntilClose
        && framing != Framing::Switched
        && !connection.close
        && (version == Version::HTTP_11 || connection.keep_alive);
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(Head {
        parts: response.into_parts().0,
        framing,
        keep_alive,
    }))
}

/// What a head's connection-level fields say, read in the one pass over its fields.
#[derive(Debug, Default)]
struct ConnectionFields {
    /// `Content-Length` (all its values agree).
    length: Option<u64>,
    /// `Transfer-Encoding` is present: whether its final coding is chunked.
    chunked: Option<bool>,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
}

impl ConnectionFields {
    /// Notes what the field says about framing and the connection; false when the field is
    /// consumed here rather than passed on.
    fn read(&mut self, name: &HeaderName, value: &[u8]) -> Result<bool, Error> {
        if name == CONTENT_LENGTH {
            // A list of identical values is one length (§6.3 item 5); differing ones are not.
            for part in value.split(|&b| b == b',') {
                let n = parse_length(trim(part)).ok_or(Error::Malformed("content-length"))?;
                if self.length.is_some_and(|m| m != n) {
                    return Err(Error::Malformed("conflicting content-length"));
                }
                self.length = Some(n);
            }
            Ok(true)
        } else if name == TRANSFER_ENCODING {
            let last = value.rsplit(|&b| b == b',').next().map(trim);
            self.chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
            Ok(false)
        } else if name == CONNECTION {
            let mut names_others = false;
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !token.is_empty() {
                    names_others = true;
                }
            }
            Ok(names_others)
        } else {
            Ok(name.as_str() != "keep-alive")
        }
    }
}

/// `bytes` without surrounding spaces and tabs.
fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// RFC 9112 §6.3.
fn framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    connection: &ConnectionFields,
) -> Framing {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Framing::Switched;
    }
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Framing::Empty;
    }
    match (connection.chunked, connection.length) {
        // Chunked only as the final coding, and only in HTTP/1.1; any other coding runs until
        // the connection closes.
        (Some(true), _) if version == Version::HTTP_11 => Framing::Chunked,
        (Some(_), _) => Framing::UntilClose,
        (None, Some(0)) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::UntilClose,
    }
}

/// A `Content-Length` value: digits only (no sign, no spaces), at most 19 of them.
pub fn parse_length(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk with this many bytes left.
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section, this many bytes of it seen so far (it stays
    /// in the buffer until its blank line arrives).
    Trailers(usize),
    /// The body is complete.
    Done,
}

/// What one decoding step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields, last before the end.
    Trailers(HeaderMap),
    /// `buf` holds no complete piece: read more.
    NeedMore,
    /// The body ended.
    End,
}

impl Chunked {
    /// Decodes from the front of `buf` until it yields data, needs more input or ends.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        loop {
            match *self {
                Self::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = if size == 0 {
                            Self::Trailers(0)
                        } else {
                            Self::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => {
                        return Ok(Step::NeedMore)
                    }
                    _ => return Err(Error::Malformed("chunk size")),
                },
                Self::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    *self = match left - n as u64 {
                        0 => Self::DataEnd,
                        rest => Self::Data(rest),
                    };
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                Self::DataEnd => match buf.first() {
                    None => return Ok(Step::NeedMore),
                    Some(b'\n') => {
                        buf.advance(1);
                        *self = Self::Size;
                    }
                    Some(b'\r') if buf.len() < 2 => return Ok(Step::NeedMore),
                    Some(b'\r') if buf[1] == b'\n' => {
                        buf.advance(2);
                        *self = Self::Size;
                    }
                    Some(_) => return Err(Error::Malformed("chunk data longer than its size")),
                },
                Self::Trailers(seen) => {
                    // Line by line from where the last look stopped, to the blank line.
                    let Some(eol) = buf[seen..].iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_TRAILER_BYTES {
                            return Err(Error::Malformed("trailers too large"));
                        }
                        return Ok(Step::NeedMore);
                    };
                    let line = &buf[seen..seen + eol];
                    let end = seen + eol + 1;
                    if end > MAX_TRAILER_BYTES {
                        return Err(Error::Malformed("trailers too large"));
                    }
                    if !(line.is_empty() || line == b"\r") {
                        *self = Self::Trailers(end);
                        continue;
                    }
                    *self = Self::Done;
                    if seen == 0 {
                        buf.advance(end);
                        return Ok(Step::End);
                    }
                    let section = buf.split_to(end);
                    return trailers(&section).map(Step::Trailers);
                }
                Self::Done => return Ok(Step::End),
            }
        }
    }
}

/// Parses a trailer section (fields and the blank line that ends it).
fn trailers(section: &[u8]) -> Result<HeaderMap, Error> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(Error::Malformed("trailers")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Error::Malformed("trailer name"))?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| Error::Malformed("trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, method: &Method) -> Result<Option<Head>, Error> {
        head(&mut BytesMut::from(text), method)
    }

    fn framing_of(text: &str) -> Framing {
        parse(text, &Method::GET).unwrap().unwrap().framing
    }

    #[test]
    fn head_is_parsed_and_taken_off_the_buffer() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 4\r\n\r\nbody",
        );
        let head = head(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(head.parts.status, StatusCode::CREATED);
        assert_eq!(head.parts.version, Version::HTTP_11);
        let values: Vec<_> = head.parts.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(head.framing, Framing::Length(4));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"body");
    }

    #[test]
    fn partial_heads_wait_for_more() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Le");
        assert!(head(&mut buf, &Method::GET).unwrap().is_none());
        assert_eq!(buf.len(), 27, "nothing consumed");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                &Method::HEAD
            )
            .unwrap()
            .unwrap()
            .framing,
            Framing::Empty
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n"),
            Framing::Length(7)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked
        );
        let both = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(both.framing, Framing::Chunked);
        assert!(!both.parts.headers.contains_key(CONTENT_LENGTH));
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Framing::UntilClose
        );
        let unframed = parse("HTTP/1.1 200 OK\r\n\r\n", &Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(unframed.framing, Framing::UntilClose);
        assert!(
            !unframed.keep_alive,
            "a close-delimited body ends the connection"
        );
        assert_eq!(
            framing_of("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
            Framing::Switched
        );
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |text: &str| parse(text, &Method::GET).unwrap().unwrap().keep_alive;
        assert!(ka("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"));
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 1\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"));
        assert!(ka(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n"
        ));
    }

    #[test]
    fn connection_fields_are_consumed() {
        let head = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-App: 1\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        let names: Vec<_> = head.parts.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-app"]);
        let naming = parse(
            "HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nContent-Length: 1\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            naming.parts.headers["connection"], "close, x-hop",
            "kept: it names x-hop"
        );
        assert!(!naming.keep_alive);
    }

    #[test]
    fn malformed_heads_are_refused() {
        for text in [
            "HTTP/1.1 abc\r\n\r\n",
            "garbage\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
        ] {
            assert!(parse(text, &Method::GET).is_err(), "{text:?} accepted");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), &Method::GET).is_err());
    }

    fn decode(input: &[u8], split: usize) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        for piece in input.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match state.step(&mut buf)? {
                    Step::Data(data) => body.extend_from_slice(&data),
                    Step::Trailers(map) => trailers = Some(map),
                    Step::NeedMore => break,
                    Step::End => return Ok((body, trailers)),
                }
            }
        }
        Err(Error::Truncated)
    }

    fn decode_all(input: &[u8], split: usize) -> Result<Vec<u8>, Error> {
        decode(input, split).map(|(body, _)| body)
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for split in [1, 2, 3, 7, wire.len()] {
            assert_eq!(
                decode_all(wire, split).unwrap(),
                b"hello 0123456789",
                "reads of {split}"
            );
        }
        assert_eq!(decode_all(b"0\r\n\r\n", 1).unwrap(), b"");
        for split in [1, 5, wire.len()] {
            let (_, trailers) = decode(wire, split).unwrap();
            assert_eq!(trailers.unwrap()["x-t"], "1", "reads of {split}");
        }
        let (_, none) = decode(b"0\r\n\r\n", 1).unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn malformed_chunks_are_refused() {
        assert!(decode_all(b"zz\r\nhello\r\n0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"3\r\nhello\r\n0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"5\r\nhello", 64).is_err(), "truncated");
        let long_line = format!("5;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert!(decode_all(long_line.as_bytes(), 64).is_err());
        let big_trailer = format!("0\r\nx: {}\r\n\r\n", "t".repeat(MAX_TRAILER_BYTES));
        assert!(decode_all(big_trailer.as_bytes(), 512).is_err());
        assert!(decode_all(b"0\r\nbad name: 1\r\n\r\n", 64).is_err());
    }
}
