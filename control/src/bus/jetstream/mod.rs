//! The NATS JetStream backend: the bus's events and durable subscriptions live in a NATS
//! server, so every control replica connected to it is one bus. Subjects, streams and
//! consumers are named in [`subjects`]; this module holds the connection and publishing.
//!
//! Guarantees, and where they differ from the embedded bus:
//! - a publish is answered once the server stored the event (at least once: a retry after a
//!   lost answer may store it twice); the event id is the stream sequence;
//! - live subscribers get what the stream republishes, at most once; consumer groups are NATS
//!   queue groups (random member, not round-robin);
//! - durable subscriptions are durable pull consumers, shared by every replica; a delivery
//!   not acked within `ackDeadline` (the consumer's `ack_wait`) is redelivered; one that is
//!   still unacked after `maxDeliveries` is copied to the dead-letter stream, then terminated
//!   (the consumer's `max_deliver` is one more, so the server stops even if that copy fails);
//! - `maxInFlight` bounds each consumer's `max_ack_pending` and each connection.

mod durable;
mod feed;
mod subjects;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::Notify;

use super::backend::{Backend, Feed, Subscribe};
use super::error::BusError;
use super::event::{now_millis, rfc3339, Event, NewEvent, StoredEvent};
use super::subscription::SubscriptionConfig;
use super::{lock, metrics, topic};
use subjects::{
    event_subject, topic_filter, DEAD_STREAM, DEAD_SUBJECTS, EVENTS_STREAM, EVENTS_SUBJECTS,
    LIVE_SUBJECTS,
};

/// How long published events are kept (history, and the backlog of durable subscriptions).
const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most bytes of events kept; the oldest go first.
const EVENTS_MAX_BYTES: i64 = 1 << 30;
/// How long dead letters are kept.
const DEAD_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most events read per request when scanning (history, dead letters).
const SCAN_BATCH: usize = 1000;
/// Connecting, and each request to the server, give up after this long.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A delivery this replica holds until it is acked.
struct Held {
    /// The connection it went to.
    session: u64,
    message: jetstream::Message,
}

/// The bus on a NATS JetStream server.
pub(crate) struct JetStream {
    client: async_nats::Client,
    js: jetstream::Context,
    events: stream::Stream,
    dead: stream::Stream,
    /// Deliveries held by this replica's consumers, by subscription then event id.
    held: Mutex<HashMap<String, HashMap<u64, Held>>>,
    /// Consumer connections on this replica, by subscription.
    connected: Mutex<HashMap<String, usize>>,
    /// Woken when deliveries are acked, replayed or released: consumers may take more.
    progress: Notify,
    /// Tells this replica's forwarded acks from others'.
    replica: u64,
    next_session: AtomicU64,
    connections: AtomicUsize,
}

impl JetStream {
    /// Connects to `url` and creates the bus's streams if they do not exist.
    pub(crate) async fn connect(url: &str) -> Result<Arc<JetStream>, BusError> {
        metrics::describe();
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(TIMEOUT)
            .request_timeout(Some(TIMEOUT))
            .connect(url)
            .await
            .map_err(BusError::nats("connecting"))?;
        let js = jetstream::new(client.clone());
        let events = js
            .get_or_create_stream(stream::Config {
                name: EVENTS_STREAM.into(),
                description: Some("Strait event bus: published events".into()),
                subjects: vec![EVENTS_SUBJECTS.into()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::Old,
                max_age: EVENTS_MAX_AGE,
                max_bytes: EVENTS_MAX_BYTES,
                republish: Some(stream::Republish {
                    source: EVENTS_SUBJECTS.into(),
                    destination: LIVE_SUBJECTS.into(),
                    headers_only: false,
                }),
                ..Default::default()
            })
            .await
            .map_err(BusError::nats("creating the events stream"))?;
        let dead = js
            .get_or_create_stream(stream::Config {
                name: DEAD_STREAM.into(),
                description: Some("Strait event bus: dead letters and their replays".into()),
                subjects: DEAD_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                max_age: DEAD_MAX_AGE,
                ..Default::default()
            })
            .await
            .map_err(BusError::nats("creating the dead-letter stream"))?;
        let bus = Arc::new(JetStream {
            client,
            js,
            events,
            dead,
            held: Mutex::default(),
            connected: Mutex::default(),
            progress: Notify::new(),
            replica: fastrand::u64(..),
            next_session: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
        });
        durable::serve_forwarded_acks(Arc::downgrade(&bus)).await?;
        tracing::info!(server = url, "event bus on NATS JetStream");
        Ok(bus)
    }

    /// Stores `event` on `topic`; answers once the server has it.
    async fn publish_event(
        js: &jetstream::Context,
        topic: &str,
        event: NewEvent,
    ) -> Result<Arc<StoredEvent>, BusError> {
        let (event, ack) = Self::send_event(js, topic, event).await?;
        Self::stored(event, ack).await
    }

    /// Sends `event` to the server; its ack is awaited with [`JetStream::stored`].
    async fn send_event(
        js: &jetstream::Context,
        topic: &str,
        event: NewEvent,
    ) -> Result<(Event, jetstream::context::PublishAckFuture), BusError> {
        topic::validate_topic(topic)?;
        event.validate()?;
        let event = Event {
            id: 0,
            topic: topic.to_owned(),
            priority: event.priority,
            source: event.source,
            metadata: event.metadata,
            data: event.data,
            published_at: rfc3339(now_millis()),
        };
        let payload =
            serde_json::to_vec(&event).map_err(BusError::encoding("encoding an event"))?;
        let ack = js
            .publish(event_subject(event.priority, topic), Bytes::from(payload))
            .await
            .map_err(BusError::nats("publishing"))?;
        Ok((event, ack))
    }

    /// `event` once the server acked it, with the id it was given.
    async fn stored(
        mut event: Event,
        ack: jetstream::context::PublishAckFuture,
    ) -> Result<Arc<StoredEvent>, BusError> {
        let ack = ack.await.map_err(BusError::nats("publishing"))?;
        metrics::published(event.priority);
        event.id = ack.sequence;
        StoredEvent::new(event)
    }
}

/// An event as stored in the events stream (without its id) with the id it was given.
fn decode(payload: &[u8], id: u64) -> Result<Arc<StoredEvent>, BusError> {
    let mut event: Event =
        serde_json::from_slice(payload).map_err(BusError::encoding("decoding an event"))?;
    event.id = id;
    StoredEvent::new(event)
}

#[async_trait]
impl Backend for JetStream {
    async fn publish(
        &self,
        topic: &str,
        event: NewEvent,
        _size_hint: usize,
    ) -> Result<Arc<StoredEvent>, BusError> {
        JetStream::publish_event(&self.js, topic, event).await
    }

