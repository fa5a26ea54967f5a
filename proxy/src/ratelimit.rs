//! Token-bucket rate limiting, implemented as GCRA (the generic cell rate algorithm): each
//! bucket is one atomic "theoretical arrival time", so a check is a compare-and-swap, not a lock.
//!
//! With rate `r` and burst `b`, a request at time `t` is accepted when `tat - t <= (b-1)/r`,
//! and then `tat = max(tat, t) + 1/r`. Over a period `T` of overload this accepts
//! `b + r·T` requests — the token bucket's answer — without storing a token count.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::HeaderMap;
use http::HeaderName;
use strait_config::spec::RateLimitSpec;

/// New keys between two sweeps of idle buckets.
const SWEEP_EVERY: usize = 10_000;
/// Most keys tracked per limiter; beyond it new keys share one overflow bucket, so a flood of
/// distinct keys cannot grow memory without bound.
const MAX_KEYS: usize = 100_000;

/// What a request is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// One bucket for the whole route rule.
    Route,
    /// A bucket per client IP.
    ClientIp,
    /// A bucket per value of this header (requests without it share one bucket).
    Header(HeaderName),
}

/// One rule's limiter: lives across reloads while the rule and its policy stay the same.
#[derive(Debug)]
pub struct RateLimiter {
    /// The policy it enforces (reconciliation compares it).
    pub spec: RateLimitSpec,
    kind: KeyKind,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now the arrival time may run: `(burst - 1) × interval`.
    tolerance: u64,
    epoch: Instant,
    route: AtomicU64,
    overflow: AtomicU64,
    keyed: DashMap<Box<[u8]>, AtomicU64>,
    inserts: AtomicUsize,
}

/// The answer when a request is over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// When a retry would be accepted.
    pub retry_after: Duration,
}

impl RateLimiter {
    /// A limiter for a validated policy.
    pub fn new(spec: &RateLimitSpec) -> Self {
        let interval = (1e9 / spec.requests_per_second).max(1.0) as u64;
        let kind = match spec.key.strip_prefix("header:") {
            Some(name) => {
                HeaderName::from_bytes(name.as_bytes()).map_or(KeyKind::Route, KeyKind::Header)
            }
            None if spec.key == "client-ip" => KeyKind::ClientIp,
            None => KeyKind::Route,
        };
        Self {
            spec: spec.clone(),
            kind,
            interval,
            tolerance: interval.saturating_mul(u64::from(spec.burst.max(1)) - 1),
            epoch: Instant::now(),
            route: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
            keyed: DashMap::new(),
            inserts: AtomicUsize::new(0),
        }
    }

    /// Counts one request; `Err` when its bucket is empty.
    pub fn check(&self, client: IpAddr, headers: &HeaderMap) -> Result<(), Limited> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        match &self.kind {
            KeyKind::Route => self.take(&self.route, now),
            KeyKind::ClientIp => match client {
                IpAddr::V4(ip) => self.take_keyed(&ip.octets(), now),
                IpAddr::V6(ip) => self.take_keyed(&ip.octets(), now),
            },
            KeyKind::Header(name) => {
                let value = headers.get(name).map_or(&[][..], |v| v.as_bytes());
                self.take_keyed(value, now)
            }
        }
    }

    fn take_keyed(&self, key: &[u8], now: u64) -> Result<(), Limited> {
        if let Some(tat) = self.keyed.get(key) {
            return self.take(&tat, now);
        }
        self.maybe_sweep(now);
        if self.keyed.len() >= MAX_KEYS {
            return self.take(&self.overflow, now);
        }
        let tat = self
            .keyed
            .entry(key.into())
            .or_insert_with(|| AtomicU64::new(0));
        self.take(&tat, now)
    }

    fn take(&self, tat: &AtomicU64, now: u64) -> Result<(), Limited> {
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            let earliest = current.max(now);
            if earliest - now > self.tolerance {
                let wait = earliest - now - self.tolerance;
                return Err(Limited {
                    retry_after: Duration::from_nanos(wait),
                });
            }
            match tat.compare_exchange_weak(
                current,
                earliest + self.interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    /// Every [`SWEEP_EVERY`] new keys, drops the buckets that are full again (idle keys).
    fn maybe_sweep(&self, now: u64) {
        if self.inserts.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.keyed
                .retain(|_, tat| tat.load(Ordering::Relaxed) > now);
        }
    }

    /// Keys currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.keyed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: f64, burst: u32, key: &str) -> RateLimiter {
        RateLimiter::new(&RateLimitSpec {
            requests_per_second: rps,
            burst,
            key: key.into(),
        })
    }

    #[test]
    fn burst_then_rate() {
        let l = limiter(10.0, 5, "route");
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let h = HeaderMap::new();
        let start = l.epoch.elapsed().as_nanos() as u64;
        let accepted = (0..20).filter(|_| l.take(&l.route, start).is_ok()).count();
        assert_eq!(accepted, 5, "burst");
        let denied = l.take(&l.route, start).unwrap_err();
        assert!(
            denied.retry_after <= Duration::from_millis(100),
            "{denied:?}"
        );
        // One interval later exactly one more is accepted.
        assert!(l.take(&l.route, start + 100_000_000).is_ok());
        assert!(l.take(&l.route, start + 100_000_000).is_err());
        let _ = l.check(ip, &h);
    }

    #[test]
    fn keys_have_their_own_buckets_and_idle_ones_are_swept() {
        let l = limiter(1.0, 1, "header:x-api-key");
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let with = |k: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-api-key", k.parse().unwrap());
            h
        };
        assert!(l.check(ip, &with("a")).is_ok());
        assert!(l.check(ip, &with("a")).is_err());
        assert!(l.check(ip, &with("b")).is_ok());
        // Keys used an hour ago are idle (their buckets refilled): the next sweep drops them.
        let hour = 3_600_000_000_000;
        for i in 0..SWEEP_EVERY {
            l.take_keyed(format!("old{i}").as_bytes(), hour).ok();
        }
        for i in 0..SWEEP_EVERY {
            l.take_keyed(format!("new{i}").as_bytes(), 3 * hour).ok();
        }
        assert!(
            l.tracked_keys() <= SWEEP_EVERY + 3,
            "tracked {}",
            l.tracked_keys()
        );
    }

    #[test]
    fn accepted_is_burst_plus_rate_times_time() {
        let l = limiter(100.0, 50, "route");
        // 4x the rate for 10 simulated seconds: one request every 2.5 ms.
        let accepted = (0..4000u64)
            .filter(|i| l.take(&l.route, i * 2_500_000).is_ok())
            .count();
        let expected = 50.0 + 100.0 * 10.0;
        assert!(
            (accepted as f64 - expected).abs() <= expected * 0.01,
            "accepted {accepted}"
        );
    }
}
