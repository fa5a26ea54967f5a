//! Live (connection-bound) subscribers: broadcast and consumer groups. The writer feeds them
//! after each commit; each has a bounded in-memory priority queue that its stream drains.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::event::{Filters, StoredEvent};
use super::lock;
use super::queue::PriorityQueue;
use super::topic::Pattern;

/// Most events queued for one live subscriber before its connection is dropped.
pub(crate) const QUEUE_MAX_EVENTS: usize = 10_000;
/// Most bytes queued for one live subscriber before its connection is dropped.
pub(crate) const QUEUE_MAX_BYTES: usize = 64 << 20;

/// One connected, non-durable subscriber.
#[derive(Debug)]
pub(crate) struct Subscriber {
    id: u64,
    pattern: Pattern,
    group: Option<String>,
    filters: Filters,
    inbox: Mutex<Inbox>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Inbox {
    queue: PriorityQueue<Arc<StoredEvent>>,
    bytes: usize,
    /// Set once the bound is hit: the subscriber gets nothing more and its stream ends.
    overflowed: bool,
}

/// What [`Subscriber::offer`] did.
#[derive(Debug, PartialEq, Eq)]
enum Offer {
    Queued,
    /// This event hit the bound: the subscriber is cut off from now on.
    Overflowed {
        queued: usize,
    },
    /// The subscriber was already cut off.
    Dead,
}

impl Subscriber {
    /// A subscriber on `pattern`, optionally a member of `group`.
    pub fn new(id: u64, pattern: Pattern, group: Option<String>, filters: Filters) -> Self {
        Self {
            id,
            pattern,
            group,
            filters,
            inbox: Mutex::default(),
            notify: Notify::new(),
        }
    }

    /// Queues `event` if the subscriber's filters accept it; false once the subscriber is
    /// cut off (its queue overflowed). For feeds that do their own routing.
    pub fn push(&self, event: &Arc<StoredEvent>) -> bool {
        !self.filters.accepts(&event.event) || deliver(self, event)
    }

    fn offer(&self, event: &Arc<StoredEvent>) -> Offer {
        let offer = {
            let mut inbox = lock(&self.inbox);
            if inbox.overflowed {
                return Offer::Dead;
            }
            if inbox.queue.len() >= QUEUE_MAX_EVENTS
                || inbox.bytes.saturating_add(event.size()) > QUEUE_MAX_BYTES
            {
                inbox.overflowed = true;
                Offer::Overflowed {
                    queued: inbox.queue.len(),
                }
            } else {
                inbox.bytes += event.size();
                inbox.queue.push(event.event.priority, event.clone());
                Offer::Queued
            }
        };
        self.notify.notify_one();
        offer
    }

    fn is_dead(&self) -> bool {
        lock(&self.inbox).overflowed
    }

    /// Takes up to `max_events` queued events (at least one if any), highest priority first,
    /// stopping once `max_bytes` are reached. `None` once the subscriber was cut off.
    fn take(&self, max_events: usize, max_bytes: usize) -> Option<Vec<Arc<StoredEvent>>> {
        let mut inbox = lock(&self.inbox);
        if inbox.overflowed {
            return None;
        }
        let mut taken = Vec::new();
        let mut bytes = 0;
        while taken.len() < max_events && bytes < max_bytes {
            let Some(event) = inbox.queue.pop() else {
                break;
            };
            bytes += event.size();
            taken.push(event);
        }
        inbox.bytes = inbox.bytes.saturating_sub(bytes);
        Some(taken)
    }

    /// Waits for events and takes them as [`Subscriber::take`] does; `None` once the
    /// subscriber was cut off for being too slow. Cancel-safe.
    pub async fn next(&self, max_events: usize, max_bytes: usize) -> Option<Vec<Arc<StoredEvent>>> {
        loop {
            let notified = self.notify.notified();
            let taken = self.take(max_events, max_bytes)?;
            if !taken.is_empty() {
                return Some(taken);
            }
            notified.await;
        }
    }
}

/// Every live subscriber, by pattern (each distinct pattern is matched once per event).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    by_pattern: HashMap<String, PatternSubscribers>,
}

#[derive(Debug)]
struct PatternSubscribers {
    pattern: Pattern,
    broadcast: Vec<Arc<Subscriber>>,
    groups: HashMap<String, Group>,
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<Arc<Subscriber>>,
    /// Index of the member that gets the next event (round robin).
    next: usize,
}

impl Registry {
    /// Adds a connected subscriber.
    pub fn add(&mut self, sub: Arc<Subscriber>) {
        let entry = self
            .by_pattern
            .entry(sub.pattern.as_str().to_owned())
            .or_insert_with(|| PatternSubscribers {
                pattern: sub.pattern.clone(),
                broadcast: Vec::new(),
                groups: HashMap::new(),
            });
        match &sub.group {
            None => entry.broadcast.push(sub),
            Some(group) => entry
                .groups
                .entry(group.clone())
                .or_default()
                .members
                .push(sub),
        }
    }

    /// Removes a subscriber whose connection ended.
    pub fn remove(&mut self, sub: &Subscriber) {
        let Some(entry) = self.by_pattern.get_mut(sub.pattern.as_str()) else {
            return;
        };
        match &sub.group {
            None => entry.broadcast.retain(|s| s.id != sub.id),
            Some(name) => {
                if let Some(group) = entry.groups.get_mut(name) {
                    group.members.retain(|s| s.id != sub.id);
                    if group.members.is_empty() {
                        entry.groups.remove(name);
                    } else {
                        group.next %= group.members.len();
                    }
                }
            }
        }
        if entry.broadcast.is_empty() && entry.groups.is_empty() {
            self.by_pattern.remove(sub.pattern.as_str());
        }
    }

