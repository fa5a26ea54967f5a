//! Reading what an upstream sends: the response head (RFC 9112 §4–5), how its body is
//! delimited (§6.3), and chunked bodies (§7.1).

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{Method, StatusCode, Version};
use smallvec::SmallVec;

use super::Error;
use crate::http::headers::maybe_hop_by_hop_bytes;
use crate::http::response::{Fields, RawFields, Span};

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
    /// The status.
    pub status: StatusCode,
    /// The header fields passed on: raw when none of them is hop-by-hop (see
    /// [`crate::http::response`]).
    pub fields: Fields,
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
/// The rest stay raw unless a hop-by-hop field, a 101, or a `Content-Length` to correct is
/// among them.
pub fn head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
            return Err(Error::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Malformed("too many headers")),
        Err(_) => return Err(Error::Malformed("response head")),
    };
    // `let … else` rather than `ok_or`: an error built eagerly is dropped on every success.
    let Some(status) = parsed.code.and_then(|code| StatusCode::from_u16(code).ok()) else {
        return Err(Error::Malformed("status code"));
    };
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut connection = ConnectionFields::default();
    // Values are sliced out of the head once it is frozen, not copied: note where they are.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    let mut spans = SmallVec::new();
    let mut raw = status != StatusCode::SWITCHING_PROTOCOLS;
    let (mut lengths, mut dated) = (0, false);
    for field in parsed.headers.iter() {
        let kind = Kind::of(field.name.as_bytes());
        if !connection.read(kind, field.value)? {
            continue;
        }
        match kind {
            Kind::ContentLength => {
                lengths += 1;
                // Kept raw only as one plain number the writer can copy.
                raw &= !field.value.contains(&b',');
            }
            Kind::Date => dated = true,
            Kind::Connection | Kind::HopByHop => raw = false,
            Kind::TransferEncoding | Kind::KeepAlive | Kind::Other => {}
        }
        let name = at(field.name.as_bytes());
        let value = at(field.value);
        let Some(span) = Span::new(
            name..name + field.name.len(),
            value..value + field.value.len(),
        ) else {
            return Err(Error::HeadTooLarge);
        };
        spans.push(span);
    }
    // A length not to pass on — Transfer-Encoding overrides it (RFC 9112 §6.3), and a 1xx or
    // 204 has none — sends the head the map's way: the map drops it below for chunked, the
    // writers for a 1xx or 204.
    let drop_length = lengths > 0
        && (connection.chunked.is_some()
            || status.is_informational()
            || status == StatusCode::NO_CONTENT);
    raw &= lengths <= 1 && !drop_length;
    let length = connection.length.filter(|_| lengths > 0);
    let framing = framing(status, version, method, &connection);
    let keep_alive = framing != Framing::UntilClose
        && framing != Framing::Switched
        && !connection.close
        && (version == Version::HTTP_11 || connection.keep_alive);
    let Some(fields) = RawFields::new(buf.split_to(len).freeze(), spans, length, dated) else {
        return Err(Error::Malformed("response head"));
    };
    let fields = if raw {
        Fields::Raw(fields)
    } else {
        let mut map = fields.to_map();
        if connection.chunked.is_some() {
            map.remove(CONTENT_LENGTH);
        }
        Fields::Map(map)
    };
    Ok(Some(Head {
        status,
        fields,
        framing,
        keep_alive,
    }))
}

/// What a field name says to the decoder (compared without allocating: names are read as the
/// upstream spelled them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    Date,
    /// Any other field that may be hop-by-hop without `Connection` naming it
    /// ([`maybe_hop_by_hop_bytes`]): `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`.
    HopByHop,
    Other,
}

