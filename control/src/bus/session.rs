//! One subscriber connection: registers a live subscriber or attaches a consumer to a durable
//! subscription, and turns what it receives into a Server-Sent Events body. Dropping the
//! session (the client went away) unregisters it; a durable consumer's unacknowledged
//! messages then go back to the backlog at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;

use super::backend::Feed;
use super::durable::{Delivery, Durable};
use super::embedded::{lock, Embedded, MAX_SUBSCRIBERS};
use super::error::BusError;
use super::event::{now_millis, Filters};
use super::live::Subscriber;
use super::metrics;
use super::sse::{frame, CHUNK_BYTES, CHUNK_EVENTS};
use super::topic::Pattern;
use super::writer::Op;

enum Source {
    Live(Arc<Subscriber>),
    Durable {
        durable: Arc<Durable>,
        consumer: u64,
    },
}

/// A subscriber connection.
pub(crate) struct Session {
    bus: Arc<Embedded>,
    source: Source,
    /// Set once the stream has said why it ends.
    ended: bool,
}

impl Embedded {
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
    /// The stream of this session's chunks: events, then a last comment saying why the
    /// stream ends.
    pub(crate) fn into_feed(self) -> Feed {
        futures_util::stream::unfold(self, |mut session| async move {
            let chunk = session.next_chunk().await?;
            Some((chunk, session))
        })
        .boxed()
    }

    /// The next chunk of the stream; `None` ends it.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        match self.next_events().await {
            Some(chunk) => Some(chunk),
            None => {
                self.ended = true;
                Some(Bytes::from_static(match self.source {
                    Source::Live(_) => {
                        b": disconnected: this subscriber fell too far behind (its queue is full)\n\n"
                    }
                    Source::Durable { .. } => b": disconnected: the subscription was deleted\n\n",
                }))
            }
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
