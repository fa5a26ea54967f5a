//! The HTTP API of the bus (axum handlers). JSON in and out, errors as `{"error": "..."}`;
//! subscriptions stream Server-Sent Events.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{header, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::backend::Subscribe;
use super::error::BusError;
use super::event::{Filters, NewEvent};
use super::sse;
use super::subscription::{validate_name, SubscriptionConfig, SubscriptionRequest};
use super::topic::Pattern;
use super::writer::HISTORY_PER_TOPIC;
use super::Bus;

/// Largest request body (a published event, or settings).
pub(crate) const MAX_BODY: usize = 1 << 20;
/// Default and largest number of dead letters listed at once.
const DEAD_LETTERS_DEFAULT: usize = 100;
const DEAD_LETTERS_MAX: usize = 10_000;
/// Most events in one batch publish.
pub(crate) const MAX_BATCH: usize = 1_000;

type Answer = Result<Response, BusError>;

/// The bus's routes.
pub(crate) fn router(bus: Arc<Bus>) -> Router {
    Router::new()
        .route("/v1/events/{topic}", post(publish))
        .route("/v1/events/{topic}/batch", post(publish_batch))
        .route("/v1/events/{topic}/history", get(history))
        .route("/v1/subscribe", get(subscribe))
        .route("/v1/subscriptions", get(list_subscriptions))
        .route(
            "/v1/subscriptions/{name}",
            get(get_subscription)
                .put(put_subscription)
                .delete(delete_subscription),
        )
        .route("/v1/subscriptions/{name}/ack", post(ack))
        .route("/v1/subscriptions/{name}/dead-letters", get(dead_letters))
        .route("/v1/subscriptions/{name}/dead-letters/replay", post(replay))
        .with_state(bus)
}

/// Reads a body of at most [`MAX_BODY`] bytes.
async fn read_body(body: Body) -> Result<Bytes, BusError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(BusError::TooLarge { limit: MAX_BODY })
        }
        Err(e) => Err(BusError::BadRequest(format!(
            "reading the request body: {e}"
        ))),
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BusError> {
    serde_json::from_slice(bytes).map_err(|e| BusError::BadRequest(format!("request body: {e}")))
}

fn json_response(status: StatusCode, json: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, BusError> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| BusError::BadRequest(format!("query: {}", e.body_text())))
}

/// `POST /v1/events/{topic}`: publish; 201 with the stored event once committed.
async fn publish(State(bus): State<Arc<Bus>>, Path(topic): Path<String>, body: Body) -> Answer {
    super::topic::validate_topic(&topic)?;
    let bytes = read_body(body).await?;
    let event: NewEvent = parse_json(&bytes)?;
    let stored = bus.backend.publish(&topic, event, bytes.len()).await?;
    Ok(json_response(StatusCode::CREATED, stored.json.clone()))
}

/// What `POST /v1/events/{topic}/batch` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    events: Vec<NewEvent>,
}

/// `POST /v1/events/{topic}/batch`: publish up to [`MAX_BATCH`] events in order, stored
/// together; 201 with `{"events": [...]}` once all are committed. Every event is checked
/// before any is published.
async fn publish_batch(
    State(bus): State<Arc<Bus>>,
    Path(topic): Path<String>,
    body: Body,
) -> Answer {
    super::topic::validate_topic(&topic)?;
    let bytes = read_body(body).await?;
    let batch: Batch = parse_json(&bytes)?;
    if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
        return Err(BusError::BadRequest(format!(
            "`events` holds {} events; send 1 to {MAX_BATCH}",
            batch.events.len()
        )));
    }
    for (i, event) in batch.events.iter().enumerate() {
        event
            .validate()
            .map_err(|e| BusError::BadRequest(format!("events[{i}]: {e}")))?;
    }
    let stored = bus
        .backend
        .publish_batch(&topic, batch.events, bytes.len())
        .await?;
    let mut out = Vec::with_capacity(16 + stored.iter().map(|e| e.json.len() + 1).sum::<usize>());
    out.extend_from_slice(b"{\"events\":[");
    for (i, event) in stored.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&event.json);
    }
    out.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::CREATED, Bytes::from(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// `GET /v1/events/{topic}/history?limit=N`: the last N events (default and most 100).
async fn history(State(bus): State<Arc<Bus>>, Path(topic): Path<String>, uri: Uri) -> Answer {
    let q: HistoryQuery = query(&uri)?;
    let limit = q.limit.unwrap_or(HISTORY_PER_TOPIC).min(HISTORY_PER_TOPIC);
    let events = bus.backend.history(&topic, limit).await?;
    // The events are already JSON: splice them rather than decode and encode again.
    let mut out = Vec::with_capacity(64 + events.iter().map(|e| e.json.len() + 1).sum::<usize>());
    out.extend_from_slice(b"{\"topic\":");
    out.extend_from_slice(
        &serde_json::to_vec(&topic).map_err(BusError::encoding("encoding history"))?,
    );
    out.extend_from_slice(b",\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&event.json);
    }
    out.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::OK, Bytes::from(out)))
}

