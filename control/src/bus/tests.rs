//! The bus over HTTP, in process: a real listener on 127.0.0.1:0, the straitctl client.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::client::{next_chunk, Client, SseParser};
use super::embedded::Embedded as Bus;

const WAIT: Duration = Duration::from_secs(5);

struct TempDb {
    path: std::path::PathBuf,
}

impl TempDb {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "strait-bus-http-{}-{}.redb",
            std::process::id(),
            fastrand::u64(..)
        ));
        Self { path }
    }

    fn open(&self) -> Arc<redb::Database> {
        Arc::new(redb::Database::create(&self.path).expect("create db"))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves `bus` on 127.0.0.1:0; returns its URL.
async fn serve(bus: &Arc<Bus>) -> String {
    bus.spawn_background();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Arc::new(super::Bus::from_backend(bus.clone())).router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

async fn call(url: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut client = Client::new(url, None).expect("client");
    let body = body.map(|b| b.to_string().into_bytes());
    let (status, bytes) = client.call(method, path, body).await.expect("call");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON answer")
    };
    (status, json)
}

async fn publish(url: &str, topic: &str, body: Value) -> Value {
    let (status, event) = call(
        url,
        Method::POST,
        &format!("/v1/events/{topic}"),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{event}");
    event
}

/// An open event stream.
struct Events {
    body: Incoming,
    parser: SseParser,
    ready: VecDeque<Value>,
}

impl Events {
    async fn open(url: &str, path_and_query: &str) -> Self {
        let client = Client::new(url, None).expect("client");
        let response = client.stream(path_and_query).await.expect("subscribe");
        assert_eq!(response.status(), StatusCode::OK);
        let mut events = Self {
            body: response.into_body(),
            parser: SseParser::default(),
            ready: VecDeque::new(),
        };
        // The `: subscribed` comment: the subscription is in place.
        let hello = tokio::time::timeout(WAIT, next_chunk(&mut events.body))
            .await
            .expect("subscribed in time")
            .expect("stream")
            .expect("first chunk");
        assert!(hello.starts_with(b": subscribed"), "{hello:?}");
        events
    }

    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.next_untimed())
            .await
            .expect("an event in time")
    }

    async fn next_untimed(&mut self) -> Value {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            let chunk = next_chunk(&mut self.body)
                .await
                .expect("stream")
                .expect("stream open");
            for message in self.parser.push(&chunk) {
                self.ready
                    .push_back(serde_json::from_str(&message.data).expect("event JSON"));
            }
        }
    }

    async fn nothing_for(&mut self, d: Duration) {
        if let Ok(event) = tokio::time::timeout(d, self.next_untimed()).await {
            panic!("unexpected event {event}");
        }
    }
}

fn ids(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect()
}

