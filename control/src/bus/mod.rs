//! The durable event bus: dotted topics, wildcard subscriptions, priorities, broadcast and
//! consumer groups, durable subscriptions with acks, redelivery, dead letters and replay, and
//! per-topic history — all kept in the control's redb database.
//!
//! ```text
//!  POST /v1/events/{topic} ─┐                         ┌─► live subscribers (priority queues)
//!  Bus::publish ────────────┼─► writer thread ─commit─┼─► durable subscriptions (backlogs)
//!  acks, replays, settings ─┘   (group commit)        └─► answer 201 to the publisher
//!                                                          │
//!  GET /v1/subscribe (SSE) ◄── session: drains its queue or takes from its durable backlog
//!  background timer ──► requeues or dead-letters what was not acked by its deadline
//! ```
//!
//! Memory is the working copy; the store is the record. Every change a client is told about
//! was committed first: publishes are applied in memory only after their commit; other
//! changes are applied in memory first and their commit is awaited before answering, sent to
//! the writer under the same lock so the store sees them in the same order.

mod api;
pub mod cli;
mod client;
mod durable;
mod error;
mod event;
mod live;
mod metrics;
mod openapi;
mod queue;
mod session;
mod store;
mod subscription;
#[cfg(test)]
mod tests;
mod topic;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use error::BusError;
pub use event::{Event, Filters, NewEvent, Priority};

use durable::{BodyCache, DeadLetter, Durable, DurableState, Outcome, BODY_CACHE_BYTES};
use event::{now_millis, rfc3339, StoredEvent};
use live::Registry;
use store::Store;
use subscription::{validate_name, SubscriptionConfig};
use writer::{Op, Reply, WriterInit};

/// Most subscriber connections at once (live and durable).
pub const MAX_SUBSCRIBERS: usize = 10_000;
/// Most durable subscriptions.
pub const MAX_DURABLE_SUBSCRIPTIONS: usize = 1_000;
/// How often unacknowledged deliveries are checked against their deadline.
const EXPIRY_TICK: Duration = Duration::from_millis(50);

/// Locks a mutex, carrying on if a panicking holder poisoned it: every critical section
/// leaves its data consistent before anything that could panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the writer thread shares with the rest of the bus.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Store,
    live: Mutex<Registry>,
    durables: Mutex<HashMap<String, Arc<Durable>>>,
    /// Memory for event bodies in durable backlogs.
    cache: Arc<BodyCache>,
}

/// The event bus. Create it with [`Bus::open`], serve [`Bus::router`], and call
/// [`Bus::spawn_background`] once inside the runtime.
#[derive(Debug)]
pub struct Bus {
    shared: Arc<Shared>,
    /// To the writer thread; dropping the bus stops it.
    ops: Sender<Op>,
    connections: AtomicUsize,
    next_consumer: AtomicU64,
    next_generation: AtomicU64,
}

impl Bus {
    /// Opens the bus on `db`, creating its tables, and loads the durable state: durable
    /// subscriptions with their backlogs and dead letters (what was in flight before a
    /// restart is in the backlog again), and the next event id.
    pub fn open(db: Arc<redb::Database>) -> Result<Arc<Bus>, BusError> {
        metrics::describe();
        let (store, loaded) = Store::open(db)?;
        let mut durables = HashMap::new();
        let mut routes = Vec::new();
        let mut generation = 0;
        let cache = BodyCache::new(BODY_CACHE_BYTES);
        for (name, stored) in loaded.subscriptions {
            let config = match SubscriptionConfig::from_stored(stored) {
                Ok(config) => config,
                Err(error) => {
                    tracing::warn!(subscription = %name, %error, "skipping a stored subscription");
                    continue;
                }
            };
            generation += 1;
            routes.push((name.clone(), generation, config.clone()));
            let durable = Durable::new(
                name.clone(),
                generation,
                DurableState::new(config, cache.clone()),
            );
            durables.insert(name, Arc::new(durable));
        }
        for m in loaded.messages {
            let Some(durable) = durables.get(&m.subscription) else {
                continue;
            };
            let mut state = lock(&durable.state);
            match m.dead_at_ms {
                Some(dead_at_ms) => state.insert_dead(
                    m.id,
                    DeadLetter {
                        priority: m.priority,
                        deliveries: m.deliveries,
                        dead_at_ms,
                    },
                ),
                None => state.enqueue(m.id, m.priority, m.deliveries, None),
            }
        }
        tracing::info!(
            subscriptions = durables.len(),
            next_id = loaded.next_id,
            "event bus loaded"
        );
        let shared = Arc::new(Shared {
            store,
            live: Mutex::default(),
            durables: Mutex::new(durables),
            cache,
        });
        let (ops, rx) = std::sync::mpsc::channel();
        let init = WriterInit {
            next_id: loaded.next_id,
            routes,
            history_counts: loaded.history_counts,
        };
        writer::spawn(shared.clone(), init, rx).map_err(BusError::Spawn)?;
        Ok(Arc::new(Bus {
            shared,
            ops,
            connections: AtomicUsize::new(0),
            next_consumer: AtomicU64::new(1),
            next_generation: AtomicU64::new(generation + 1),
        }))
    }