    async fn publish_batch(
        &self,
        topic: &str,
        events: Vec<NewEvent>,
        _size_hint: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, BusError> {
        // Pipelined: every event is sent before the first ack is awaited.
        let mut sent = Vec::with_capacity(events.len());
        for event in events {
            sent.push(JetStream::send_event(&self.js, topic, event).await?);
        }
        let mut stored = Vec::with_capacity(sent.len());
        for (event, ack) in sent {
            stored.push(JetStream::stored(event, ack).await?);
        }
        Ok(stored)
    }

    fn publish_detached(&self, topic: &str, event: NewEvent) -> Result<(), BusError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BusError::Closed)?;
        let (js, topic) = (self.js.clone(), topic.to_owned());
        runtime.spawn(async move {
            if let Err(error) = JetStream::publish_event(&js, &topic, event).await {
                tracing::warn!(topic, %error, "cannot publish mesh event");
            }
        });
        Ok(())
    }

    async fn history(&self, topic: &str, limit: usize) -> Result<Vec<Arc<StoredEvent>>, BusError> {
        topic::validate_topic(topic)?;
        let mut last = VecDeque::with_capacity(limit.min(SCAN_BATCH));
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The stream keeps every event of the topic (within its limits): read them through a
        // short-lived consumer and keep the last `limit`.
        let mut scan = durable::Scan::open(&self.events, topic_filter(topic)).await?;
        while let Some(batch) = scan.next_batch().await? {
            for message in batch {
                let id = message.info().map_err(BusError::nats("reading history"))?;
                let id = id.stream_sequence;
                last.push_back(decode(&message.payload, id)?);
                if last.len() > limit {
                    last.pop_front();
                }
            }
        }
        scan.close().await;
        Ok(last.into())
    }

    async fn subscribe(self: Arc<Self>, request: Subscribe) -> Result<Feed, BusError> {
        match request {
            Subscribe::Live {
                pattern,
                group,
                filters,
            } => feed::live(&self, pattern, group, filters).await,
            Subscribe::Durable { name } => feed::durable(self, name).await,
        }
    }

    async fn subscription_config(
        &self,
        name: &str,
    ) -> Result<Option<SubscriptionConfig>, BusError> {
        durable::config(self, name).await
    }

    async fn put_subscription(
        &self,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<bool, BusError> {
        durable::put(self, name, config).await
    }

    async fn delete_subscription(&self, name: &str) -> Result<(), BusError> {
        durable::delete(self, name).await
    }

    async fn ack(&self, name: &str, ids: &[u64]) -> Result<usize, BusError> {
        durable::ack(self, name, ids).await
    }

    async fn replay(&self, name: &str, ids: Option<&[u64]>) -> Result<usize, BusError> {
        durable::replay(self, name, ids).await
    }

    async fn dead_letters(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, BusError> {
        durable::dead_letters(self, name, limit).await
    }

    async fn subscription(&self, name: &str) -> Result<serde_json::Value, BusError> {
        durable::describe(self, name).await
    }

    async fn subscriptions(&self) -> Result<Vec<serde_json::Value>, BusError> {
        durable::describe_all(self).await
    }
}

/// A pull consumer on `filter_subject`, otherwise with the library's defaults.
fn pull_config(filter_subject: String) -> consumer::pull::Config {
    consumer::pull::Config {
        filter_subject,
        ..Default::default()
    }
}

/// Reads a fetched batch to its end (the client consumes the server's status messages).
async fn collect(
    mut batch: consumer::pull::Batch,
    context: &'static str,
) -> Result<Vec<jetstream::Message>, BusError> {
    let mut out = Vec::new();
    while let Some(message) = batch.next().await {
        out.push(message.map_err(BusError::nats(context))?);
    }
    Ok(out)
}

impl std::fmt::Debug for JetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStream")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// Locks the held deliveries.
fn held(bus: &JetStream) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, Held>>> {
    lock(&bus.held)
}
