//! The trace context a request arrives with: W3C `traceparent`, B3 as one `b3` header or as
//! `X-B3-*` headers. Pure parsing: a malformed header is as good as none (a new trace starts),
//! never an error, and nothing here allocates.

use http::header::{HeaderMap, HeaderName};

/// W3C Trace Context.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C vendor state, forwarded with a valid `traceparent`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// B3 in one header.
pub static B3: HeaderName = HeaderName::from_static("b3");
/// B3 in several headers.
pub static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// See [`B3_TRACE_ID`].
pub static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// See [`B3_TRACE_ID`].
pub static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// See [`B3_TRACE_ID`].
pub static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// See [`B3_TRACE_ID`]: `1` is debug, which implies sampled.
pub static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which trace headers a request has, found in one pass over its names: cheaper than a hashed
/// lookup for each of eight names when, as usual, few or none are there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present(u8);

impl Present {
    /// `traceparent`.
    pub const TRACEPARENT: u8 = 1;
    /// `tracestate`.
    pub const TRACESTATE: u8 = 2;
    /// `b3`.
    pub const B3: u8 = 4;
    /// Any `x-b3-*`.
    pub const B3_MULTI: u8 = 8;
    /// `x-request-id`.
    pub const REQUEST_ID: u8 = 16;

    /// Looks at every header name once.
    pub fn scan(headers: &HeaderMap) -> Self {
        let mut bits = 0;
        for name in headers.keys() {
            bits |= match name.as_str() {
                "traceparent" => Self::TRACEPARENT,
                "tracestate" => Self::TRACESTATE,
                "b3" => Self::B3,
                "x-request-id" => Self::REQUEST_ID,
                other if other.starts_with("x-b3-") => Self::B3_MULTI,
                _ => 0,
            };
        }
        Self(bits)
    }

    /// Whether the header(s) of `bit` are there.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// A span of another process this request continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// Never zero.
    pub trace_id: u128,
    /// Never zero.
    pub span_id: u64,
}

/// What the request's headers say about its trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's span, from the first valid of `traceparent`, `b3`, `X-B3-*`.
    pub parent: Option<Parent>,
    /// The caller's sampling decision, if it made one.
    pub sampled: Option<bool>,
    /// `traceparent` was valid (so `tracestate` goes on with it).
    pub w3c: bool,
    /// `b3` was valid: it is written back.
    pub b3_single: bool,
    /// `X-B3-*` were valid: they are written back.
    pub b3_multi: bool,
    /// Some trace header was there but not valid: removed before forwarding.
    pub malformed: bool,
    /// The trace headers (and `x-request-id`) the request has.
    pub present: Present,
}

impl Incoming {
    /// Reads the trace headers of a request.
    pub fn read(headers: &HeaderMap) -> Self {
        let present = Present::scan(headers);
        let mut incoming = Self {
            present,
            ..Self::default()
        };
        let get = |bit, name| present.has(bit).then(|| headers.get(name)).flatten();
        if let Some(value) = get(Present::TRACEPARENT, &TRACEPARENT) {
            match traceparent(value.as_bytes()) {
                Some((parent, sampled)) => {
                    incoming.parent = Some(parent);
                    incoming.sampled = Some(sampled);
                    incoming.w3c = true;
                }
                None => incoming.malformed = true,
            }
        }
        if let Some(value) = get(Present::B3, &B3) {
            match b3_single(value.as_bytes()) {
                Some((parent, sampled)) => {
                    incoming.b3_single = parent.is_some();
                    incoming.adopt(parent, sampled);
                }
                None => incoming.malformed = true,
            }
        }
        if !present.has(Present::B3_MULTI) {
            return incoming;
        }
        if let Some(trace_id) = headers.get(&B3_TRACE_ID) {
            let span_id = headers.get(&B3_SPAN_ID).map(|v| v.as_bytes());
            match (
                trace_id_hex(trace_id.as_bytes()),
                span_id.and_then(span_id_hex),
            ) {
                (Some(trace_id), Some(span_id)) => {
                    let sampled = b3_multi_sampled(headers);
                    incoming.b3_multi = true;
                    incoming.adopt(Some(Parent { trace_id, span_id }), sampled);
                }
                _ => incoming.malformed = true,
            }
        } else if let Some(sampled) = b3_multi_sampled(headers) {
            // `X-B3-Sampled` alone: a decision without a trace.
            incoming.adopt(None, Some(sampled));
        }
        incoming
    }

