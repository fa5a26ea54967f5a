//! Durable subscription settings in their three forms: the request a client sends, the
//! validated [`SubscriptionConfig`] the bus runs on, and the JSON kept in the store.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::BusError;
use super::event::Filters;
use super::topic::Pattern;

/// Default time a delivered event may stay unacknowledged before it is redelivered.
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(30);
/// Default number of deliveries after which an unacknowledged event is dead-lettered.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
/// Default number of delivered-but-unacknowledged events per subscription.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 1000;

const MIN_ACK_DEADLINE: Duration = Duration::from_millis(10);
const MAX_ACK_DEADLINE: Duration = Duration::from_secs(24 * 3600);
const MAX_MAX_DELIVERIES: u32 = 1000;
const MAX_MAX_IN_FLIGHT: u32 = 100_000;
const MAX_NAME_LEN: usize = 128;

/// Body of `PUT /v1/subscriptions/{name}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SubscriptionRequest {
    /// Topic pattern (`*`, `>` wildcards).
    pub pattern: String,
    /// Source and metadata filters.
    #[serde(default)]
    pub filters: Filters,
    /// Redelivery deadline, e.g. `30s` or `200ms` (default 30s).
    pub ack_deadline: Option<String>,
    /// Deliveries before dead-lettering (default 5).
    pub max_deliveries: Option<u32>,
    /// Unacknowledged events at most (default 1000).
    pub max_in_flight: Option<u32>,
}

/// Validated settings of a durable subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubscriptionConfig {
    pub pattern: Pattern,
    pub filters: Filters,
    pub ack_deadline: Duration,
    pub max_deliveries: u32,
    pub max_in_flight: u32,
}

/// How the settings are kept in the store.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoredConfig {
    pattern: String,
    filters: Filters,
    ack_deadline_ms: u64,
    max_deliveries: u32,
    max_in_flight: u32,
}

/// Checks a durable subscription name: 1 to 128 letters, digits, `_`, `-` or `.`.
pub(crate) fn validate_name(name: &str) -> Result<(), BusError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(BusError::BadRequest(format!(
            "subscription name `{}` must be 1 to {MAX_NAME_LEN} letters, digits, `_`, `-` or `.`",
            name.chars().take(MAX_NAME_LEN).collect::<String>()
        )))
    }
}

impl SubscriptionRequest {
    /// Validates into a config, naming the field at fault.
    pub fn validate(&self) -> Result<SubscriptionConfig, BusError> {
        let pattern = Pattern::parse(&self.pattern)?;
        self.filters.validate()?;
        let ack_deadline = match &self.ack_deadline {
            None => DEFAULT_ACK_DEADLINE,
            Some(text) => strait_config::spec::Duration::parse(text)
                .map_err(|e| BusError::BadRequest(format!("`ackDeadline`: {e}")))?
                .get(),
        };
        if !(MIN_ACK_DEADLINE..=MAX_ACK_DEADLINE).contains(&ack_deadline) {
            return Err(BusError::BadRequest(format!(
                "`ackDeadline` must be between {} and {}",
                format_duration(MIN_ACK_DEADLINE),
                format_duration(MAX_ACK_DEADLINE)
            )));
        }
        let max_deliveries = self.max_deliveries.unwrap_or(DEFAULT_MAX_DELIVERIES);
        if !(1..=MAX_MAX_DELIVERIES).contains(&max_deliveries) {
            return Err(BusError::BadRequest(format!(
                "`maxDeliveries` must be between 1 and {MAX_MAX_DELIVERIES}"
            )));
        }
        let max_in_flight = self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if !(1..=MAX_MAX_IN_FLIGHT).contains(&max_in_flight) {
            return Err(BusError::BadRequest(format!(
                "`maxInFlight` must be between 1 and {MAX_MAX_IN_FLIGHT}"
            )));
        }
        Ok(SubscriptionConfig {
            pattern,
            filters: self.filters.clone(),
            ack_deadline,
            max_deliveries,
            max_in_flight,
        })
    }
}

impl SubscriptionConfig {
    /// The stored form.
    pub fn to_stored(&self) -> StoredConfig {
        StoredConfig {
            pattern: self.pattern.as_str().to_owned(),
            filters: self.filters.clone(),
            ack_deadline_ms: u64::try_from(self.ack_deadline.as_millis()).unwrap_or(u64::MAX),
            max_deliveries: self.max_deliveries,
            max_in_flight: self.max_in_flight,
        }
    }

    /// Back from the stored form (validated again: the store is input too).
    pub fn from_stored(stored: StoredConfig) -> Result<Self, BusError> {
        SubscriptionRequest {
            pattern: stored.pattern,
            filters: stored.filters,
            ack_deadline: Some(format!("{}ms", stored.ack_deadline_ms)),
            max_deliveries: Some(stored.max_deliveries),
            max_in_flight: Some(stored.max_in_flight),
        }
        .validate()
    }

    /// The settings as JSON fields (for listings).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "pattern": self.pattern.as_str(),
            "filters": self.filters,
            "ackDeadline": format_duration(self.ack_deadline),
            "maxDeliveries": self.max_deliveries,
            "maxInFlight": self.max_in_flight,
        })
    }
}

/// `30s`, `200ms`, `1500ms`: whole seconds when exact, else milliseconds.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<SubscriptionConfig, BusError> {
        serde_json::from_str::<SubscriptionRequest>(json)
            .map_err(|e| BusError::BadRequest(e.to_string()))?
            .validate()
    }

    #[test]
    fn defaults_and_round_trip() {
        let c = request(r#"{"pattern": "mesh.>"}"#).expect("valid");
        assert_eq!(c.ack_deadline, DEFAULT_ACK_DEADLINE);
        assert_eq!(c.max_deliveries, DEFAULT_MAX_DELIVERIES);
        let c = request(
            r#"{"pattern": "a.*", "filters": {"source": "p", "metadata": {"zone": "eu"}},
                "ackDeadline": "200ms", "maxDeliveries": 3, "maxInFlight": 7}"#,
        )
        .expect("valid");
        assert_eq!(c.ack_deadline, Duration::from_millis(200));
        assert_eq!(
            SubscriptionConfig::from_stored(c.to_stored()).expect("back"),
            c
        );
        assert_eq!(c.to_json()["ackDeadline"], "200ms");
    }

    #[test]
    fn bad_settings_name_their_field() {
        for (json, field) in [
            (r#"{"pattern": "a..b"}"#, "pattern"),
            (r#"{"pattern": "a", "ackDeadline": "soon"}"#, "ackDeadline"),
            (r#"{"pattern": "a", "ackDeadline": "1ms"}"#, "ackDeadline"),
            (r#"{"pattern": "a", "maxDeliveries": 0}"#, "maxDeliveries"),
            (r#"{"pattern": "a", "maxInFlight": 0}"#, "maxInFlight"),
            (r#"{"pattern": "a", "ttl": 3}"#, "ttl"),
        ] {
            let err = request(json).expect_err(json).to_string();
            assert!(err.contains(field), "{json}: {err}");
        }
        assert!(validate_name("orders-audit.v2").is_ok());
        assert!(validate_name("a/b").is_err());
    }
}
