//! The interception sniffer's classification of a connection's first bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proxy::intercept::sniff::classify;

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    // A verdict on a prefix is final: more bytes never change it.
    for end in 0..data.len().min(32) {
        if let Some(verdict) = classify(&data[..end]) {
            assert_eq!(whole, Some(verdict), "{:?} then {:?}", &data[..end], data);
            break;
        }
    }
});
