//! The downstream HTTP/1 request parser, on whatever a client sends first.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use strait_proxy::http::h1::request::{parse, Parsed};

/// The field count limit (the config's default, `limits.maxHeaders`).
const MAX_HEADERS: usize = 100;

fuzz_target!(|data: &[u8]| {
    // The first byte picks whether a small body still arriving is waited for.
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(data);
    let parsed = parse(&mut buf, MAX_HEADERS, mode & 1 == 0);
    if !matches!(parsed, Parsed::Head(_)) {
        assert_eq!(
            &buf[..],
            data,
            "the buffer is untouched unless a head is taken"
        );
    }
});
