//! The event bus end to end, on the real `strait-control` process: wildcards, consumer
//! groups, priorities under backlog, durable subscriptions (catch-up, ack deadline,
//! dead letters and replay), state across kill -9, and `straitctl events`.
//! Every case runs against both backends (`embedded::…` and `jetstream::…`, the latter on a
//! real `nats-server -js`); the `jetstream::replicas_…` cases run several controls on one
//! server. Every wait is bounded; events are read from the real Server-Sent Events stream.
//!
//! `bus_throughput` (ignored) measures publish and delivery rates; run it on a release build:
//! `cargo build --release --workspace --bins && cargo test --release -p strait-tests
//! --test control_events -- --ignored --nocapture bus_throughput`.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use strait_tests::client::http1;
use strait_tests::{eventually, Control, Nats};

/// Longest wait for anything that should happen.
const WAIT: Duration = Duration::from_secs(10);

/// The backend a case runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bus {
    /// The default: redb in the control's data directory.
    Embedded,
    /// `--bus nats://…` on a NATS server of the case's own.
    JetStream,
}

/// A case's bus: nothing to start when embedded, a NATS server when JetStream.
struct Setup {
    nats: Option<Nats>,
}

impl Setup {
    fn new(bus: Bus) -> Self {
        let nats = (bus == Bus::JetStream).then(Nats::start);
        Self { nats }
    }

    /// A control on this bus (with JetStream, every control of the setup shares it).
    fn control(&self) -> Control {
        match &self.nats {
            None => Control::start(),
            Some(nats) => Control::start_with_args(&["--bus", &nats.url()]),
        }
    }

    fn nats(&mut self) -> &mut Nats {
        self.nats.as_mut().expect("a JetStream setup")
    }
}

/// Runs each listed case (an `async fn(Bus)`) once per backend: `embedded::CASE` and
/// `jetstream::CASE`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Bus::Embedded).await
                }
            )*
        }
        mod jetstream {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Bus::JetStream).await
                }
            )*
        }
    };
}

on_both_backends!(
    wildcards_match_one_segment_or_the_rest,
    consumer_group_members_share_events,
    filters_on_source_and_metadata,
    higher_priorities_overtake_a_backlog,
    durable_subscription_catches_up_after_disconnect,
    unacked_events_are_redelivered_after_the_ack_deadline,
    dead_letters_after_max_deliveries_and_replay,
    durable_state_survives_kill9_and_restart,
    bus_routes_need_the_token_and_are_documented,
    straitctl_events,
    a_batch_is_stored_in_order_and_checked_whole_before_any_is_published,
);

/// An open `GET /v1/subscribe` stream.
struct Events {
    body: Incoming,
    buffer: Vec<u8>,
    ready: VecDeque<Value>,
}

impl Events {
    /// Subscribes with `query` and waits for the `: subscribed` comment, after which the
    /// subscription is in place.
    async fn open(control: &Control, query: &str) -> Self {
        let request = Request::get(format!("{}/v1/subscribe?{query}", control.url()))
            .header("authorization", format!("Bearer {}", control.token()))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = tokio::time::timeout(WAIT, http1().request(request))
            .await
            .expect("subscribe in time")
            .expect("subscribe");
        let status = response.status();
        let mut events = Self {
            body: response.into_body(),
            buffer: Vec::new(),
            ready: VecDeque::new(),
        };
        if status != 200 {
            let body = events.body.collect().await.map(|b| b.to_bytes());
            panic!("subscribe `{query}`: {status} {body:?}");
        }
        tokio::time::timeout(WAIT, async {
            while !events.buffer.starts_with(b": subscribed\n\n") {
                events.read_chunk().await;
            }
        })
        .await
        .expect("`: subscribed` in time");
        events.buffer.drain(..b": subscribed\n\n".len());
        events
    }

    async fn read_chunk(&mut self) {
        loop {
            let frame = self
                .body
                .frame()
                .await
                .expect("stream still open")
                .expect("stream readable");
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
                return;
            }
        }
    }

    /// Moves complete messages from the buffer to `ready`.
    fn parse(&mut self) {
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let message: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let text = String::from_utf8(message).expect("UTF-8 stream");
            for line in text.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    let event = serde_json::from_str(data).expect("event JSON");
                    self.ready.push_back(event);
                }
            }
        }
    }

    async fn next_untimed(&mut self) -> Value {
        loop {
            self.parse();
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            self.read_chunk().await;
        }
    }

    /// The next event (panics after [`WAIT`]).
    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.next_untimed())
            .await
            .expect("an event in time")
    }

    /// The next `n` events.
    async fn take(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next().await);
        }
        events
    }

    /// Asserts that no event arrives for `d`.
    async fn nothing_for(&mut self, d: Duration) {
        if let Ok(event) = tokio::time::timeout(d, self.next_untimed()).await {
            panic!("unexpected event {event}");
        }
    }
}

