//! What a connection's first bytes say: the interception sniffer's classification, and
//! whether they open HTTP/2 (its preface and a SETTINGS frame).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proxy::http::h2_preface::{preface, Preface};
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
    // Likewise for HTTP/2's preface: only `Partial` waits for more.
    let whole = preface(data);
    for end in 0..data.len().min(40) {
        let verdict = preface(&data[..end]);
        if verdict != Preface::Partial {
            assert_eq!(whole, verdict, "{:?} then {:?}", &data[..end], data);
            break;
        }
    }
});
