//! The embedded backend: everything in the control's redb database, one process.
//!
//! ```text
//!  POST /v1/events/{topic} ─┐                         ┌─► live subscribers (priority queues)
//!  Bus::publish_nowait ─────┼─► writer thread ─commit─┼─► durable subscriptions (backlogs)
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::backend::{Backend, Feed, Subscribe};
use super::error::BusError;
use super::event::NewEvent;

use super::durable::{BodyCache, DeadLetter, Durable, DurableState, Outcome, BODY_CACHE_BYTES};
use super::event::{now_millis, rfc3339, StoredEvent};
use super::live::Registry;
use super::store::Store;
use super::subscription::{validate_name, SubscriptionConfig};
use super::writer::{Op, Reply, WriterInit};

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
    pub(crate) store: Store,
    pub(crate) live: Mutex<Registry>,
    pub(crate) durables: Mutex<HashMap<String, Arc<Durable>>>,
    /// Memory for event bodies in durable backlogs.
    pub(crate) cache: Arc<BodyCache>,
}

/// The embedded event bus, kept in the control's redb database. Create it with
/// [`Embedded::open`] and call [`Embedded::spawn_background`] once inside the runtime.
#[derive(Debug)]
pub(crate) struct Embedded {
    pub(crate) shared: Arc<Shared>,
    /// To the writer thread; dropping the bus stops it.
    ops: Sender<Op>,
    pub(crate) connections: AtomicUsize,
    pub(crate) next_consumer: AtomicU64,
    next_generation: AtomicU64,
}

impl Embedded {
    /// Opens the bus on `db`, creating its tables, and loads the durable state: durable
    /// subscriptions with their backlogs and dead letters (what was in flight before a
    /// restart is in the backlog again), and the next event id.
    pub fn open(db: Arc<redb::Database>) -> Result<Arc<Embedded>, BusError> {
        super::metrics::describe();
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
        super::writer::spawn(shared.clone(), init, rx).map_err(BusError::Spawn)?;
        Ok(Arc::new(Embedded {
            shared,
            ops,
            connections: AtomicUsize::new(0),
            next_consumer: AtomicU64::new(1),
            next_generation: AtomicU64::new(generation + 1),
        }))
    }

    /// Publishes without waiting: the event is committed with the writer's next batch and a
    /// failure is only logged. For best-effort mesh events from synchronous code that must
    /// not block (and must never be called while holding a redb write transaction on the
    /// same database, which a publish would wait for forever).
    pub fn publish_nowait(&self, topic: &str, event: NewEvent) -> Result<(), BusError> {
        super::topic::validate_topic(topic)?;
        event.validate()?;
        self.send(Op::Publish {
            topic: topic.to_owned(),
            event,
            size_hint: 0,
            reply: Reply::Detached,
        })
    }

    /// Publishes `event` to `topic` and returns it once committed.
    #[cfg(test)]
    pub async fn publish_async(
        &self,
        topic: &str,
        event: NewEvent,
    ) -> Result<super::event::Event, BusError> {
        let stored = self.publish_stored(topic, event, 0).await?;
        Ok(stored.event.clone())
    }

