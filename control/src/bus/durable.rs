//! The state machine of one durable subscription: backlog → in flight → acked, or back to the
//! backlog when the ack deadline passes, or dead-lettered after `maxDeliveries`; replay moves
//! dead letters back to the backlog. Pure: callers pass the time and persist the outcomes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::event::{Priority, StoredEvent};
use super::subscription::SubscriptionConfig;

/// Bytes of event bodies all durable backlogs keep in memory together (counted once per
/// subscription holding them); beyond that, bodies are read back from the store when
/// delivered.
pub(crate) const BODY_CACHE_BYTES: usize = 64 << 20;

/// The memory budget shared by the backlogs of all durable subscriptions.
#[derive(Debug)]
pub(crate) struct BodyCache {
    used: AtomicUsize,
    limit: usize,
}

impl BodyCache {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Takes `bytes` from the budget if they fit.
    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let total = used.checked_add(bytes)?;
                (total <= self.limit).then_some(total)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes in use.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// A durable subscription: its state and the consumers waiting on it.
#[derive(Debug)]
pub(crate) struct Durable {
    pub name: String,
    /// Distinguishes this subscription from an earlier one of the same name that was deleted.
    pub generation: u64,
    pub state: Mutex<DurableState>,
    /// Woken (all waiters) whenever something may have become deliverable.
    pub notify: Notify,
}

impl Durable {
    pub fn new(name: String, generation: u64, state: DurableState) -> Self {
        Self {
            name,
            generation,
            state: Mutex::new(state),
            notify: Notify::new(),
        }
    }
}

/// A message of the subscription (one event, by id).
#[derive(Debug)]
struct Message {
    priority: Priority,
    deliveries: u32,
    /// The event, when cached in memory.
    body: Option<Arc<StoredEvent>>,
}

#[derive(Debug)]
struct InFlight {
    message: Message,
    deadline: Instant,
    consumer: u64,
}

/// A dead-lettered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    pub priority: Priority,
    pub deliveries: u32,
    /// When it was dead-lettered (ms since the epoch).
    pub dead_at_ms: u64,
}

/// One message handed to a consumer.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub id: u64,
    /// Including this one.
    pub deliveries: u32,
    /// The event, unless it must be read from the store.
    pub body: Option<Arc<StoredEvent>>,
}

/// What happened to an unacknowledged message whose deadline passed or whose consumer left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Back in the backlog, to be delivered again.
    Requeued { id: u64 },
    /// Delivered `maxDeliveries` times without an ack.
    Dead { id: u64, letter: DeadLetter },
}

/// Backlog, in-flight and dead messages of one durable subscription.
#[derive(Debug)]
pub(crate) struct DurableState {
    pub config: SubscriptionConfig,
    /// Waiting for delivery, in delivery order: priority (highest first), then id.
    backlog: BTreeMap<(Reverse<u8>, u64), Message>,
    in_flight: HashMap<u64, InFlight>,
    /// In-flight ids by deadline, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    dead: BTreeMap<u64, DeadLetter>,
    /// Where this subscription's cached bodies are counted.
    cache: Arc<BodyCache>,
    /// Connected consumers.
    pub consumers: usize,
    /// Set when the subscription is deleted: its consumers' streams end.
    pub deleted: bool,
}

impl DurableState {
    pub fn new(config: SubscriptionConfig, cache: Arc<BodyCache>) -> Self {
        Self {
            config,
            backlog: BTreeMap::new(),
            in_flight: HashMap::new(),
            deadlines: BTreeSet::new(),
            dead: BTreeMap::new(),
            cache,
            consumers: 0,
            deleted: false,
        }
    }

    /// Adds a message to the backlog (a new event, or one loaded from the store).
    pub fn enqueue(
        &mut self,
        id: u64,
        priority: Priority,
        deliveries: u32,
        body: Option<Arc<StoredEvent>>,
    ) {
        let body = body.filter(|b| self.cache.reserve(b.size()));
        self.backlog.insert(
            (Reverse(priority.rank()), id),
            Message {
                priority,
                deliveries,
                body,
            },
        );
    }

    /// Adds a dead letter loaded from the store.
    pub fn insert_dead(&mut self, id: u64, letter: DeadLetter) {
        self.dead.insert(id, letter);
    }

    fn forget(&mut self, message: &Message) {
        if let Some(body) = &message.body {
            self.cache.release(body.size());
        }
    }

    /// Hands up to `max` messages to `consumer`, in priority then id order, within the
    /// in-flight limit; each gets a deadline of now + ack deadline.
    pub fn take(&mut self, now: Instant, consumer: u64, max: usize) -> Vec<Delivery> {
        let room = (self.config.max_in_flight as usize).saturating_sub(self.in_flight.len());
        let mut taken = Vec::new();
        while taken.len() < max.min(room) {
            let Some(((_, id), mut message)) = self.backlog.pop_first() else {
                break;
            };
            message.deliveries = message.deliveries.saturating_add(1);
            let deadline = now + self.config.ack_deadline;
            taken.push(Delivery {
                id,
                deliveries: message.deliveries,
                body: message.body.clone(),
            });
            self.deadlines.insert((deadline, id));
            self.in_flight.insert(
                id,
                InFlight {
                    message,
                    deadline,
                    consumer,
                },
            );
        }
        taken
    }