/// The next `n` events arriving on either of `a` and `b`, as the ids each got.
async fn take_from_either(a: &mut Events, b: &mut Events, n: usize) -> (Vec<u64>, Vec<u64>) {
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    tokio::time::timeout(WAIT, async {
        while got_a.len() + got_b.len() < n {
            // Reading a stream is cancel-safe: what arrived stays in its buffer.
            tokio::select! {
                event = a.next_untimed() => got_a.push(id(&event)),
                event = b.next_untimed() => got_b.push(id(&event)),
            }
        }
    })
    .await
    .expect("the events in time");
    (got_a, got_b)
}

async fn publish(control: &Control, topic: &str, body: Value) -> Value {
    let (status, event) = control
        .call(Method::POST, &format!("/v1/events/{topic}"), Some(body))
        .await;
    assert_eq!(status, 201, "publish to {topic}: {event}");
    event
}

async fn ack(control: &Control, subscription: &str, ids: &[u64]) -> u64 {
    let (status, answer) = control
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{subscription}/ack"),
            Some(json!({ "ids": ids })),
        )
        .await;
    assert_eq!(status, 200, "ack: {answer}");
    answer["acked"].as_u64().expect("acked")
}

async fn subscription(control: &Control, name: &str) -> Value {
    let (status, sub) = control
        .call(Method::GET, &format!("/v1/subscriptions/{name}"), None)
        .await;
    assert_eq!(status, 200, "{sub}");
    sub
}

/// Waits until durable subscription `name` has no consumer connected.
async fn wait_disconnected(control: &Control, name: &str) {
    eventually("the consumer to be gone", WAIT, || async {
        (subscription(control, name).await["consumers"] == 0).then_some(())
    })
    .await;
}

async fn dead_letters(control: &Control, name: &str) -> Vec<Value> {
    let (status, answer) = control
        .call(
            Method::GET,
            &format!("/v1/subscriptions/{name}/dead-letters"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["deadLetters"].as_array().expect("list").clone()
}

fn id(event: &Value) -> u64 {
    event["id"].as_u64().expect("event id")
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().map(id).collect()
}

async fn wildcards_match_one_segment_or_the_rest(bus: Bus) {
    let setup = Setup::new(bus);
    let control = setup.control();
    let mut star = Events::open(&control, "pattern=mesh.*.applied").await;
    let mut rest = Events::open(&control, "pattern=mesh.%3E").await;
    let mut exact = Events::open(&control, "pattern=mesh.config").await;

    let applied = publish(&control, "mesh.config.applied", json!({"data": 1})).await;
    let config = publish(&control, "mesh.config", json!({"data": 2})).await;
    let deep = publish(&control, "mesh.config.applied.v2", json!({"data": 3})).await;
    publish(&control, "orders.config.applied", json!({"data": 4})).await;

    assert_eq!(id(&star.next().await), id(&applied));
    assert_eq!(
        ids(&rest.take(3).await),
        ids(&[applied, config.clone(), deep])
    );
    assert_eq!(id(&exact.next().await), id(&config));
    // A marker both see next: nothing else reached them in between.
    let marker = publish(&control, "mesh.marker.applied", json!({"data": 5})).await;
    assert_eq!(id(&star.next().await), id(&marker));
    assert_eq!(id(&rest.next().await), id(&marker));
    exact.nothing_for(Duration::from_millis(200)).await;

    // `>` needs at least one more segment; patterns are checked.
    let mut greedy = Events::open(&control, "pattern=mesh.config.%3E").await;
    publish(&control, "mesh.config", json!({"data": 6})).await;
    let v3 = publish(&control, "mesh.config.applied.v3", json!({"data": 7})).await;
    assert_eq!(id(&greedy.next().await), id(&v3));
    let (status, error) = control
        .call(Method::GET, "/v1/subscribe?pattern=a.%3E.b", None)
        .await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().expect("message").contains("last"));
}

async fn consumer_group_members_share_events(bus: Bus) {
    let setup = Setup::new(bus);
    let control = setup.control();
    let mut a = Events::open(&control, "pattern=jobs.*&group=workers").await;
    let mut b = Events::open(&control, "pattern=jobs.*&group=workers").await;
    let mut audit = Events::open(&control, "pattern=jobs.*").await;

    let mut published = Vec::new();
    for n in 0..20 {
        published.push(id(
            &publish(&control, "jobs.created", json!({"data": n})).await
        ));
    }
    let (got_a, got_b) = take_from_either(&mut a, &mut b, published.len()).await;
    assert_eq!(ids(&audit.take(20).await), published, "broadcast gets all");
    a.nothing_for(Duration::from_millis(200)).await;
    b.nothing_for(Duration::from_millis(10)).await;
    let union: BTreeSet<u64> = got_a.iter().chain(&got_b).copied().collect();
    assert_eq!(union.len(), 20, "none twice: {got_a:?} {got_b:?}");
    assert_eq!(union.into_iter().collect::<Vec<_>>(), published);
    match bus {
        // Strict alternation.
        Bus::Embedded => {
            assert_eq!((got_a.len(), got_b.len()), (10, 10));
            assert!(got_a
                .iter()
                .all(|i| (i - published[0]) % 2 == (got_a[0] - published[0]) % 2));
        }
        // A NATS queue group picks a member at random: both get a share.
        Bus::JetStream => assert!(!got_a.is_empty() && !got_b.is_empty()),
    }

    // Once a member has left, the other gets everything (probes sent to the departed member
    // before the control noticed are lost with it: groups are not durable).
    drop(a);
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "the group never shrank");
        publish(&control, "jobs.created", json!({"data": "probe"})).await;
        if tokio::time::timeout(Duration::from_millis(300), b.next_untimed())
            .await
            .is_ok()
        {
            break;
        }
    }
    let after: Vec<u64> = {
        let mut after = Vec::new();
        for n in 0..4 {
            after.push(id(
                &publish(&control, "jobs.created", json!({"data": n})).await
            ));
        }
        after
    };
    let mut got = Vec::new();
    while got.len() < after.len() {
        let event = b.next().await;
        if event["data"] != "probe" {
            got.push(id(&event));
        }
    }
    assert_eq!(got, after);
}

