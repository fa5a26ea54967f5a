//! The bus's tables in redb, and the reads and writes on them. Only the writer thread writes.
//!
//! Event bodies are stored once (`bus_events`) with a reference count (`bus_event_refs`): one
//! reference for the topic history, one per durable subscription holding the event. A body
//! is deleted when its last reference goes.

use std::collections::HashMap;
use std::sync::Arc;

use redb::{Database, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::error::BusError;
use super::event::{Priority, StoredEvent};
use super::subscription::StoredConfig;

const META: TableDefinition<&str, u64> = TableDefinition::new("bus_meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("bus_events");
const REFS: TableDefinition<u64, u32> = TableDefinition::new("bus_event_refs");
/// (topic, id): the topic's history, oldest first.
const HISTORY: TableDefinition<(&str, u64), ()> = TableDefinition::new("bus_history");
/// name → settings (JSON).
const SUBSCRIPTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("bus_subscriptions");
/// (subscription, id) → (priority rank, deliveries, dead-lettered at in ms or 0).
const MESSAGES: TableDefinition<(&str, u64), (u8, u32, u64)> = TableDefinition::new("bus_messages");

const NEXT_ID: &str = "next_id";

/// A durable subscription's message as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredMessage {
    pub subscription: String,
    pub id: u64,
    pub priority: Priority,
    pub deliveries: u32,
    /// Dead-lettered at (ms since the epoch), if it was.
    pub dead_at_ms: Option<u64>,
}

/// Everything [`Store::open`] reads back.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub next_id: u64,
    pub subscriptions: Vec<(String, StoredConfig)>,
    pub messages: Vec<StoredMessage>,
    /// Events kept per topic in the history.
    pub history_counts: HashMap<String, usize>,
}

/// Reads on the bus's tables (writes go through [`Batch`]).
#[derive(Debug)]
pub(crate) struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Creates the tables if needed and reads the durable state.
    pub fn open(db: Arc<Database>) -> Result<(Self, Loaded), BusError> {
        let txn = db
            .begin_write()
            .map_err(BusError::store("creating the bus tables"))?;
        // Opening creates the tables that do not exist yet.
        drop(Batch::open(&txn)?);
        txn.commit()
            .map_err(BusError::store("creating the bus tables"))?;
        let store = Self { db };
        let loaded = store.load()?;
        Ok((store, loaded))
    }

    fn load(&self) -> Result<Loaded, BusError> {
        let txn = self
            .db
            .begin_read()
            .map_err(BusError::store("loading the bus"))?;
        let meta = txn
            .open_table(META)
            .map_err(BusError::store("loading the bus"))?;
        let next_id = meta
            .get(NEXT_ID)
            .map_err(BusError::store("loading the next event id"))?
            .map_or(1, |v| v.value());
        let mut loaded = Loaded {
            next_id,
            ..Loaded::default()
        };
        let subs = txn
            .open_table(SUBSCRIPTIONS)
            .map_err(BusError::store("loading subscriptions"))?;
        for row in subs
            .iter()
            .map_err(BusError::store("loading subscriptions"))?
        {
            let (name, config) = row.map_err(BusError::store("loading subscriptions"))?;
            let config: StoredConfig = serde_json::from_slice(config.value())
                .map_err(BusError::encoding("decoding a stored subscription"))?;
            loaded.subscriptions.push((name.value().to_owned(), config));
        }
        let messages = txn
            .open_table(MESSAGES)
            .map_err(BusError::store("loading subscription messages"))?;
        for row in messages
            .iter()
            .map_err(BusError::store("loading subscription messages"))?
        {
            let (key, value) = row.map_err(BusError::store("loading subscription messages"))?;
            let (subscription, id) = key.value();
            let (rank, deliveries, dead_at) = value.value();
            loaded.messages.push(StoredMessage {
                subscription: subscription.to_owned(),
                id,
                priority: Priority::from_rank(rank),
                deliveries,
                dead_at_ms: (dead_at > 0).then_some(dead_at),
            });
        }
        let history = txn
            .open_table(HISTORY)
            .map_err(BusError::store("loading history"))?;
        for row in history.iter().map_err(BusError::store("loading history"))? {
            let (key, _) = row.map_err(BusError::store("loading history"))?;
            let (topic, _) = key.value();
            *loaded.history_counts.entry(topic.to_owned()).or_default() += 1;
        }
        Ok(loaded)
    }

    /// The events of `ids` (`None` where an id is not stored), in one read transaction.
    pub fn events(&self, ids: &[u64]) -> Result<Vec<Option<Arc<StoredEvent>>>, BusError> {
        let err = BusError::store("reading events");
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn
            .open_table(EVENTS)
            .map_err(BusError::store("reading events"))?;
        ids.iter()
            .map(|&id| {
                let row = table.get(id).map_err(BusError::store("reading an event"))?;
                row.map(|json| StoredEvent::decode(json.value()))
                    .transpose()
            })
            .collect()
    }

    /// The last `limit` events of `topic`, oldest first.
    pub fn history(&self, topic: &str, limit: usize) -> Result<Vec<Arc<StoredEvent>>, BusError> {
        let txn = self
            .db
            .begin_read()
            .map_err(BusError::store("reading history"))?;
        let history = txn
            .open_table(HISTORY)
            .map_err(BusError::store("reading history"))?;
        let mut ids = Vec::new();
        for row in history
            .range((topic, 0)..=(topic, u64::MAX))
            .map_err(BusError::store("reading history"))?
            .rev()
            .take(limit)
        {
            let (key, _) = row.map_err(BusError::store("reading history"))?;
            ids.push(key.value().1);
        }
        ids.reverse();
        let events = txn
            .open_table(EVENTS)
            .map_err(BusError::store("reading history"))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(json) = events
                .get(id)
                .map_err(BusError::store("reading an event"))?
            {
                out.push(StoredEvent::decode(json.value())?);
            }
        }
        Ok(out)
    }

    /// Starts a write transaction (the writer thread's).
    pub fn begin_write(&self) -> Result<WriteTransaction, BusError> {
        self.db
            .begin_write()
            .map_err(BusError::store("starting a write transaction"))
    }
}