    /// Queues `event` for every matching broadcast subscriber and for one member of each
    /// matching group; returns how many subscribers got it.
    pub fn dispatch(&mut self, event: &Arc<StoredEvent>) -> usize {
        let mut queued = 0;
        for entry in self.by_pattern.values_mut() {
            if !entry.pattern.matches(&event.event.topic) {
                continue;
            }
            for sub in &entry.broadcast {
                if sub.filters.accepts(&event.event) {
                    queued += usize::from(deliver(sub, event));
                }
            }
            for group in entry.groups.values_mut() {
                queued += usize::from(group.deliver(event));
            }
        }
        queued
    }
}

impl Group {
    /// Gives `event` to the next member (round robin) that accepts it and is not cut off.
    fn deliver(&mut self, event: &Arc<StoredEvent>) -> bool {
        let n = self.members.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            let Some(member) = self.members.get(i) else {
                continue;
            };
            if member.filters.accepts(&event.event) && !member.is_dead() {
                self.next = (i + 1) % n;
                return deliver(member, event);
            }
        }
        false
    }
}

fn deliver(sub: &Subscriber, event: &Arc<StoredEvent>) -> bool {
    match sub.offer(event) {
        Offer::Queued => true,
        Offer::Overflowed { queued } => {
            tracing::warn!(
                subscriber = sub.id,
                pattern = sub.pattern.as_str(),
                group = sub.group.as_deref(),
                queued,
                "subscriber is too slow: its queue is full, dropping its connection"
            );
            false
        }
        Offer::Dead => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::event::{rfc3339, Event, Priority};

    fn event(id: u64, topic: &str, priority: Priority) -> Arc<StoredEvent> {
        StoredEvent::new(Event {
            id,
            topic: topic.into(),
            priority,
            source: None,
            metadata: Default::default(),
            data: serde_json::Value::Null,
            published_at: rfc3339(0),
        })
        .expect("encode")
    }

    fn sub(id: u64, pattern: &str, group: Option<&str>) -> Arc<Subscriber> {
        Arc::new(Subscriber::new(
            id,
            Pattern::parse(pattern).expect("pattern"),
            group.map(str::to_owned),
            Filters::default(),
        ))
    }

    fn ids(sub: &Subscriber) -> Vec<u64> {
        sub.take(usize::MAX, usize::MAX)
            .expect("not cut off")
            .iter()
            .map(|e| e.event.id)
            .collect()
    }

    #[test]
    fn broadcast_reaches_every_matching_subscriber() {
        let mut reg = Registry::default();
        let (a, b, c) = (
            sub(1, "mesh.>", None),
            sub(2, "mesh.*", None),
            sub(3, "orders.*", None),
        );
        for s in [&a, &b, &c] {
            reg.add(s.clone());
        }
        assert_eq!(reg.dispatch(&event(1, "mesh.config", Priority::Normal)), 2);
        assert_eq!(
            reg.dispatch(&event(2, "mesh.config.applied", Priority::Normal)),
            1
        );
        assert_eq!((ids(&a), ids(&b), ids(&c)), (vec![1, 2], vec![1], vec![]));
    }

    #[test]
    fn a_group_shares_events_round_robin() {
        let mut reg = Registry::default();
        let (a, b) = (
            sub(1, "jobs.>", Some("workers")),
            sub(2, "jobs.>", Some("workers")),
        );
        let other = sub(3, "jobs.>", Some("auditors"));
        for s in [&a, &b, &other] {
            reg.add(s.clone());
        }
        for id in 1..=6 {
            reg.dispatch(&event(id, "jobs.new", Priority::Normal));
        }
        assert_eq!(ids(&a), [1, 3, 5]);
        assert_eq!(ids(&b), [2, 4, 6]);
        assert_eq!(ids(&other), [1, 2, 3, 4, 5, 6]);
        reg.remove(&a);
        reg.dispatch(&event(7, "jobs.new", Priority::Normal));
        assert_eq!(ids(&b), [7]);
    }

    #[test]
    fn backlog_drains_by_priority() {
        let mut reg = Registry::default();
        let a = sub(1, ">", None);
        reg.add(a.clone());
        reg.dispatch(&event(1, "t", Priority::Low));
        reg.dispatch(&event(2, "t", Priority::Critical));
        reg.dispatch(&event(3, "t", Priority::Normal));
        reg.dispatch(&event(4, "t", Priority::High));
        reg.dispatch(&event(5, "t", Priority::Critical));
        assert_eq!(ids(&a), [2, 5, 4, 3, 1]);
    }

    #[test]
    fn a_slow_subscriber_is_cut_off_at_the_bound() {
        let mut reg = Registry::default();
        let (slow, fast) = (sub(1, ">", None), sub(2, ">", None));
        reg.add(slow.clone());
        reg.add(fast.clone());
        for id in 0..QUEUE_MAX_EVENTS as u64 {
            reg.dispatch(&event(id, "t", Priority::Normal));
            if id % 100 == 0 {
                ids(&fast);
            }
        }
        assert_eq!(reg.dispatch(&event(u64::MAX, "t", Priority::Normal)), 1);
        assert!(slow.take(1, usize::MAX).is_none(), "cut off");
        assert!(!ids(&fast).is_empty());
    }
}
