//! Subscriber streams on JetStream.
//!
//! A live subscriber is a core NATS subscription (a queue subscription in a group) on what the
//! events stream republishes; its events go through the same bounded priority queue as on
//! the embedded bus. A durable consumer fetches from its subscription's consumers in drain
//! order (replays, then critical down to low), so higher priorities overtake a backlog; it
//! fetches again when an event is published on its pattern, when something was acked or
//! replayed, and every half ack deadline (for redeliveries; 50 ms to 1 s).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::AckKind;
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt as _, StreamExt as _};

use super::durable::{self, bury, settle};
use super::subjects::live_filter;
use super::{collect, decode, held, Held, JetStream};
use crate::bus::backend::Feed;
use crate::bus::embedded::MAX_SUBSCRIBERS;
use crate::bus::error::BusError;
use crate::bus::event::{Filters, StoredEvent};
use crate::bus::live::Subscriber;
use crate::bus::sse::{frame, CHUNK_BYTES, CHUNK_EVENTS};
use crate::bus::subscription::SubscriptionConfig;
use crate::bus::topic::Pattern;
use crate::bus::{lock, metrics};

/// Bounds on how often an idle durable consumer looks for redeliveries: half its ack
/// deadline, within these.
const POLL_MIN: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_secs(1);

/// Counts a subscriber connection against [`MAX_SUBSCRIBERS`]; released on drop.
struct Connection(Arc<JetStream>);

impl Connection {
    fn reserve(bus: &Arc<JetStream>) -> Result<Connection, BusError> {
        bus.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_SUBSCRIBERS).then_some(n + 1)
            })
            .map_err(|_| {
                BusError::Overloaded(format!(
                    "the bus already has {MAX_SUBSCRIBERS} subscriber connections"
                ))
            })?;
        Ok(Connection(bus.clone()))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A live subscriber's stream.
pub(super) async fn live(
    bus: &Arc<JetStream>,
    pattern: Pattern,
    group: Option<String>,
    filters: Filters,
) -> Result<Feed, BusError> {
    let connection = Connection::reserve(bus)?;
    let subject = live_filter(&pattern);
    let mut messages = match &group {
        Some(group) => bus.client.queue_subscribe(subject, group.clone()).await,
        None => bus.client.subscribe(subject).await,
    }
    .map_err(BusError::nats("subscribing"))?;
    // The subscription is in place at the server once it answered a ping sent after it.
    bus.client
        .flush()
        .await
        .map_err(BusError::nats("subscribing"))?;
    let id = bus.next_session.fetch_add(1, Ordering::Relaxed);
    let subscriber = Arc::new(Subscriber::new(id, pattern, group, filters));
    let inbox = subscriber.clone();
    // JetStream republishes a stored event with its stream sequence, the event's id.
    let pump = tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let sequence = message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))
                .and_then(|v| v.as_str().parse::<u64>().ok());
            let Some(sequence) = sequence else { continue };
            match decode(&message.payload, sequence) {
                Ok(event) => {
                    if !inbox.push(&event) {
                        return;
                    }
                }
                Err(error) => tracing::warn!(%error, "skipping an undecodable event"),
            }
        }
    });
    let state = LiveFeed {
        subscriber,
        pump,
        _connection: connection,
        ended: false,
    };
    Ok(futures_util::stream::unfold(state, |mut feed| async move {
        let chunk = feed.next_chunk().await?;
        Some((chunk, feed))
    })
    .boxed())
}

struct LiveFeed {
    subscriber: Arc<Subscriber>,
    pump: tokio::task::JoinHandle<()>,
    _connection: Connection,
    ended: bool,
}

impl LiveFeed {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        match self.subscriber.next(CHUNK_EVENTS, CHUNK_BYTES).await {
            Some(events) => {
                metrics::delivered(events.len());
                let mut chunk = BytesMut::new();
                for event in &events {
                    frame(&mut chunk, event, None);
                }
                Some(chunk.freeze())
            }
            None => {
                self.ended = true;
                Some(Bytes::from_static(
                    b": disconnected: this subscriber fell too far behind (its queue is full)\n\n",
                ))
            }
        }
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        // Dropping the NATS subscription with the task unsubscribes.
        self.pump.abort();
    }
}

/// A consumer of durable subscription `name`.
pub(super) async fn durable(bus: Arc<JetStream>, name: String) -> Result<Feed, BusError> {
    let config = durable::existing(&bus, &name).await?;
    let connection = Connection::reserve(&bus)?;
    let mut consumers = Vec::new();
    for (on_events, consumer) in durable::consumer_configs(&name, &config)? {
        let stream = if on_events { &bus.events } else { &bus.dead };
        let durable_name = consumer.durable_name.clone().unwrap_or_default();
        let consumer: PullConsumer = stream
            .get_consumer(&durable_name)
            .await
            .map_err(BusError::nats("attaching to a subscription"))?;
        consumers.push(consumer);
    }
    let wake = bus
        .client
        .subscribe(live_filter(&config.pattern))
        .await
        .map_err(BusError::nats("subscribing"))?;
    *lock(&bus.connected).entry(name.clone()).or_default() += 1;
    let session = bus.next_session.fetch_add(1, Ordering::Relaxed);
    let poll = (config.ack_deadline / 2).clamp(POLL_MIN, POLL_MAX);
    let state = DurableFeed {
        bus,
        name,
        session,
        poll,
        config,
        consumers,
        wake,
        ended: false,
        _connection: connection,
    };
    Ok(futures_util::stream::unfold(state, |mut feed| async move {
        let chunk = feed.next_chunk().await?;
        Some((chunk, feed))
    })
    .boxed())
}

