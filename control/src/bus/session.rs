//! One subscriber connection: registers a live subscriber or attaches a consumer to a durable
//! subscription, and turns what it receives into a Server-Sent Events body. Dropping the
//! session (the client went away) unregisters it; a durable consumer's unacknowledged
//! messages then go back to the backlog at once.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http::header;

use super::durable::{Delivery, Durable};
use super::error::BusError;
use super::event::{now_millis, Filters, StoredEvent};
use super::live::Subscriber;
use super::topic::Pattern;
use super::{lock, metrics, Bus, Op, MAX_SUBSCRIBERS};

/// A comment sent when nothing else was for this long, so proxies keep the stream open and
/// dead clients are noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most events written in one chunk.
const CHUNK_EVENTS: usize = 64;
/// Chunks stop growing past this many bytes.
const CHUNK_BYTES: usize = 256 << 10;

enum Source {
    Live(Arc<Subscriber>),
    Durable {
        durable: Arc<Durable>,
        consumer: u64,
    },
}

/// A subscriber connection.
pub(crate) struct Session {
    bus: Arc<Bus>,
    source: Source,
    /// Set once the stream has said why it ends.
    ended: bool,
}

impl Bus {
    fn reserve_connection(&self) -> Result<(), BusError> {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_SUBSCRIBERS).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| {
                BusError::Overloaded(format!(
                    "the bus already has {MAX_SUBSCRIBERS} subscriber connections"
                ))
            })
    }

    /// Registers a live subscriber: every matching event (broadcast), or a share of them when
    /// in `group`.
    pub(crate) fn attach_live(
        self: &Arc<Self>,
        pattern: Pattern,
        group: Option<String>,
        filters: Filters,
    ) -> Result<Session, BusError> {
        self.reserve_connection()?;
        let id = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Subscriber::new(id, pattern, group, filters));
        lock(&self.shared.live).add(sub.clone());
        Ok(Session {
            bus: self.clone(),
            source: Source::Live(sub),
            ended: false,
        })
    }

    /// Attaches a consumer to durable subscription `durable`.
    pub(crate) fn attach_durable(
        self: &Arc<Self>,
        durable: Arc<Durable>,
    ) -> Result<Session, BusError> {
        self.reserve_connection()?;
        let consumer = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        lock(&durable.state).consumers += 1;
        Ok(Session {
            bus: self.clone(),
            source: Source::Durable { durable, consumer },
            ended: false,
        })
    }

    /// Hands the next messages of `durable` to `consumer`; `None` once it is deleted.
    fn take(&self, durable: &Durable, consumer: u64) -> Option<Vec<Delivery>> {
        let mut state = lock(&durable.state);
        if state.deleted {
            return None;
        }
        let taken = state.take(Instant::now(), consumer, CHUNK_EVENTS);
        if !taken.is_empty() {
            // Not awaited: a crash may forget one delivery count, never a message.
            let _ = self.send(Op::Delivered {
                subscription: durable.name.clone(),
                deliveries: taken.iter().map(|d| (d.id, d.deliveries)).collect(),
            });
        }
        Some(taken)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.bus.connections.fetch_sub(1, Ordering::AcqRel);
        match &self.source {
            Source::Live(sub) => lock(&self.bus.shared.live).remove(sub),
            Source::Durable { durable, consumer } => {
                let mut state = lock(&durable.state);
                state.consumers = state.consumers.saturating_sub(1);
                let outcomes = state.release(*consumer, now_millis());
                self.bus.settle(durable, outcomes);
            }
        }
    }
}

impl Session {
    /// The next chunk of the stream: events, a keep-alive comment, or a last comment saying
    /// why the stream ends; `None` ends it.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        match tokio::time::timeout(KEEP_ALIVE, self.next_events()).await {
            Ok(Some(chunk)) => Some(chunk),
            Ok(None) => {
                self.ended = true;
                Some(Bytes::from_static(match self.source {
                    Source::Live(_) => {
                        b": disconnected: this subscriber fell too far behind (its queue is full)\n\n"
                    }
                    Source::Durable { .. } => b": disconnected: the subscription was deleted\n\n",
                }))
            }
            Err(_) => Some(Bytes::from_static(b": keep-alive\n\n")),
        }
    }

    /// Waits for events and encodes them. Cancel-safe: nothing is taken before it is returned.
    async fn next_events(&self) -> Option<Bytes> {
        match &self.source {
            Source::Live(sub) => {
                let events = sub.next(CHUNK_EVENTS, CHUNK_BYTES).await?;
                metrics::delivered(events.len());
                let mut chunk = BytesMut::new();
                for event in &events {
                    frame(&mut chunk, event, None);
                }
                Some(chunk.freeze())
            }
            Source::Durable { durable, consumer } => loop {
                let notified = durable.notify.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                let taken = self.bus.take(durable, *consumer)?;
                if !taken.is_empty() {
                    if let Some(chunk) = self.encode_durable(durable, taken).await {
                        return Some(chunk);
                    }
                    continue;
                }
                notified.await;
            },
        }
    }

    /// Encodes deliveries, reading bodies that are not cached from the store.
    async fn encode_durable(&self, durable: &Durable, taken: Vec<Delivery>) -> Option<Bytes> {
        let missing: Vec<u64> = taken
            .iter()
            .filter(|d| d.body.is_none())
            .map(|d| d.id)
            .collect();
        let mut loaded = if missing.is_empty() {
            Vec::new()
        } else {
            let shared = self.bus.shared.clone();
            let read = tokio::task::spawn_blocking(move || shared.store.events(&missing)).await;
            match read.unwrap_or(Err(BusError::Closed)) {
                Ok(events) => events,
                Err(error) => {
                    // They stay in flight and are redelivered after the ack deadline.
                    tracing::error!(subscription = %durable.name, %error, "cannot read events to deliver");
                    Vec::new()
                }
            }
        }
        .into_iter();
        let mut chunk = BytesMut::new();
        let mut count = 0;
        for delivery in taken {
            let body = match delivery.body {
                Some(body) => Some(body),
                None => loaded.next().flatten(),
            };
            if let Some(body) = body {
                frame(&mut chunk, &body, Some(delivery.deliveries));
                count += 1;
            }
        }
        metrics::delivered(count);
        (count > 0).then(|| chunk.freeze())
    }
}

/// Appends one SSE message: `id:` the event id, `data:` the event JSON (with `deliveries`
/// first for durable subscriptions). Compact JSON has no newline, so one `data:` line.
fn frame(out: &mut BytesMut, event: &StoredEvent, deliveries: Option<u32>) {
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
pub(crate) fn response(session: Session) -> Response {
    use futures_util::StreamExt as _;
    let hello = futures_util::stream::once(async {
        Ok::<_, Infallible>(Bytes::from_static(b": subscribed\n\n"))
    });
    let events = futures_util::stream::unfold(session, |mut session| async move {
        let chunk = session.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), session))
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