/// What `GET /v1/subscribe` asks for.
#[derive(Debug, Default, PartialEq)]
struct SubscribeQuery {
    pattern: Option<String>,
    group: Option<String>,
    durable: Option<String>,
    filters: Filters,
    ack_deadline: Option<String>,
    max_deliveries: Option<u32>,
    max_in_flight: Option<u32>,
}

impl SubscribeQuery {
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, BusError> {
        let mut q = SubscribeQuery::default();
        let number = |key: &str, value: &str| {
            value
                .parse::<u32>()
                .map_err(|_| BusError::BadRequest(format!("`{key}` must be a whole number")))
        };
        for (key, value) in pairs {
            match key.as_str() {
                "pattern" => q.pattern = Some(value),
                "group" => q.group = Some(value),
                "durable" => q.durable = Some(value),
                "source" => q.filters.source = Some(value),
                "ackDeadline" => q.ack_deadline = Some(value),
                "maxDeliveries" => q.max_deliveries = Some(number(&key, &value)?),
                "maxInFlight" => q.max_in_flight = Some(number(&key, &value)?),
                _ => match key.strip_prefix("meta.") {
                    Some(meta) => {
                        q.filters.metadata.insert(meta.to_owned(), value);
                    }
                    None => {
                        return Err(BusError::BadRequest(format!(
                            "unknown query parameter `{key}`; known: pattern, group, durable, source, meta.KEY, ackDeadline, maxDeliveries, maxInFlight"
                        )))
                    }
                },
            }
        }
        q.filters.validate()?;
        Ok(q)
    }

    fn has_settings(&self) -> bool {
        self.ack_deadline.is_some() || self.max_deliveries.is_some() || self.max_in_flight.is_some()
    }
}

/// `GET /v1/subscribe?pattern=P[&group=G][&durable=NAME][&source=S][&meta.K=V]...`: a
/// Server-Sent Events stream of matching events.
async fn subscribe(State(bus): State<Arc<Bus>>, uri: Uri) -> Answer {
    let q = SubscribeQuery::parse(query(&uri)?)?;
    let request = match q.durable.clone() {
        None => {
            if q.has_settings() {
                return Err(BusError::BadRequest(
                    "`ackDeadline`, `maxDeliveries` and `maxInFlight` apply to durable subscriptions only (add `durable=NAME`)".into(),
                ));
            }
            let pattern = q.pattern.as_deref().ok_or_else(|| {
                BusError::BadRequest("`pattern` is required, e.g. `?pattern=mesh.>`".into())
            })?;
            let pattern = Pattern::parse(pattern)?;
            if let Some(group) = &q.group {
                validate_name(group).map_err(|_| {
                    BusError::BadRequest(format!(
                        "bad group name `{group}`: use 1 to 128 letters, digits, `_`, `-` or `.`"
                    ))
                })?;
            }
            Subscribe::Live {
                pattern,
                group: q.group,
                filters: q.filters,
            }
        }
        Some(name) => {
            if q.group.is_some() {
                return Err(BusError::BadRequest(
                    "a durable subscription is already shared by all its consumers; drop `group`"
                        .into(),
                ));
            }
            ensure_durable(&bus, &name, q).await?;
            Subscribe::Durable { name }
        }
    };
    let feed = bus.backend.clone().subscribe(request).await?;
    Ok(sse::response(feed))
}

/// The durable subscription `name`, created from the query if it does not exist; a query
/// that contradicts an existing subscription is a conflict.
async fn ensure_durable(bus: &Bus, name: &str, q: SubscribeQuery) -> Result<(), BusError> {
    validate_name(name)?;
    if let Some(config) = bus.backend.subscription_config(name).await? {
        let wanted = SubscriptionRequest {
            pattern: q
                .pattern
                .unwrap_or_else(|| config.pattern.as_str().to_owned()),
            filters: if q.filters == Filters::default() {
                config.filters.clone()
            } else {
                q.filters
            },
            ack_deadline: q
                .ack_deadline
                .or_else(|| Some(format!("{}ms", config.ack_deadline.as_millis()))),
            max_deliveries: q.max_deliveries.or(Some(config.max_deliveries)),
            max_in_flight: q.max_in_flight.or(Some(config.max_in_flight)),
        }
        .validate()?;
        if wanted != config {
            return Err(BusError::Conflict(format!(
                "durable subscription `{name}` exists with other settings ({}); subscribe with `durable={name}` alone, or change it with PUT /v1/subscriptions/{name}",
                config.to_json()
            )));
        }
        return Ok(());
    }
    let Some(pattern) = q.pattern else {
        return Err(BusError::BadRequest(format!(
            "durable subscription `{name}` does not exist yet: give `pattern` to create it"
        )));
    };
    let config = SubscriptionRequest {
        pattern,
        filters: q.filters,
        ack_deadline: q.ack_deadline,
        max_deliveries: q.max_deliveries,
        max_in_flight: q.max_in_flight,
    }
    .validate()?;
    bus.backend.put_subscription(name, config).await?;
    Ok(())
}

