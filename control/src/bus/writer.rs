//! The single writer: one thread takes every state change (publishes, acks, delivery counts,
//! dead letters, subscription changes) from a channel and commits them in batches — group
//! commit: one fsync covers everything that arrived while the previous commit ran. Only after
//! its commit is a publish handed to subscribers and answered, so a 201 means "on disk".

use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::durable::{Durable, Outcome};
use super::error::BusError;
use super::event::{now_millis, rfc3339, Event, Filters, NewEvent, StoredEvent};
use super::lock;
use super::metrics;
use super::store::Batch;
use super::subscription::SubscriptionConfig;
use super::topic::Pattern;
use super::Shared;

/// Events kept per topic in the history.
pub(crate) const HISTORY_PER_TOPIC: usize = 100;
/// Most changes in one commit.
const MAX_BATCH_OPS: usize = 4096;
/// Most published bytes (as estimated by publishers) in one commit.
const MAX_BATCH_BYTES: usize = 32 << 20;

/// Where a caller waits for the outcome of its change.
pub(crate) enum Reply<T> {
    /// An async caller.
    Async(oneshot::Sender<Result<T, BusError>>),
    /// Nobody waits: a failure is logged.
    Detached,
}

impl<T> Reply<T> {
    fn send(self, result: Result<T, BusError>) {
        // The caller may have given up waiting (its request was cancelled): nothing to do.
        match self {
            Reply::Async(tx) => drop(tx.send(result)),
            Reply::Detached => {
                if let Err(error) = result {
                    tracing::warn!(%error, "event bus change not saved");
                }
            }
        }
    }
}

/// One change to durable state.
pub(crate) enum Op {
    /// A new event (topic and event already validated).
    Publish {
        topic: String,
        event: NewEvent,
        /// Rough size in bytes, to bound a batch.
        size_hint: usize,
        reply: Reply<Arc<StoredEvent>>,
    },
    /// Messages acknowledged (already removed in memory).
    Ack {
        subscription: String,
        ids: Vec<u64>,
        reply: Reply<()>,
    },
    /// Messages handed to a consumer: (id, deliveries so far). Not waited for.
    Delivered {
        subscription: String,
        deliveries: Vec<(u64, u32)>,
    },
    /// Messages dead-lettered by expiry. Not waited for.
    Settled {
        subscription: String,
        outcomes: Vec<Outcome>,
    },
    /// Dead letters moved back to the backlog (already done in memory).
    Replay {
        subscription: String,
        ids: Vec<u64>,
        reply: Reply<()>,
    },
    /// A subscription created or changed (already done in memory).
    PutSubscription {
        name: String,
        generation: u64,
        config: SubscriptionConfig,
        reply: Reply<()>,
    },
    /// A subscription deleted (already done in memory).
    DeleteSubscription { name: String, reply: Reply<()> },
}

impl Op {
    fn size_hint(&self) -> usize {
        match self {
            Op::Publish { size_hint, .. } => (*size_hint).max(256),
            _ => 64,
        }
    }

    /// Changes that may be lost in a crash without breaking a promise to a client: they are
    /// committed without fsync when a batch holds nothing else.
    fn is_advisory(&self) -> bool {
        matches!(self, Op::Delivered { .. })
    }
}

/// Which durable subscriptions an event goes to (the writer's own copy, kept in the order
/// of the changes it commits).
struct Route {
    generation: u64,
    pattern: Pattern,
    filters: Filters,
}

/// State the writer starts from.
pub(crate) struct WriterInit {
    pub next_id: u64,
    pub routes: Vec<(String, u64, SubscriptionConfig)>,
    pub history_counts: HashMap<String, usize>,
}

struct Writer {
    shared: Arc<Shared>,
    next_id: u64,
    routes: HashMap<String, Route>,
    history_counts: HashMap<String, usize>,
}

/// An event committed in this batch and the durable subscriptions (name, generation) it is for.
type Published = (Arc<StoredEvent>, Vec<(String, u64)>);

/// Starts the writer thread; it stops when every sender of `ops` is gone.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    init: WriterInit,
    ops: Receiver<Op>,
) -> std::io::Result<()> {
    let routes = init
        .routes
        .into_iter()
        .map(|(name, generation, config)| (name, Route::new(generation, &config)))
        .collect();
    let mut writer = Writer {
        shared,
        next_id: init.next_id,
        routes,
        history_counts: init.history_counts,
    };
    std::thread::Builder::new()
        .name("strait-bus-writer".into())
        .spawn(move || writer.run(&ops))
        .map(drop)
}

impl Route {
    fn new(generation: u64, config: &SubscriptionConfig) -> Self {
        Self {
            generation,
            pattern: config.pattern.clone(),
            filters: config.filters.clone(),
        }
    }
}

