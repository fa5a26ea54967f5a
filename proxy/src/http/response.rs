//! A response as the proxy carries it to the client: status, header fields, body.
//!
//! The fields come in one of two forms. Most heads an upstream sends over HTTP/1 need nothing
//! done to them — no hop-by-hop field to strip, no policy to apply — and keep the upstream's
//! own bytes with the place of each field ([`RawFields`]): the HTTP/1 server copies them to
//! its client as they came. Building a `HeaderMap` for them only to serialise it again cost an
//! eighth of a small proxied request's instructions (callgrind). Whatever reads or changes the
//! fields asks for the map ([`Fields::map_mut`]), which is built then, once; hyper's HTTP/2
//! server gets the map.

use std::ops::Range;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use smallvec::SmallVec;

use super::headers::strip_hop_by_hop;

/// A response on its way to the client.
#[derive(Debug)]
pub struct Reply<B> {
    /// The status.
    pub status: StatusCode,
    /// The header fields.
    pub fields: Fields,
    /// The body.
    pub body: B,
}

impl<B> Reply<B> {
    /// As an `http::Response` of `version` (the client's), for hyper's server.
    pub fn into_http(self, version: Version) -> http::Response<B> {
        let mut response = http::Response::new(self.body);
        *response.status_mut() = self.status;
        *response.version_mut() = version;
        *response.headers_mut() = self.fields.into_map();
        response
    }
}

impl<B> From<http::Response<B>> for Reply<B> {
    fn from(response: http::Response<B>) -> Self {
        let (parts, body) = response.into_parts();
        Self {
            status: parts.status,
            fields: Fields::Map(parts.headers),
            body,
        }
    }
}

/// A response's header fields.
#[derive(Debug)]
pub enum Fields {
    /// Parsed into a map.
    Map(HeaderMap),
    /// As an upstream sent them over HTTP/1, with no hop-by-hop field among them.
    Raw(RawFields),
}

impl Fields {
    /// The fields as a map to read or change, parsed now if they are raw.
    pub fn map_mut(&mut self) -> &mut HeaderMap {
        if let Self::Raw(raw) = self {
            *self = Self::Map(raw.to_map());
        }
        match self {
            Self::Map(map) => map,
            Self::Raw(_) => unreachable!("raw fields were just replaced by their map"),
        }
    }

    /// Removes the hop-by-hop fields (see [`strip_hop_by_hop`]); raw fields hold none.
    pub fn strip_hop_by_hop(&mut self, upgrade: bool) {
        match self {
            Self::Raw(_) if !upgrade => {}
            _ => strip_hop_by_hop(self.map_mut(), upgrade),
        }
    }

    /// The fields as a map.
    pub fn into_map(self) -> HeaderMap {
        match self {
            Self::Map(map) => map,
            Self::Raw(raw) => raw.to_map(),
        }
    }
}

/// Where one field sits in its head: the name, then the value (without the whitespace around
/// it). Offsets fit in 16 bits: a head is at most [`super::h1::decode::MAX_HEAD_BYTES`] long
/// and ends with a blank line, so no field reaches its last bytes.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    name: u16,
    name_end: u16,
    value: u16,
    value_end: u16,
}

impl Span {
    /// A field whose name and value lie at these offsets of its head; `None` when an offset
    /// does not fit in 16 bits.
    pub fn new(name: Range<usize>, value: Range<usize>) -> Option<Self> {
        Some(Self {
            name: u16::try_from(name.start).ok()?,
            name_end: u16::try_from(name.end).ok()?,
            value: u16::try_from(value.start).ok()?,
            value_end: u16::try_from(value.end).ok()?,
        })
    }

    fn name(self) -> Range<usize> {
        usize::from(self.name)..usize::from(self.name_end)
    }

    fn value(self) -> Range<usize> {
        usize::from(self.value)..usize::from(self.value_end)
    }

    /// The field as it was sent: name, separator and value.
    fn whole(self) -> Range<usize> {
        usize::from(self.name)..usize::from(self.value_end)
    }