impl Kind {
    fn of(name: &[u8]) -> Self {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        match name.len() {
            4 if is("date") => Self::Date,
            10 if is("connection") => Self::Connection,
            10 if is("keep-alive") => Self::KeepAlive,
            14 if is("content-length") => Self::ContentLength,
            17 if is("transfer-encoding") => Self::TransferEncoding,
            _ if maybe_hop_by_hop_bytes(name) => Self::HopByHop,
            _ => Self::Other,
        }
    }
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
    fn read(&mut self, kind: Kind, value: &[u8]) -> Result<bool, Error> {
        match kind {
            Kind::ContentLength => {
                // A list of identical values is one length (§6.3 item 5); differing ones are
                // not.
                for part in value.split(|&b| b == b',') {
                    let n = parse_length(trim(part)).ok_or(Error::Malformed("content-length"))?;
                    if self.length.is_some_and(|m| m != n) {
                        return Err(Error::Malformed("conflicting content-length"));
                    }
                    self.length = Some(n);
                }
                Ok(true)
            }
            Kind::TransferEncoding => {
                let last = value.rsplit(|&b| b == b',').next().map(trim);
                self.chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
                Ok(false)
            }
            Kind::Connection => {
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
            }
            Kind::KeepAlive => Ok(false),
            Kind::Date | Kind::HopByHop | Kind::Other => Ok(true),
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
                Self::Size => match chunk_size_line(buf)? {
                    Some((used, size)) => {
                        buf.advance(used);
                        *self = if size == 0 {
                            Self::Trailers(0)
                        } else {
                            Self::Data(size)
                        };
                    }
                    None => return Ok(Step::NeedMore),
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
                Self::DataEnd => match buf.get(..2) {
                    None if buf.first().is_none_or(|&b| b == b'\r') => return Ok(Step::NeedMore),
                    Some(b"\r\n") => {
                        buf.advance(2);
                        *self = Self::Size;
                    }
                    _ => return Err(Error::Malformed("chunk data not ended by CRLF")),
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
                    // A bare LF ends a line for some parsers and not for others.
                    let Some(line) = line.strip_suffix(b"\r") else {
                        return Err(Error::Malformed("bare LF in trailers"));
                    };
                    if line.contains(&b'\r') {
                        return Err(Error::Malformed("bare CR in trailers"));
                    }
                    if !line.is_empty() {
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

/// Reads a chunk-size line off the front of `buf` (RFC 9112 §7.1.1), strictly: hex digits,
/// extensions `*( BWS ";" BWS name [ BWS "=" BWS value ] )`, CRLF. Returns the line's length
/// and the size, or `None` when the line is not complete yet. Anything else — whitespace
/// without an extension after it, an empty extension, a bare LF, a size beyond 64 bits — is
/// refused: a peer parsing it differently would see another body.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, Error> {
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
    let Some(eol) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CHUNK_LINE {
            Err(Error::Malformed("chunk size line too long"))
        } else {
            Ok(None)
        };
    };
    let line = window[..eol]
        .strip_suffix(b"\r")
        .ok_or(Error::Malformed("chunk size line not ended by CRLF"))?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Error::Malformed("chunk size"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &b| {
        // Checked above: hex digits only, at most 16 of them.
        (n << 4) | u64::from((b as char).to_digit(16).unwrap_or(0))
    });
    if !chunk_extensions(&line[digits..]) {
        return Err(Error::Malformed("chunk extension"));
    }
    Ok(Some((eol + 1, size)))
}

/// Whether `text` is a well-formed (possibly empty) list of chunk extensions.
fn chunk_extensions(mut text: &[u8]) -> bool {
    let skip_bws =
        |t: &[u8]| -> usize { t.iter().take_while(|&&b| b == b' ' || b == b'\t').count() };
    let token = |t: &[u8]| -> usize { t.iter().take_while(|&&b| is_tchar(b)).count() };
    while !text.is_empty() {
        text = &text[skip_bws(text)..];
        let Some(rest) = text.strip_prefix(b";") else {
            return false;
        };
        text = &rest[skip_bws(rest)..];
        let name = token(text);
        if name == 0 {
            return false;
        }
        text = &text[name..];
        let after = &text[skip_bws(text)..];
        let Some(value) = after.strip_prefix(b"=") else {
            continue;
        };
        let value = &value[skip_bws(value)..];
        let len = match value.first() {
            Some(b'"') => match quoted_string(value) {
                Some(len) => len,
                None => return false,
            },
            _ => token(value),
        };
        if len == 0 {
            return false;
        }
        text = &value[len..];
    }
    true
}

/// Length of the quoted-string at the front of `text` (RFC 9110 §5.6.4), if it is one.
fn quoted_string(text: &[u8]) -> Option<usize> {
    let mut i = 1;
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => return Some(i + 1),
            b'\\' => {
                let escaped = *text.get(i + 1)?;
                if escaped != b'\t' && !(0x20..=0x7e).contains(&escaped) && escaped < 0x80 {
                    return None;
                }
                i += 2;
            }
            b'\t' | 0x20..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
        assert_eq!(head.status, StatusCode::CREATED);
        let map = head.fields.into_map();
        let values: Vec<_> = map.get_all("x-a").iter().collect();
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
        assert!(!both.fields.into_map().contains_key(CONTENT_LENGTH));
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
        let map = head.fields.into_map();
        let names: Vec<_> = map.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-app"]);
        let naming = parse(
            "HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nContent-Length: 1\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            naming.fields.into_map()["connection"],
            "close, x-hop",
            "kept: it names x-hop"
        );
        assert!(!naming.keep_alive);
    }

    /// The head's fields as an HTTP/1 writer copies them, when they stayed raw.
    fn raw_text(text: &str) -> Option<String> {
        match parse(text, &Method::GET).unwrap().unwrap().fields {
            Fields::Raw(raw) => {
                let mut out = Vec::new();
                raw.write(&mut out);
                Some(String::from_utf8(out).unwrap())
            }
            Fields::Map(_) => None,
        }
    }

    #[test]
    fn fields_stay_raw_unless_something_must_change() {
        assert_eq!(
            raw_text(
                "HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length:  2 \r\n\r\nok"
            )
            .as_deref(),
            Some("Server: up\r\nContent-Length:  2\r\n"),
            "connection fields consumed, the rest as sent"
        );
        assert_eq!(
            raw_text("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n").as_deref(),
            Some("X-A: 1\r\n")
        );
        for text in [
            "HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTrailer: x-sum\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTE: trailers\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(raw_text(text), None, "{text}");
        }
        let head = parse(
            "HTTP/1.1 304 Not Modified\r\nDate: Sun, 22 Nov 2026 10:00:00 GMT\r\nContent-Length: 9\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        let Fields::Raw(raw) = head.fields else {
            panic!("a 304's length stays raw");
        };
        assert_eq!(raw.length(), Some(9));
        assert!(raw.dated());
    }

    #[test]
    fn heads_over_the_limit_are_refused_even_when_complete() {
        let big = format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert!(matches!(
            parse(&big, &Method::GET),
            Err(Error::HeadTooLarge)
        ));
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

    #[test]
    fn chunk_lines_are_read_strictly() {
        for wire in [
            &b"2;\r\nhi\r\n0\r\n\r\n"[..],
            b"2 \r\nhi\r\n0\r\n\r\n",
            b"2\nhi\r\n0\r\n\r\n",
            b"2\r\nhi\n0\r\n\r\n",
            b"2\r\nhi\r\n0\r\n\n",
            b"2\r\nhi\r\n0\r\nx: 1\n\r\n",
            b"-2\r\nhi\r\n0\r\n\r\n",
            b"0x2\r\nhi\r\n0\r\n\r\n",
            b"+2\r\nhi\r\n0\r\n\r\n",
            b"2;a=\r\nhi\r\n0\r\n\r\n",
            b"2;a=\"x\r\nhi\r\n0\r\n\r\n",
            b"2;=b\r\nhi\r\n0\r\n\r\n",
            b"11111111111111111\r\nhi\r\n0\r\n\r\n",
            b"2\r\r\nhi\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(wire, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        for wire in [
            &b"2;a\r\nhi\r\n0\r\n\r\n"[..],
            b"2 ; a = b\r\nhi\r\n0\r\n\r\n",
            b"2;a=\"q \\\" ;\";b\r\nhi\r\n0\r\n\r\n",
            b"0002\r\nhi\r\n0\r\n\r\n",
        ] {
            assert_eq!(
                decode_all(wire, 3).unwrap(),
                b"hi",
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}
