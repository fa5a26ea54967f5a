//! The bus's metrics, through the `metrics` facade (the binary installs the exporter).

use super::event::Priority;

const PUBLISHED: &str = "strait_control_events_published_total";
const DELIVERED: &str = "strait_control_events_delivered_total";
const DEAD: &str = "strait_control_events_dead_total";

/// Registers the help texts (Prometheus tooling rejects metrics without HELP).
pub(crate) fn describe() {
    metrics::describe_counter!(PUBLISHED, "Events published to the bus, by priority.");
    metrics::describe_counter!(
        DELIVERED,
        "Events delivered to subscribers (redeliveries included)."
    );
    metrics::describe_counter!(
        DEAD,
        "Events moved to a dead-letter list after their last allowed delivery."
    );
}

/// One event published (committed).
pub(crate) fn published(priority: Priority) {
    metrics::counter!(PUBLISHED, "priority" => priority.as_str()).increment(1);
}

/// `n` events written to subscriber streams.
pub(crate) fn delivered(n: usize) {
    metrics::counter!(DELIVERED).increment(n as u64);
}

/// `n` events dead-lettered.
pub(crate) fn dead(n: usize) {
    metrics::counter!(DEAD).increment(n as u64);
}