async fn filters_on_source_and_metadata(bus: Bus) {
    let setup = Setup::new(bus);
    let control = setup.control();
    let mut eu = Events::open(&control, "pattern=%3E&source=proxy-1&meta.zone=eu").await;
    publish(&control, "a.b", json!({"data": 1, "source": "proxy-1"})).await;
    publish(
        &control,
        "a.b",
        json!({"data": 2, "source": "proxy-2", "metadata": {"zone": "eu"}}),
    )
    .await;
    let both = publish(
        &control,
        "a.b",
        json!({"data": 3, "source": "proxy-1", "metadata": {"zone": "eu", "tier": "gold"}}),
    )
    .await;
    assert_eq!(id(&eu.next().await), id(&both));
    eu.nothing_for(Duration::from_millis(200)).await;
}

async fn higher_priorities_overtake_a_backlog(bus: Bus) {
    let setup = Setup::new(bus);
    let control = setup.control();
    // One unacknowledged event at a time: whatever is published meanwhile is backlog.
    let mut events = Events::open(&control, "durable=prio&pattern=p.%3E&maxInFlight=1").await;
    let first = publish(&control, "p.x", json!({"priority": "low", "data": "first"})).await;
    assert_eq!(id(&events.next().await), id(&first));
    for priority in ["low", "normal", "critical", "low", "high", "critical"] {
        publish(
            &control,
            "p.x",
            json!({"priority": priority, "data": priority}),
        )
        .await;
    }
    events.nothing_for(Duration::from_millis(100)).await;
    ack(&control, "prio", &[id(&first)]).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let event = events.next().await;
        order.push(event["priority"].as_str().expect("priority").to_owned());
        ack(&control, "prio", &[id(&event)]).await;
    }
    assert_eq!(
        order,
        ["critical", "critical", "high", "normal", "low", "low"]
    );
}

