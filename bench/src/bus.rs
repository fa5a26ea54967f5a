//! Scenario `bus`: the control's event bus through its HTTP API, as a user drives it —
//! events published by 64 keep-alive connections (`POST /v1/events/{topic}`, each answered
//! 201 once stored) to one Server-Sent Events subscriber — on each backend: embedded (redb)
//! and NATS JetStream (`--bus nats://…`, skipped when `nats-server` is not installed).
//!
//! Each runs with one event per request, and again as a producer with many events would
//! publish: [`BATCH`] events per `POST /v1/events/{topic}/batch`.
//!
//! - live: a plain subscriber (`?pattern=…`); the rate is events over the time from the first
//!   publish to the last delivery;
//! - durable: a durable subscription's consumer that acks what it gets in batches (while one
//!   ack request is out, the next ids gather); the rate runs to the last ack answered.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::report::Results;
use crate::settings::Settings;

const SCENARIO: &str = "event bus";
pub(crate) const TOKEN: &str = "bench-token";
/// Publishing connections.
const PUBLISHERS: usize = 64;
/// Events per batch publish.
const BATCH: usize = 100;
/// Longest wait for one run.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A process killed on drop.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A control (and its NATS server) under test.
struct Bus {
    name: &'static str,
    address: SocketAddr,
    _processes: Vec<Process>,
}

/// Runs the scenario on each backend, `settings.rounds` times.
pub async fn bus(settings: &Settings, control: &Path, work: &Path, results: &mut Results) {
    let (live, durable) = if settings.quick {
        (1_000, 2_000)
    } else {
        (8_000, 20_000)
    };
    for name in ["embedded", "jetstream"] {
        let dir = work.join(format!("bus-{name}"));
        let bus = match start(name, control, &dir) {
            Ok(bus) => bus,
            Err(e) => {
                eprintln!("skipped the event bus on {name}: {e}");
                continue;
            }
        };
        for round in 0..settings.rounds {
            for batch in [1, BATCH] {
                let per = if batch == 1 {
                    String::new()
                } else {
                    format!(", batches of {batch}")
                };
                // Batches run five times the events: a few requests would time one commit.
                let scale = if batch == 1 { 1 } else { 5 };
                match run_live(&bus, round, live * scale, batch).await {
                    Ok(rate) => results.add(
                        SCENARIO,
                        &format!("live events/s (publish → deliver){per}"),
                        name,
                        rate,
                    ),
                    Err(e) => {
                        eprintln!("event bus on {name}, live: {e}");
                        results.errors(name, 1);
                    }
                }
                match run_durable(&bus, round, durable * scale, batch).await {
                    Ok(rate) => results.add(
                        SCENARIO,
                        &format!("durable events/s (publish → deliver → ack){per}"),
                        name,
                        rate,
                    ),
                    Err(e) => {
                        eprintln!("event bus on {name}, durable: {e}");
                        results.errors(name, 1);
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn start(name: &'static str, control: &Path, dir: &Path) -> Result<Bus, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).map_err(|e| e.to_string())?;
    let mut processes = Vec::new();
    let mut args: Vec<String> = Vec::new();
    if name == "jetstream" {
        let (nats, url) = start_nats(&dir.join("nats"))?;
        processes.push(nats);
        args.extend(["--bus".to_owned(), url]);
    }
    let mut child = Command::new(control)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--token-file")
        .arg(&token)
        .args(&args)
        .env("RUST_LOG", "warn,strait_control::server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", control.display()))?;
    let lines = watch(child.stderr.take());
    let process = Process(child);
    let address = wait_for(&lines, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["fields"]["message"] == "listening")
            .then(|| v["fields"]["address"].as_str()?.parse().ok())?
    })
    .ok_or("the control did not start")?;
    processes.push(process);
    Ok(Bus {
        name,
        address,
        _processes: processes,
    })
}

pub(crate) fn start_nats(dir: &Path) -> Result<(Process, String), String> {
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.map_err(|e| format!("nats-server not found ({e})"))?;
    let lines = watch(child.stderr.take());
    let process = Process(child);
    let address: SocketAddr = wait_for(&lines, |line| {
        line.split_once("Listening for client connections on ")?
            .1
            .trim()
            .parse()
            .ok()
    })
    .ok_or("nats-server did not start")?;
    wait_for(&lines, |line| {
        line.contains("Server is ready").then_some(())
    })
    .ok_or("nats-server was not ready")?;
    Ok((process, format!("nats://{address}")))
}

/// Collects a process's stderr lines.
pub(crate) fn watch(stderr: Option<std::process::ChildStderr>) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    if let Some(stderr) = stderr {
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut lines) = sink.lock() {
                    lines.push(line);
                }
            }
        });
    }
    lines
}

