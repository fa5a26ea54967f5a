//! Load generators: closed-loop saturation, open-loop fixed rate (latency measured from the
//! intended send time, so a stall cannot hide behind coordinated omission), HTTP/2 streams,
//! TCP bulk transfer, idle keep-alive connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed or were not 2xx.
    pub errors: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Latencies in microseconds (fixed-rate runs).
    pub latency: Option<Histogram<u64>>,
}

impl Run {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// Moves this run's latencies into `merged`, which gathers the slices of one target's
    /// run. (The histograms share their bounds, so adding one to another cannot fail.)
    pub fn merge_latency_into(&mut self, merged: &mut Option<Histogram<u64>>) {
        let Some(h) = self.latency.take() else { return };
        match merged {
            Some(m) => {
                let _ = m.add(&h);
            }
            None => *merged = Some(h),
        }
    }
}

async fn connect_h1(addr: SocketAddr) -> Option<http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

fn get(host: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .expect("static request")
}

/// One request on `sender`: Ok(body bytes) for a 2xx answer.
pub async fn once(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> Option<u64> {
    sender.ready().await.ok()?;
    let resp = sender.send_request(get(host, path)).await.ok()?;
    let ok = resp.status().is_success();
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            n += data.len() as u64;
        }
    }
    ok.then_some(n)
}

/// `conns` connections, each sending its next request as soon as the last is answered.
pub async fn saturate(
    addr: SocketAddr,
    host: &str,
    path: &str,
    conns: usize,
    duration: Duration,
) -> Run {
    saturate_with(addr, host, path, conns, duration, false).await
}

/// `conns` clients, each sending its next request as soon as the last is answered, on a new
/// connection every time.
pub async fn saturate_reconnecting(
    addr: SocketAddr,
    host: &str,
    conns: usize,
    duration: Duration,
) -> Run {
    saturate_with(addr, host, "/", conns, duration, true).await
}

async fn saturate_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    conns: usize,
    duration: Duration,
    reconnect: bool,
) -> Run {
    let (ok, errors, bytes) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (ok, errors, bytes) = (ok.clone(), errors.clone(), bytes.clone());
            let (host, path) = (host.to_owned(), path.to_owned());
            tokio::spawn(async move {
                let mut sender = None;
                while Instant::now() < deadline {
                    if sender.is_none() {
                        sender = connect_h1(addr).await;
                    }
                    let Some(s) = sender.as_mut() else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    match once(s, &host, &path).await {
                        Some(n) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(n, Ordering::Relaxed);
                            if reconnect {
                                sender = None;
                            }
                        }
                        None => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            sender = None;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    Run {
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        latency: None,
    }
}

/// `rate` requests per second for `duration` over `conns` connections; each connection owns
/// every `conns`-th slot of the schedule. Latency counts from the slot's intended time.
pub async fn fixed_rate(
    addr: SocketAddr,
    host: &str,
    rate: u64,
    duration: Duration,
    conns: usize,
) -> Run {
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut lanes = Vec::with_capacity(conns);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (histogram, ok, errors, host) = (
                histogram.clone(),
                ok.clone(),
                errors.clone(),
                host.to_owned(),
            );
            let (lane, mut sends) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            lanes.push(lane);
            tokio::spawn(async move {
                let mut local =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                let mut sender = connect_h1(addr).await;
                // A request whose time came while this connection was busy waits here with its
                // intended time: the wait counts in its latency.
                while let Some(intended) = sends.recv().await {
                    let answered = match sender.as_mut() {
                        Some(s) => once(s, &host, "/").await.is_some(),
                        None => false,
                    };
                    if answered {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let micros = intended.elapsed().as_micros() as u64;
                        let _ = local.record(micros.max(1));
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        sender = connect_h1(addr).await;
                    }
                }
                if let Ok(mut h) = histogram.lock() {
                    let _ = h.add(&local);
                }
            })
        })
        .collect();
    let started = Instant::now();
    let start = started + Duration::from_millis(50);
    let pacer = std::thread::spawn(move || pace(start, interval, total, &lanes));
    for t in tasks {
        let _ = t.await;
    }
    let _ = pacer.join();
    let latency = histogram.lock().map(|h| h.clone()).ok();
    Run {
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        bytes: 0,
        seconds: started.elapsed().as_secs_f64(),
        latency,
    }
}

/// Hands request `i` to connection `i % lanes` at its intended time `start + i × interval`,
/// from a thread that sleeps to the microsecond: tokio's timer ticks in whole milliseconds, and
/// its lateness (up to 1 ms) would be counted in every latency measured from the intended time.
/// Returning drops the lanes, which ends the connections' loops.
fn pace(
    start: Instant,
    interval: Duration,
    total: u64,
    lanes: &[tokio::sync::mpsc::UnboundedSender<Instant>],
) {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only this thread's timer slack
    // (50 µs by default, by which every sleep would overrun).
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    for (i, lane) in (0..total).zip(lanes.iter().cycle()) {
        let intended = start + interval.mul_f64(i as f64);
        if let Some(wait) = intended.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if lane.send(intended).is_err() {
            return;
        }
    }
}

/// One h2c connection with `streams` requests in flight at all times.
pub async fn h2_streams(addr: SocketAddr, host: &str, streams: usize, duration: Duration) -> Run {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return Run {
            errors: 1,
            seconds: 1.0,
            ..Run::default()
        };
    };
    let _ = stream.set_nodelay(true);
    let Ok((sender, conn)) =
        http2::handshake::<_, _, Empty<Bytes>>(TokioExecutor::new(), TokioIo::new(stream)).await
    else {
        return Run {
            errors: 1,
            seconds: 1.0,
            ..Run::default()
        };
    };
    tokio::spawn(conn);
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let deadline = started + duration;
    let authority = format!("http://{host}/");
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (mut sender, ok, errors, uri) = (
                sender.clone(),
                ok.clone(),
                errors.clone(),
                authority.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let req = Request::get(&uri)
                        .body(Empty::new())
                        .expect("static request");
                    let result = async {
                        sender.ready().await.ok()?;
                        let resp = sender.send_request(req).await.ok()?;
                        let good = resp.status().is_success();
                        resp.into_body().collect().await.ok()?;
                        good.then_some(())
                    }
                    .await;
                    match result {
                        Some(()) => ok.fetch_add(1, Ordering::Relaxed),
                        None => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    Run {
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        bytes: 0,
        seconds: started.elapsed().as_secs_f64(),
        latency: None,
    }
}

/// Writes `total` bytes over one TCP connection to `addr`; returns the run (bytes, seconds).
pub async fn bulk(addr: SocketAddr, total: u64) -> Run {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return Run {
            errors: 1,
            seconds: 1.0,
            ..Run::default()
        };
    };
    // Written bytes: a zeroed allocation this large is fresh mmap'd memory, and reading pages
    // that were never written reads the kernel's one shared zero page, which a real sender's
    // data is not.
    let chunk: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 + 3) as u8).collect();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        if stream.write_all(&chunk).await.is_err() {
            return Run {
                errors: 1,
                bytes: sent,
                seconds: started.elapsed().as_secs_f64(),
                ..Run::default()
            };
        }
        sent += chunk.len() as u64;
    }
    let _ = stream.shutdown().await;
    Run {
        ok: 1,
        bytes: sent,
        seconds: started.elapsed().as_secs_f64(),
        ..Run::default()
    }
}