impl Writer {
    fn run(&mut self, ops: &Receiver<Op>) {
        while let Ok(first) = ops.recv() {
            let mut bytes = first.size_hint();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
                match ops.try_recv() {
                    Ok(op) => {
                        bytes += op.size_hint();
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        tracing::debug!("event bus writer stopped");
    }

    fn commit(&mut self, ops: Vec<Op>) {
        let mut published = Vec::new();
        let mut history_deltas = HashMap::new();
        match self.write(&ops, &mut published, &mut history_deltas) {
            Ok(()) => {
                for (topic, delta) in history_deltas {
                    let count = self.history_counts.entry(topic).or_default();
                    *count = count.saturating_add_signed(delta);
                }
                self.hand_out(&published);
                let mut published = published.into_iter().map(|(event, _)| event);
                for op in ops {
                    match op {
                        Op::Publish { reply, .. } => match published.next() {
                            Some(event) => reply.send(Ok(event)),
                            None => reply.send(Err(BusError::Closed)),
                        },
                        Op::Ack { reply, .. }
                        | Op::Replay { reply, .. }
                        | Op::PutSubscription { reply, .. }
                        | Op::DeleteSubscription { reply, .. } => reply.send(Ok(())),
                        Op::Delivered { .. } | Op::Settled { .. } => {}
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, changes = ops.len(), "event bus commit failed");
                let message = error.to_string();
                let failed = || BusError::BatchFailed(message.clone());
                for op in ops {
                    match op {
                        Op::Publish { reply, .. } => reply.send(Err(failed())),
                        Op::Ack { reply, .. }
                        | Op::Replay { reply, .. }
                        | Op::PutSubscription { reply, .. }
                        | Op::DeleteSubscription { reply, .. } => reply.send(Err(failed())),
                        Op::Delivered { .. } | Op::Settled { .. } => {}
                    }
                }
            }
        }
    }

    /// Writes and commits `ops` in one transaction.
    fn write(
        &mut self,
        ops: &[Op],
        published: &mut Vec<Published>,
        history_deltas: &mut HashMap<String, isize>,
    ) -> Result<(), BusError> {
        let mut txn = self.shared.store.begin_write()?;
        if ops.iter().all(Op::is_advisory) {
            txn.set_durability(redb::Durability::None);
        }
        {
            let mut batch = Batch::open(&txn)?;
            let first_id = self.next_id;
            for op in ops {
                self.apply(&mut batch, op, published, history_deltas)?;
            }
            if self.next_id != first_id {
                batch.set_next_id(self.next_id)?;
            }
        }
        txn.commit()
            .map_err(BusError::store("committing bus changes"))
    }

    fn apply(
        &mut self,
        batch: &mut Batch<'_>,
        op: &Op,
        published: &mut Vec<Published>,
        history_deltas: &mut HashMap<String, isize>,
    ) -> Result<(), BusError> {
        match op {
            Op::Publish { topic, event, .. } => {
                let id = self.next_id;
                self.next_id += 1;
                let stored = StoredEvent::new(Event {
                    id,
                    topic: topic.clone(),
                    priority: event.priority,
                    source: event.source.clone(),
                    metadata: event.metadata.clone(),
                    data: event.data.clone(),
                    published_at: rfc3339(now_millis()),
                })?;
                let targets: Vec<(String, u64)> = self
                    .routes
                    .iter()
                    .filter(|(_, r)| r.pattern.matches(topic) && r.filters.accepts(&stored.event))
                    .map(|(name, r)| (name.clone(), r.generation))
                    .collect();
                let names: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
                batch.publish(&stored, &names)?;
                let delta = history_deltas.entry(topic.clone()).or_default();
                *delta += 1;
                let count = self.history_counts.get(topic).copied().unwrap_or(0);
                if count.saturating_add_signed(*delta) > HISTORY_PER_TOPIC {
                    batch.trim_history(topic)?;
                    *delta -= 1;
                }
                published.push((stored, targets));
            }
            Op::Ack {
                subscription, ids, ..
            } => {
                for &id in ids {
                    batch.ack(subscription, id)?;
                }
            }
            Op::Delivered {
                subscription,
                deliveries,
            } => {
                for &(id, count) in deliveries {
                    batch.update(subscription, id, count, 0)?;
                }
            }
            Op::Settled {
                subscription,
                outcomes,
            } => {
                for outcome in outcomes {
                    if let Outcome::Dead { id, letter } = outcome {
                        batch.update(
                            subscription,
                            *id,
                            letter.deliveries,
                            letter.dead_at_ms.max(1),
                        )?;
                    }
                }
            }
            Op::Replay {
                subscription, ids, ..
            } => {
                for &id in ids {
                    batch.update(subscription, id, 0, 0)?;
                }
            }
            Op::PutSubscription {
                name,
                generation,
                config,
                ..
            } => {
                batch.put_subscription(name, &config.to_stored())?;
                self.routes
                    .insert(name.clone(), Route::new(*generation, config));
            }
            Op::DeleteSubscription { name, .. } => {
                batch.delete_subscription(name)?;
                self.routes.remove(name);
            }
        }
        Ok(())
    }

    /// Hands committed events to durable subscriptions and live subscribers, in id order.
    fn hand_out(&self, published: &[Published]) {
        if published.is_empty() {
            return;
        }
        let durables: HashMap<String, Arc<Durable>> = {
            let map = lock(&self.shared.durables);
            published
                .iter()
                .flat_map(|(_, targets)| targets)
                .filter_map(|(name, generation)| {
                    let durable = map.get(name).filter(|d| d.generation == *generation)?;
                    Some((name.clone(), durable.clone()))
                })
                .collect()
        };
        for (event, targets) in published {
            for (name, _) in targets {
                if let Some(durable) = durables.get(name) {
                    let e = &event.event;
                    lock(&durable.state).enqueue(e.id, e.priority, 0, Some(event.clone()));
                }
            }
            metrics::published(event.event.priority);
        }
        for durable in durables.values() {
            durable.notify.notify_waiters();
        }
        let mut live = lock(&self.shared.live);
        for (event, _) in published {
            live.dispatch(event);
        }
    }
}
