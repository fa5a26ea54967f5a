//! The machine's floor for added latency: what one round trip to a thread waiting on the other
//! CPU costs, against one on the same CPU. A proxy on its own CPU puts two such round trips on
//! every request (client -> proxy -> upstream, and back), whatever the proxy does.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::procstat;

/// Round-trip times, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct RoundTrip {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
}

/// Pause between round trips: long enough for the waiting side's CPU to go idle, as a proxy's
/// does between requests at a few thousand per second.
const GAP: Duration = Duration::from_micros(500);

/// `trips` one-byte round trips from a thread on `from_cpu` to one on `to_cpu`, each after
/// [`GAP`]. None when a socket or a pin fails.
pub fn round_trip(from_cpu: usize, to_cpu: usize, trips: usize) -> Option<RoundTrip> {
    let (mut here, mut there) = UnixStream::pair().ok()?;
    std::thread::scope(|scope| {
        let echo = scope.spawn(move || {
            if !procstat::pin_self(to_cpu) {
                return;
            }
            let mut byte = [0u8; 1];
            while matches!(there.read(&mut byte), Ok(1)) {
                if there.write_all(&byte).is_err() {
                    return;
                }
            }
        });
        let measured = scope
            .spawn(move || {
                if !procstat::pin_self(from_cpu) {
                    return None;
                }
                let mut times = Vec::with_capacity(trips);
                let mut byte = [0u8; 1];
                for _ in 0..trips {
                    std::thread::sleep(GAP);
                    let sent = Instant::now();
                    here.write_all(&byte).ok()?;
                    here.read_exact(&mut byte).ok()?;
                    times.push(sent.elapsed().as_micros() as u64);
                }
                // Dropping `here` ends the echo thread.
                times.sort_unstable();
                Some(RoundTrip {
                    p50: *times.get(times.len() / 2)?,
                    p99: *times.get(times.len() * 99 / 100)?,
                })
            })
            .join()
            .ok()
            .flatten();
        let _ = echo.join();
        measured
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_a_round_trip_on_one_cpu() {
        let rt = super::round_trip(0, 0, 20).expect("round trip on CPU 0");
        assert!(rt.p99 >= rt.p50);
    }
}
