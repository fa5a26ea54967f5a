//! Passive outlier detection: an endpoint that answers 5xx or cannot be reached
//! `consecutiveErrors` times in a row is ejected for `baseEjectionTime` × its number of
//! ejections, never more than `maxEjectionPercent` of the service at once.
//!
//! As in Envoy, the ejection multiplier decays by one for every `interval` the endpoint spends
//! back in rotation. The request path touches one atomic per answer; ejecting (rare) spawns the
//! timer that brings the endpoint back.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use strait_config::snapshot::OutlierPolicy;

use super::endpoint::{Endpoint, OutOfRotation};
use crate::clock::{millis, now_ms};

/// Outlier counts of one endpoint (long-lived, reset when the service's policy changes).
#[derive(Debug, Default)]
pub struct EndpointOutlier {
    consecutive_errors: AtomicU32,
    ejections: AtomicU32,
    returned_at_ms: AtomicU64,
    /// Bumped by every ejection and every reset, so a stale return timer does nothing.
    epoch: AtomicU64,
}

impl EndpointOutlier {
    /// Ejections that still count towards the multiplier.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Forgets errors and ejections (the policy changed or was removed).
    fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.consecutive_errors.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
    }
}

/// Outlier detection of one service under one policy.
#[derive(Debug)]
pub struct Outlier {
    /// The policy this state was built for.
    pub policy: OutlierPolicy,
    /// Endpoints of the service ejected now.
    ejected: AtomicUsize,
}

impl Outlier {
    /// Fresh state for `policy`.
    pub fn new(policy: OutlierPolicy) -> Self {
        Self {
            policy,
            ejected: AtomicUsize::new(0),
        }
    }

    /// Brings `endpoint` back into rotation and forgets its history: used when the policy
    /// changes or is removed.
    pub fn reset(endpoint: &Endpoint) {
        endpoint.outlier.reset();
        if endpoint.set_out(OutOfRotation::Ejected, false) {
            tracing::info!(service = %endpoint.service, endpoint = %endpoint.label, "endpoint returned (outlier policy changed)");
        }
    }

    /// Records one answer of `endpoint` (one of `service_size` endpoints): `failed` for a 5xx,
    /// a connect failure, a reset or a timeout.
    pub fn record(self: &Arc<Self>, endpoint: &Arc<Endpoint>, failed: bool, service_size: usize) {
        let counts = &endpoint.outlier;
        if !failed {
            // Load first: a healthy endpoint's counter stays untouched (no cache-line writes).
            if counts.consecutive_errors.load(Ordering::Relaxed) != 0 {
                counts.consecutive_errors.store(0, Ordering::Relaxed);
            }
            return;
        }
        let errors = counts.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if errors < self.policy.consecutive_errors || endpoint.is_out_for(OutOfRotation::Ejected) {
            return;
        }
        self.eject(endpoint, service_size);
    }

    fn eject(self: &Arc<Self>, endpoint: &Arc<Endpoint>, service_size: usize) {
        let allowed = service_size * self.policy.max_ejection_percent as usize / 100;
        if self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < allowed).then_some(n + 1)
            })
            .is_err()
        {
            tracing::debug!(service = %endpoint.service, endpoint = %endpoint.label, "not ejected: maxEjectionPercent reached");
            return;
        }
        if !endpoint.set_out(OutOfRotation::Ejected, true) {
            // Another request ejected it first.
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let counts = &endpoint.outlier;
        counts.consecutive_errors.store(0, Ordering::Relaxed);
        let now = now_ms();
        let interval = millis(self.policy.interval).max(1);
        let decayed = (now.saturating_sub(counts.returned_at_ms.load(Ordering::Relaxed)) / interval)
            .min(u64::from(u32::MAX)) as u32;
        let multiplier = counts
            .ejections
            .load(Ordering::Relaxed)
            .saturating_sub(decayed)
            + 1;
        counts.ejections.store(multiplier, Ordering::Relaxed);
        let epoch = counts.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let duration = self.policy.base_ejection_time.saturating_mul(multiplier);
        tracing::warn!(
            service = %endpoint.service,
            endpoint = %endpoint.label,
            ejections = multiplier,
            duration_ms = millis(duration),
            "endpoint ejected"
        );
        crate::control::publish("mesh.endpoint.ejected", "high", || {
            serde_json::json!({"service": &*endpoint.service, "endpoint": &*endpoint.label,
                "ejections": multiplier, "durationMs": millis(duration)})
        });
        let (this, endpoint) = (self.clone(), endpoint.clone());
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            this.ejected.fetch_sub(1, Ordering::AcqRel);
            let counts = &endpoint.outlier;
            if counts.epoch.load(Ordering::Acquire) != epoch {
                return;
            }
            counts.returned_at_ms.store(now_ms(), Ordering::Relaxed);
            if endpoint.set_out(OutOfRotation::Ejected, false) {
                tracing::info!(service = %endpoint.service, endpoint = %endpoint.label, "endpoint returned");
                crate::control::publish(
                    "mesh.endpoint.returned",
                    "normal",
                    || serde_json::json!({"service": &*endpoint.service, "endpoint": &*endpoint.label}),
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::endpoint::Pool;
    use std::time::Duration;

    fn endpoints(n: u16) -> Vec<Arc<Endpoint>> {
        let service: Arc<str> = "svc".into();
        (0..n)
            .map(|i| {
                let address = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i));
                Arc::new(Endpoint::new(
                    &service,
                    crate::service::endpoint::Target::Fixed(address),
                    address.to_string().into(),
                    Pool::Tcp,
                ))
            })
            .collect()
    }

    fn outlier(max_percent: u32) -> Arc<Outlier> {
        Arc::new(Outlier::new(OutlierPolicy {
            consecutive_errors: 3,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_millis(50),
            max_ejection_percent: max_percent,
        }))
    }

    #[tokio::test]
    async fn consecutive_errors_eject_and_success_resets_the_count() {
        let eps = endpoints(2);
        let o = outlier(50);
        o.record(&eps[0], true, 2);
        o.record(&eps[0], true, 2);
        o.record(&eps[0], false, 2);
        o.record(&eps[0], true, 2);
        o.record(&eps[0], true, 2);
        assert!(eps[0].is_available(), "the success broke the streak");
        o.record(&eps[0], true, 2);
        assert!(!eps[0].is_available());
        assert_eq!(eps[0].outlier.ejections(), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(eps[0].is_available(), "back after baseEjectionTime");
    }

    #[tokio::test]
    async fn never_more_than_max_ejection_percent() {
        let eps = endpoints(4);
        let o = outlier(50);
        for ep in &eps {
            for _ in 0..3 {
                o.record(ep, true, 4);
            }
        }
        let out = eps.iter().filter(|e| !e.is_available()).count();
        assert_eq!(out, 2, "50% of 4");
    }

    #[tokio::test]
    async fn the_multiplier_grows_with_repeated_ejections() {
        // Real time (the ejection clock is the process's): half-second steps leave a loaded
        // machine's scheduling delays far inside the margins.
        let eps = endpoints(2);
        let o = Arc::new(Outlier::new(OutlierPolicy {
            base_ejection_time: Duration::from_millis(500),
            ..outlier(50).policy.clone()
        }));
        for _ in 0..3 {
            o.record(&eps[0], true, 2);
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(eps[0].is_available());
        for _ in 0..3 {
            o.record(&eps[0], true, 2);
        }
        assert_eq!(
            eps[0].outlier.ejections(),
            2,
            "no interval passed: no decay"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!eps[0].is_available(), "second ejection lasts 2 × 500 ms");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(eps[0].is_available());
    }
}
