//! Durable subscriptions on JetStream: their consumers and settings, acks (forwarded to the
//! replica holding the delivery), dead letters and replay.
//!
//! The settings are kept as JSON in the description of every consumer of the subscription,
//! so any replica can read them; the critical-priority consumer is the one looked up.

use std::sync::Weak;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::subjects::{
    ack_forward_subject, consumer_name, dead_subject, event_filter, replay_consumer_name,
    replay_subject, subscription_of_consumer, ACK_FORWARD_SUBJECTS, DRAIN_ORDER,
};
use super::{collect, held, pull_config, JetStream, SCAN_BATCH, TIMEOUT};
use crate::bus::embedded::MAX_DURABLE_SUBSCRIPTIONS;
use crate::bus::error::BusError;
use crate::bus::event::{now_millis, rfc3339};
use crate::bus::lock;
use crate::bus::subscription::{StoredConfig, SubscriptionConfig};

/// Header of a dead letter: the deliveries it had.
const DELIVERIES_HEADER: &str = "Strait-Deliveries";
/// Header of a dead letter: when it died (RFC 3339).
const DEAD_AT_HEADER: &str = "Strait-Dead-At";
/// How long a forwarded ack waits for the replica holding the deliveries.
const FORWARD_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// A short-lived consumer that reads a stream's messages on one filter, oldest first.
pub(super) struct Scan {
    consumer: consumer::PullConsumer,
    stream: stream::Stream,
    done: bool,
}

impl Scan {
    /// Starts reading `filter` in `stream` from its first message.
    pub(super) async fn open(stream: &stream::Stream, filter: String) -> Result<Scan, BusError> {
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                inactive_threshold: TIMEOUT,
                memory_storage: true,
                ..pull_config(filter)
            })
            .await
            .map_err(BusError::nats("reading a stream"))?;
        Ok(Scan {
            consumer,
            stream: stream.clone(),
            done: false,
        })
    }

    /// The next messages; `None` once all were read.
    pub(super) async fn next_batch(&mut self) -> Result<Option<Vec<jetstream::Message>>, BusError> {
        if self.done {
            return Ok(None);
        }
        let batch = self
            .consumer
            .fetch()
            .max_messages(SCAN_BATCH)
            .messages()
            .await
            .map_err(BusError::nats("reading a stream"))?;
        let batch = collect(batch, "reading a stream").await?;
        let last_pending = batch
            .last()
            .and_then(|m| m.info().ok())
            .map(|info| info.pending);
        self.done = batch.is_empty() || last_pending == Some(0);
        Ok((!batch.is_empty()).then_some(batch))
    }

    /// Deletes the consumer (the server would after it is idle for a while anyway).
    pub(super) async fn close(self) {
        let name = self.consumer.cached_info().name.clone();
        if let Err(error) = self.stream.delete_consumer(&name).await {
            tracing::debug!(%error, "cannot delete a scan consumer");
        }
    }
}

/// Whether a consumer lookup failed because there is no such consumer.
fn not_found(error: &jetstream::context::ConsumerInfoError) -> bool {
    match error.kind() {
        ConsumerInfoErrorKind::NotFound => true,
        ConsumerInfoErrorKind::JetStream(e) => {
            e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
        }
        _ => false,
    }
}

fn parse_description(name: &str, description: Option<&str>) -> Option<SubscriptionConfig> {
    let stored: StoredConfig = serde_json::from_str(description?).ok()?;
    match SubscriptionConfig::from_stored(stored) {
        Ok(config) => Some(config),
        Err(error) => {
            tracing::warn!(subscription = name, %error, "ignoring a consumer with bad settings");
            None
        }
    }
}

/// The settings of subscription `name`, if it exists.
pub(super) async fn config(
    bus: &JetStream,
    name: &str,
) -> Result<Option<SubscriptionConfig>, BusError> {
    match bus
        .events
        .consumer_info(consumer_name(name, DRAIN_ORDER[0]))
        .await
    {
        Ok(info) => Ok(parse_description(name, info.config.description.as_deref())),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(BusError::nats("reading a subscription")(e)),
    }
}

/// The settings of subscription `name`, or `NoSubscription`.
pub(super) async fn existing(bus: &JetStream, name: &str) -> Result<SubscriptionConfig, BusError> {
    config(bus, name)
        .await?
        .ok_or_else(|| BusError::NoSubscription(name.to_owned()))
}