/// The bus's tables opened in one write transaction.
pub(crate) struct Batch<'t> {
    meta: Table<'t, &'static str, u64>,
    events: Table<'t, u64, &'static [u8]>,
    refs: Table<'t, u64, u32>,
    history: Table<'t, (&'static str, u64), ()>,
    subscriptions: Table<'t, &'static str, &'static [u8]>,
    messages: Table<'t, (&'static str, u64), (u8, u32, u64)>,
}

type BatchResult<T> = Result<T, BusError>;

impl<'t> Batch<'t> {
    /// Opens the tables in `txn`.
    pub fn open(txn: &'t WriteTransaction) -> BatchResult<Self> {
        Ok(Self {
            meta: txn
                .open_table(META)
                .map_err(BusError::store("opening bus_meta"))?,
            events: txn
                .open_table(EVENTS)
                .map_err(BusError::store("opening bus_events"))?,
            refs: txn
                .open_table(REFS)
                .map_err(BusError::store("opening bus_event_refs"))?,
            history: txn
                .open_table(HISTORY)
                .map_err(BusError::store("opening bus_history"))?,
            subscriptions: txn
                .open_table(SUBSCRIPTIONS)
                .map_err(BusError::store("opening bus_subscriptions"))?,
            messages: txn
                .open_table(MESSAGES)
                .map_err(BusError::store("opening bus_messages"))?,
        })
    }

    /// Records the next event id to assign.
    pub fn set_next_id(&mut self, next: u64) -> BatchResult<()> {
        self.meta
            .insert(NEXT_ID, next)
            .map_err(BusError::store("saving the next event id"))?;
        Ok(())
    }

    /// Stores a new event in its topic's history and in the given durable subscriptions.
    pub fn publish(&mut self, event: &StoredEvent, subscriptions: &[&str]) -> BatchResult<()> {
        let e = &event.event;
        self.events
            .insert(e.id, event.json.as_ref())
            .map_err(BusError::store("storing an event"))?;
        let refs = u32::try_from(subscriptions.len() + 1).unwrap_or(u32::MAX);
        self.refs
            .insert(e.id, refs)
            .map_err(BusError::store("storing an event"))?;
        self.history
            .insert((e.topic.as_str(), e.id), ())
            .map_err(BusError::store("storing history"))?;
        for name in subscriptions {
            self.messages
                .insert((*name, e.id), (e.priority.rank(), 0, 0))
                .map_err(BusError::store("storing a subscription message"))?;
        }
        Ok(())
    }

    /// Drops the oldest event of `topic`'s history.
    pub fn trim_history(&mut self, topic: &str) -> BatchResult<()> {
        let err = BusError::store("trimming history");
        let oldest = self
            .history
            .range((topic, 0)..=(topic, u64::MAX))
            .map_err(err)?
            .next()
            .transpose()
            .map_err(BusError::store("trimming history"))?
            .map(|(key, _)| key.value().1);
        if let Some(id) = oldest {
            self.history
                .remove((topic, id))
                .map_err(BusError::store("trimming history"))?;
            self.release(id)?;
        }
        Ok(())
    }

    /// Drops one reference to event `id`, deleting it with the last.
    fn release(&mut self, id: u64) -> BatchResult<()> {
        let refs = self
            .refs
            .get(id)
            .map_err(BusError::store("releasing an event"))?
            .map_or(0, |v| v.value());
        if refs > 1 {
            self.refs
                .insert(id, refs - 1)
                .map_err(BusError::store("releasing an event"))?;
        } else {
            self.refs
                .remove(id)
                .map_err(BusError::store("releasing an event"))?;
            self.events
                .remove(id)
                .map_err(BusError::store("deleting an event"))?;
        }
        Ok(())
    }

    /// Removes an acknowledged message.
    pub fn ack(&mut self, subscription: &str, id: u64) -> BatchResult<()> {
        let removed = self
            .messages
            .remove((subscription, id))
            .map_err(BusError::store("removing an acknowledged message"))?
            .is_some();
        if removed {
            self.release(id)?;
        }
        Ok(())
    }