    /// Publishes `event` to `topic` (dotted, e.g. `mesh.config.applied`) and returns it as
    /// stored, once committed. Blocks the calling thread for the commit (a few milliseconds):
    /// from async code prefer [`Bus::publish_async`], for fire-and-forget
    /// [`Bus::publish_nowait`]. Never call it while holding a redb write transaction on the
    /// bus's database: the bus's writer would wait for that transaction, and it for the bus.
    pub fn publish(&self, topic: &str, event: NewEvent) -> Result<Event, BusError> {
        topic::validate_topic(topic)?;
        event.validate()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Op::Publish {
            topic: topic.to_owned(),
            event,
            size_hint: 0,
            reply: Reply::Blocking(tx),
        })?;
        let stored = rx.recv().map_err(|_| BusError::Closed)??;
        Ok(stored.event.clone())
    }

    /// Publishes without waiting: the event is committed with the writer's next batch and a
    /// failure is only logged. For best-effort mesh events from synchronous code that must
    /// not block (and must never be called while holding a redb write transaction on the
    /// same database, which [`Bus::publish`] would wait for forever).
    pub fn publish_nowait(&self, topic: &str, event: NewEvent) -> Result<(), BusError> {
        topic::validate_topic(topic)?;
        event.validate()?;
        self.send(Op::Publish {
            topic: topic.to_owned(),
            event,
            size_hint: 0,
            reply: Reply::Detached,
        })
    }

    /// [`Bus::publish`] without blocking a thread.
    pub async fn publish_async(&self, topic: &str, event: NewEvent) -> Result<Event, BusError> {
        let stored = self.publish_stored(topic, event, 0).await?;
        Ok(stored.event.clone())
    }

    pub(crate) async fn publish_stored(
        &self,
        topic: &str,
        event: NewEvent,
        size_hint: usize,
    ) -> Result<Arc<StoredEvent>, BusError> {
        topic::validate_topic(topic)?;
        event.validate()?;
        let (tx, rx) = oneshot::channel();
        self.send(Op::Publish {
            topic: topic.to_owned(),
            event,
            size_hint,
            reply: Reply::Async(tx),
        })?;
        rx.await.map_err(|_| BusError::Closed)?
    }

    /// The HTTP routes (JSON and Server-Sent Events); see [`Bus::openapi_paths`].
    pub fn router(self: Arc<Self>) -> axum::Router {
        api::router(self)
    }

    /// OpenAPI 3.0 `paths` entries for the routes of [`Bus::router`].
    pub fn openapi_paths() -> serde_json::Value {
        openapi::paths()
    }

    /// Starts the redelivery timer (call once, inside the tokio runtime). It stops when the
    /// bus is dropped.
    pub fn spawn_background(self: &Arc<Self>) {
        let bus = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(bus) = bus.upgrade() else {
                    return;
                };
                bus.expire_due();
            }
        });
    }

    fn send(&self, op: Op) -> Result<(), BusError> {
        self.ops.send(op).map_err(|_| BusError::Closed)
    }

    fn durable(&self, name: &str) -> Result<Arc<Durable>, BusError> {
        lock(&self.shared.durables)
            .get(name)
            .cloned()
            .ok_or_else(|| BusError::NoSubscription(name.to_owned()))
    }

    /// Requeues or dead-letters deliveries whose ack deadline has passed.
    fn expire_due(&self) {
        let durables: Vec<Arc<Durable>> = lock(&self.shared.durables).values().cloned().collect();
        let (now, now_ms) = (Instant::now(), now_millis());
        for durable in durables {
            let mut state = lock(&durable.state);
            let outcomes = state.expire(now, now_ms);
            self.settle(&durable, outcomes);
        }
    }

    /// Records expiry outcomes (call with the subscription's state locked).
    fn settle(&self, durable: &Durable, outcomes: Vec<Outcome>) {
        if outcomes.is_empty() {
            return;
        }
        let dead = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Dead { .. }))
            .count();
        if dead > 0 {
            metrics::dead(dead);
            tracing::info!(subscription = %durable.name, count = dead, "events dead-lettered");
            // Not awaited: at worst a crash forgets the move and the event is delivered once more.
            let _ = self.send(Op::Settled {
                subscription: durable.name.clone(),
                outcomes,
            });
        }
        durable.notify.notify_waiters();
    }

    /// Creates or changes durable subscription `name`; true when created.
    pub(crate) async fn put_subscription(
        &self,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<bool, BusError> {
        validate_name(name)?;
        let (tx, rx) = oneshot::channel();
        let created = {
            let mut map = lock(&self.shared.durables);
            let (created, generation) = match map.get(name) {
                Some(durable) => {
                    lock(&durable.state).config = config.clone();
                    durable.notify.notify_waiters();
                    (false, durable.generation)
                }
                None => {
                    if map.len() >= MAX_DURABLE_SUBSCRIPTIONS {
                        return Err(BusError::Overloaded(format!(
                            "there are already {MAX_DURABLE_SUBSCRIPTIONS} durable subscriptions; delete unused ones"
                        )));
                    }
                    let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                    let state = DurableState::new(config.clone(), self.shared.cache.clone());
                    let durable = Durable::new(name.to_owned(), generation, state);
                    map.insert(name.to_owned(), Arc::new(durable));
                    (true, generation)
                }
            };
            self.send(Op::PutSubscription {
                name: name.to_owned(),
                generation,
                config,
                reply: Reply::Async(tx),
            })?;
            created
        };
        rx.await.map_err(|_| BusError::Closed)??;
        if created {
            tracing::info!(subscription = name, "durable subscription created");
        }
        Ok(created)
    }

    /// Deletes durable subscription `name` with its backlog and dead letters.
    pub(crate) async fn delete_subscription(&self, name: &str) -> Result<(), BusError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut map = lock(&self.shared.durables);
            let durable = map
                .remove(name)
                .ok_or_else(|| BusError::NoSubscription(name.to_owned()))?;
            lock(&durable.state).deleted = true;
            durable.notify.notify_waiters();
            self.send(Op::DeleteSubscription {
                name: name.to_owned(),
                reply: Reply::Async(tx),
            })?;
        }
        rx.await.map_err(|_| BusError::Closed)??;
        tracing::info!(subscription = name, "durable subscription deleted");
        Ok(())
    }

    /// Acknowledges messages of `name`; returns how many were pending or in flight.
    pub(crate) async fn ack(&self, name: &str, ids: &[u64]) -> Result<usize, BusError> {
        let durable = self.durable(name)?;
        let (tx, rx) = oneshot::channel();
        let acked = {
            let mut state = lock(&durable.state);
            let acked = state.ack(ids);
            if acked.is_empty() {
                return Ok(0);
            }
            let n = acked.len();
            self.send(Op::Ack {
                subscription: durable.name.clone(),
                ids: acked,
                reply: Reply::Async(tx),
            })?;
            n
        };
        durable.notify.notify_waiters();
        rx.await.map_err(|_| BusError::Closed)??;
        Ok(acked)
    }

    /// Moves dead letters of `name` (the given ids, or all) back to its backlog.
    pub(crate) async fn replay(&self, name: &str, ids: Option<&[u64]>) -> Result<usize, BusError> {
        let durable = self.durable(name)?;
        let (tx, rx) = oneshot::channel();
        let replayed = {
            let mut state = lock(&durable.state);
            let replayed = state.replay(ids);
            if replayed.is_empty() {
                return Ok(0);
            }
            let n = replayed.len();
            self.send(Op::Replay {
                subscription: durable.name.clone(),
                ids: replayed,
                reply: Reply::Async(tx),
            })?;
            n
        };
        durable.notify.notify_waiters();
        rx.await.map_err(|_| BusError::Closed)??;
        tracing::info!(
            subscription = name,
            count = replayed,
            "dead letters replayed"
        );
        Ok(replayed)
    }

    /// The first `limit` dead letters of `name`, oldest event first, each the event with
    /// `deliveries` and `deadAt`.
    pub(crate) fn dead_letters(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, BusError> {
        let durable = self.durable(name)?;
        let letters: Vec<(u64, DeadLetter)> =
            lock(&durable.state).dead_letters().take(limit).collect();
        let ids: Vec<u64> = letters.iter().map(|(id, _)| *id).collect();
        let events = self.shared.store.events(&ids)?;
        let mut out = Vec::with_capacity(letters.len());
        for ((_, letter), event) in letters.into_iter().zip(events) {
            let Some(event) = event else { continue };
            let mut value = serde_json::to_value(&event.event)
                .map_err(BusError::encoding("encoding a dead letter"))?;
            if let Some(fields) = value.as_object_mut() {
                fields.insert("deliveries".into(), letter.deliveries.into());
                fields.insert("deadAt".into(), rfc3339(letter.dead_at_ms).into());
            }
            out.push(value);
        }
        Ok(out)
    }

    /// One durable subscription's settings and counts.
    pub(crate) fn subscription(&self, name: &str) -> Result<serde_json::Value, BusError> {
        let durable = self.durable(name)?;
        Ok(describe(&durable))
    }

    /// Every durable subscription's settings and counts, by name.
    pub(crate) fn subscriptions(&self) -> Vec<serde_json::Value> {
        let mut durables: Vec<Arc<Durable>> =
            lock(&self.shared.durables).values().cloned().collect();
        durables.sort_by(|a, b| a.name.cmp(&b.name));
        durables.iter().map(|d| describe(d)).collect()
    }

    /// The last `limit` events of `topic`, oldest first.
    pub(crate) fn history(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, BusError> {
        topic::validate_topic(topic)?;
        self.shared.store.history(topic, limit)
    }
}

fn describe(durable: &Durable) -> serde_json::Value {
    let state = lock(&durable.state);
    let mut value = state.config.to_json();
    if let Some(fields) = value.as_object_mut() {
        fields.insert("name".into(), durable.name.clone().into());
        fields.insert("backlog".into(), state.backlog_len().into());
        fields.insert("unacked".into(), state.unacked_len().into());
        fields.insert("dead".into(), state.dead_len().into());
        fields.insert("consumers".into(), state.consumers.into());
    }
    value
}
