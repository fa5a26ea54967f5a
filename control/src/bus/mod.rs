//! The event bus: dotted topics, wildcard subscriptions, priorities, broadcast and consumer
//! groups, durable subscriptions with acks, redelivery, dead letters and replay, and
//! per-topic history — behind one HTTP/SSE API and one [`Backend`] trait with two
//! implementations:
//!
//! - embedded (the default): everything in the control's redb database, one process
//!   (`embedded.rs`, with the pure state machine in `durable.rs`);
//! - NATS JetStream (`serve --bus nats://HOST:PORT`): topics are subjects, durable
//!   subscriptions are durable pull consumers, so any number of control replicas on the same
//!   server are one bus (`jetstream/`).
//!
//! ```text
//!  POST /v1/events/{topic} ─┐                 ┌─► embedded: writer thread + redb
//!  mesh events (EventSink) ─┼─► Bus ─► Backend┤
//!  GET /v1/subscribe (SSE) ─┘                 └─► jetstream: streams + consumers on NATS
//! ```

mod api;
mod backend;
pub mod cli;
mod client;
mod durable;
mod embedded;
mod error;
mod event;
mod jetstream;
mod live;
mod metrics;
mod openapi;
mod queue;
mod session;
mod sse;
mod store;
mod subscription;
#[cfg(test)]
mod tests;
mod topic;
mod writer;

use std::sync::Arc;

pub(crate) use backend::Backend;
pub(crate) use embedded::{lock, Shared};
pub use embedded::{MAX_DURABLE_SUBSCRIPTIONS, MAX_SUBSCRIBERS};
pub use error::BusError;
pub use event::{Event, Filters, NewEvent, Priority};

/// The event bus, on one of its backends. Open it with [`Bus::open`] (embedded) or
/// [`Bus::connect`] (NATS JetStream) inside the tokio runtime, then serve [`Bus::router`].
#[derive(Clone)]
pub struct Bus {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

impl Bus {
    /// The embedded bus on `db`: creates its tables, loads durable subscriptions with their
    /// backlogs and dead letters, and starts its redelivery timer (call inside the runtime).
    pub fn open(db: Arc<redb::Database>) -> Result<Arc<Bus>, BusError> {
        let embedded = embedded::Embedded::open(db)?;
        embedded.spawn_background();
        Ok(Arc::new(Bus { backend: embedded }))
    }

    /// The bus on the NATS JetStream server at `url` (`nats://HOST:PORT`): creates its streams
    /// if they do not exist; durable subscriptions live in the server.
    pub async fn connect(url: &str) -> Result<Arc<Bus>, BusError> {
        if !url.starts_with("nats://") {
            return Err(BusError::Nats {
                context: "connecting",
                message: format!("`{url}` is not a NATS URL: use nats://HOST:PORT"),
            });
        }
        let backend = jetstream::JetStream::connect(url).await?;
        Ok(Arc::new(Bus { backend }))
    }

    /// The bus on `backend`.
    #[cfg(test)]
    pub(crate) fn from_backend(backend: Arc<dyn Backend>) -> Bus {
        Bus { backend }
    }

    /// Publishes `event` to `topic` and returns it as stored, once durable.
    pub async fn publish_async(&self, topic: &str, event: NewEvent) -> Result<Event, BusError> {
        let stored = self.backend.publish(topic, event, 0).await?;
        Ok(stored.event.clone())
    }

    /// Publishes without waiting: a failure is only logged. For best-effort mesh events from
    /// code that must not wait.
    pub fn publish_nowait(&self, topic: &str, event: NewEvent) -> Result<(), BusError> {
        topic::validate_topic(topic)?;
        event.validate()?;
        self.backend.publish_detached(topic, event)
    }

    /// The last `limit` events of `topic`, oldest first.
    pub async fn history(&self, topic: &str, limit: usize) -> Result<Vec<Event>, BusError> {
        let stored = self.backend.history(topic, limit).await?;
        Ok(stored.iter().map(|s| s.event.clone()).collect())
    }

    /// The HTTP routes (JSON and Server-Sent Events); see [`Bus::openapi_paths`].
    pub fn router(self: Arc<Self>) -> axum::Router {
        api::router(self)
    }

    /// OpenAPI 3.0 `paths` entries for the routes of [`Bus::router`].
    pub fn openapi_paths() -> serde_json::Value {
        openapi::paths()
    }
}