    /// Acknowledges messages (in flight or still in the backlog); returns the ids that were
    /// known. Dead letters are not acknowledged this way.
    pub fn ack(&mut self, ids: &[u64]) -> Vec<u64> {
        let mut acked = Vec::new();
        for &id in ids {
            if let Some(f) = self.in_flight.remove(&id) {
                self.deadlines.remove(&(f.deadline, id));
                self.forget(&f.message);
                acked.push(id);
                continue;
            }
            let removed = Priority::ALL
                .iter()
                .find_map(|p| self.backlog.remove(&(Reverse(p.rank()), id)));
            if let Some(message) = removed {
                self.forget(&message);
                acked.push(id);
            }
        }
        acked
    }

    /// Requeues or dead-letters every in-flight message whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant, now_ms: u64) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(f) = self.in_flight.remove(&id) {
                outcomes.push(self.settle(id, f.message, now_ms));
            }
        }
        outcomes
    }

    /// Treats the messages in flight to `consumer` (whose connection ended) as expired now.
    pub fn release(&mut self, consumer: u64, now_ms: u64) -> Vec<Outcome> {
        let ids: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.consumer == consumer)
            .map(|(&id, _)| id)
            .collect();
        let mut outcomes = Vec::new();
        for id in ids {
            if let Some(f) = self.in_flight.remove(&id) {
                self.deadlines.remove(&(f.deadline, id));
                outcomes.push(self.settle(id, f.message, now_ms));
            }
        }
        outcomes
    }

    fn settle(&mut self, id: u64, message: Message, now_ms: u64) -> Outcome {
        if message.deliveries >= self.config.max_deliveries {
            self.forget(&message);
            let letter = DeadLetter {
                priority: message.priority,
                deliveries: message.deliveries,
                dead_at_ms: now_ms,
            };
            self.dead.insert(id, letter);
            Outcome::Dead { id, letter }
        } else {
            self.backlog
                .insert((Reverse(message.priority.rank()), id), message);
            Outcome::Requeued { id }
        }
    }

    /// Moves dead letters (the given ids, or all) back to the backlog with their delivery
    /// count reset; returns the ids moved.
    pub fn replay(&mut self, ids: Option<&[u64]>) -> Vec<u64> {
        let chosen: Vec<u64> = match ids {
            Some(ids) => ids
                .iter()
                .copied()
                .filter(|id| self.dead.contains_key(id))
                .collect(),
            None => self.dead.keys().copied().collect(),
        };
        for &id in &chosen {
            if let Some(letter) = self.dead.remove(&id) {
                self.enqueue(id, letter.priority, 0, None);
            }
        }
        chosen
    }

    /// Dead letters, by id.
    pub fn dead_letters(&self) -> impl Iterator<Item = (u64, DeadLetter)> + '_ {
        self.dead.iter().map(|(&id, &letter)| (id, letter))
    }

    /// Messages waiting for delivery.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Messages delivered and not yet acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Dead letters.
    pub fn dead_len(&self) -> usize {
        self.dead.len()
    }
}