    /// Takes a later header's context where an earlier one gave none.
    fn adopt(&mut self, parent: Option<Parent>, sampled: Option<bool>) {
        if self.parent.is_none() {
            self.parent = parent;
        }
        if self.sampled.is_none() {
            self.sampled = sampled;
        }
    }
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; later versions may append
/// `-...`; version `ff` and zero ids are invalid.
fn traceparent(value: &[u8]) -> Option<(Parent, bool)> {
    let version = value.get(0..2)?;
    let rest = value.get(2..)?;
    if version == b"ff" || lower_hex(version).is_none() {
        return None;
    }
    let fields = rest.get(..53)?;
    let tail = rest.get(53..)?;
    // Version 00 is exactly this long; a later version may go on after a dash.
    if !(tail.is_empty() || (version != b"00" && tail.first() == Some(&b'-'))) {
        return None;
    }
    if fields.first() != Some(&b'-')
        || fields.get(33) != Some(&b'-')
        || fields.get(50) != Some(&b'-')
    {
        return None;
    }
    let trace_id = lower_hex(fields.get(1..33)?).filter(|&t| t != 0)?;
    let span_id = u64::try_from(lower_hex(fields.get(34..50)?)?)
        .ok()
        .filter(|&s| s != 0)?;
    let flags = u8::try_from(lower_hex(fields.get(51..53)?)?).ok()?;
    Some((Parent { trace_id, span_id }, flags & 1 == 1))
}

/// `b3: {trace id}-{span id}[-{sampled}[-{parent span id}]]`, or only `0`, `1` or `d`.
/// Returns the parent (none for a lone decision) and the decision.
fn b3_single(value: &[u8]) -> Option<(Option<Parent>, Option<bool>)> {
    if let Some(sampled) = b3_sampling_flag(value) {
        return Some((None, Some(sampled)));
    }
    let mut parts = value.split(|&b| b == b'-');
    let trace_id = trace_id_hex(parts.next()?)?;
    let span_id = span_id_hex(parts.next()?)?;
    let sampled = match parts.next() {
        Some(flag) => Some(b3_sampling_flag(flag)?),
        None => None,
    };
    if let Some(parent_span) = parts.next() {
        span_id_hex(parent_span)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some((Some(Parent { trace_id, span_id }), sampled))
}

/// `X-B3-Flags: 1` (debug) or `X-B3-Sampled`.
fn b3_multi_sampled(headers: &HeaderMap) -> Option<bool> {
    if headers.get(&B3_FLAGS).is_some_and(|f| f.as_bytes() == b"1") {
        return Some(true);
    }
    match headers.get(&B3_SAMPLED)?.as_bytes() {
        b"1" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

fn b3_sampling_flag(flag: &[u8]) -> Option<bool> {
    match flag {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

/// A B3 trace id: 16 or 32 hex digits (a 64-bit id is the low half), not zero.
fn trace_id_hex(text: &[u8]) -> Option<u128> {
    if text.len() != 16 && text.len() != 32 {
        return None;
    }
    lower_hex(text).filter(|&t| t != 0)
}

/// A span id: 16 hex digits, not zero.
fn span_id_hex(text: &[u8]) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    u64::try_from(lower_hex(text)?).ok().filter(|&s| s != 0)
}

/// Up to 32 lowercase hex digits (W3C and B3 both write lowercase).
fn lower_hex(text: &[u8]) -> Option<u128> {
    if text.is_empty() || text.len() > 32 {
        return None;
    }
    text.iter().try_fold(0u128, |acc, &b| {
        Some((acc << 4) | u128::from(hex_digit(b)?))
    })
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn read(pairs: &[(&'static str, &'static str)]) -> Incoming {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        Incoming::read(&headers)
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_the_parent_with_its_decision() {
        let i = read(&[("traceparent", TP)]);
        let parent = i.parent.unwrap();
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.span_id, 0x00f067aa0ba902b7);
        assert_eq!(i.sampled, Some(true));
        assert!(i.w3c && !i.malformed);
        let unsampled = read(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        assert_eq!(unsampled.sampled, Some(false));
        // A later version may append fields.
        let future = read(&[(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        )]);
        assert!(future.w3c);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            let i = read(&[("traceparent", bad)]);
            assert_eq!(i.parent, None, "{bad}");
            assert!(i.malformed && !i.w3c, "{bad}");
        }
    }

    #[test]
    fn b3_single_header_forms() {
        let i = read(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]);
        assert_eq!(
            i.parent.unwrap().trace_id,
            0x80f198ee56343ba864fe8b2a57d3eff7
        );
        assert_eq!(i.parent.unwrap().span_id, 0xe457b5a2e4d86bd1);
        assert_eq!(i.sampled, Some(true));
        assert!(i.b3_single);
        // 64-bit trace id, no decision: the sampler decides.
        let i = read(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1")]);
        assert_eq!(i.parent.unwrap().trace_id, 0x64fe8b2a57d3eff7);
        assert_eq!(i.sampled, None);
        // A lone decision.
        let i = read(&[("b3", "0")]);
        assert_eq!(
            (i.parent, i.sampled, i.b3_single),
            (None, Some(false), false)
        );
        for bad in [
            "x",
            "abc-def",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-0-0",
        ] {
            let i = read(&[("b3", bad)]);
            assert!(i.parent.is_none() && i.malformed, "{bad}");
        }
    }

    #[test]
    fn b3_multi_headers() {
        let i = read(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]);
        assert_eq!(
            i.parent.unwrap().trace_id,
            0x463ac35c9f6413ad48485a3953bb6124
        );
        assert_eq!(i.sampled, Some(true));
        assert!(i.b3_multi);
        let debug = read(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-flags", "1"),
        ]);
        assert_eq!(debug.sampled, Some(true));
        let missing_span = read(&[("x-b3-traceid", "463ac35c9f6413ad")]);
        assert!(missing_span.parent.is_none() && missing_span.malformed);
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let i = read(&[
            ("traceparent", TP),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
        ]);
        assert_eq!(
            i.parent.unwrap().trace_id,
            0x4bf92f3577b34da6a3ce929d0e0e4736
        );
        assert_eq!(i.sampled, Some(true));
        assert!(i.w3c && i.b3_single);
    }
}