/// The consumers of subscription `name`: its replays first, then each priority, highest
/// first — the order they are drained in.
pub(super) fn consumer_configs(
    name: &str,
    config: &SubscriptionConfig,
) -> Result<Vec<(bool, consumer::pull::Config)>, BusError> {
    let description = serde_json::to_string(&config.to_stored())
        .map_err(BusError::encoding("encoding subscription settings"))?;
    let base = |durable: String, filter: String, deliver_policy| consumer::pull::Config {
        durable_name: Some(durable),
        description: Some(description.clone()),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_deadline,
        // One more than allowed: that delivery is the one the bus dead-letters.
        max_deliver: i64::from(config.max_deliveries) + 1,
        max_ack_pending: i64::from(config.max_in_flight),
        ..pull_config(filter)
    };
    let mut out = vec![(
        false,
        base(
            replay_consumer_name(name),
            replay_subject(name),
            DeliverPolicy::All,
        ),
    )];
    for priority in DRAIN_ORDER {
        out.push((
            true,
            base(
                consumer_name(name, priority),
                event_filter(priority, &config.pattern),
                DeliverPolicy::New,
            ),
        ));
    }
    Ok(out)
}

/// Creates or changes subscription `name`; true when created.
pub(super) async fn put(
    bus: &JetStream,
    name: &str,
    config: SubscriptionConfig,
) -> Result<bool, BusError> {
    let created = match self::config(bus, name).await? {
        Some(_) => false,
        None => {
            if count(bus).await? >= MAX_DURABLE_SUBSCRIPTIONS {
                return Err(BusError::Overloaded(format!(
                    "there are already {MAX_DURABLE_SUBSCRIPTIONS} durable subscriptions; delete unused ones"
                )));
            }
            true
        }
    };
    // The replay consumer first and the critical one last: the critical consumer is the one
    // that says the subscription exists, so a consumer that finds it finds all the others.
    let mut consumers = consumer_configs(name, &config)?;
    if let Some(priorities) = consumers.get_mut(1..) {
        priorities.reverse();
    }
    for (on_events, consumer) in consumers {
        let stream = if on_events { &bus.events } else { &bus.dead };
        stream
            .create_consumer(consumer)
            .await
            .map_err(BusError::nats("saving a subscription"))?;
    }
    bus.progress.notify_waiters();
    if created {
        tracing::info!(subscription = name, "durable subscription created");
    }
    Ok(created)
}

async fn count(bus: &JetStream) -> Result<usize, BusError> {
    let mut names = bus.events.consumer_names();
    let mut n = 0;
    while let Some(name) = names.next().await {
        let name = name.map_err(BusError::nats("listing subscriptions"))?;
        n += usize::from(subscription_of_consumer(&name).is_some());
    }
    Ok(n)
}

/// Deletes subscription `name`: its consumers (so its backlog), dead letters and replays.
pub(super) async fn delete(bus: &JetStream, name: &str) -> Result<(), BusError> {
    existing(bus, name).await?;
    for (on_events, consumer) in consumer_configs_for_delete(name) {
        let stream = if on_events { &bus.events } else { &bus.dead };
        // Already gone is fine: another replica may be deleting it too.
        if let Err(error) = stream.delete_consumer(&consumer).await {
            tracing::debug!(subscription = name, %error, "deleting a consumer");
        }
    }
    for subject in [dead_subject(name), replay_subject(name)] {
        bus.dead
            .purge()
            .filter(subject)
            .await
            .map_err(BusError::nats("deleting dead letters"))?;
    }
    held(bus).remove(name);
    bus.progress.notify_waiters();
    tracing::info!(subscription = name, "durable subscription deleted");
    Ok(())
}

fn consumer_configs_for_delete(name: &str) -> Vec<(bool, String)> {
    let mut out: Vec<(bool, String)> = DRAIN_ORDER
        .iter()
        .map(|p| (true, consumer_name(name, *p)))
        .collect();
    out.push((false, replay_consumer_name(name)));
    out
}

/// Acks the deliveries among `ids` this replica holds; returns them.
async fn ack_held(bus: &JetStream, name: &str, ids: &[u64]) -> Result<usize, BusError> {
    let messages: Vec<jetstream::Message> = {
        let mut held = held(bus);
        let Some(held) = held.get_mut(name) else {
            return Ok(0);
        };
        ids.iter()
            .filter_map(|id| held.remove(id))
            .map(|h| h.message)
            .collect()
    };
    if messages.is_empty() {
        return Ok(0);
    }
    let acks = messages.iter().map(|m| m.double_ack());
    let results = futures_util::future::join_all(acks).await;
    bus.progress.notify_waiters();
    let mut acked = 0;
    for result in results {
        match result {
            Ok(()) => acked += 1,
            // Redelivered after the deadline: at least once.
            Err(error) => tracing::warn!(subscription = name, %error, "an ack was not confirmed"),
        }
    }
    Ok(acked)
}