impl Drop for DurableState {
    fn drop(&mut self) {
        let cached = self
            .backlog
            .values()
            .chain(self.in_flight.values().map(|f| &f.message))
            .filter_map(|m| m.body.as_ref())
            .map(|b| b.size())
            .sum();
        self.cache.release(cached);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bus::event::Filters;
    use crate::bus::topic::Pattern;

    const DEADLINE: Duration = Duration::from_millis(200);

    fn state(max_deliveries: u32, max_in_flight: u32) -> DurableState {
        state_with(
            max_deliveries,
            max_in_flight,
            BodyCache::new(BODY_CACHE_BYTES),
        )
    }

    fn state_with(max_deliveries: u32, max_in_flight: u32, cache: Arc<BodyCache>) -> DurableState {
        DurableState::new(
            SubscriptionConfig {
                pattern: Pattern::parse(">").expect("pattern"),
                filters: Filters::default(),
                ack_deadline: DEADLINE,
                max_deliveries,
                max_in_flight,
            },
            cache,
        )
    }

    fn ids(deliveries: &[Delivery]) -> Vec<u64> {
        deliveries.iter().map(|d| d.id).collect()
    }

    #[test]
    fn backlog_is_delivered_by_priority_then_id() {
        let mut s = state(5, 100);
        s.enqueue(1, Priority::Low, 0, None);
        s.enqueue(2, Priority::Critical, 0, None);
        s.enqueue(3, Priority::Normal, 0, None);
        s.enqueue(4, Priority::Critical, 0, None);
        s.enqueue(5, Priority::High, 0, None);
        let got = s.take(Instant::now(), 1, 100);
        assert_eq!(ids(&got), [2, 4, 5, 3, 1]);
        assert!(got.iter().all(|d| d.deliveries == 1));
    }

    #[test]
    fn in_flight_limit_holds_back_the_backlog_so_priorities_overtake() {
        let mut s = state(5, 1);
        let now = Instant::now();
        s.enqueue(1, Priority::Low, 0, None);
        assert_eq!(ids(&s.take(now, 1, 10)), [1]);
        s.enqueue(2, Priority::Low, 0, None);
        s.enqueue(3, Priority::Critical, 0, None);
        assert!(s.take(now, 1, 10).is_empty(), "limit reached");
        assert_eq!(s.ack(&[1]), [1]);
        assert_eq!(ids(&s.take(now, 1, 10)), [3]);
    }

    #[test]
    fn unacked_messages_are_redelivered_after_the_deadline_then_dead_lettered() {
        let mut s = state(3, 100);
        let t0 = Instant::now();
        s.enqueue(7, Priority::Normal, 0, None);
        for attempt in 1..=3u32 {
            let now = t0 + DEADLINE * (attempt - 1) * 2;
            let got = s.take(now, 1, 10);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].deliveries, attempt);
            assert!(s.expire(now + DEADLINE / 2, 0).is_empty(), "not yet due");
            let outcomes = s.expire(now + DEADLINE, 42);
            if attempt < 3 {
                assert_eq!(outcomes, [Outcome::Requeued { id: 7 }]);
            } else {
                let letter = DeadLetter {
                    priority: Priority::Normal,
                    deliveries: 3,
                    dead_at_ms: 42,
                };
                assert_eq!(outcomes, [Outcome::Dead { id: 7, letter }]);
            }
        }
        assert_eq!((s.backlog_len(), s.unacked_len(), s.dead_len()), (0, 0, 1));
        assert!(s.ack(&[7]).is_empty(), "dead letters are not acked");
    }

    #[test]
    fn replay_resets_deliveries() {
        let mut s = state(1, 100);
        let now = Instant::now();
        s.enqueue(1, Priority::High, 0, None);
        s.enqueue(2, Priority::Low, 0, None);
        assert_eq!(s.take(now, 1, 10).len(), 2);
        assert_eq!(s.expire(now + DEADLINE, 0).len(), 2);
        assert_eq!(s.dead_len(), 2);
        assert_eq!(s.replay(Some(&[2, 99])), [2]);
        let got = s.take(now, 1, 10);
        assert_eq!((ids(&got), got[0].deliveries), (vec![2], 1));
        assert_eq!(s.replay(None), [1]);
        assert_eq!(s.dead_len(), 0);
    }

    #[test]
    fn acks_before_the_deadline_settle_and_a_leaving_consumer_releases_its_messages() {
        let mut s = state(5, 100);
        let now = Instant::now();
        for id in 1..=4 {
            s.enqueue(id, Priority::Normal, 0, None);
        }
        assert_eq!(ids(&s.take(now, 1, 2)), [1, 2]);
        assert_eq!(ids(&s.take(now, 2, 1)), [3]);
        assert_eq!(s.ack(&[2, 4, 99]), [2, 4]);
        assert_eq!(s.release(1, 0), [Outcome::Requeued { id: 1 }]);
        assert!(s.expire(now + DEADLINE, 0) == [Outcome::Requeued { id: 3 }]);
        let got = s.take(now, 2, 10);
        assert_eq!(ids(&got), [1, 3]);
        assert!(got.iter().all(|d| d.deliveries == 2));
    }

    #[test]
    fn bodies_are_cached_within_a_shared_budget() {
        let cache = BodyCache::new(1000);
        let mut a = state_with(5, 100, cache.clone());
        let mut b = state_with(5, 100, cache.clone());
        let body = StoredEvent::new(crate::bus::event::Event {
            id: 1,
            topic: "t".into(),
            priority: Priority::Normal,
            source: None,
            metadata: Default::default(),
            data: serde_json::Value::String("x".repeat(300)),
            published_at: String::new(),
        })
        .expect("encode");
        let size = body.size();
        assert!(size > 300 && size < 500, "{size}");
        a.enqueue(1, Priority::Normal, 0, Some(body.clone()));
        a.enqueue(2, Priority::Normal, 0, Some(body.clone()));
        b.enqueue(1, Priority::Normal, 0, Some(body.clone()));
        assert_eq!(cache.used(), 2 * size, "the third does not fit");
        let got = a.take(Instant::now(), 1, 10);
        let cached: Vec<bool> = got.iter().map(|d| d.body.is_some()).collect();
        assert_eq!(cached, [true, true]);
        assert!(b.take(Instant::now(), 1, 10)[0].body.is_none());
        a.ack(&[1]);
        assert_eq!(cache.used(), size);
        drop(a);
        assert_eq!(
            cache.used(),
            0,
            "a deleted subscription gives its share back"
        );
    }
}
