//! The event model: what publishers send ([`NewEvent`]), what the bus stores and delivers
//! ([`Event`]), priorities and subscription filters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::BusError;

/// Longest `source`, in bytes.
const MAX_SOURCE_LEN: usize = 256;
/// Most metadata entries on one event.
const MAX_METADATA: usize = 64;
/// Longest metadata key, in bytes.
const MAX_METADATA_KEY: usize = 128;
/// Longest metadata value, in bytes.
const MAX_METADATA_VALUE: usize = 1024;

/// How urgent an event is. When a subscriber has a backlog, higher priorities are delivered
/// first; within one priority, events keep their publication order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Background information.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Should overtake normal traffic.
    High,
    /// Overtakes everything.
    Critical,
}

impl Priority {
    /// All priorities, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];

    /// 0 (low) to 3 (critical).
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The priority of rank `rank` (out-of-range ranks clamp to critical).
    pub fn from_rank(rank: u8) -> Self {
        Priority::ALL
            .get(usize::from(rank))
            .copied()
            .unwrap_or(Priority::Critical)
    }

    /// The lowercase name, as on the wire and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

/// An event as a publisher hands it to the bus (also the JSON body of `POST /v1/events/{topic}`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewEvent {
    /// Delivery priority under backlog (default normal).
    #[serde(default)]
    pub priority: Priority,
    /// Who published it, e.g. `proxy/checkout-7f9c`; subscribers may filter on it.
    #[serde(default)]
    pub source: Option<String>,
    /// Free-form string pairs; subscribers may filter on them.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The payload.
    pub data: serde_json::Value,
}

impl NewEvent {
    /// Checks the bounds on source and metadata.
    pub(crate) fn validate(&self) -> Result<(), BusError> {
        if let Some(source) = &self.source {
            if source.is_empty() || source.len() > MAX_SOURCE_LEN {
                return Err(BusError::BadRequest(format!(
                    "`source` must be 1 to {MAX_SOURCE_LEN} bytes"
                )));
            }
        }
        if self.metadata.len() > MAX_METADATA {
            return Err(BusError::BadRequest(format!(
                "`metadata` has {} entries; at most {MAX_METADATA} are allowed",
                self.metadata.len()
            )));
        }
        for (key, value) in &self.metadata {
            validate_metadata_key(key)?;
            if value.len() > MAX_METADATA_VALUE {
                return Err(BusError::BadRequest(format!(
                    "metadata `{key}` is longer than {MAX_METADATA_VALUE} bytes"
                )));
            }
        }
        Ok(())
    }
}

/// Checks a metadata key: 1 to 128 bytes of letters, digits, `_`, `-` and `.`.
pub(crate) fn validate_metadata_key(key: &str) -> Result<(), BusError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_METADATA_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(BusError::BadRequest(format!(
            "metadata key `{}` must be 1 to {MAX_METADATA_KEY} letters, digits, `_`, `-` or `.`",
            key.chars().take(MAX_METADATA_KEY).collect::<String>()
        )))
    }
}

/// A published event, as stored, delivered and answered to its publisher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Unique, increasing in publication order.
    pub id: u64,
    /// The topic it was published to.
    pub topic: String,
    /// Its priority.
    pub priority: Priority,
    /// Its source, if the publisher gave one.
    pub source: Option<String>,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
    /// Its payload.
    pub data: serde_json::Value,
    /// When the bus accepted it (RFC 3339, UTC, milliseconds).
    pub published_at: String,
}

/// An event with its JSON encoding, shared by the store, the history and every subscriber it
/// is delivered to, so that it is encoded once.
#[derive(Debug)]
pub(crate) struct StoredEvent {
    pub event: Event,
    pub json: Bytes,
}

impl StoredEvent {
    /// Encodes `event`.
    pub fn new(event: Event) -> Result<Arc<Self>, BusError> {
        let json = serde_json::to_vec(&event).map_err(BusError::encoding("encoding an event"))?;
        Ok(Arc::new(Self {
            event,
            json: Bytes::from(json),
        }))
    }

    /// Decodes an event read back from the store.
    pub fn decode(json: &[u8]) -> Result<Arc<Self>, BusError> {
        let event: Event =
            serde_json::from_slice(json).map_err(BusError::encoding("decoding a stored event"))?;
        Ok(Arc::new(Self {
            event,
            json: Bytes::copy_from_slice(json),
        }))
    }

    /// Size in memory, roughly: what bounded queues count.
    pub fn size(&self) -> usize {
        self.json.len()
    }
}

/// What a subscriber wants beyond its pattern: all given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filters {
    /// The event's `source` must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Each of these metadata entries must be on the event with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl Filters {
    /// Whether `event` passes.
    pub fn accepts(&self, event: &Event) -> bool {
        if let Some(source) = &self.source {
            if event.source.as_deref() != Some(source.as_str()) {
                return false;
            }
        }
        self.metadata
            .iter()
            .all(|(k, v)| event.metadata.get(k) == Some(v))
    }

    /// Checks the metadata keys.
    pub(crate) fn validate(&self) -> Result<(), BusError> {
        for key in self.metadata.keys() {
            validate_metadata_key(key)?;
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `millis` since the epoch as RFC 3339 (`2026-11-05T09:30:00.123Z`).
pub(crate) fn rfc3339(millis: u64) -> String {
    let secs = millis / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis % 1000
    )
}

/// (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }

    #[test]
    fn new_event_json_defaults_and_rejects_unknown_fields() {
        let e: NewEvent = serde_json::from_str(r#"{"data": 1}"#).expect("minimal");
        assert_eq!(e.priority, Priority::Normal);
        assert!(serde_json::from_str::<NewEvent>(r#"{"data": 1, "prio": "low"}"#).is_err());
        assert!(serde_json::from_str::<NewEvent>(r#"{"priority": "urgent", "data": 1}"#).is_err());
        let e: NewEvent =
            serde_json::from_str(r#"{"priority": "critical", "data": null}"#).expect("critical");
        assert_eq!(e.priority, Priority::Critical);
    }

    #[test]
    fn filters_need_every_condition() {
        let event = Event {
            id: 1,
            topic: "a".into(),
            priority: Priority::Low,
            source: Some("proxy-1".into()),
            metadata: [("zone".to_owned(), "eu".to_owned())].into(),
            data: serde_json::Value::Null,
            published_at: rfc3339(0),
        };
        assert!(Filters::default().accepts(&event));
        let mut f = Filters {
            source: Some("proxy-1".into()),
            metadata: [("zone".to_owned(), "eu".to_owned())].into(),
        };
        assert!(f.accepts(&event));
        f.metadata.insert("tier".into(), "gold".into());
        assert!(!f.accepts(&event));
        f.metadata.clear();
        f.source = Some("proxy-2".into());
        assert!(!f.accepts(&event));
    }

    #[test]
    fn bounds_are_checked() {
        let mut e = NewEvent::default();
        assert!(e.validate().is_ok());
        e.metadata.insert("bad key".into(), "v".into());
        assert!(e.validate().is_err());
        e.metadata.clear();
        e.source = Some("x".repeat(MAX_SOURCE_LEN + 1));
        assert!(e.validate().is_err());
    }
}