/// What a replica forwards to the others: ids it does not hold.
#[derive(Serialize, Deserialize)]
struct Forwarded {
    replica: u64,
    ids: Vec<u64>,
}

/// Acks events of `name`: those this replica delivered, and (forwarded over NATS) those
/// another replica did. Returns how many were delivered and not yet acked.
pub(super) async fn ack(bus: &JetStream, name: &str, ids: &[u64]) -> Result<usize, BusError> {
    existing(bus, name).await?;
    let local = ack_held(bus, name, ids).await?;
    if local == ids.len() {
        return Ok(local);
    }
    // The others ack only what they hold: what was acked here is held nowhere any more.
    let payload = serde_json::to_vec(&Forwarded {
        replica: bus.replica,
        ids: ids.to_vec(),
    })
    .map_err(BusError::encoding("forwarding an ack"))?;
    // Only a replica that holds some of them answers; none answering means none was held.
    let request = bus
        .client
        .request(ack_forward_subject(name), Bytes::from(payload));
    let remote = match tokio::time::timeout(FORWARD_WAIT, request).await {
        Ok(Ok(answer)) => std::str::from_utf8(&answer.payload)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0),
        Ok(Err(_)) | Err(_) => 0,
    };
    Ok(local + remote)
}

/// Answers acks forwarded by other replicas for deliveries this one holds.
pub(super) async fn serve_forwarded_acks(bus: Weak<JetStream>) -> Result<(), BusError> {
    let Some(strong) = bus.upgrade() else {
        return Ok(());
    };
    let mut requests = strong
        .client
        .subscribe(ACK_FORWARD_SUBJECTS)
        .await
        .map_err(BusError::nats("subscribing to forwarded acks"))?;
    drop(strong);
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let Some(bus) = bus.upgrade() else { return };
            let Ok(forwarded) = serde_json::from_slice::<Forwarded>(&request.payload) else {
                continue;
            };
            let (Some(reply), Some(token)) = (
                request.reply.clone(),
                request.subject.as_str().rsplit('.').next(),
            ) else {
                continue;
            };
            if forwarded.replica == bus.replica {
                continue;
            }
            let name = super::subjects::name_of_token(token);
            let acked = ack_held(&bus, &name, &forwarded.ids).await.unwrap_or(0);
            if acked > 0 {
                let _ = bus.client.publish(reply, acked.to_string().into()).await;
            }
        }
    });
    Ok(())
}

/// A dead letter as stored: the event, with how often it was delivered and when it died.
struct Letter {
    sequence: u64,
    event: serde_json::Value,
    payload: Bytes,
}

/// Every dead letter of `name` (at most `limit`), oldest first.
async fn letters(bus: &JetStream, name: &str, limit: usize) -> Result<Vec<Letter>, BusError> {
    let mut out = Vec::new();
    let mut scan = Scan::open(&bus.dead, dead_subject(name)).await?;
    'scan: while let Some(batch) = scan.next_batch().await? {
        for message in batch {
            if out.len() >= limit {
                break 'scan;
            }
            let sequence = message
                .info()
                .map_err(BusError::nats("reading dead letters"))?
                .stream_sequence;
            let mut event: serde_json::Value = serde_json::from_slice(&message.payload)
                .map_err(BusError::encoding("decoding a dead letter"))?;
            let header = |key: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(key))
                    .map(|v| v.as_str().to_owned())
            };
            if let Some(fields) = event.as_object_mut() {
                let deliveries = header(DELIVERIES_HEADER)
                    .and_then(|d| d.parse::<u64>().ok())
                    .unwrap_or(0);
                fields.insert("deliveries".into(), deliveries.into());
                fields.insert("deadAt".into(), header(DEAD_AT_HEADER).into());
            }
            out.push(Letter {
                sequence,
                event,
                payload: message.payload.clone(),
            });
        }
    }
    scan.close().await;
    Ok(out)
}

/// The first `limit` dead letters of `name`.
pub(super) async fn dead_letters(
    bus: &JetStream,
    name: &str,
    limit: usize,
) -> Result<Vec<serde_json::Value>, BusError> {
    existing(bus, name).await?;
    Ok(letters(bus, name, limit)
        .await?
        .into_iter()
        .map(|l| l.event)
        .collect())
}