    /// Updates a message's delivery count and dead-letter time (0: not dead), if it exists.
    pub fn update(
        &mut self,
        subscription: &str,
        id: u64,
        deliveries: u32,
        dead_at: u64,
    ) -> BatchResult<()> {
        let rank = self
            .messages
            .get((subscription, id))
            .map_err(BusError::store("updating a message"))?
            .map(|v| v.value().0);
        if let Some(rank) = rank {
            self.messages
                .insert((subscription, id), (rank, deliveries, dead_at))
                .map_err(BusError::store("updating a message"))?;
        }
        Ok(())
    }

    /// Saves a subscription's settings.
    pub fn put_subscription(&mut self, name: &str, config: &StoredConfig) -> BatchResult<()> {
        let json =
            serde_json::to_vec(config).map_err(BusError::encoding("encoding a subscription"))?;
        self.subscriptions
            .insert(name, json.as_slice())
            .map_err(BusError::store("saving a subscription"))?;
        Ok(())
    }

    /// Deletes a subscription and all its messages.
    pub fn delete_subscription(&mut self, name: &str) -> BatchResult<()> {
        self.subscriptions
            .remove(name)
            .map_err(BusError::store("deleting a subscription"))?;
        let mut ids = Vec::new();
        for row in self
            .messages
            .extract_from_if((name, 0)..=(name, u64::MAX), |_, _| true)
            .map_err(BusError::store("deleting a subscription's messages"))?
        {
            let (key, _) = row.map_err(BusError::store("deleting a subscription's messages"))?;
            ids.push(key.value().1);
        }
        for id in ids {
            self.release(id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::event::{rfc3339, Event};

    pub(crate) fn temp_db() -> (Arc<Database>, TempFile) {
        let path = std::env::temp_dir().join(format!(
            "strait-bus-store-{}-{}.redb",
            std::process::id(),
            fastrand::u64(..)
        ));
        let db = Database::create(&path).expect("create db");
        (Arc::new(db), TempFile(path))
    }

    pub(crate) struct TempFile(std::path::PathBuf);
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn event(id: u64, topic: &str) -> Arc<StoredEvent> {
        StoredEvent::new(Event {
            id,
            topic: topic.into(),
            priority: Priority::High,
            source: None,
            metadata: Default::default(),
            data: serde_json::json!({ "n": id }),
            published_at: rfc3339(0),
        })
        .expect("encode")
    }

    fn write(store: &Store, f: impl FnOnce(&mut Batch<'_>)) {
        let txn = store.begin_write().expect("txn");
        {
            let mut batch = Batch::open(&txn).expect("tables");
            f(&mut batch);
        }
        txn.commit().expect("commit");
    }

    #[test]
    fn bodies_live_while_referenced() {
        let (db, _file) = temp_db();
        let (store, loaded) = Store::open(db.clone()).expect("open");
        assert_eq!(loaded.next_id, 1);
        write(&store, |b| {
            b.publish(&event(1, "a.b"), &["s1", "s2"]).expect("publish");
            b.publish(&event(2, "a.b"), &[]).expect("publish");
            b.set_next_id(3).expect("next id");
        });
        assert_eq!(store.history("a.b", 10).expect("history").len(), 2);
        write(&store, |b| {
            b.trim_history("a.b").expect("trim");
            b.ack("s1", 1).expect("ack");
        });
        assert!(
            store.events(&[1]).expect("read")[0].is_some(),
            "s2 holds it"
        );
        write(&store, |b| b.delete_subscription("s2").expect("delete"));
        let read = store.events(&[1, 2]).expect("read");
        assert!(read[0].is_none() && read[1].is_some());
        let history = store.history("a.b", 10).expect("history");
        assert_eq!(history.iter().map(|e| e.event.id).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn state_is_loaded_back() {
        let (db, _file) = temp_db();
        let (store, _) = Store::open(db.clone()).expect("open");
        let config = crate::bus::subscription::SubscriptionRequest {
            pattern: "a.>".into(),
            ..Default::default()
        }
        .validate()
        .expect("config");
        write(&store, |b| {
            b.put_subscription("s1", &config.to_stored()).expect("put");
            b.publish(&event(5, "a.b"), &["s1"]).expect("publish");
            b.publish(&event(6, "a.b"), &["s1"]).expect("publish");
            b.update("s1", 5, 2, 0).expect("delivered");
            b.update("s1", 6, 3, 1234).expect("dead");
            b.update("s1", 99, 1, 0).expect("missing is a no-op");
            b.set_next_id(7).expect("next id");
        });
        drop(store);
        let (_, loaded) = Store::open(db).expect("reopen");
        assert_eq!(loaded.next_id, 7);
        assert_eq!(loaded.subscriptions.len(), 1);
        assert_eq!(loaded.history_counts.get("a.b"), Some(&2));
        let msg = |id, deliveries, dead_at_ms| StoredMessage {
            subscription: "s1".into(),
            id,
            priority: Priority::High,
            deliveries,
            dead_at_ms,
        };
        assert_eq!(loaded.messages, [msg(5, 2, None), msg(6, 3, Some(1234))]);
    }
}
