//! The downstream HTTP/1 request parser, on whatever a client sends first.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // One call, so that a new parser entry point is one line to retarget.
    let _ = strait_proxy::http::h1::request::request(&mut buf);
});