/// Stores `payload` (an event's JSON, with its id) as a dead letter of `name` after
/// `deliveries` deliveries. Answers once the server has it.
pub(super) async fn bury(
    bus: &JetStream,
    name: &str,
    payload: Bytes,
    deliveries: i64,
) -> Result<(), BusError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(DELIVERIES_HEADER, deliveries.to_string().as_str());
    headers.insert(DEAD_AT_HEADER, rfc3339(now_millis()).as_str());
    bus.js
        .publish_with_headers(dead_subject(name), headers, payload)
        .await
        .map_err(BusError::nats("storing a dead letter"))?
        .await
        .map_err(BusError::nats("storing a dead letter"))?;
    Ok(())
}

/// Moves dead letters of `name` (the given ids, or all) to its replay subject, where its
/// replay consumer delivers them first, with their delivery count starting again.
pub(super) async fn replay(
    bus: &JetStream,
    name: &str,
    ids: Option<&[u64]>,
) -> Result<usize, BusError> {
    existing(bus, name).await?;
    let mut replayed = 0;
    for letter in letters(bus, name, usize::MAX).await? {
        let id = letter.event["id"].as_u64();
        if let Some(ids) = ids {
            if !id.is_some_and(|id| ids.contains(&id)) {
                continue;
            }
        }
        bus.js
            .publish(replay_subject(name), letter.payload)
            .await
            .map_err(BusError::nats("replaying a dead letter"))?
            .await
            .map_err(BusError::nats("replaying a dead letter"))?;
        // Replayed first, removed second: a crash in between replays it twice, never zero times.
        bus.dead
            .delete_message(letter.sequence)
            .await
            .map_err(BusError::nats("removing a replayed dead letter"))?;
        replayed += 1;
    }
    if replayed > 0 {
        bus.progress.notify_waiters();
        tracing::info!(
            subscription = name,
            count = replayed,
            "dead letters replayed"
        );
    }
    Ok(replayed)
}

/// Terminates a delivery the bus will not deliver again (dead-lettered or filtered out).
pub(super) async fn settle(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, "cannot settle a delivery");
    }
}

/// One subscription's settings and counts.
pub(super) async fn describe(bus: &JetStream, name: &str) -> Result<serde_json::Value, BusError> {
    let config = existing(bus, name).await?;
    let (mut backlog, mut unacked) = (0u64, 0u64);
    for (on_events, consumer) in consumer_configs_for_delete(name) {
        let stream = if on_events { &bus.events } else { &bus.dead };
        let info = stream
            .consumer_info(&consumer)
            .await
            .map_err(BusError::nats("reading a subscription"))?;
        backlog += info.num_pending;
        unacked += info.num_ack_pending as u64;
    }
    let dead = dead_count(bus, name).await?;
    let consumers = lock(&bus.connected).get(name).copied().unwrap_or(0);
    let mut value = config.to_json();
    if let Some(fields) = value.as_object_mut() {
        fields.insert("name".into(), name.into());
        fields.insert("backlog".into(), backlog.into());
        fields.insert("unacked".into(), unacked.into());
        fields.insert("dead".into(), dead.into());
        fields.insert("consumers".into(), consumers.into());
    }
    Ok(value)
}

async fn dead_count(bus: &JetStream, name: &str) -> Result<u64, BusError> {
    let subject = dead_subject(name);
    let mut subjects = bus
        .dead
        .info_with_subjects(&subject)
        .await
        .map_err(BusError::nats("counting dead letters"))?;
    let mut count = 0;
    while let Some(entry) = subjects.next().await {
        let (found, n) = entry.map_err(BusError::nats("counting dead letters"))?;
        if found == subject {
            count += n as u64;
        }
    }
    Ok(count)
}

/// Every subscription's settings and counts, by name.
pub(super) async fn describe_all(bus: &JetStream) -> Result<Vec<serde_json::Value>, BusError> {
    let mut names = Vec::new();
    let mut consumers = bus.events.consumer_names();
    while let Some(consumer) = consumers.next().await {
        let consumer = consumer.map_err(BusError::nats("listing subscriptions"))?;
        names.extend(subscription_of_consumer(&consumer));
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match describe(bus, &name).await {
            Ok(value) => out.push(value),
            // Deleted meanwhile.
            Err(BusError::NoSubscription(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