    pub(crate) async fn publish_stored(
        &self,
        topic: &str,
        event: NewEvent,
        size_hint: usize,
    ) -> Result<Arc<StoredEvent>, BusError> {
        super::topic::validate_topic(topic)?;
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

    pub(crate) fn send(&self, op: Op) -> Result<(), BusError> {
        self.ops.send(op).map_err(|_| BusError::Closed)
    }

    pub(crate) fn durable(&self, name: &str) -> Result<Arc<Durable>, BusError> {
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
    pub(crate) fn settle(&self, durable: &Durable, outcomes: Vec<Outcome>) {
        if outcomes.is_empty() {
            return;
        }
        let dead = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Dead { .. }))
            .count();
        if dead > 0 {
            super::metrics::dead(dead);
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
    #[cfg(test)]
    pub(crate) fn history(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, BusError> {
        super::topic::validate_topic(topic)?;
        self.shared.store.history(topic, limit)
    }
}

/// The first `limit` dead letters of `durable`, oldest event first, each the event with
/// `deliveries` and `deadAt` (reads the store).
fn dead_letters(
    shared: &Shared,
    durable: &Durable,
    limit: usize,
) -> Result<Vec<serde_json::Value>, BusError> {
    let letters: Vec<(u64, DeadLetter)> = lock(&durable.state).dead_letters().take(limit).collect();
    let ids: Vec<u64> = letters.iter().map(|(id, _)| *id).collect();
    let events = shared.store.events(&ids)?;
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

#[async_trait]
impl Backend for Embedded {
    async fn publish(
        &self,
        topic: &str,
        event: NewEvent,
        size_hint: usize,
    ) -> Result<Arc<StoredEvent>, BusError> {
        self.publish_stored(topic, event, size_hint).await
    }

    async fn publish_batch(
        &self,
        topic: &str,
        events: Vec<NewEvent>,
        size_hint: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, BusError> {
        super::topic::validate_topic(topic)?;
        let each = size_hint / events.len().max(1);
        // Every publish is queued before any is awaited: the writer commits them together.
        let mut replies = Vec::with_capacity(events.len());
        for event in events {
            event.validate()?;
            let (tx, rx) = oneshot::channel();
            self.send(Op::Publish {
                topic: topic.to_owned(),
                event,
                size_hint: each,
                reply: Reply::Async(tx),
            })?;
            replies.push(rx);
        }
        let mut stored = Vec::with_capacity(replies.len());
        for reply in replies {
            stored.push(reply.await.map_err(|_| BusError::Closed)??);
        }
        Ok(stored)
    }

    fn publish_detached(&self, topic: &str, event: NewEvent) -> Result<(), BusError> {
        self.publish_nowait(topic, event)
    }

    async fn history(&self, topic: &str, limit: usize) -> Result<Vec<Arc<StoredEvent>>, BusError> {
        super::topic::validate_topic(topic)?;
        let store = self.shared.clone();
        let topic = topic.to_owned();
        // Off the async workers: a history can be 100 MiB. A join error means the read
        // panicked or the runtime is shutting down.
        tokio::task::spawn_blocking(move || store.store.history(&topic, limit))
            .await
            .unwrap_or(Err(BusError::Closed))
    }

    async fn subscribe(self: Arc<Self>, request: Subscribe) -> Result<Feed, BusError> {
        let session = match request {
            Subscribe::Live {
                pattern,
                group,
                filters,
            } => self.attach_live(pattern, group, filters)?,
            Subscribe::Durable { name } => {
                let durable = self.durable(&name)?;
                self.attach_durable(durable)?
            }
        };
        Ok(session.into_feed())
    }

    async fn subscription_config(
        &self,
        name: &str,
    ) -> Result<Option<SubscriptionConfig>, BusError> {
        Ok(lock(&self.shared.durables)
            .get(name)
            .map(|durable| lock(&durable.state).config.clone()))
    }

    async fn put_subscription(
        &self,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<bool, BusError> {
        Embedded::put_subscription(self, name, config).await
    }

    async fn delete_subscription(&self, name: &str) -> Result<(), BusError> {
        Embedded::delete_subscription(self, name).await
    }

    async fn ack(&self, name: &str, ids: &[u64]) -> Result<usize, BusError> {
        Embedded::ack(self, name, ids).await
    }

    async fn replay(&self, name: &str, ids: Option<&[u64]>) -> Result<usize, BusError> {
        Embedded::replay(self, name, ids).await
    }

    async fn dead_letters(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, BusError> {
        let (bus, name) = (self.shared.clone(), name.to_owned());
        let durable = self.durable(&name)?;
        tokio::task::spawn_blocking(move || dead_letters(&bus, &durable, limit))
            .await
            .unwrap_or(Err(BusError::Closed))
    }

    async fn subscription(&self, name: &str) -> Result<serde_json::Value, BusError> {
        Embedded::subscription(self, name)
    }

    async fn subscriptions(&self) -> Result<Vec<serde_json::Value>, BusError> {
        Ok(Embedded::subscriptions(self))
    }
}
