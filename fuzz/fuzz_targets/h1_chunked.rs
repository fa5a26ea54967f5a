//! The chunked body decoder, fed in pieces cut where the fuzzer chooses.
//!
//! Input: one byte `n` (taken modulo 8), then `n` piece lengths (cycled; 0 counts as 1), then
//! the body as sent. A leading 0 byte feeds the body whole.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use strait_proxy::http::h1::decode::{Chunked, Step};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len());
    let (lengths, wire) = rest.split_at(n);
    let mut pieces = Vec::new();
    let (mut left, mut cuts) = (wire, lengths.iter().cycle());
    while !left.is_empty() {
        let len = cuts
            .next()
            .map_or(left.len(), |&len| usize::from(len.max(1)));
        let (piece, rest) = left.split_at(len.min(left.len()));
        pieces.push(piece);
        left = rest;
    }

    let mut state = Chunked::Size;
    let mut buf = BytesMut::new();
    let (mut fed, mut yielded) = (0usize, 0usize);
    for piece in pieces {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            let step = state.step(&mut buf);
            let consumed = fed - buf.len();
            match step {
                Ok(Step::Data(data)) => {
                    assert!(!data.is_empty(), "an empty data step");
                    yielded += data.len();
                    assert!(
                        yielded <= consumed,
                        "{yielded} bytes out of {consumed} read"
                    );
                }
                Ok(Step::Trailers(_)) => assert_eq!(state, Chunked::Done),
                Ok(Step::NeedMore) => break,
                Ok(Step::End) => {
                    assert_eq!(state, Chunked::Done);
                    assert_eq!(
                        state.step(&mut buf).ok(),
                        Some(Step::End),
                        "ended stays ended"
                    );
                    return;
                }
                Err(_) => return,
            }
        }
    }
});
