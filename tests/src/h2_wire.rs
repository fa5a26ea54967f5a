//! HTTP/2 on the wire, for tests that speak it byte by byte: the client preface, and the
//! frames a server answered with.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The client connection preface's magic (RFC 9113 §3.4); a SETTINGS frame must follow it.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A PING frame's header and payload on stream 0.
pub const PING: &[u8] = &[0, 0, 8, 0x6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const GOAWAY: u8 = 0x7;
const PROTOCOL_ERROR: u32 = 0x1;

/// The frames of an HTTP/2 byte stream: (type, payload).
pub fn frames(mut raw: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while raw.len() >= 9 {
        let length = usize::from(raw[0]) << 16 | usize::from(raw[1]) << 8 | usize::from(raw[2]);
        let Some(payload) = raw.get(9..9 + length) else {
            break;
        };
        frames.push((raw[3], payload.to_vec()));
        raw = &raw[9 + length..];
    }
    frames
}

/// Sends `bytes` on `stream` and asserts the server answers with GOAWAY(PROTOCOL_ERROR) and
/// closes within 5 s.
pub async fn expect_goaway<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("write");
    stream.flush().await.expect("flush");
    let mut raw = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .is_ok();
    let frames = frames(&raw);
    let goaway = frames.iter().find(|(kind, _)| *kind == GOAWAY);
    let Some((_, payload)) = goaway else {
        panic!(
            "no GOAWAY (connection closed: {closed}); got frames {frames:?} from {:?}",
            String::from_utf8_lossy(&raw)
        );
    };
    assert!(closed, "the connection is closed after the GOAWAY");
    let code = payload
        .get(4..8)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    assert_eq!(code, Some(PROTOCOL_ERROR), "GOAWAY {payload:?}");
}
