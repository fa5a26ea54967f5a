//! Endpoint pickers. Built once per config version, used by every request concurrently, so
//! picking takes no lock and allocates nothing:
//!
//! - **round_robin**: smooth weighted round robin (nginx's algorithm). One whole cycle of its
//!   sequence is precomputed; a shared atomic cursor walks it.
//! - **least_request**: power of two choices — two random endpoints, the one with fewer
//!   requests in flight per unit of weight wins.
//! - **random**: weighted random over cumulative weights.
//! - **ring_hash**: a consistent-hash ring (Ketama-style virtual points proportional to weight);
//!   adding an endpoint moves only about 1/n of keys, all of them to the new endpoint.
//!
//! Unavailable endpoints (ejected, failing health checks) are skipped by every policy.

use std::sync::atomic::{AtomicUsize, Ordering};

/// What a picker needs to know about an endpoint at pick time.
pub trait Candidate {
    /// Requests currently in flight to this endpoint.
    fn in_flight(&self) -> u64;
    /// False while the endpoint is out of rotation.
    fn is_available(&self) -> bool;
}

/// Load-balancing policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of two choices over in-flight requests.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on a request key.
    RingHash,
}

/// Longest precomputed round-robin cycle.
const MAX_CYCLE: u64 = 65_536;
/// Virtual points per unit of (normalised) weight on the ring.
const POINTS_PER_WEIGHT: u64 = 100;
/// Cap on ring size.
const MAX_RING: u64 = 100_000;

/// Picks endpoints of one service by one policy.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    weights: Vec<u32>,
    /// round_robin: one full smooth-WRR cycle of endpoint indexes.
    cycle: Vec<u32>,
    cursor: AtomicUsize,
    /// random: cumulative weights.
    cumulative: Vec<u64>,
    /// ring_hash: `(point, endpoint)` sorted by point.
    ring: Vec<(u64, u32)>,
}

impl Balancer {
    /// Builds a picker for endpoints with `weights` (0 is treated as 1) and stable identities
    /// `keys` (their addresses: used to place them on the hash ring).
    pub fn new(policy: Policy, weights: &[u32], keys: &[&str]) -> Self {
        let weights: Vec<u32> = weights.iter().map(|&w| w.max(1)).collect();
        let cycle = if policy == Policy::RoundRobin {
            smooth_cycle(&weights)
        } else {
            Vec::new()
        };
        let cumulative = weights
            .iter()
            .scan(0u64, |acc, &w| {
                *acc += u64::from(w);
                Some(*acc)
            })
            .collect();
        let ring = if policy == Policy::RingHash {
            build_ring(&weights, keys)
        } else {
            Vec::new()
        };
        Self {
            policy,
            weights,
            cycle,
            cursor: AtomicUsize::new(0),
            cumulative,
            ring,
        }
    }

    /// Index of the chosen endpoint, or None when none is available. `hash` is the request's
    /// affinity hash (ring_hash only; without it ring_hash picks at random).
    pub fn pick<C: Candidate>(&self, endpoints: &[C], hash: Option<u64>) -> Option<usize> {
        if endpoints.len() != self.weights.len() || endpoints.is_empty() {
            return None;
        }
        match self.policy {
            Policy::RoundRobin => self.round_robin(endpoints),
            Policy::LeastRequest => self.least_request(endpoints),
            Policy::Random => self.random(endpoints),
            Policy::RingHash => match hash {
                Some(h) => self.ring_hash(endpoints, h),
                None => self.random(endpoints),
            },
        }
    }

    /// An available endpoint other than `avoid`, chosen at random (the next try of a retried
    /// request); None when `avoid` is the only one available.
    pub fn pick_other<C: Candidate>(&self, endpoints: &[C], avoid: usize) -> Option<usize> {
        let n = endpoints.len();
        if n < 2 {
            return None;
        }
        let start = (avoid + 1 + fastrand::usize(0..n - 1)) % n;
        (0..n)
            .map(|step| (start + step) % n)
            .find(|&i| i != avoid && endpoints.get(i).is_some_and(C::is_available))
    }

    fn round_robin<C: Candidate>(&self, endpoints: &[C]) -> Option<usize> {
        let len = self.cycle.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .filter_map(|step| self.cycle.get((start + step) % len).map(|&i| i as usize))
            .find(|&i| endpoints.get(i).is_some_and(C::is_available))
    }

