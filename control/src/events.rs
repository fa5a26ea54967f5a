//! Where the control's own mesh events go (`mesh.registry.expired`, `mesh.config.applied`...):
//! the event bus in the real process, nothing in unit tests.

/// Receives events the control publishes about the mesh.
pub trait EventSink: Send + Sync {
    /// Publishes `data` on `topic` (best effort: a failure is logged, never returned).
    fn emit(&self, topic: &str, data: serde_json::Value);
}

/// Drops every event.
#[derive(Debug, Default)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _topic: &str, _data: serde_json::Value) {}
}

impl EventSink for crate::bus::Bus {
    fn emit(&self, topic: &str, data: serde_json::Value) {
        let event = crate::bus::NewEvent {
            priority: crate::bus::Priority::Normal,
            source: Some("strait-control".into()),
            metadata: Default::default(),
            data,
        };
        // Queued, not awaited: callers run on the async workers and must not wait for a commit.
        if let Err(e) = self.publish_nowait(topic, event) {
            tracing::warn!(topic, error = %e, "cannot publish mesh event");
        }
    }
}