async fn durable_subscription_catches_up_after_disconnect(bus: Bus) {
    let setup = Setup::new(bus);
    let control = setup.control();
    let mut events = Events::open(&control, "durable=orders&pattern=orders.%3E").await;
    let before = publish(&control, "orders.created", json!({"data": 0})).await;
    let got = events.next().await;
    assert_eq!(
        (id(&got), got["deliveries"].clone()),
        (id(&before), json!(1))
    );
    assert_eq!(ack(&control, "orders", &[id(&before)]).await, 1);
    drop(events);
    wait_disconnected(&control, "orders").await;

    let mut missed = Vec::new();
    for n in 1..=5 {
        missed.push(publish(&control, &format!("orders.n{n}"), json!({"data": n})).await);
    }
    publish(&control, "payments.done", json!({"data": "not for us"})).await;
    assert_eq!(subscription(&control, "orders").await["backlog"], 5);

    let mut events = Events::open(&control, "durable=orders").await;
    let caught_up = events.take(5).await;
    assert_eq!(
        ids(&caught_up),
        ids(&missed),
        "in publication order, nothing acked again"
    );
    assert!(caught_up.iter().all(|e| e["deliveries"] == 1));
    assert_eq!(ack(&control, "orders", &ids(&caught_up)).await, 5);
    events.nothing_for(Duration::from_millis(200)).await;
    let sub = subscription(&control, "orders").await;
    assert_eq!(
        (sub["backlog"].clone(), sub["unacked"].clone()),
        (json!(0), json!(0))
    );
}