    fn within(self, len: usize) -> bool {
        self.name <= self.name_end
            && self.name_end <= self.value
            && self.value <= self.value_end
            && usize::from(self.value_end) <= len
    }
}

/// Fields most heads fit in without a heap allocation.
const INLINE_FIELDS: usize = 8;

/// Header fields kept as an upstream sent them: its whole head, and where each field passed
/// on sits in it (the fields about the upstream connection itself left out).
#[derive(Debug)]
pub struct RawFields {
    head: Bytes,
    spans: SmallVec<[Span; INLINE_FIELDS]>,
    /// The one `Content-Length` field among them, read.
    length: Option<u64>,
    /// A `Date` field is among them.
    dated: bool,
}

impl RawFields {
    /// The fields at `spans` of `head`, which an HTTP/1 parser accepted (names are tokens and
    /// values hold no control characters but HTAB, so they may be written out as they are).
    /// `length` is the value of the one `Content-Length` field among them. `None` when a span
    /// lies outside `head`.
    pub fn new(
        head: Bytes,
        spans: SmallVec<[Span; INLINE_FIELDS]>,
        length: Option<u64>,
        dated: bool,
    ) -> Option<Self> {
        spans.iter().all(|s| s.within(head.len())).then_some(Self {
            head,
            spans,
            length,
            dated,
        })
    }

    /// The `Content-Length` among the fields.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// Whether a `Date` field is among them.
    pub fn dated(&self) -> bool {
        self.dated
    }

    /// Appends the fields to an HTTP/1 head, each as it was sent.
    pub fn write(&self, out: &mut Vec<u8>) {
        for span in &self.spans {
            out.extend_from_slice(&self.head[span.whole()]);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The fields as a map; the values share the head's bytes.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.spans.len());
        for &span in &self.spans {
            // The parser accepted both (see `new`), so neither conversion fails.
            let name = HeaderName::from_bytes(&self.head[span.name()]);
            let value = HeaderValue::from_maybe_shared(self.head.slice(span.value()));
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Name: value` fields of a head, located the way the decoder does.
    fn raw(head: &'static str, length: Option<u64>, dated: bool) -> RawFields {
        let mut spans = SmallVec::new();
        let mut at = head.find("\r\n").unwrap() + 2;
        for line in head[at..].split("\r\n").take_while(|l| !l.is_empty()) {
            let colon = line.find(':').unwrap();
            let value = line[colon + 1..].trim();
            let value_at = at + line.find(value).unwrap();
            spans.push(Span::new(at..at + colon, value_at..value_at + value.len()).unwrap());
            at += line.len() + 2;
        }
        RawFields::new(Bytes::from_static(head.as_bytes()), spans, length, dated).unwrap()
    }

    #[test]
    fn raw_fields_are_written_as_they_came() {
        let fields = raw(
            "HTTP/1.1 200 OK\r\nServer: up\r\nX-Two:  a, b\r\nContent-Length: 3\r\n\r\n",
            Some(3),
            false,
        );
        let mut out = Vec::new();
        fields.write(&mut out);
        assert_eq!(out, b"Server: up\r\nX-Two:  a, b\r\nContent-Length: 3\r\n");
        assert_eq!(fields.length(), Some(3));
    }

    #[test]
    fn raw_fields_become_a_map_on_demand() {
        let mut fields = Fields::Raw(raw(
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nDate: now\r\n\r\n",
            None,
            true,
        ));
        let map = fields.map_mut();
        let values: Vec<_> = map.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        map.insert("x-b", HeaderValue::from_static("3"));
        assert!(matches!(&fields, Fields::Map(m) if m.len() == 4));
    }

    #[test]
    fn spans_outside_the_head_are_refused() {
        let span = Span::new(0..4, 6..40).unwrap();
        let spans = SmallVec::from_slice(&[span]);
        assert!(
            RawFields::new(Bytes::from_static(b"Name: v\r\n\r\n"), spans, None, false).is_none()
        );
        assert!(Span::new(0..4, 6..70_000).is_none());
    }
}
