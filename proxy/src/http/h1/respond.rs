//! Writing a response for a client of the HTTP/1 server: the head (RFC 9112 §4), how its body
//! is delimited (§6.3), and whether the connection stays open (§9).

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Method, StatusCode};
use http_body::SizeHint;

use super::decode::parse_length;
use crate::http::headers::lists;
use crate::http::response::Fields;

/// How the body after a response head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body follows (HEAD, 1xx, 204, 304, or an empty body).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunks, the length not being known ahead.
    Chunked,
    /// Everything until the connection closes (an HTTP/1.0 client, which knows no chunks,
    /// and a length not known ahead).
    UntilClose,
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// How the body follows.
    pub framing: Framing,
    /// The response says `Connection: close` (or switches protocols): the connection ends
    /// with it.
    pub close: bool,
}

/// The client a response goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// It spoke HTTP/1.0: no chunks, and keep-alive only when said so.
    pub http10: bool,
    /// The connection closes after this response: the response says so (RFC 9112 §9.6).
    pub closing: bool,
}

/// Appends the head of a response to a request with `method` whose body reports `hint` and
/// `end` (the body is already over), for `peer`: the status line, the fields as they are (a
/// `Date` added when there is none), the framing field, and `Connection` when the
/// connection closes after it (or is kept open for an HTTP/1.0 client).
pub fn head(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: &Fields,
    method: &Method,
    hint: &SizeHint,
    end: bool,
    peer: Peer,
) -> Written {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let head_request = method == Method::HEAD;
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A length field may describe the body a HEAD or 304 would have had; not on 1xx or 204.
    let length_allowed = !(status.is_informational() || status == StatusCode::NO_CONTENT);
    let stated = match fields {
        Fields::Map(map) => map_fields(out, map, length_allowed),
        // The decoder keeps no connection field raw, and no length on a 1xx or 204.
        Fields::Raw(raw) => {
            raw.write(out);
            Stated {
                length: raw.length(),
                dated: raw.dated(),
                close: false,
            }
        }
    };
    let mut close = stated.close || status == StatusCode::SWITCHING_PROTOCOLS || peer.closing;
    let stated_length = stated.length;
    let framing = if bodiless {
        if stated_length.is_none() && length_allowed && !end {
            if let Some(n) = hint.exact().filter(|&n| n > 0) {
                length_field(out, n);
            }
        }
        Framing::Empty
    } else {
        match (stated_length, hint.exact()) {
            (Some(n), _) => Framing::Length(n),
            (None, _) if end => {
                length_field(out, 0);
                Framing::Empty
            }
            (None, Some(n)) => {
                length_field(out, n);
                if n == 0 {
                    Framing::Empty
                } else {
                    Framing::Length(n)
                }
            }
            (None, None) if peer.http10 => {
                close = true;
                Framing::UntilClose
            }
            (None, None) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        }
    };
    if close && !stated.close && status != StatusCode::SWITCHING_PROTOCOLS {
        out.extend_from_slice(b"connection: close\r\n");
    } else if peer.http10 && !close {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !stated.dated {
        out.extend_from_slice(b"date: ");
        now(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Written { framing, close }
}

/// What a response's own fields say about its framing.
struct Stated {
    /// Its `Content-Length`.
    length: Option<u64>,
    /// It carries a `Date`.
    dated: bool,
    /// It says `Connection: close`.
    close: bool,
}

/// Appends the fields of `map` but `Transfer-Encoding` (the writer frames the body) and all
/// but the first readable `Content-Length` (none where `length_allowed` is false).
fn map_fields(out: &mut Vec<u8>, map: &HeaderMap, length_allowed: bool) -> Stated {
    let mut stated = Stated {
        length: None,
        dated: false,
        close: false,
    };
    for (name, value) in map {
        if name == TRANSFER_ENCODING {
            continue;
        }
        if name == CONTENT_LENGTH {
            let parsed = parse_length(value.as_bytes().trim_ascii());
            // One length field, readable (the upstream client checked its responses'; an
            // unreadable one of the proxy's own making is left for the body's length).
            if !length_allowed || stated.length.is_some() || parsed.is_none() {
                continue;
            }
            stated.length = parsed;
        } else if name == CONNECTION {
            stated.close |= lists(value.as_bytes(), "close");
        } else if name == DATE {
            stated.dated = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    stated
}

fn length_field(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The IMF-fixdate of the current second, formatted once a second per thread.
fn now(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let time = SystemTime::now();
    let second = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(time);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    fn write(resp: Response<()>, method: Method, hint: SizeHint, end: bool) -> (String, Written) {
        let mut out = Vec::new();
        let (parts, ()) = resp.into_parts();
        let fields = Fields::Map(parts.headers);
        let written = head(&mut out, parts.status, &fields, &method, &hint, end, KEEP);
        (String::from_utf8(out).unwrap(), written)
    }

    const KEEP: Peer = Peer {
        http10: false,
        closing: false,
    };

    fn known(n: u64) -> SizeHint {
        SizeHint::with_exact(n)
    }

    #[test]
    fn length_from_the_header_or_the_body_and_chunked_otherwise() {
        let stated = Response::builder()
            .header("content-length", "5")
            .header("date", "x")
            .body(())
            .unwrap();
        let (text, w) = write(stated, Method::GET, SizeHint::new(), false);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: x\r\n\r\n"
        );
        assert_eq!(w.framing, Framing::Length(5));
        let (text, w) = write(Response::new(()), Method::GET, known(3), false);
        assert!(text.contains("content-length: 3\r\n"), "{text}");
        assert!(text.contains("date: "), "{text}");
        assert_eq!(w.framing, Framing::Length(3));
        let (text, w) = write(Response::new(()), Method::GET, SizeHint::new(), false);
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert_eq!(w.framing, Framing::Chunked);
        let (text, w) = write(Response::new(()), Method::GET, known(0), true);
        assert!(text.contains("content-length: 0\r\n"), "{text}");
        assert_eq!(w.framing, Framing::Empty);
    }

    #[test]
    fn no_body_for_head_204_and_304() {
        let head_resp = Response::builder()
            .header("content-length", "10")
            .body(())
            .unwrap();
        let (text, w) = write(head_resp, Method::HEAD, known(0), true);
        assert!(text.contains("content-length: 10\r\n"), "{text}");
        assert_eq!(w.framing, Framing::Empty);
        let no_content = Response::builder()
            .status(204)
            .header("content-length", "0")
            .body(())
            .unwrap();
        let (text, w) = write(no_content, Method::GET, known(0), true);
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        assert_eq!(w.framing, Framing::Empty);
        let not_modified = Response::builder().status(304).body(()).unwrap();
        let (_, w) = write(not_modified, Method::GET, SizeHint::new(), false);
        assert_eq!(w.framing, Framing::Empty);
    }

    #[test]
    fn connection_close_and_transfer_encoding() {
        let resp = Response::builder()
            .status(503)
            .header("connection", "keep-alive, Close")
            .header("transfer-encoding", "gzip")
            .body(())
            .unwrap();
        let (text, w) = write(resp, Method::GET, known(2), false);
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(!text.contains("gzip"), "{text}");
        assert!(w.close);
        assert_eq!(w.framing, Framing::Length(2));
    }

    #[test]
    fn a_closing_connection_is_announced_once() {
        let mut out = Vec::new();
        let fields = Fields::Map(HeaderMap::new());
        let closing = Peer {
            http10: false,
            closing: true,
        };
        let w = head(
            &mut out,
            StatusCode::OK,
            &fields,
            &Method::GET,
            &known(2),
            false,
            closing,
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("connection: close\r\n").count(), 1, "{text}");
        assert!(w.close);
        let mut out = Vec::new();
        let mut map = HeaderMap::new();
        map.insert(CONNECTION, "close".parse().unwrap());
        let w = head(
            &mut out,
            StatusCode::OK,
            &Fields::Map(map),
            &Method::GET,
            &known(2),
            false,
            closing,
        );
        let text = String::from_utf8(out).unwrap().to_ascii_lowercase();
        assert_eq!(text.matches("connection: close\r\n").count(), 1, "{text}");
        assert!(w.close);
    }

    #[test]
    fn http10_clients_get_no_chunks_and_keep_alive_said_out_loud() {
        let old = Peer {
            http10: true,
            closing: false,
        };
        let mut out = Vec::new();
        let fields = Fields::Map(HeaderMap::new());
        let w = head(
            &mut out,
            StatusCode::OK,
            &fields,
            &Method::GET,
            &SizeHint::new(),
            false,
            old,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("chunked"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert_eq!((w.framing, w.close), (Framing::UntilClose, true));
        let mut out = Vec::new();
        let w = head(
            &mut out,
            StatusCode::OK,
            &fields,
            &Method::GET,
            &known(3),
            false,
            old,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
        assert_eq!((w.framing, w.close), (Framing::Length(3), false));
    }
}
