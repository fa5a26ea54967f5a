//! The circuit breaker of one service, and its concurrency limits.
//!
//! The classic machine: **closed** until `failureThreshold` consecutive failures, then **open**
//! (requests fail fast with 503 `circuit-open`, the upstream is not touched) for `openTimeout`,
//! then **half-open**: up to `successThreshold` probes go through; that many successes close it,
//! one failure opens it again.
//!
//! Limits answer 503 `overflow`: `maxRequests` in flight to the service, `maxPendingRequests`
//! waiting for a new connection, `maxConnections` open to the service's endpoints.
//!
//! Everything is atomics: a closed breaker costs the request path one load per attempt.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use strait_config::snapshot::BreakerPolicy;

use crate::clock::{millis, now_ms};

/// Breaker states, as exported by `strait_circuit_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CircuitState {
    /// Requests flow.
    Closed = 0,
    /// Requests fail fast.
    Open = 1,
    /// A few probes test the upstream.
    HalfOpen = 2,
}

impl CircuitState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// Why the breaker refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The circuit is open (or half-open with all probe slots taken).
    Open,
    /// A concurrency limit is reached.
    Overflow,
}

/// Breaker and limits of one service under one policy (reset when the policy changes).
#[derive(Debug)]
pub struct Breaker {
    /// The policy this state was built for.
    pub policy: BreakerPolicy,
    service: Arc<str>,
    state: AtomicU8,
    /// Closed: failures in a row. Half-open: successful probes.
    count: AtomicU32,
    probes: AtomicU32,
    opened_at_ms: AtomicU64,
    requests: AtomicU32,
    pending: AtomicU32,
    connections: AtomicU32,
    gauge: metrics::Gauge,
}

/// Permission for one attempt; hand it back with [`Breaker::record`].
#[derive(Debug)]
#[must_use = "record the attempt's outcome"]
pub struct Attempt {
    breaker: Arc<Breaker>,
    probe: bool,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.probes.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Counts against a limit until dropped.
#[derive(Debug)]
pub struct Slot {
    breaker: Arc<Breaker>,
    kind: Limit,
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    Requests,
    Pending,
    Connections,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.breaker
            .counter(self.kind)
            .fetch_sub(1, Ordering::AcqRel);
    }
}

impl Breaker {
    /// A closed breaker for `service`.
    pub fn new(service: &Arc<str>, policy: BreakerPolicy) -> Self {
        let gauge = metrics::gauge!(crate::metrics::CIRCUIT_STATE, "service" => service.clone());
        gauge.set(0.0);
        Self {
            policy,
            service: service.clone(),
            state: AtomicU8::new(CircuitState::Closed as u8),
            count: AtomicU32::new(0),
            probes: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            requests: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            gauge,
        }
    }

    /// The state now (an open breaker whose timeout passed reads as open until a request
    /// moves it to half-open).
    pub fn state(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Requests in flight, requests waiting for a connection, open connections.
    pub fn load(&self) -> (u32, u32, u32) {
        (
            self.requests.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
        )
    }

    /// Asks to send one attempt.
    pub fn admit(self: &Arc<Self>) -> Result<Attempt, Refusal> {
        loop {
            match self.state() {
                CircuitState::Closed => {
                    return Ok(Attempt {
                        breaker: self.clone(),
                        probe: false,
                    })
                }
                CircuitState::Open => {
                    let opened = self.opened_at_ms.load(Ordering::Acquire);
                    if now_ms().saturating_sub(opened) < millis(self.policy.open_timeout) {
                        return Err(Refusal::Open);
                    }
                    if self.transition(CircuitState::Open, CircuitState::HalfOpen) {
                        self.count.store(0, Ordering::Release);
                    }
                }
                CircuitState::HalfOpen => {
                    let limit = self.policy.success_threshold;
                    return match self.probes.fetch_update(
                        Ordering::AcqRel,
                        Ordering::Acquire,
                        |p| (p < limit).then_some(p + 1),
                    ) {
                        Ok(_) => Ok(Attempt {
                            breaker: self.clone(),
                            probe: true,
                        }),
                        Err(_) => Err(Refusal::Open),
                    };
                }
            }
        }
    }

    /// Records the outcome of an admitted attempt.
    pub fn record(&self, attempt: Attempt, failed: bool) {
        let probe = attempt.probe;
        drop(attempt);
        match (self.state(), failed) {
            // Load first: a healthy service's counter stays untouched (no cache-line writes).
            (CircuitState::Closed, false) if self.count.load(Ordering::Relaxed) != 0 => {
                self.count.store(0, Ordering::Relaxed);
            }
            (CircuitState::Closed, true) => {
                let failures = self.count.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= self.policy.failure_threshold {
                    self.open(CircuitState::Closed);
                }
            }
            (CircuitState::HalfOpen, true) if probe => self.open(CircuitState::HalfOpen),
            (CircuitState::HalfOpen, false) if probe => {
                let successes = self.count.fetch_add(1, Ordering::AcqRel) + 1;
                if successes >= self.policy.success_threshold
                    && self.transition(CircuitState::HalfOpen, CircuitState::Closed)
                {
                    self.count.store(0, Ordering::Release);
                }
            }
            // Late answers of attempts admitted before the last change of state.
            _ => {}
        }
    }

    /// Takes a slot under `maxRequests` for the life of one request.
    pub fn start_request(self: &Arc<Self>) -> Result<Option<Slot>, Refusal> {
        self.take(Limit::Requests, self.policy.max_requests)
    }

    /// Takes a slot under `maxPendingRequests` while waiting for a new connection.
    pub fn start_pending(self: &Arc<Self>) -> Result<Option<Slot>, Refusal> {
        self.take(Limit::Pending, self.policy.max_pending_requests)
    }

    /// Takes a slot under `maxConnections` for the life of one upstream connection.
    pub fn open_connection(self: &Arc<Self>) -> Result<Option<Slot>, Refusal> {
        self.take(Limit::Connections, self.policy.max_connections)
    }

    fn take(self: &Arc<Self>, kind: Limit, max: Option<u32>) -> Result<Option<Slot>, Refusal> {
        let Some(max) = max else {
            return Ok(None);
        };
        self.counter(kind)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| {
                Some(Slot {
                    breaker: self.clone(),
                    kind,
                })
            })
            .map_err(|_| Refusal::Overflow)
    }