/// Opens `n` keep-alive connections, each after one answered request; holds them open.
/// Opens up to `AT_ONCE` at a time: a proxy that holds fewer than `n` (haproxy sizes its
/// `maxconn` from the file-descriptor limit, two per connection) leaves the rest unanswered
/// until their timeout, and one after another those timeouts took a minute.
pub async fn idle_connections(
    addr: SocketAddr,
    host: &str,
    n: usize,
) -> (Vec<http1::SendRequest<Empty<Bytes>>>, u64) {
    const AT_ONCE: usize = 16;
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    let mut opening = tokio::task::JoinSet::new();
    let mut settle = |opened: Result<Option<_>, tokio::task::JoinError>| match opened {
        Ok(Some(s)) => held.push(s),
        _ => failed += 1,
    };
    for _ in 0..n {
        if opening.len() >= AT_ONCE {
            if let Some(opened) = opening.join_next().await {
                settle(opened);
            }
        }
        let host = host.to_owned();
        opening.spawn(async move {
            let open = async {
                let mut s = connect_h1(addr).await?;
                once(&mut s, &host, "/").await.map(|_| s)
            };
            tokio::time::timeout(Duration::from_secs(2), open)
                .await
                .ok()
                .flatten()
        });
    }
    while let Some(opened) = opening.join_next().await {
        settle(opened);
    }
    (held, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(latencies: &[u64]) -> Run {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for &l in latencies {
            h.record(l).expect("in bounds");
        }
        Run {
            latency: Some(h),
            ..Run::default()
        }
    }

    #[test]
    fn slices_merge_into_one_histogram_per_target() {
        let mut merged = None;
        run_with(&[100, 200]).merge_latency_into(&mut merged);
        run_with(&[300, 40_000]).merge_latency_into(&mut merged);
        Run::default().merge_latency_into(&mut merged);
        let merged = merged.expect("two slices merged");
        assert_eq!(merged.len(), 4);
        assert_eq!(merged.max(), merged.highest_equivalent(40_000));
    }
}