/// `GET /v1/subscriptions`: durable subscriptions with their counts.
async fn list_subscriptions(State(bus): State<Arc<Bus>>) -> Answer {
    let subscriptions = bus.backend.subscriptions().await?;
    Ok(Json(serde_json::json!({ "subscriptions": subscriptions })).into_response())
}

/// `GET /v1/subscriptions/{name}`.
async fn get_subscription(State(bus): State<Arc<Bus>>, Path(name): Path<String>) -> Answer {
    Ok(Json(bus.backend.subscription(&name).await?).into_response())
}

/// `PUT /v1/subscriptions/{name}` with `{pattern, filters?, ackDeadline?, maxDeliveries?,
/// maxInFlight?}`: 201 when created, 200 when changed.
async fn put_subscription(
    State(bus): State<Arc<Bus>>,
    Path(name): Path<String>,
    body: Body,
) -> Answer {
    validate_name(&name)?;
    let request: SubscriptionRequest = parse_json(&read_body(body).await?)?;
    let config: SubscriptionConfig = request.validate()?;
    let created = bus.backend.put_subscription(&name, config).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(bus.backend.subscription(&name).await?)).into_response())
}

/// `DELETE /v1/subscriptions/{name}`: 204.
async fn delete_subscription(State(bus): State<Arc<Bus>>, Path(name): Path<String>) -> Answer {
    bus.backend.delete_subscription(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ids {
    ids: Vec<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaybeIds {
    ids: Option<Vec<u64>>,
}

/// `POST /v1/subscriptions/{name}/ack` with `{ids: [...]}`: `{acked: N}` once committed.
async fn ack(State(bus): State<Arc<Bus>>, Path(name): Path<String>, body: Body) -> Answer {
    let Ids { ids } = parse_json(&read_body(body).await?)?;
    let acked = bus.backend.ack(&name, &ids).await?;
    Ok(Json(serde_json::json!({ "acked": acked })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<usize>,
}

/// `GET /v1/subscriptions/{name}/dead-letters?limit=N`.
async fn dead_letters(State(bus): State<Arc<Bus>>, Path(name): Path<String>, uri: Uri) -> Answer {
    let q: LimitQuery = query(&uri)?;
    let limit = q
        .limit
        .unwrap_or(DEAD_LETTERS_DEFAULT)
        .min(DEAD_LETTERS_MAX);
    let letters = bus.backend.dead_letters(&name, limit).await?;
    Ok(Json(serde_json::json!({ "deadLetters": letters })).into_response())
}

/// `POST /v1/subscriptions/{name}/dead-letters/replay` with `{ids?}` (all when omitted):
/// `{replayed: N}`.
async fn replay(State(bus): State<Arc<Bus>>, Path(name): Path<String>, body: Body) -> Answer {
    let bytes = read_body(body).await?;
    let MaybeIds { ids } = if bytes.iter().all(u8::is_ascii_whitespace) {
        MaybeIds::default()
    } else {
        parse_json(&bytes)?
    };
    let replayed = bus.backend.replay(&name, ids.as_deref()).await?;
    Ok(Json(serde_json::json!({ "replayed": replayed })).into_response())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        let uri: Uri = format!("/v1/subscribe?{q}").parse().expect("uri");
        query(&uri).expect("pairs")
    }

    #[test]
    fn subscribe_query_collects_filters() {
        let q = SubscribeQuery::parse(pairs(
            "pattern=mesh.%3E&group=g&source=p1&meta.zone=eu&meta.tier=gold",
        ))
        .expect("valid");
        assert_eq!(q.pattern.as_deref(), Some("mesh.>"));
        assert_eq!(q.group.as_deref(), Some("g"));
        let metadata: BTreeMap<String, String> = [
            ("tier".to_owned(), "gold".to_owned()),
            ("zone".to_owned(), "eu".to_owned()),
        ]
        .into();
        assert_eq!(
            q.filters,
            Filters {
                source: Some("p1".into()),
                metadata
            }
        );
        assert!(SubscribeQuery::parse(pairs("pattern=a&topic=b")).is_err());
        assert!(SubscribeQuery::parse(pairs("pattern=a&maxDeliveries=x")).is_err());
    }
}