    fn counter(&self, kind: Limit) -> &AtomicU32 {
        match kind {
            Limit::Requests => &self.requests,
            Limit::Pending => &self.pending,
            Limit::Connections => &self.connections,
        }
    }

    fn open(&self, from: CircuitState) {
        self.opened_at_ms.store(now_ms(), Ordering::Release);
        self.transition(from, CircuitState::Open);
    }

    /// Moves `from` → `to` if no one else moved first; logs and exports the change.
    fn transition(&self, from: CircuitState, to: CircuitState) -> bool {
        let moved = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.gauge.set(f64::from(to as u8));
            let service = &*self.service;
            let (topic, priority) = match to {
                CircuitState::Open => {
                    tracing::warn!(service, "circuit opened");
                    ("mesh.circuit.opened", "high")
                }
                CircuitState::HalfOpen => {
                    tracing::info!(service, "circuit half-open");
                    ("mesh.circuit.half-open", "normal")
                }
                CircuitState::Closed => {
                    tracing::info!(service, "circuit closed");
                    ("mesh.circuit.closed", "normal")
                }
            };
            crate::control::publish(topic, priority, || serde_json::json!({"service": service}));
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker(open_timeout: Duration) -> Arc<Breaker> {
        Arc::new(Breaker::new(
            &"svc".into(),
            BreakerPolicy {
                failure_threshold: 3,
                open_timeout,
                success_threshold: 2,
                max_connections: Some(1),
                max_pending_requests: None,
                max_requests: Some(2),
            },
        ))
    }

    fn attempt(b: &Arc<Breaker>, failed: bool) {
        let a = b.admit().expect("admitted");
        b.record(a, failed);
    }

    #[test]
    fn full_cycle() {
        let b = breaker(Duration::from_millis(30));
        attempt(&b, true);
        attempt(&b, true);
        attempt(&b, false);
        attempt(&b, true);
        attempt(&b, true);
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "a success broke the streak"
        );
        attempt(&b, true);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit().unwrap_err(), Refusal::Open);

        std::thread::sleep(Duration::from_millis(40));
        let p1 = b.admit().expect("probe 1");
        let p2 = b.admit().expect("probe 2");
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.admit().unwrap_err(), Refusal::Open, "only 2 probes");
        b.record(p1, true);
        assert_eq!(b.state(), CircuitState::Open, "one failure re-opens");
        b.record(p2, false);
        assert_eq!(
            b.state(),
            CircuitState::Open,
            "a late probe does not close it"
        );

        std::thread::sleep(Duration::from_millis(40));
        attempt(&b, false);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        attempt(&b, false);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn limits_overflow_and_free_on_drop() {
        let b = breaker(Duration::from_secs(1));
        let r1 = b.start_request().unwrap();
        let _r2 = b.start_request().unwrap();
        assert_eq!(b.start_request().unwrap_err(), Refusal::Overflow);
        drop(r1);
        assert!(b.start_request().is_ok());
        let c = b.open_connection().unwrap();
        assert!(b.open_connection().is_err());
        drop(c);
        assert!(b.open_connection().is_ok());
        assert!(b.start_pending().unwrap().is_none(), "no limit set");
    }
}