#[tokio::test]
async fn publish_answers_the_stored_event_and_refuses_bad_input() {
    let db = TempDb::new();
    let bus = Bus::open(db.open()).expect("open");
    let url = serve(&bus).await;
    let event = publish(
        &url,
        "mesh.config.applied",
        json!({"priority": "high", "source": "proxy-1", "metadata": {"zone": "eu"}, "data": {"v": 3}}),
    )
    .await;
    assert_eq!(event["topic"], "mesh.config.applied");
    assert_eq!(event["priority"], "high");
    assert_eq!(event["source"], "proxy-1");
    assert_eq!(event["metadata"]["zone"], "eu");
    assert_eq!(event["data"]["v"], 3);
    assert!(event["publishedAt"].as_str().expect("time").ends_with('Z'));
    let second = publish(&url, "mesh.config.applied", json!({"data": null})).await;
    assert!(second["id"].as_u64() > event["id"].as_u64());

    for (path, body, status) in [
        (
            "/v1/events/a..b",
            json!({"data": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/events/a.*",
            json!({"data": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/events/a",
            json!({"nodata": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/events/a",
            json!({"data": 1, "priority": "urgent"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/events/a",
            json!({"data": "x".repeat(super::api::MAX_BODY)}),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let (got, error) = call(&url, Method::POST, path, Some(body)).await;
        assert_eq!(got, status, "{path}: {error}");
        assert!(error["error"].is_string(), "{error}");
    }

    let (status, history) = call(
        &url,
        Method::GET,
        "/v1/events/mesh.config.applied/history?limit=1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ids(history["events"].as_array().expect("events")),
        [second["id"].as_u64().expect("id")]
    );
}

#[tokio::test]
async fn history_keeps_the_last_hundred() {
    let db = TempDb::new();
    let bus = Bus::open(db.open()).expect("open");
    for n in 0..120 {
        let event = super::NewEvent {
            data: json!(n),
            ..Default::default()
        };
        bus.publish_async("h.t", event).await.expect("publish");
    }
    let history = bus.history("h.t", 1000).expect("history");
    assert_eq!(history.len(), 100);
    assert_eq!(history[0].event.data, json!(20));
    assert_eq!(history[99].event.data, json!(119));

    // The fire-and-forget form.
    let event = super::NewEvent {
        data: json!("nowait"),
        ..Default::default()
    };
    bus.publish_nowait("h.sync", event).expect("queued");
    assert!(bus
        .publish_nowait("h..x", super::NewEvent::default())
        .is_err());
    let deadline = tokio::time::Instant::now() + WAIT;
    while bus.history("h.sync", 10).expect("history").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nowait event never committed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn wildcards_filters_and_groups() {
    let db = TempDb::new();
    let bus = Bus::open(db.open()).expect("open");
    let url = serve(&bus).await;
    let mut star = Events::open(&url, "/v1/subscribe?pattern=mesh.*.applied").await;
    let mut rest = Events::open(&url, "/v1/subscribe?pattern=mesh.%3E").await;
    let mut eu = Events::open(&url, "/v1/subscribe?pattern=%3E&meta.zone=eu&source=p1").await;
    let mut g1 = Events::open(&url, "/v1/subscribe?pattern=jobs.*&group=workers").await;
    let mut g2 = Events::open(&url, "/v1/subscribe?pattern=jobs.*&group=workers").await;

    let a = publish(&url, "mesh.config.applied", json!({"data": 1})).await;
    let b = publish(
        &url,
        "mesh.config",
        json!({"data": 2, "source": "p1", "metadata": {"zone": "eu"}}),
    )
    .await;
    assert_eq!(star.next().await["id"], a["id"]);
    assert_eq!(
        ids(&[rest.next().await, rest.next().await]),
        ids(&[a.clone(), b.clone()])
    );
    assert_eq!(eu.next().await["id"], b["id"]);
    star.nothing_for(Duration::from_millis(100)).await;

    let mut jobs = Vec::new();
    for n in 0..10 {
        jobs.push(publish(&url, "jobs.new", json!({"data": n})).await);
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    for _ in 0..5 {
        got1.push(g1.next().await);
        got2.push(g2.next().await);
    }
    g1.nothing_for(Duration::from_millis(100)).await;
    g2.nothing_for(Duration::from_millis(10)).await;
    let mut all = ids(&got1);
    all.extend(ids(&got2));
    all.sort_unstable();
    assert_eq!(all, ids(&jobs), "each job to exactly one member");
}

#[tokio::test]
async fn durable_redelivery_dead_letters_and_replay() {
    let db = TempDb::new();
    let bus = Bus::open(db.open()).expect("open");
    let url = serve(&bus).await;
    let (status, sub) = call(
        &url,
        Method::PUT,
        "/v1/subscriptions/audit",
        Some(json!({"pattern": "orders.>", "ackDeadline": "200ms", "maxDeliveries": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    assert_eq!(sub["ackDeadline"], "200ms");

    // Published while nobody is connected: kept, delivered on connect.
    let first = publish(&url, "orders.created", json!({"data": 1})).await;
    let mut events = Events::open(&url, "/v1/subscribe?durable=audit").await;
    let got = events.next().await;
    assert_eq!(
        (got["id"].clone(), got["deliveries"].clone()),
        (first["id"].clone(), json!(1))
    );
    // Not acked: redelivered after the deadline, then dead-lettered.
    let again = events.next().await;
    assert_eq!(
        (again["id"].clone(), again["deliveries"].clone()),
        (first["id"].clone(), json!(2))
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let letters = loop {
        let (_, letters) = call(
            &url,
            Method::GET,
            "/v1/subscriptions/audit/dead-letters",
            None,
        )
        .await;
        if !letters["deadLetters"].as_array().expect("list").is_empty()
            || tokio::time::Instant::now() > deadline
        {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let letter = &letters["deadLetters"][0];
    assert_eq!(
        (letter["id"].clone(), letter["deliveries"].clone()),
        (first["id"].clone(), json!(2))
    );

    let (status, replayed) = call(
        &url,
        Method::POST,
        "/v1/subscriptions/audit/dead-letters/replay",
        None,
    )
    .await;
    assert_eq!(
        (status, replayed["replayed"].clone()),
        (StatusCode::OK, json!(1))
    );
    let replay = events.next().await;
    assert_eq!(
        (replay["id"].clone(), replay["deliveries"].clone()),
        (first["id"].clone(), json!(1))
    );
    let (_, acked) = call(
        &url,
        Method::POST,
        "/v1/subscriptions/audit/ack",
        Some(json!({"ids": [first["id"]]})),
    )
    .await;
    assert_eq!(acked["acked"], 1);
    events.nothing_for(Duration::from_millis(400)).await;

    let (_, list) = call(&url, Method::GET, "/v1/subscriptions", None).await;
    let audit = &list["subscriptions"][0];
    assert_eq!(
        (
            audit["name"].clone(),
            audit["backlog"].clone(),
            audit["unacked"].clone(),
            audit["dead"].clone(),
            audit["consumers"].clone()
        ),
        (json!("audit"), json!(0), json!(0), json!(0), json!(1))
    );
    let (status, _) = call(&url, Method::DELETE, "/v1/subscriptions/audit", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&url, Method::GET, "/v1/subscriptions/audit", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn durable_backlog_is_delivered_by_priority_and_survives_reopening() {
    let db = TempDb::new();
    let database = db.open();
    let bus = Bus::open(database.clone()).expect("open");
    let url = serve(&bus).await;
    // Create it, then leave.
    drop(Events::open(&url, "/v1/subscribe?durable=d1&pattern=t.%3E&maxInFlight=1").await);
    let mut published = Vec::new();
    for priority in ["low", "normal", "critical", "low", "high"] {
        published.push(publish(&url, "t.x", json!({"priority": priority, "data": priority})).await);
    }
    drop(bus);

    // A new bus on the same database has the backlog, in priority then id order.
    let bus = Bus::open(database).expect("reopen");
    let url = serve(&bus).await;
    let mut events = Events::open(&url, "/v1/subscribe?durable=d1").await;
    let mut order = Vec::new();
    for _ in 0..5 {
        let event = events.next().await;
        order.push(event["data"].as_str().expect("data").to_owned());
        let (_, acked) = call(
            &url,
            Method::POST,
            "/v1/subscriptions/d1/ack",
            Some(json!({"ids": [event["id"]]})),
        )
        .await;
        assert_eq!(acked["acked"], 1);
    }
    assert_eq!(order, ["critical", "high", "normal", "low", "low"]);
    let newer = publish(&url, "t.y", json!({"data": "new"})).await;
    assert!(
        newer["id"].as_u64() > published[4]["id"].as_u64(),
        "ids keep increasing"
    );
}

#[tokio::test]
async fn subscribe_refusals() {
    let db = TempDb::new();
    let bus = Bus::open(db.open()).expect("open");
    let url = serve(&bus).await;
    for (query, status) in [
        ("", StatusCode::BAD_REQUEST),
        ("pattern=a.%3E.b", StatusCode::BAD_REQUEST),
        ("pattern=a&what=1", StatusCode::BAD_REQUEST),
        ("durable=nope", StatusCode::BAD_REQUEST),
        ("pattern=a&ackDeadline=1s", StatusCode::BAD_REQUEST),
        ("pattern=a&durable=x&group=g", StatusCode::BAD_REQUEST),
    ] {
        let (got, error) = call(&url, Method::GET, &format!("/v1/subscribe?{query}"), None).await;
        assert_eq!(got, status, "{query}: {error}");
    }
    drop(Events::open(&url, "/v1/subscribe?durable=x&pattern=a").await);
    let (got, error) = call(&url, Method::GET, "/v1/subscribe?durable=x&pattern=b", None).await;
    assert_eq!(got, StatusCode::CONFLICT, "{error}");
}

#[tokio::test]
async fn deleting_a_subscription_ends_its_streams_with_a_reason() {
    let db = TempDb::new();
    let bus = Bus::open(db.open()).expect("open");
    let url = serve(&bus).await;
    let mut events = Events::open(&url, "/v1/subscribe?durable=gone&pattern=g").await;
    let (status, _) = call(&url, Method::DELETE, "/v1/subscriptions/gone", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(chunk) = next_chunk(&mut events.body).await.expect("stream") {
            rest.extend_from_slice(&chunk);
        }
    })
    .await
    .expect("the stream ends");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains(": disconnected: the subscription was deleted"),
        "{rest}"
    );
}