/// Why a durable feed took nothing.
enum Took {
    Nothing,
    Gone,
}

struct DurableFeed {
    bus: Arc<JetStream>,
    name: String,
    session: u64,
    config: SubscriptionConfig,
    /// In drain order.
    consumers: Vec<PullConsumer>,
    /// Events published on the pattern: something new to fetch.
    wake: async_nats::Subscriber,
    /// How often to fetch when nothing else wakes it.
    poll: Duration,
    ended: bool,
    _connection: Connection,
}

impl DurableFeed {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        loop {
            let progress = self.bus.progress.notified();
            let mut progress = std::pin::pin!(progress);
            progress.as_mut().enable();
            match self.take().await {
                Ok(chunk) => return Some(chunk),
                Err(Took::Gone) => {
                    self.ended = true;
                    return Some(Bytes::from_static(
                        b": disconnected: the subscription was deleted\n\n",
                    ));
                }
                Err(Took::Nothing) => {}
            }
            tokio::select! {
                _ = progress => {}
                _ = self.wake.next() => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
            // One fetch for however many events were published meanwhile.
            while let Some(Some(_)) = self.wake.next().now_or_never() {}
        }
    }

    fn in_flight(&self) -> usize {
        held(&self.bus).get(&self.name).map_or(0, |held| {
            held.values().filter(|h| h.session == self.session).count()
        })
    }

    /// Fetches from the highest-priority consumer that has something and encodes it.
    async fn take(&self) -> Result<Bytes, Took> {
        let max_in_flight = usize::try_from(self.config.max_in_flight).unwrap_or(usize::MAX);
        let budget = max_in_flight.saturating_sub(self.in_flight());
        if budget == 0 {
            return Err(Took::Nothing);
        }
        for (index, consumer) in self.consumers.iter().enumerate() {
            let batch = consumer
                .fetch()
                .max_messages(budget.min(CHUNK_EVENTS))
                .messages()
                .await;
            let messages = match batch {
                Ok(batch) => collect(batch, "fetching").await,
                Err(e) => Err(BusError::nats("fetching")(e)),
            };
            let messages = match messages {
                Ok(messages) => messages,
                Err(error) => return Err(self.failed(error).await),
            };
            let replayed = index == 0;
            let mut chunk = BytesMut::new();
            let mut count = 0;
            for message in messages {
                if let Some(event) = self.accept(message, replayed).await {
                    frame(&mut chunk, &event.0, Some(event.1));
                    count += 1;
                }
            }
            if count > 0 {
                metrics::delivered(count);
                return Ok(chunk.freeze());
            }
        }
        Err(Took::Nothing)
    }

    /// After a failed fetch: gone if the subscription was deleted, else retried later.
    async fn failed(&self, error: BusError) -> Took {
        match durable::config(&self.bus, &self.name).await {
            Ok(None) => Took::Gone,
            _ => {
                tracing::warn!(subscription = %self.name, %error, "cannot fetch events");
                Took::Nothing
            }
        }
    }

    /// Holds `message` for its ack and returns it with its delivery count; dead-letters it
    /// instead once it was delivered too often, and acks events the filters refuse.
    async fn accept(
        &self,
        message: async_nats::jetstream::Message,
        replayed: bool,
    ) -> Option<(Arc<StoredEvent>, u32)> {
        let info = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(error) => {
                tracing::warn!(%error, "skipping a delivery without metadata");
                return None;
            }
        };
        let (sequence, delivered) = info;
        let event = if replayed {
            StoredEvent::decode(&message.payload)
        } else {
            decode(&message.payload, sequence)
        };
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(subscription = %self.name, %error, "dead-lettering an undecodable event");
                settle(&message, AckKind::Term).await;
                return None;
            }
        };
        if delivered > i64::from(self.config.max_deliveries) {
            match bury(&self.bus, &self.name, event.json.clone(), delivered - 1).await {
                Ok(()) => {
                    settle(&message, AckKind::Term).await;
                    metrics::dead(1);
                    tracing::info!(subscription = %self.name, id = event.event.id, "event dead-lettered");
                }
                // Left unacked: the server stops after `max_deliver` anyway.
                Err(error) => {
                    tracing::error!(subscription = %self.name, %error, "cannot dead-letter")
                }
            }
            return None;
        }
        if !self.config.filters.accepts(&event.event) {
            settle(&message, AckKind::Ack).await;
            return None;
        }
        held(&self.bus)
            .entry(self.name.clone())
            .or_default()
            .insert(
                event.event.id,
                Held {
                    session: self.session,
                    message,
                },
            );
        Some((event, u32::try_from(delivered).unwrap_or(u32::MAX)))
    }
}

impl Drop for DurableFeed {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.bus.connected).get_mut(&self.name) {
            *n = n.saturating_sub(1);
        }
        // What this consumer held goes back at once, as on the embedded bus.
        let released: Vec<Held> = {
            let mut held = held(&self.bus);
            let Some(held) = held.get_mut(&self.name) else {
                return;
            };
            let ids: Vec<u64> = held
                .iter()
                .filter(|(_, h)| h.session == self.session)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| held.remove(id)).collect()
        };
        if released.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let bus = self.bus.clone();
            runtime.spawn(async move {
                for held in released {
                    settle(&held.message, AckKind::Nak(None)).await;
                }
                bus.progress.notify_waiters();
            });
        }
    }
}
