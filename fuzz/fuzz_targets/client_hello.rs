//! The SNI parser's reading of a connection's first bytes (a TLS ClientHello or anything else).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proxy::sni::client_hello::{parse, Hello};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    // A verdict on a prefix is final: more bytes never change it.
    for end in (0..data.len()).step_by(7).take(64) {
        let prefix = parse(&data[..end]);
        if prefix != Hello::NeedMore {
            assert_eq!(prefix, whole, "{:?} then {:?}", &data[..end], data);
        }
    }
    if let Hello::Complete {
        server_name: Some(name),
    } = &whole
    {
        assert!(!name.is_empty() && name.len() <= 255);
    }
});
