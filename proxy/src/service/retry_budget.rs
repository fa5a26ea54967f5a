//! Retry budgets: retries to a service may be at most a percentage of its recent requests (plus
//! a floor per second), so a failing upstream cannot be hit with a retry storm.
//!
//! Counts live in a ring of one-second slots covering the last [`WINDOW_SECS`] seconds; every
//! update is a relaxed atomic add, so the request path takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Length of the sliding window.
pub const WINDOW_SECS: u64 = 10;

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Recent requests and retries of one service.
#[derive(Debug)]
pub struct RetryBudget {
    epoch: Instant,
    slots: [Slot; WINDOW_SECS as usize],
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            slots: Default::default(),
        }
    }
}

impl RetryBudget {
    fn slot(&self, now: u64) -> &Slot {
        let slot = &self.slots[(now % WINDOW_SECS) as usize];
        let seen = slot.second.load(Ordering::Relaxed);
        // First use of this slot in a new second: reset it (one winner; a lost count in the
        // race is harmless).
        if seen != now
            && slot
                .second
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    fn now(&self) -> u64 {
        // Start at 1 so that a zeroed slot never looks current.
        self.epoch.elapsed().as_secs() + 1
    }

    /// Counts a request (first attempts only).
    pub fn record_request(&self) {
        self.slot(self.now())
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry from the budget if `percent` of recent requests (or `min_per_second`
    /// over the window) allows one more.
    pub fn try_retry(&self, percent: f64, min_per_second: u32) -> bool {
        let now = self.now();
        let (requests, retries) = self
            .slots
            .iter()
            .filter(|s| {
                let second = s.second.load(Ordering::Relaxed);
                second + WINDOW_SECS > now && second <= now
            })
            .fold((0u64, 0u64), |(q, r), s| {
                (
                    q + s.requests.load(Ordering::Relaxed),
                    r + s.retries.load(Ordering::Relaxed),
                )
            });
        let allowed =
            (requests as f64 * percent / 100.0).max(f64::from(min_per_second) * WINDOW_SECS as f64);
        if (retries as f64) < allowed {
            self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_percent_of_requests() {
        let budget = RetryBudget::default();
        let mut granted = 0;
        for _ in 0..1000 {
            budget.record_request();
            // Every request would like three retries.
            granted += (0..3).filter(|_| budget.try_retry(20.0, 0)).count();
        }
        assert!((195..=201).contains(&granted), "granted {granted}");
    }

    #[test]
    fn the_floor_allows_some_retries_at_low_traffic() {
        let budget = RetryBudget::default();
        budget.record_request();
        let granted = (0..100).filter(|_| budget.try_retry(20.0, 2)).count();
        assert_eq!(granted, 20, "2 per second over a 10 s window");
    }
}
