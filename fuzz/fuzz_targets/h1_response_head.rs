//! The upstream HTTP/1 response-head parser, and what the proxy does with the fields it
//! keeps (written raw, or turned into a map).
#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use strait_proxy::http::h1::decode::head;
use strait_proxy::http::response::Fields;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the request's method (HEAD and CONNECT change the framing).
    let Some((&pick, wire)) = data.split_first() else {
        return;
    };
    let method = match pick % 3 {
        0 => Method::GET,
        1 => Method::HEAD,
        _ => Method::CONNECT,
    };
    let mut buf = BytesMut::from(wire);
    match head(&mut buf, &method) {
        Ok(Some(parsed)) => {
            assert!(buf.len() < wire.len(), "a head was parsed out of nothing");
            assert_eq!(
                &wire[wire.len() - buf.len()..],
                &buf[..],
                "the rest is kept"
            );
            match parsed.fields {
                Fields::Raw(raw) => {
                    let mut out = Vec::new();
                    raw.write(&mut out);
                    let _ = raw.to_map();
                }
                Fields::Map(map) => drop(map),
            }
        }
        Ok(None) => assert_eq!(&buf[..], wire, "a partial head stays in the buffer"),
        Err(_) => {}
    }
});