/// The first value `find` gets from a line, within 10 s.
pub(crate) fn wait_for<T>(
    lines: &Mutex<Vec<String>>,
    find: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(found) = lines
            .lock()
            .ok()
            .and_then(|lines| lines.iter().find_map(|l| find(l)))
        {
            return Some(found);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

pub(crate) type Sender = http1::SendRequest<Full<Bytes>>;

pub(crate) async fn connect(address: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one request; the answer's status and body.
pub(crate) async fn call(
    sender: &mut Sender,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(u16, Bytes), String> {
    let response = send(sender, method, path, body).await?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

async fn send(
    sender: &mut Sender,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<hyper::Response<Incoming>, String> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "control")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// An open subscription stream: yields event ids.
struct Stream {
    body: Incoming,
    buffer: Vec<u8>,
    _sender: Sender,
}

impl Stream {
    async fn open(bus: &Bus, query: &str) -> Result<Stream, String> {
        let mut sender = connect(bus.address).await?;
        let response = send(
            &mut sender,
            Method::GET,
            &format!("/v1/subscribe?{query}"),
            None,
        )
        .await?;
        if response.status() != 200 {
            return Err(format!("subscribe: {}", response.status()));
        }
        let mut stream = Stream {
            body: response.into_body(),
            buffer: Vec::new(),
            _sender: sender,
        };
        // The subscription is in place once `: subscribed` arrived.
        while !stream.buffer.starts_with(b": subscribed\n\n") {
            stream.read().await?;
        }
        stream.buffer.drain(..b": subscribed\n\n".len());
        Ok(stream)
    }

    async fn read(&mut self) -> Result<(), String> {
        loop {
            let frame = self
                .body
                .frame()
                .await
                .ok_or("the stream ended")?
                .map_err(|e| e.to_string())?;
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
                return Ok(());
            }
        }
    }

    /// The ids of the complete messages received so far (waits for at least one message).
    async fn next_ids(&mut self) -> Result<Vec<u64>, String> {
        loop {
            let mut ids = Vec::new();
            let mut consumed = 0;
            while let Some(end) = self.buffer[consumed..]
                .windows(2)
                .position(|w| w == b"\n\n")
            {
                let message = &self.buffer[consumed..consumed + end];
                if let Some(id) = message
                    .strip_prefix(b"id: ")
                    .and_then(|rest| rest.split(|&b| b == b'\n').next())
                    .and_then(|id| std::str::from_utf8(id).ok()?.parse().ok())
                {
                    ids.push(id);
                }
                consumed += end + 2;
            }
            self.buffer.drain(..consumed);
            if !ids.is_empty() {
                return Ok(ids);
            }
            self.read().await?;
        }
    }
}

/// Publishes `count` events to `topic` from [`PUBLISHERS`] connections, `batch` per request.
async fn publish(bus: &Bus, topic: &str, count: usize, batch: usize) -> Result<(), String> {
    let event = serde_json::json!({"data": {"service": "checkout", "endpoint": "10.0.0.7:8080", "reason": "5 consecutive 5xx"}});
    let requests = count.div_ceil(batch);
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS.min(requests) {
        let mut sender = connect(bus.address).await?;
        let (topic, event) = (topic.to_owned(), event.clone());
        tasks.push(tokio::spawn(async move {
            for r in (p..requests).step_by(PUBLISHERS) {
                let n = batch.min(count - r * batch);
                let (path, payload) = if batch == 1 {
                    (format!("/v1/events/{topic}"), event.to_string())
                } else {
                    let events = vec![event.clone(); n];
                    (
                        format!("/v1/events/{topic}/batch"),
                        serde_json::json!({ "events": events }).to_string(),
                    )
                };
                let (status, body) = call(&mut sender, Method::POST, &path, Some(payload)).await?;
                if status != 201 {
                    return Err(format!(
                        "publish: {status} {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

async fn run_live(bus: &Bus, round: usize, count: usize, batch: usize) -> Result<f64, String> {
    let topic = format!("bench.live.r{round}b{batch}");
    let mut stream = Stream::open(bus, &format!("pattern={topic}")).await?;
    let start = Instant::now();
    let receive = async {
        let mut received = 0;
        while received < count {
            received += stream.next_ids().await?.len();
        }
        Ok::<_, String>(())
    };
    let (published, received) = tokio::time::timeout(RUN_LIMIT, async {
        tokio::join!(publish(bus, &topic, count, batch), receive)
    })
    .await
    .map_err(|_| {
        format!(
            "{count} events not delivered in {RUN_LIMIT:?} on {}",
            bus.name
        )
    })?;
    published?;
    received?;
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

async fn run_durable(bus: &Bus, round: usize, count: usize, batch: usize) -> Result<f64, String> {
    let name = format!("bench-r{round}b{batch}");
    let mut admin = connect(bus.address).await?;
    let settings = serde_json::json!({"pattern": "bench.durable.>", "maxInFlight": 10_000});
    let path = format!("/v1/subscriptions/{name}");
    let (status, body) = call(&mut admin, Method::PUT, &path, Some(settings.to_string())).await?;
    if status != 201 {
        return Err(format!(
            "create: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let mut stream = Stream::open(bus, &format!("durable={name}")).await?;
    let mut acker = Some(connect(bus.address).await?);
    let ack_path = format!("/v1/subscriptions/{name}/ack");
    let start = Instant::now();
    let consume = async {
        let (mut acked, mut pending) = (0, Vec::new());
        let mut ack: Option<tokio::task::JoinHandle<Result<(Sender, usize), String>>> = None;
        while acked < count {
            tokio::select! {
                ids = stream.next_ids(), if pending.len() + acked < count => pending.extend(ids?),
                done = async { ack.as_mut().expect("guarded").await }, if ack.is_some() => {
                    ack = None;
                    let (sender, n) = done.map_err(|e| e.to_string())??;
                    acker = Some(sender);
                    acked += n;
                }
            }
            if ack.is_some() || pending.is_empty() {
                continue;
            }
            if let Some(mut sender) = acker.take() {
                let ids = std::mem::take(&mut pending);
                let n = ids.len();
                let body = serde_json::json!({ "ids": ids }).to_string();
                let path = ack_path.clone();
                ack = Some(tokio::spawn(async move {
                    let (status, _) = call(&mut sender, Method::POST, &path, Some(body)).await?;
                    if status != 200 {
                        return Err(format!("ack: {status}"));
                    }
                    Ok((sender, n))
                }));
            }
        }
        Ok::<_, String>(())
    };
    let (published, consumed) = tokio::time::timeout(RUN_LIMIT, async {
        tokio::join!(publish(bus, "bench.durable.ejected", count, batch), consume)
    })
    .await
    .map_err(|_| format!("{count} events not acked in {RUN_LIMIT:?} on {}", bus.name))?;
    published?;
    consumed?;
    let rate = count as f64 / start.elapsed().as_secs_f64();
    drop(stream);
    let _ = call(&mut admin, Method::DELETE, &path, None).await;
    Ok(rate)
}
