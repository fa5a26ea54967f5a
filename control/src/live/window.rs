//! Rates over a sliding window, from the cumulative counts the proxies report: pure, no I/O,
//! the clock passed in (milliseconds).

use std::collections::VecDeque;

use serde::Serialize;

/// How far back rates look.
pub const WINDOW_MS: u64 = 10_000;
/// Most samples kept per edge (reports come every 2 s: a window holds 5 or 6).
const MAX_SAMPLES: usize = 16;

/// One report's cumulative counts for one edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the control received it (ms).
    pub at_ms: u64,
    /// Observations per latency bucket (not cumulative across buckets).
    pub buckets: Vec<u64>,
    /// Failed (5xx) requests.
    pub failures: u64,
}

impl Sample {
    fn total(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// The recent samples of one edge.
#[derive(Debug, Clone, Default)]
pub struct EdgeWindow {
    samples: VecDeque<Sample>,
}

/// An edge's figures over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    /// Requests in the window.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Share of requests not answered 5xx (1.0 with no requests).
    pub success_rate: f64,
    /// 99th-percentile latency in milliseconds: the upper bound of the bucket it falls in
    /// (None with no requests, or when it is past the last bound).
    pub p99_ms: Option<f64>,
}

impl EdgeWindow {
    /// Adds a sample; a count lower than the last (the proxy restarted) starts over.
    pub fn push(&mut self, sample: Sample) {
        if let Some(last) = self.samples.back() {
            if sample.total() < last.total() || sample.failures < last.failures {
                self.samples.clear();
            }
        }
        self.samples.push_back(sample);
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// When the last sample came (ms).
    pub fn last_at(&self) -> Option<u64> {
        self.samples.back().map(|s| s.at_ms)
    }

    /// What the edge carried between the oldest sample within [`WINDOW_MS`] of `now_ms` and
    /// the newest; `None` when fewer than two samples are in it.
    pub fn traffic(&self, now_ms: u64) -> Option<Traffic> {
        let since = now_ms.saturating_sub(WINDOW_MS);
        let newest = self.samples.back().filter(|s| s.at_ms >= since)?;
        let oldest = self.samples.iter().find(|s| s.at_ms >= since)?;
        let elapsed_ms = newest.at_ms.saturating_sub(oldest.at_ms);
        if elapsed_ms == 0 {
            return None;
        }
        let buckets: Vec<u64> = newest
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(oldest.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        let requests: u64 = buckets.iter().sum();
        Some(Traffic {
            rps: requests as f64 * 1000.0 / elapsed_ms as f64,
            failures: newest
                .failures
                .saturating_sub(oldest.failures)
                .min(requests),
            buckets,
        })
    }

    /// The figures over the window at `now_ms` (zeros when fewer than two samples are in it).
    pub fn rates(&self, now_ms: u64, bounds: &[f64]) -> Rates {
        self.traffic(now_ms)
            .map_or_else(Rates::idle, |t| t.rates(bounds))
    }
}

/// What an edge carried over the window, from one proxy or summed over several.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    /// Requests per second.
    pub rps: f64,
    /// Requests per latency bucket.
    pub buckets: Vec<u64>,
    /// Requests answered 5xx.
    pub failures: u64,
}

impl Traffic {
    /// Adds another proxy's share of the same edge (the proxies' buckets share their bounds).
    pub fn add(&mut self, other: &Traffic) {
        self.rps += other.rps;
        self.failures += other.failures;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (sum, n) in self.buckets.iter_mut().zip(&other.buckets) {
            *sum += n;
        }
    }