async fn a_batch_is_stored_in_order_and_checked_whole_before_any_is_published(bus: Bus) {
    let setup = Setup::new(bus);
    let control = setup.control();
    let mut durable = Events::open(&control, "durable=batches&pattern=batch.%3E").await;
    let mut live = Events::open(&control, "pattern=batch.%3E").await;
    let (status, answer) = control
        .call(
            Method::POST,
            "/v1/events/batch.made/batch",
            Some(json!({"events": [
                {"data": 1},
                {"data": 2, "source": "producer-7"},
                {"data": 3, "metadata": {"k": "v"}},
            ]})),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let stored = answer["events"].as_array().expect("events").clone();
    assert_eq!(stored.len(), 3, "{answer}");
    assert!(ids(&stored).windows(2).all(|w| w[0] < w[1]), "{answer}");
    assert_eq!(stored[1]["source"], "producer-7");
    assert_eq!(ids(&live.take(3).await), ids(&stored));
    let delivered = durable.take(3).await;
    assert_eq!(ids(&delivered), ids(&stored));
    assert_eq!(
        delivered
            .iter()
            .map(|e| e["data"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(2), json!(3)]
    );
    assert_eq!(ack(&control, "batches", &ids(&delivered)).await, 3);

    // One bad event refuses the whole batch: nothing of it is published.
    let too_long = "x".repeat(300);
    let (status, error) = control
        .call(
            Method::POST,
            "/v1/events/batch.made/batch",
            Some(json!({"events": [{"data": 4}, {"data": 5, "source": too_long}]})),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("events[1]")),
        "{error}"
    );
    let (status, _) = control
        .call(
            Method::POST,
            "/v1/events/batch.made/batch",
            Some(json!({"events": []})),
        )
        .await;
    assert_eq!(status, 400, "an empty batch");
    let marker = publish(&control, "batch.marker", json!({"data": 6})).await;
    assert_eq!(id(&live.next().await), id(&marker), "nothing in between");
}

async fn unacked_events_are_redelivered_after_the_ack_deadline(bus: Bus) {
    let setup = Setup::new(bus);
    let control = setup.control();
    let (status, sub) = control
        .call(
            Method::PUT,
            "/v1/subscriptions/slow",
            Some(json!({"pattern": "work.*", "ackDeadline": "300ms"})),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    let mut events = Events::open(&control, "durable=slow").await;
    let event = publish(&control, "work.item", json!({"data": "x"})).await;
    let first = events.next().await;
    let delivered_at = Instant::now();
    assert_eq!(
        (id(&first), first["deliveries"].clone()),
        (id(&event), json!(1))
    );
    assert_eq!(subscription(&control, "slow").await["unacked"], 1);
    let again = events.next().await;
    assert!(
        delivered_at.elapsed() >= Duration::from_millis(200),
        "not before the deadline"
    );
    assert_eq!(
        (id(&again), again["deliveries"].clone()),
        (id(&event), json!(2))
    );
    ack(&control, "slow", &[id(&event)]).await;
    events.nothing_for(Duration::from_millis(700)).await;
}

async fn dead_letters_after_max_deliveries_and_replay(bus: Bus) {
    let setup = Setup::new(bus);
    let control = setup.control();
    let (status, _) = control
        .call(
            Method::PUT,
            "/v1/subscriptions/dlq",
            Some(json!({"pattern": "pay.>", "ackDeadline": "200ms", "maxDeliveries": 3})),
        )
        .await;
    assert_eq!(status, 201);
    let mut events = Events::open(&control, "durable=dlq").await;
    let poison = publish(&control, "pay.in", json!({"data": "poison"})).await;
    let fine = publish(&control, "pay.in", json!({"data": "fine"})).await;
    let mut deliveries = Vec::new();
    while deliveries.len() < 3 {
        let event = events.next().await;
        if id(&event) == id(&fine) {
            ack(&control, "dlq", &[id(&fine)]).await;
        } else {
            assert_eq!(id(&event), id(&poison));
            deliveries.push(event["deliveries"].as_u64().expect("deliveries"));
        }
    }
    assert_eq!(deliveries, [1, 2, 3]);
    let letters = eventually("the dead letter", WAIT, || async {
        let letters = dead_letters(&control, "dlq").await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (id(&letters[0]), letters[0]["deliveries"].clone()),
        (id(&poison), json!(3))
    );
    assert_eq!(letters[0]["data"], "poison");
    assert!(letters[0]["deadAt"].is_string());
    events.nothing_for(Duration::from_millis(400)).await;
    let sub = subscription(&control, "dlq").await;
    assert_eq!(
        (sub["dead"].clone(), sub["unacked"].clone()),
        (json!(1), json!(0))
    );
    let metrics =
        strait_tests::client::get(&http1(), &format!("{}/metrics", control.url()), "x", &[])
            .await
            .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("strait_control_events_dead_total 1"),
        "{text}"
    );

    // Replay: back in the backlog with the count reset.
    let (status, replayed) = control
        .call(
            Method::POST,
            "/v1/subscriptions/dlq/dead-letters/replay",
            Some(json!({"ids": [id(&poison)]})),
        )
        .await;
    assert_eq!((status, replayed["replayed"].clone()), (200, json!(1)));
    let again = events.next().await;
    assert_eq!(
        (id(&again), again["deliveries"].clone()),
        (id(&poison), json!(1))
    );
    ack(&control, "dlq", &[id(&poison)]).await;
    assert!(dead_letters(&control, "dlq").await.is_empty());
}

async fn durable_state_survives_kill9_and_restart(bus: Bus) {
    let setup = Setup::new(bus);
    let mut control = setup.control();
    let (status, _) = control
        .call(
            Method::PUT,
            "/v1/subscriptions/keep",
            Some(json!({"pattern": "k.>", "ackDeadline": "200ms", "maxDeliveries": 1})),
        )
        .await;
    assert_eq!(status, 201);
    // One dead letter...
    let mut events = Events::open(&control, "durable=keep").await;
    let dead = publish(&control, "k.a", json!({"data": "dead"})).await;
    assert_eq!(id(&events.next().await), id(&dead));
    eventually("the dead letter", WAIT, || async {
        (!dead_letters(&control, "keep").await.is_empty()).then_some(())
    })
    .await;
    drop(events);
    wait_disconnected(&control, "keep").await;
    // ...and a backlog, published while nobody listens.
    let low = publish(&control, "k.a", json!({"priority": "low", "data": "low"})).await;
    let critical = publish(
        &control,
        "k.b",
        json!({"priority": "critical", "data": "critical"}),
    )
    .await;

    control.kill9();
    control.restart();

    let sub = subscription(&control, "keep").await;
    assert_eq!(
        (
            sub["pattern"].clone(),
            sub["ackDeadline"].clone(),
            sub["backlog"].clone(),
            sub["dead"].clone()
        ),
        (json!("k.>"), json!("200ms"), json!(2), json!(1))
    );
    let letters = dead_letters(&control, "keep").await;
    assert_eq!(ids(&letters), [id(&dead)]);
    let (_, history) = control
        .call(Method::GET, "/v1/events/k.a/history", None)
        .await;
    assert_eq!(
        ids(history["events"].as_array().expect("events")),
        [id(&dead), id(&low)]
    );

    let mut events = Events::open(&control, "durable=keep").await;
    let backlog = events.take(2).await;
    assert_eq!(ids(&backlog), [id(&critical), id(&low)], "priority order");
    ack(&control, "keep", &ids(&backlog)).await;
    let newer = publish(&control, "k.c", json!({"data": "after restart"})).await;
    assert!(
        id(&newer) > id(&critical),
        "ids keep increasing across restarts"
    );
    assert_eq!(id(&events.next().await), id(&newer));
    ack(&control, "keep", &[id(&newer)]).await;

    // Acks were durable too.
    drop(events);
    control.restart();
    let sub = subscription(&control, "keep").await;
    assert_eq!(
        (sub["backlog"].clone(), sub["dead"].clone()),
        (json!(0), json!(1))
    );
}

async fn bus_routes_need_the_token_and_are_documented(bus: Bus) {
    let setup = Setup::new(bus);
    let control = setup.control();
    let (status, _) = control
        .call_as(
            None,
            Method::POST,
            "/v1/events/a.b",
            Some(json!({"data": 1})),
        )
        .await;
    assert_eq!(status, 401);
    let (status, error) = control
        .call(Method::POST, "/v1/events/a..b", Some(json!({"data": 1})))
        .await;
    assert_eq!(status, 400);
    assert!(error["error"]
        .as_str()
        .expect("message")
        .contains("segment 2 is empty"));
    let (status, doc) = control.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in [
        "/v1/events/{topic}",
        "/v1/subscribe",
        "/v1/subscriptions/{name}/dead-letters/replay",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} in /openapi.json");
    }
}

fn straitctl_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("straitctl")
}

