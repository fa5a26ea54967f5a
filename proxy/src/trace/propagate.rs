//! The trace context the upstream gets: the trace goes on with the proxy's span as the parent,
//! written in every format the request came with plus `traceparent`; malformed trace headers
//! are removed. One `HeaderValue` per written header is all it allocates.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::context::{
    Incoming, Present, B3, B3_FLAGS, B3_PARENT_SPAN_ID, B3_SAMPLED, B3_SPAN_ID, B3_TRACE_ID,
    TRACEPARENT, TRACESTATE,
};

/// `x-request-id`: kept when the client sent a usable one, made up otherwise.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest `x-request-id` kept; a longer one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The context one upstream try continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    /// The trace.
    pub trace_id: u128,
    /// The proxy's span the upstream's is a child of.
    pub span_id: u64,
    /// Whether the trace is recorded.
    pub sampled: bool,
}

/// Writes `out` into `headers` in the formats `incoming` names (always `traceparent`).
pub fn write(headers: &mut HeaderMap, incoming: &Incoming, out: Outgoing) {
    let present = incoming.present;
    if (incoming.malformed || !incoming.w3c) && present.has(Present::TRACESTATE) {
        // A `tracestate` only goes with the `traceparent` it came with.
        headers.remove(&TRACESTATE);
    }
    if incoming.malformed {
        if !incoming.b3_single && present.has(Present::B3) {
            headers.remove(&B3);
        }
        if !incoming.b3_multi && present.has(Present::B3_MULTI) {
            remove_b3_multi(headers);
        }
    }
    let sampled = if out.sampled { b'1' } else { b'0' };
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    hex(&mut buf[3..35], out.trace_id);
    buf[35] = b'-';
    hex(&mut buf[36..52], u128::from(out.span_id));
    buf[52..].copy_from_slice(&[b'-', b'0', sampled]);
    insert(headers, &TRACEPARENT, &buf);
    if incoming.b3_single {
        // `{trace}-{span}-{sampled}`: the trace id and span id as in `traceparent`.
        let mut b3 = [0u8; 51];
        b3[..49].copy_from_slice(&buf[3..52]);
        b3[49] = b'-';
        b3[50] = sampled;
        insert(headers, &B3, &b3);
    }
    if incoming.b3_multi {
        insert(headers, &B3_TRACE_ID, &buf[3..35]);
        insert(headers, &B3_SPAN_ID, &buf[36..52]);
        headers.remove(&B3_PARENT_SPAN_ID);
        headers.remove(&B3_FLAGS);
        let flag = if out.sampled { "1" } else { "0" };
        headers.insert(&B3_SAMPLED, HeaderValue::from_static(flag));
    }
}

/// Keeps a usable `x-request-id` (1 to [`MAX_REQUEST_ID_LEN`] visible characters), replaces
/// any other with a new random one. `present`: what [`Present::scan`] found.
pub fn request_id(headers: &mut HeaderMap, present: Present) {
    let usable = present.has(Present::REQUEST_ID)
        && headers.get(&REQUEST_ID).is_some_and(|v| {
            let bytes = v.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= MAX_REQUEST_ID_LEN
                && bytes.iter().all(u8::is_ascii_graphic)
        });
    if usable {
        return;
    }
    // A version-4 UUID's form: 8-4-4-4-12 hex digits.
    let random = fastrand::u128(..) & !(0xf << 76) | (0x4 << 76);
    let mut digits = [0u8; 32];
    hex(&mut digits, random);
    let mut id = [b'-'; 36];
    let mut at = 0;
    for (i, group) in [8, 4, 4, 4, 12].into_iter().enumerate() {
        let start = at + i;
        if let (Some(dst), Some(src)) =
            (id.get_mut(start..start + group), digits.get(at..at + group))
        {
            dst.copy_from_slice(src);
        }
        at += group;
    }
    insert(headers, &REQUEST_ID, &id);
}

fn remove_b3_multi(headers: &mut HeaderMap) {
    for name in [
        &B3_TRACE_ID,
        &B3_SPAN_ID,
        &B3_PARENT_SPAN_ID,
        &B3_SAMPLED,
        &B3_FLAGS,
    ] {
        headers.remove(name);
    }
}

/// `value` is hex digits and dashes, always a valid header value.
fn insert(headers: &mut HeaderMap, name: &HeaderName, value: &[u8]) {
    if let Ok(value) = HeaderValue::from_bytes(value) {
        headers.insert(name, value);
    }
}

/// Writes the low `out.len()` hex digits of `value`, lowercase, most significant first.
fn hex(out: &mut [u8], value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = out.len();
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 4 * (n - 1 - i);
        let nibble = (value >> shift) as usize & 0xf;
        *slot = DIGITS.get(nibble).copied().unwrap_or(b'0');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    const OUT: Outgoing = Outgoing {
        trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
        span_id: 0x00f067aa0ba902b7,
        sampled: true,
    };

    #[test]
    fn traceparent_is_always_written_and_tracestate_kept_with_a_valid_one() {
        let mut h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let incoming = Incoming::read(&h);
        write(&mut h, &incoming, OUT);
        assert_eq!(
            h[&TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(h[&TRACESTATE], "congo=t61rcWkgMzE");
    }

    #[test]
    fn b3_formats_are_written_back_and_malformed_ones_removed() {
        let mut h = headers(&[
            ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-1"),
            ("x-b3-traceid", "zz"),
            ("x-b3-spanid", "1111111111111111"),
            ("tracestate", "a=b"),
        ]);
        let incoming = Incoming::read(&h);
        write(
            &mut h,
            &incoming,
            Outgoing {
                sampled: false,
                ..OUT
            },
        );
        assert_eq!(
            h[&B3],
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"
        );
        assert!(h.get(&B3_TRACE_ID).is_none() && h.get(&B3_SPAN_ID).is_none());
        assert!(h.get(&TRACESTATE).is_none(), "no traceparent came with it");
        assert_eq!(
            h[&TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );

        let mut h = headers(&[
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "1111111111111111"),
            ("x-b3-parentspanid", "2222222222222222"),
        ]);
        let incoming = Incoming::read(&h);
        write(&mut h, &incoming, OUT);
        assert_eq!(h[&B3_SPAN_ID], "00f067aa0ba902b7");
        assert_eq!(h[&B3_SAMPLED], "1");
        assert!(h.get(&B3_PARENT_SPAN_ID).is_none());
    }

    #[test]
    fn request_ids_are_kept_when_usable_and_made_otherwise() {
        let mut h = headers(&[("x-request-id", "abc-123")]);
        let present = Present::scan(&h);
        request_id(&mut h, present);
        assert_eq!(h[&REQUEST_ID], "abc-123");

        let mut h = HeaderMap::new();
        let present = Present::scan(&h);
        request_id(&mut h, present);
        let made = h[&REQUEST_ID].to_str().unwrap().to_owned();
        assert_eq!(made.len(), 36);
        assert_eq!(made.as_bytes()[14], b'4', "version 4: {made}");
        assert_eq!(made.matches('-').count(), 4, "{made}");

        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        let mut h = HeaderMap::new();
        h.insert(&REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        let present = Present::scan(&h);
        request_id(&mut h, present);
        assert_eq!(h[&REQUEST_ID].len(), 36);
    }
}