    /// Its figures, `bounds` being the buckets' upper bounds.
    pub fn rates(&self, bounds: &[f64]) -> Rates {
        let requests: u64 = self.buckets.iter().sum();
        if requests == 0 {
            return Rates::idle();
        }
        Rates {
            requests,
            rps: self.rps,
            success_rate: (requests - self.failures.min(requests)) as f64 / requests as f64,
            p99_ms: percentile(&self.buckets, bounds, 0.99).map(|s| s * 1000.0),
        }
    }
}

impl Rates {
    fn idle() -> Self {
        Self {
            requests: 0,
            rps: 0.0,
            success_rate: 1.0,
            p99_ms: None,
        }
    }
}

/// The upper bound (seconds) of the bucket holding quantile `q` of `counts`; None past the
/// last bound or with no counts.
fn percentile(counts: &[u64], bounds: &[f64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bounds.get(i).copied();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];

    fn sample(at_ms: u64, buckets: [u64; 4], failures: u64) -> Sample {
        Sample {
            at_ms,
            buckets: buckets.to_vec(),
            failures,
        }
    }

    #[test]
    fn the_rate_is_the_count_difference_over_the_window() {
        let mut w = EdgeWindow::default();
        w.push(sample(0, [0, 0, 0, 0], 0));
        w.push(sample(2_000, [100, 0, 0, 0], 0));
        w.push(sample(4_000, [180, 10, 10, 0], 20));
        let r = w.rates(4_000, &BOUNDS);
        assert_eq!(r.requests, 200);
        assert!((r.rps - 50.0).abs() < 1e-9, "{r:?}");
        assert!((r.success_rate - 0.9).abs() < 1e-9, "{r:?}");
        assert_eq!(
            r.p99_ms,
            Some(100.0),
            "the 198th of 200 is in the 100 ms bucket"
        );
    }

    #[test]
    fn samples_older_than_the_window_do_not_count() {
        let mut w = EdgeWindow::default();
        w.push(sample(0, [1_000, 0, 0, 0], 0));
        w.push(sample(20_000, [1_010, 0, 0, 0], 0));
        w.push(sample(22_000, [1_030, 0, 0, 0], 0));
        let r = w.rates(22_000, &BOUNDS);
        assert_eq!(r.requests, 20);
        assert!((r.rps - 10.0).abs() < 1e-9);
        assert_eq!(r.p99_ms, Some(1.0));
        assert_eq!(
            w.rates(60_000, &BOUNDS),
            Rates::idle(),
            "nothing recent: idle"
        );
    }

    #[test]
    fn a_single_sample_or_a_restart_gives_no_rate_yet() {
        let mut w = EdgeWindow::default();
        w.push(sample(0, [50, 0, 0, 0], 0));
        assert_eq!(w.rates(0, &BOUNDS), Rates::idle());
        w.push(sample(2_000, [5, 0, 0, 0], 0));
        assert_eq!(
            w.rates(2_000, &BOUNDS),
            Rates::idle(),
            "counts went down: restarted"
        );
        w.push(sample(4_000, [25, 0, 0, 0], 0));
        assert_eq!(w.rates(4_000, &BOUNDS).requests, 20);
    }

    #[test]
    fn samples_are_bounded() {
        let mut w = EdgeWindow::default();
        for i in 0..100 {
            w.push(sample(i * 100, [i, 0, 0, 0], 0));
        }
        assert_eq!(w.samples.len(), MAX_SAMPLES);
    }

    #[test]
    fn traffic_of_several_proxies_adds_up() {
        let mut a = EdgeWindow::default();
        a.push(sample(0, [0, 0, 0, 0], 0));
        a.push(sample(2_000, [98, 0, 0, 0], 0));
        let mut b = EdgeWindow::default();
        b.push(sample(1_000, [0, 0, 0, 0], 0));
        b.push(sample(3_000, [0, 0, 2, 0], 2));
        let mut sum = a.traffic(3_000).unwrap();
        sum.add(&b.traffic(3_000).unwrap());
        let r = sum.rates(&BOUNDS);
        assert_eq!(r.requests, 100);
        assert!((r.rps - 50.0).abs() < 1e-9, "{r:?}");
        assert!((r.success_rate - 0.98).abs() < 1e-9, "{r:?}");
        assert_eq!(r.p99_ms, Some(100.0), "the 99th of 100 is one of b's");
    }

    #[test]
    fn past_the_last_bound_there_is_no_p99() {
        assert_eq!(percentile(&[0, 0, 0, 5], &BOUNDS, 0.99), None);
        assert_eq!(percentile(&[0, 0, 0, 0], &BOUNDS, 0.99), None);
        assert_eq!(percentile(&[99, 1, 0, 0], &BOUNDS, 0.99), Some(0.001));
    }
}