    fn least_request<C: Candidate>(&self, endpoints: &[C]) -> Option<usize> {
        let n = endpoints.len();
        let a = fastrand::usize(0..n);
        let b = if n > 1 {
            (a + 1 + fastrand::usize(0..n - 1)) % n
        } else {
            a
        };
        let available = |i: usize| endpoints.get(i).is_some_and(C::is_available);
        match (available(a), available(b)) {
            (true, true) => {
                // Compare in_flight/weight without dividing: in_a * w_b vs in_b * w_a.
                let load = |i: usize, other: usize| {
                    let in_flight = endpoints.get(i).map_or(u64::MAX, C::in_flight);
                    u128::from(in_flight)
                        * u128::from(self.weights.get(other).copied().unwrap_or(1))
                };
                Some(if load(b, a) < load(a, b) { b } else { a })
            }
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => self.scan_from(endpoints, fastrand::usize(0..n)),
        }
    }

    fn random<C: Candidate>(&self, endpoints: &[C]) -> Option<usize> {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return None;
        }
        let r = fastrand::u64(0..total);
        let i = self.cumulative.partition_point(|&c| c <= r);
        if endpoints.get(i).is_some_and(C::is_available) {
            Some(i)
        } else {
            self.scan_from(endpoints, i)
        }
    }

    fn ring_hash<C: Candidate>(&self, endpoints: &[C], hash: u64) -> Option<usize> {
        let len = self.ring.len();
        let start = self.ring.partition_point(|&(point, _)| point < hash);
        (0..len)
            .filter_map(|step| {
                self.ring
                    .get((start + step) % len)
                    .map(|&(_, i)| i as usize)
            })
            .find(|&i| endpoints.get(i).is_some_and(C::is_available))
    }

    /// First available endpoint at or after `start`, wrapping.
    fn scan_from<C: Candidate>(&self, endpoints: &[C], start: usize) -> Option<usize> {
        let n = endpoints.len();
        (0..n)
            .map(|step| (start + step) % n)
            .find(|&i| endpoints.get(i).is_some_and(C::is_available))
    }
}

