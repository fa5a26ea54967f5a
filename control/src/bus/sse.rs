//! Server-Sent Events framing shared by both backends: one message per event, chunks of
//! several, keep-alive comments.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt as _;
use http::header;

use super::backend::Feed;
use super::event::StoredEvent;

/// A comment sent when nothing else was for this long, so proxies keep the stream open and
/// dead clients are noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most events written in one chunk.
pub(crate) const CHUNK_EVENTS: usize = 64;
/// Chunks stop growing past this many bytes.
pub(crate) const CHUNK_BYTES: usize = 256 << 10;

/// Appends one SSE message: `id:` the event id, `data:` the event JSON (with `deliveries`
/// first for durable subscriptions). Compact JSON has no newline, so one `data:` line.
pub(crate) fn frame(out: &mut BytesMut, event: &StoredEvent, deliveries: Option<u32>) {
    out.put_slice(format!("id: {}\ndata: ", event.event.id).as_bytes());
    match deliveries {
        // The event JSON is an object with fields: splice `deliveries` in as the first.
        Some(n) if event.json.len() > 2 => {
            out.put_slice(format!("{{\"deliveries\":{n},").as_bytes());
            out.put_slice(&event.json[1..]);
        }
        _ => out.put_slice(&event.json),
    }
    out.put_slice(b"\n\n");
}

/// The `text/event-stream` response of a session; it starts with a `: subscribed` comment
/// so the client knows the subscription is in place.
pub(crate) fn response(feed: Feed) -> Response {
    let hello = futures_util::stream::once(async {
        Ok::<_, Infallible>(Bytes::from_static(b": subscribed\n\n"))
    });
    // Polling the feed again after a timeout resumes the same pending step: nothing is lost.
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        let chunk = match tokio::time::timeout(KEEP_ALIVE, feed.next()).await {
            Ok(chunk) => chunk?,
            Err(_) => Bytes::from_static(b": keep-alive\n\n"),
        };
        Some((Ok::<_, Infallible>(chunk), feed))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(hello.chain(events)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::event::{rfc3339, Event, Priority};

    #[test]
    fn frames_are_one_data_line_with_deliveries_spliced_in() {
        let event = StoredEvent::new(Event {
            id: 9,
            topic: "a.b".into(),
            priority: Priority::Low,
            source: None,
            metadata: Default::default(),
            data: serde_json::json!({"text": "two\nlines"}),
            published_at: rfc3339(0),
        })
        .expect("encode");
        let mut out = BytesMut::new();
        frame(&mut out, &event, None);
        frame(&mut out, &event, Some(3));
        let text = String::from_utf8(out.to_vec()).expect("utf-8");
        let messages: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(messages.len(), 2);
        for (message, deliveries) in messages.iter().zip([None, Some(3)]) {
            let lines: Vec<&str> = message.lines().collect();
            assert_eq!(lines[0], "id: 9");
            let json: serde_json::Value =
                serde_json::from_str(lines[1].strip_prefix("data: ").expect("data")).expect("json");
            assert_eq!(json["id"], 9);
            assert_eq!(json["data"]["text"], "two\nlines");
            assert_eq!(json.get("deliveries").and_then(|d| d.as_u64()), deliveries);
        }
    }
}
