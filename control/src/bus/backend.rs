//! The seam between the bus's HTTP API and where events live: one trait, implemented by the
//! embedded bus and by NATS JetStream. Arguments are validated before they get here.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::error::BusError;
use super::event::{Filters, NewEvent, StoredEvent};
use super::subscription::SubscriptionConfig;
use super::topic::Pattern;

/// A subscriber's stream: chunks of Server-Sent Events (`id:`/`data:` messages, comments);
/// it ends when the subscription does (cut off, deleted).
pub(crate) type Feed = BoxStream<'static, Bytes>;

/// What a subscriber asks for.
#[derive(Debug)]
pub(crate) enum Subscribe {
    /// Connection-bound: every matching event (broadcast), or a share when in `group`.
    Live {
        pattern: Pattern,
        group: Option<String>,
        filters: Filters,
    },
    /// A consumer of durable subscription `name` (which exists).
    Durable { name: String },
}

/// Where the bus keeps events and subscriptions.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// Publishes `event` to `topic`; answers once it is durable. `size_hint` is the size of
    /// the request body, if known.
    async fn publish(
        &self,
        topic: &str,
        event: NewEvent,
        size_hint: usize,
    ) -> Result<Arc<StoredEvent>, BusError>;

    /// Publishes `events` (validated already) to `topic` in order, as one batch: the embedded
    /// bus commits them together, JetStream awaits their acks together. Answers once all are
    /// durable; on a failure, events before the failed one may be stored.
    async fn publish_batch(
        &self,
        topic: &str,
        events: Vec<NewEvent>,
        size_hint: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, BusError>;

    /// Publishes without waiting for the outcome (logged on failure).
    fn publish_detached(&self, topic: &str, event: NewEvent) -> Result<(), BusError>;

    /// The last `limit` events of `topic`, oldest first.
    async fn history(&self, topic: &str, limit: usize) -> Result<Vec<Arc<StoredEvent>>, BusError>;

    /// Opens a subscriber's stream.
    async fn subscribe(self: Arc<Self>, request: Subscribe) -> Result<Feed, BusError>;

    /// The settings of durable subscription `name`, if it exists.
    async fn subscription_config(&self, name: &str)
        -> Result<Option<SubscriptionConfig>, BusError>;

    /// Creates or changes durable subscription `name`; true when created.
    async fn put_subscription(
        &self,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<bool, BusError>;

    /// Deletes durable subscription `name` with its backlog and dead letters.
    async fn delete_subscription(&self, name: &str) -> Result<(), BusError>;

    /// Acknowledges events of `name`; returns how many were delivered and not yet acked.
    async fn ack(&self, name: &str, ids: &[u64]) -> Result<usize, BusError>;

    /// Moves dead letters of `name` (the given ids, or all) back to be delivered.
    async fn replay(&self, name: &str, ids: Option<&[u64]>) -> Result<usize, BusError>;

    /// The first `limit` dead letters of `name`, each the event with `deliveries` and `deadAt`.
    async fn dead_letters(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, BusError>;

    /// One durable subscription's settings and counts (`backlog`, `unacked`, `dead`,
    /// `consumers`).
    async fn subscription(&self, name: &str) -> Result<serde_json::Value, BusError>;

    /// Every durable subscription's settings and counts, by name.
    async fn subscriptions(&self) -> Result<Vec<serde_json::Value>, BusError>;
}
