//! How the bus's names map onto NATS: pure functions, no I/O.
//!
//! - An event on topic `T` with priority `P` is stored as subject `strait.ev.P.T` in stream
//!   [`EVENTS_STREAM`] (`P` is `low`, `normal`, `high` or `critical`); the stream republishes
//!   it, with its sequence in a header, on `strait.live.P.T` for live subscribers.
//! - Topic patterns are already NATS wildcards (`*` one segment, `>` the rest), so pattern
//!   `mesh.>` at priority `P` is filter `strait.ev.P.mesh.>`.
//! - Durable subscription `NAME` is one durable pull consumer per priority on the events
//!   stream (`NAME-critical`, ...) and one on its replayed dead letters; its dead letters are
//!   subject `strait.dead.NAME`, replays `strait.replay.NAME`, in stream [`DEAD_STREAM`].
//!   NATS names have no `.`: a `.` in a subscription name is written `~` there.

use super::super::event::Priority;
use super::super::topic::Pattern;

/// The stream of published events.
pub(crate) const EVENTS_STREAM: &str = "STRAIT_EVENTS";
/// The stream of dead letters and replayed dead letters.
pub(crate) const DEAD_STREAM: &str = "STRAIT_DEAD";
/// What the events stream stores.
pub(crate) const EVENTS_SUBJECTS: &str = "strait.ev.>";
/// Where the events stream republishes what it stored.
pub(crate) const LIVE_SUBJECTS: &str = "strait.live.>";
/// What the dead-letter stream stores.
pub(crate) const DEAD_SUBJECTS: [&str; 2] = ["strait.dead.>", "strait.replay.>"];
/// Where acks for deliveries held by another replica are forwarded.
pub(crate) const ACK_FORWARD_SUBJECTS: &str = "strait.bus.ack.>";

/// Priorities in the order a durable consumer drains them.
pub(crate) const DRAIN_ORDER: [Priority; 4] = [
    Priority::Critical,
    Priority::High,
    Priority::Normal,
    Priority::Low,
];

/// The subject an event on `topic` is published to.
pub(crate) fn event_subject(priority: Priority, topic: &str) -> String {
    format!("strait.ev.{}.{topic}", priority.as_str())
}

/// The filter of a durable subscription's consumer for `priority`.
pub(crate) fn event_filter(priority: Priority, pattern: &Pattern) -> String {
    format!("strait.ev.{}.{}", priority.as_str(), pattern.as_str())
}

/// Every stored event of `topic`, at any priority.
pub(crate) fn topic_filter(topic: &str) -> String {
    format!("strait.ev.*.{topic}")
}

/// What a live subscriber on `pattern` subscribes to (every priority).
pub(crate) fn live_filter(pattern: &Pattern) -> String {
    format!("strait.live.*.{}", pattern.as_str())
}

/// A subscription name as a NATS token (no `.`).
pub(crate) fn token(name: &str) -> String {
    name.replace('.', "~")
}

/// The subscription name back from its token.
pub(crate) fn name_of_token(token: &str) -> String {
    token.replace('~', ".")
}

/// The durable consumer of subscription `name` for `priority`.
pub(crate) fn consumer_name(name: &str, priority: Priority) -> String {
    format!("{}-{}", token(name), priority.as_str())
}

/// The subscription a priority consumer belongs to, if `consumer` is one.
pub(crate) fn subscription_of_consumer(consumer: &str) -> Option<String> {
    let (token, priority) = consumer.rsplit_once('-')?;
    (priority == Priority::Critical.as_str()).then(|| name_of_token(token))
}

/// The durable consumer of subscription `name`'s replayed dead letters.
pub(crate) fn replay_consumer_name(name: &str) -> String {
    format!("{}-replay", token(name))
}

/// Subject of subscription `name`'s dead letters.
pub(crate) fn dead_subject(name: &str) -> String {
    format!("strait.dead.{}", token(name))
}

/// Subject of subscription `name`'s replayed dead letters.
pub(crate) fn replay_subject(name: &str) -> String {
    format!("strait.replay.{}", token(name))
}

/// Subject acks for subscription `name` are forwarded to.
pub(crate) fn ack_forward_subject(name: &str) -> String {
    format!("strait.bus.ack.{}", token(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_carry_over_below_the_priority() {
        let pattern = Pattern::parse("mesh.*.applied").expect("pattern");
        assert_eq!(
            event_filter(Priority::High, &pattern),
            "strait.ev.high.mesh.*.applied"
        );
        assert_eq!(live_filter(&pattern), "strait.live.*.mesh.*.applied");
        let rest = Pattern::parse(">").expect("pattern");
        assert_eq!(event_filter(Priority::Low, &rest), "strait.ev.low.>");
        assert_eq!(
            event_subject(Priority::Critical, "a.b"),
            "strait.ev.critical.a.b"
        );
    }

    #[test]
    fn subscription_names_round_trip_through_nats_tokens() {
        for name in ["orders", "a.b.c", "x_y-z"] {
            let consumer = consumer_name(name, Priority::Critical);
            assert!(!consumer.contains('.'));
            assert_eq!(subscription_of_consumer(&consumer).as_deref(), Some(name));
        }
        assert_eq!(
            subscription_of_consumer(&consumer_name("a", Priority::Low)),
            None
        );
        assert_eq!(subscription_of_consumer(&replay_consumer_name("a")), None);
        assert_eq!(dead_subject("a.b"), "strait.dead.a~b");
    }
}