/// One cycle of nginx's smooth weighted round robin over `weights` (reduced by their gcd and
/// scaled down to at most [`MAX_CYCLE`] entries).
fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights
        .iter()
        .fold(0u64, |g, &w| gcd(g, u64::from(w)))
        .max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x) / g).collect();
    let sum: u64 = w.iter().sum();
    if sum > MAX_CYCLE {
        w = w.iter().map(|&x| (x * MAX_CYCLE / sum).max(1)).collect();
    }
    let total: u64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, weight) in w.iter().enumerate() {
            current[i] += *weight as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        cycle.push(best as u32);
    }
    cycle
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn build_ring(weights: &[u32], keys: &[&str]) -> Vec<(u64, u32)> {
    let min = weights.iter().copied().min().unwrap_or(1).max(1);
    let total: u64 = weights
        .iter()
        .map(|&w| u64::from(w) * POINTS_PER_WEIGHT / u64::from(min))
        .sum();
    let scale = if total > MAX_RING {
        MAX_RING as f64 / total as f64
    } else {
        1.0
    };
    let mut ring = Vec::new();
    for (i, (&w, key)) in weights.iter().zip(keys).enumerate() {
        let points =
            ((u64::from(w) * POINTS_PER_WEIGHT / u64::from(min)) as f64 * scale).max(1.0) as u64;
        for n in 0..points {
            ring.push((affinity_hash(format!("{key}-{n}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// Stable 64-bit hash of an affinity key (FNV-1a, then a murmur3 finalizer so nearby inputs
/// spread over the ring). Does not depend on any per-process seed.
pub fn affinity_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ep {
        load: u64,
        up: bool,
    }

    impl Candidate for Ep {
        fn in_flight(&self) -> u64 {
            self.load
        }
        fn is_available(&self) -> bool {
            self.up
        }
    }

    fn eps(n: usize) -> Vec<Ep> {
        (0..n).map(|_| Ep { load: 0, up: true }).collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn balancer(policy: Policy, weights: &[u32]) -> Balancer {
        let k = keys(weights.len());
        let refs: Vec<&str> = k.iter().map(String::as_str).collect();
        Balancer::new(policy, weights, &refs)
    }

    fn counts(b: &Balancer, e: &[Ep], n: usize) -> Vec<usize> {
        let mut c = vec![0; e.len()];
        for _ in 0..n {
            c[b.pick(e, None).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_honours_weights_smoothly() {
        let b = balancer(Policy::RoundRobin, &[1, 3]);
        assert_eq!(counts(&b, &eps(2), 4000), vec![1000, 3000]);
        assert_eq!(b.cycle, vec![1, 0, 1, 1], "interleaved, not A B B B");
        let b = balancer(Policy::RoundRobin, &[5, 1, 1]);
        assert_eq!(counts(&b, &eps(3), 700), vec![500, 100, 100]);
    }

    #[test]
    fn pick_other_never_returns_the_avoided_or_unavailable() {
        let b = balancer(Policy::LeastRequest, &[1, 1, 1]);
        let mut e = eps(3);
        e[2].up = false;
        for _ in 0..100 {
            assert_eq!(b.pick_other(&e, 0), Some(1));
        }
        e[1].up = false;
        assert_eq!(b.pick_other(&e, 0), None);
        assert_eq!(b.pick_other(&eps(1), 0), None);
    }

    #[test]
    fn unavailable_endpoints_are_skipped() {
        let b = balancer(Policy::RoundRobin, &[1, 1, 1]);
        let mut e = eps(3);
        e[1].up = false;
        let c = counts(&b, &e, 300);
        assert_eq!(c[1], 0);
        for p in [
            Policy::RoundRobin,
            Policy::LeastRequest,
            Policy::Random,
            Policy::RingHash,
        ] {
            let b = balancer(p, &[1, 1]);
            let down = vec![Ep { load: 0, up: false }, Ep { load: 0, up: false }];
            assert_eq!(b.pick(&down, Some(7)), None, "{p:?}");
            assert_eq!(b.pick::<Ep>(&[], None), None, "{p:?}");
        }
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let b = balancer(Policy::LeastRequest, &[1, 1]);
        let e = vec![
            Ep { load: 0, up: true },
            Ep {
                load: 100,
                up: true,
            },
        ];
        assert_eq!(counts(&b, &e, 1000), vec![1000, 0]);
        // Per unit of weight: 10 in flight on weight 10 beats 2 on weight 1.
        let b = balancer(Policy::LeastRequest, &[1, 10]);
        let e = vec![Ep { load: 2, up: true }, Ep { load: 10, up: true }];
        assert_eq!(counts(&b, &e, 100), vec![0, 100]);
    }

    #[test]
    fn random_honours_weights() {
        let b = balancer(Policy::Random, &[1, 3]);
        let c = counts(&b, &eps(2), 20_000);
        let share = c[1] as f64 / 20_000.0;
        assert!((0.72..=0.78).contains(&share), "{share}");
    }

    fn ring_owner(b: &Balancer, e: &[Ep], key: usize) -> usize {
        b.pick(e, Some(affinity_hash(format!("user-{key}").as_bytes())))
            .unwrap()
    }

    #[test]
    fn ring_hash_is_consistent() {
        let four = balancer(Policy::RingHash, &[1, 1, 1, 1]);
        let e4 = eps(4);
        let before: Vec<usize> = (0..10_000).map(|k| ring_owner(&four, &e4, k)).collect();
        assert_eq!(
            before,
            (0..10_000)
                .map(|k| ring_owner(&four, &e4, k))
                .collect::<Vec<_>>()
        );
        for i in 0..4 {
            let share = before.iter().filter(|&&o| o == i).count() as f64 / 10_000.0;
            assert!((0.15..=0.35).contains(&share), "endpoint {i}: {share}");
        }
        let five = balancer(Policy::RingHash, &[1, 1, 1, 1, 1]);
        let e5 = eps(5);
        let mut moved = 0;
        for (k, &old) in before.iter().enumerate() {
            let new = ring_owner(&five, &e5, k);
            if new != old {
                moved += 1;
                assert_eq!(new, 4, "keys only move to the new endpoint");
            }
        }
        let share = moved as f64 / 10_000.0;
        assert!((0.12..=0.28).contains(&share), "moved {share}");

        let mut e4_down = eps(4);
        e4_down[2].up = false;
        for (k, &old) in before.iter().enumerate() {
            let new = ring_owner(&four, &e4_down, k);
            assert!(
                old == 2 || new == old,
                "only the unavailable endpoint's keys move"
            );
        }
        assert!(four.pick(&e4, None).is_some());
    }

    #[test]
    fn concurrent_picks() {
        let b = std::sync::Arc::new(balancer(Policy::RoundRobin, &[1, 1]));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || counts(&b, &eps(2), 1000))
            })
            .collect();
        let total: usize = handles
            .into_iter()
            .map(|h| h.join().unwrap().iter().sum::<usize>())
            .sum();
        assert_eq!(total, 4000);
    }
}
