//! HTTP/2's connection preface (RFC 9113 §3.4): the magic, then a SETTINGS frame. hyper's
//! server takes any frame after the magic, so the proxy checks both before handing a
//! connection to it, and answers anything else with SETTINGS + GOAWAY(PROTOCOL_ERROR).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The client preface's magic, which a SETTINGS frame must follow.
pub const MAGIC: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The length of an HTTP/2 frame's header.
pub const FRAME_HEADER: usize = 9;
/// An empty SETTINGS frame (the server's preface), then GOAWAY(last stream 0,
/// PROTOCOL_ERROR): the answer to a connection that starts HTTP/2's preface and breaks it.
pub const PROTOCOL_ERROR: &[u8] = &[
    0, 0, 0, 4, 0, 0, 0, 0, 0, // SETTINGS, empty
    0, 0, 8, 7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream id
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// What the first bytes of a connection say about HTTP/2.
#[derive(Debug, PartialEq, Eq)]
pub enum Preface {
    /// The magic, whole, and the header of a SETTINGS frame behind it.
    Http2,
    /// A beginning of it, the rest to come.
    Partial,
    /// A beginning of it, then something else (a frame other than SETTINGS among it).
    Broken,
    /// Not HTTP/2.
    None,
}

/// What `read`, a connection's first bytes, say about HTTP/2.
pub fn preface(read: &[u8]) -> Preface {
    // "PRI" is no method HTTP/1 knows: a connection that starts with it means HTTP/2.
    let n = read.len().min(MAGIC.len());
    if n < 4 && !read.starts_with(&MAGIC[..n]) || n >= 4 && !read.starts_with(b"PRI ") {
        return Preface::None;
    }
    if read[..n] != MAGIC[..n] {
        return Preface::Broken;
    }
    let Some(frame) = read
        .get(MAGIC.len()..MAGIC.len() + FRAME_HEADER)
        .filter(|frame| frame.len() == FRAME_HEADER)
    else {
        return Preface::Partial;
    };
    // Type SETTINGS (4), not an ACK, on stream 0, a whole number of settings (RFC 9113 §6.5).
    let length = u32::from_be_bytes([0, frame[0], frame[1], frame[2]]);
    let settings =
        frame[3] == 4 && frame[4] & 1 == 0 && frame[5..9] == [0, 0, 0, 0] && length % 6 == 0;
    if settings {
        Preface::Http2
    } else {
        Preface::Broken
    }
}

/// Reads the first bytes of a connection whose TLS handshake chose `h2` until they show the
/// preface: those bytes, to be served first. `None` when they show something else (answered
/// with [`PROTOCOL_ERROR`]), or the connection ends or takes longer than `timeout`.
pub async fn read<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Option<BytesMut> {
    let mut read = BytesMut::with_capacity(MAGIC.len() + 2 * FRAME_HEADER);
    let seen = async {
        loop {
            match preface(&read) {
                Preface::Partial => {}
                seen => return Some(seen),
            }
            if let Ok(0) | Err(_) = stream.read_buf(&mut read).await {
                return None;
            }
        }
    };
    match tokio::time::timeout(timeout, seen).await {
        Ok(Some(Preface::Http2)) => Some(read),
        Ok(Some(_)) => {
            let _ = stream.write_all(PROTOCOL_ERROR).await;
            let _ = stream.shutdown().await;
            None
        }
        Ok(None) | Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_counts_only_with_settings_behind_it() {
        assert_eq!(preface(b"GET / HTTP/1.1\r\n"), Preface::None);
        assert_eq!(preface(b""), Preface::Partial);
        assert_eq!(preface(b"PR"), Preface::Partial);
        assert_eq!(preface(b"PRI * HTTP/2.0\r\n\r\nXX"), Preface::Broken);
        assert_eq!(preface(MAGIC), Preface::Partial);
        let settings = [MAGIC, &[0, 0, 6, 4, 0, 0, 0, 0, 0]].concat();
        assert_eq!(preface(&settings[..30]), Preface::Partial);
        let frames: [([u8; FRAME_HEADER], Preface); 6] = [
            ([0, 0, 6, 4, 0, 0, 0, 0, 0], Preface::Http2),
            ([0, 0, 0, 4, 0, 0, 0, 0, 0], Preface::Http2),
            // PING, a SETTINGS ACK, SETTINGS on a stream, a settings list cut short.
            ([0, 0, 8, 6, 0, 0, 0, 0, 0], Preface::Broken),
            ([0, 0, 0, 4, 1, 0, 0, 0, 0], Preface::Broken),
            ([0, 0, 6, 4, 0, 0, 0, 0, 1], Preface::Broken),
            ([0, 0, 5, 4, 0, 0, 0, 0, 0], Preface::Broken),
        ];
        for (frame, expected) in frames {
            assert_eq!(preface(&[MAGIC, &frame].concat()), expected, "{frame:?}");
        }
    }

    #[tokio::test]
    async fn read_hands_on_the_preface_and_answers_anything_else() {
        let good = [MAGIC, &[0, 0, 0, 4, 0, 0, 0, 0, 0], b"more"].concat();
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&good).await.unwrap();
        let read = read(&mut server, Duration::from_secs(5)).await;
        assert_eq!(read.as_deref(), Some(&good[..]));

        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(super::read(&mut server, Duration::from_secs(5))
            .await
            .is_none());
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, PROTOCOL_ERROR);
    }
}