async fn straitctl(control: &Arc<Control>, args: &[&str]) -> (i32, String, String) {
    let control = control.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        control.straitctl(&args)
    })
    .await
    .expect("straitctl ran");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn straitctl_events(bus: Bus) {
    let setup = Setup::new(bus);
    let control = Arc::new(setup.control());
    // tail --durable --ack in the background, printing JSON lines.
    let mut tail = Command::new(straitctl_bin())
        .args(["--server", &control.url(), "--token-file"])
        .arg(control.token_file())
        .args(["events", "tail", "cli.>", "--durable", "cli", "--ack"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn straitctl events tail");
    let stdout = tail.stdout.take().expect("stdout");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    eventually("tail to subscribe", WAIT, || async {
        let (status, sub) = control
            .call(Method::GET, "/v1/subscriptions/cli", None)
            .await;
        (status == 200 && sub["consumers"] == 1).then_some(())
    })
    .await;

    let (code, out, err) = straitctl(
        &control,
        &[
            "events",
            "publish",
            "cli.hello",
            "--priority",
            "high",
            "--source",
            "me",
            "--meta",
            "zone=eu",
            "--data",
            "{\"n\":1}",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let published: Value = serde_json::from_str(&out).expect("publish prints the event");
    let line = tokio::time::timeout(WAIT, lines.recv())
        .await
        .expect("a line in time")
        .expect("tail running");
    let tailed: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(
        (tailed["id"].clone(), tailed["priority"].clone()),
        (published["id"].clone(), json!("high"))
    );
    assert_eq!(
        (tailed["source"].clone(), tailed["metadata"]["zone"].clone()),
        (json!("me"), json!("eu"))
    );
    eventually("tail to ack", WAIT, || async {
        let sub = subscription(&control, "cli").await;
        (sub["unacked"] == 0 && sub["backlog"] == 0).then_some(())
    })
    .await;
    // Ctrl-C ends tail cleanly.
    let pid = tail.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    let status = tokio::task::spawn_blocking(move || tail.wait())
        .await
        .expect("joined")
        .expect("tail exits");
    assert_eq!(status.code(), Some(0));

    let (code, out, err) = straitctl(&control, &["events", "history", "cli.hello"]).await;
    assert_eq!(code, 0, "{err}");
    let history: Value = serde_json::from_str(&out).expect("history JSON");
    assert_eq!(history["events"][0]["id"], published["id"]);
    let (code, out, _) = straitctl(&control, &["events", "dead-letters", "cli"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("JSON")["deadLetters"],
        json!([])
    );
    let (code, out, _) = straitctl(&control, &["events", "replay", "cli"]).await;
    assert_eq!(
        (
            code,
            serde_json::from_str::<Value>(&out).expect("JSON")["replayed"].clone()
        ),
        (0, json!(0))
    );
    let (code, _, err) = straitctl(&control, &["events", "publish", "bad..topic"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("segment 2 is empty"), "{err}");
    let (code, _, err) = straitctl(&control, &["events", "dead-letters", "nope"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no durable subscription"), "{err}");
}

/// Several controls on one NATS server are one bus: what is published through one reaches
/// live and durable subscribers on another, and an ack through either settles a delivery.
#[tokio::test]
async fn replicas_on_jetstream_are_one_bus() {
    let setup = Setup::new(Bus::JetStream);
    let (a, b) = (setup.control(), setup.control());
    let mut live = Events::open(&b, "pattern=orders.%3E").await;
    let (status, _) = a
        .call(
            Method::PUT,
            "/v1/subscriptions/shared",
            Some(json!({"pattern": "orders.>"})),
        )
        .await;
    assert_eq!(status, 201);
    let mut durable = Events::open(&b, "durable=shared").await;

    let event = publish(&a, "orders.created", json!({"data": "through a"})).await;
    assert_eq!(id(&live.next().await), id(&event));
    let got = durable.next().await;
    assert_eq!(
        (id(&got), got["data"].clone()),
        (id(&event), json!("through a"))
    );
    assert_eq!(subscription(&a, "shared").await["unacked"], 1);
    // Acked through the replica that did not deliver it.
    assert_eq!(ack(&a, "shared", &[id(&event)]).await, 1);
    let sub = subscription(&b, "shared").await;
    assert_eq!(
        (sub["unacked"].clone(), sub["backlog"].clone()),
        (json!(0), json!(0))
    );
    // The other way round, and history is shared too.
    let mut live_a = Events::open(&a, "pattern=orders.%3E").await;
    let back = publish(&b, "orders.paid", json!({"data": "through b"})).await;
    assert_eq!(id(&live_a.next().await), id(&back));
    let (_, history) = a
        .call(Method::GET, "/v1/events/orders.paid/history", None)
        .await;
    assert_eq!(
        ids(history["events"].as_array().expect("events")),
        [id(&back)]
    );
    let (_, list) = b.call(Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(list["subscriptions"][0]["name"], "shared");
}

/// A durable subscription lives in the NATS server: it survives every replica being killed
/// and the server itself restarting, with its backlog, and a new replica serves it.
#[tokio::test]
async fn durable_subscription_survives_every_replica_and_a_server_restart() {
    let mut setup = Setup::new(Bus::JetStream);
    let (mut a, mut b) = (setup.control(), setup.control());
    let (status, _) = a
        .call(
            Method::PUT,
            "/v1/subscriptions/keep",
            Some(json!({"pattern": "k.>", "maxDeliveries": 2})),
        )
        .await;
    assert_eq!(status, 201);
    let low = publish(&b, "k.a", json!({"priority": "low", "data": "low"})).await;
    let high = publish(&a, "k.b", json!({"priority": "high", "data": "high"})).await;

    a.kill9();
    b.kill9();
    setup.nats().restart();
    a.restart();
    let after = publish(&a, "k.c", json!({"data": "after"})).await;
    let c = setup.control();

    let sub = subscription(&c, "keep").await;
    assert_eq!(
        (
            sub["pattern"].clone(),
            sub["maxDeliveries"].clone(),
            sub["backlog"].clone()
        ),
        (json!("k.>"), json!(2), json!(3))
    );
    let mut events = Events::open(&c, "durable=keep").await;
    let backlog = events.take(3).await;
    assert_eq!(
        ids(&backlog),
        [id(&high), id(&after), id(&low)],
        "priority order"
    );
    assert_eq!(ack(&c, "keep", &ids(&backlog)).await, 3);
    assert!(
        id(&after) > id(&high),
        "ids keep increasing across restarts"
    );
}

/// kill -9 of the replica a publisher and a consumer use loses no event the publisher was
/// answered 201 for: what the dead replica delivered but nobody acked is redelivered by
/// another after the ack deadline.
#[tokio::test]
async fn kill9_of_a_replica_loses_no_acknowledged_event() {
    let setup = Setup::new(Bus::JetStream);
    let mut a = setup.control();
    let b = setup.control();
    let (status, _) = b
        .call(
            Method::PUT,
            "/v1/subscriptions/work",
            Some(json!({"pattern": "w.>", "ackDeadline": "500ms"})),
        )
        .await;
    assert_eq!(status, 201);
    // A consumer on the replica about to die, holding what it gets unacked.
    let mut doomed = Events::open(&a, "durable=work").await;
    let mut acknowledged = BTreeSet::new();
    for n in 0..20 {
        acknowledged.insert(id(&publish(&a, "w.item", json!({"data": n})).await));
    }
    doomed.take(5).await;
    // Publishing through the replica as it dies: every 201 counts.
    let url = a.url();
    let token = a.token().to_owned();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    let publisher = tokio::spawn(async move {
        let client = http1();
        let mut answered = Vec::new();
        for n in 0.. {
            let request = Request::post(format!("{url}/v1/events/w.item"))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(json!({"data": n}).to_string())))
                .expect("request");
            let Ok(response) = client.request(request).await else {
                return answered;
            };
            if response.status() != 201 {
                return answered;
            }
            let Ok(body) = response.into_body().collect().await else {
                return answered;
            };
            let event: Value = serde_json::from_slice(&body.to_bytes()).expect("event");
            answered.push(id(&event));
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        answered
    });
    eventually("publishes through the replica", WAIT, || async {
        (count.load(std::sync::atomic::Ordering::Relaxed) > 30).then_some(())
    })
    .await;
    a.kill9();
    let answered = tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publisher stops with the replica")
        .expect("publisher");
    acknowledged.extend(answered);
    drop(doomed);

    let mut events = Events::open(&b, "durable=work").await;
    let mut missing = acknowledged.clone();
    while !missing.is_empty() {
        let event = events.next().await;
        missing.remove(&id(&event));
        ack(&b, "work", &[id(&event)]).await;
    }
}

/// Publishes `count` events to `bench.endpoint.ejected` from `concurrency` tasks, each with
/// its own kept-alive connection, waiting for every 201.
async fn publish_load(control: &Arc<Control>, count: usize, concurrency: usize) {
    let payload = json!({"data": {"service": "checkout", "endpoint": "10.0.0.7:8080", "reason": "5 consecutive 5xx"}}).to_string();
    let mut publishers = Vec::new();
    for p in 0..concurrency {
        let control = control.clone();
        let payload = payload.clone();
        publishers.push(tokio::spawn(async move {
            let client = http1();
            for _ in (p..count).step_by(concurrency) {
                let request = Request::post(format!(
                    "{}/v1/events/bench.endpoint.ejected",
                    control.url()
                ))
                .header("authorization", format!("Bearer {}", control.token()))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(payload.clone())))
                .expect("request");
                let response = client.request(request).await.expect("publish");
                assert_eq!(response.status(), 201);
                response.into_body().collect().await.expect("body");
            }
        }));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
}

/// Consumes `count` events of durable subscription `bench`, acknowledging them as a good
/// client would: while one ack request is in flight, the next ids accumulate (group ack).
/// Returns when the last ack is committed.
async fn consume_load(control: Arc<Control>, count: usize) -> Instant {
    let mut events = Events::open(&control, "durable=bench").await;
    let (ids_tx, mut ids_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let acker_control = control.clone();
    let acker = tokio::spawn(async move {
        let mut acked = 0;
        while let Some(first) = ids_rx.recv().await {
            let mut batch = vec![first];
            while let Ok(id) = ids_rx.try_recv() {
                batch.push(id);
            }
            acked += ack(&acker_control, "bench", &batch).await;
        }
        acked
    });
    for _ in 0..count {
        let event = events.next().await;
        ids_tx.send(id(&event)).expect("acker running");
    }
    drop(ids_tx);
    let acked = acker.await.expect("acker");
    assert_eq!(acked, count as u64);
    Instant::now()
}

fn rate(count: usize, d: Duration) -> String {
    format!("{:.0}/s ({d:.2?})", count as f64 / d.as_secs_f64())
}

/// Publish and delivery rates of one control (see the file's docs for the command).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, not a test: run it on a release build"]
async fn bus_throughput() {
    const EVENTS: usize = 20_000;
    let setup = Setup::new(Bus::Embedded);
    let control = Arc::new(setup.control());
    let (status, _) = control
        .call(
            Method::PUT,
            "/v1/subscriptions/bench",
            Some(json!({"pattern": "bench.>", "maxInFlight": 10000})),
        )
        .await;
    assert_eq!(status, 201);

    // 1. Publish into the durable subscription's backlog (nobody connected), then drain it.
    for concurrency in [1, 16, 64] {
        let count = if concurrency == 1 { 2_000 } else { EVENTS };
        let start = Instant::now();
        publish_load(&control, count, concurrency).await;
        let published = start.elapsed();
        let start = Instant::now();
        let done = consume_load(control.clone(), count).await;
        println!(
            "bus_throughput: {count} events, {concurrency} publishers, no consumer: publish {}; then drain the backlog (deliver + ack): {}",
            rate(count, published),
            rate(count, done - start)
        );
        wait_disconnected(&control, "bench").await;
    }

    // 2. Publish and consume at the same time.
    for concurrency in [16, 64] {
        let consumer = tokio::spawn(consume_load(control.clone(), EVENTS));
        eventually("the consumer", WAIT, || async {
            (subscription(&control, "bench").await["consumers"] == 1).then_some(())
        })
        .await;
        let start = Instant::now();
        publish_load(&control, EVENTS, concurrency).await;
        let published = start.elapsed();
        let done = tokio::time::timeout(Duration::from_secs(120), consumer)
            .await
            .expect("consumer in time")
            .expect("consumer");
        println!(
            "bus_throughput: {EVENTS} events, {concurrency} publishers, 1 consumer connected: publish {}, published to acked {}",
            rate(EVENTS, published),
            rate(EVENTS, done - start)
        );
        wait_disconnected(&control, "bench").await;
    }
    let sub = subscription(&control, "bench").await;
    assert_eq!(
        (sub["backlog"].clone(), sub["unacked"].clone()),
        (json!(0), json!(0)),
        "{sub}"
    );
}
