//! Debounce of store revisions: a burst of applies becomes one push per proxy. A revision is
//! passed on once no newer one came for [`QUIET`], and at the latest [`MAX_DELAY`] after the
//! first one of the burst.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Quiet time that ends a burst.
pub const QUIET: Duration = Duration::from_millis(75);
/// Longest a revision waits for its burst to end.
pub const MAX_DELAY: Duration = Duration::from_millis(400);

/// Passes `revisions` on to `settled` debounced, until `revisions`' sender is gone.
pub async fn settle(
    mut revisions: watch::Receiver<u64>,
    settled: Arc<watch::Sender<u64>>,
    quiet: Duration,
    max_delay: Duration,
) {
    loop {
        if revisions.changed().await.is_err() {
            return;
        }
        let limit = Instant::now() + max_delay;
        loop {
            let until = (Instant::now() + quiet).min(limit);
            match tokio::time::timeout_at(until, revisions.changed()).await {
                Ok(Ok(())) if Instant::now() < limit => continue,
                _ => break,
            }
        }
        let latest = *revisions.borrow_and_update();
        settled.send_if_modified(|current| {
            let newer = latest > *current;
            if newer {
                *current = latest;
            }
            newer
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_settles_once_and_a_steady_stream_at_the_latest_every_max_delay() {
        let (raw, rx) = watch::channel(1u64);
        let (settled, mut out) = watch::channel(1u64);
        tokio::spawn(settle(rx, Arc::new(settled), QUIET, MAX_DELAY));
        for v in 2..=20 {
            raw.send_replace(v);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out.changed().await.unwrap();
        assert_eq!(
            *out.borrow_and_update(),
            20,
            "one settled revision for the burst"
        );

        // Changes every 10 ms forever never go quiet: the max delay still lets them out.
        let started = Instant::now();
        let mut v = 20;
        while !out.has_changed().unwrap() {
            v += 1;
            raw.send_replace(v);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(started.elapsed() <= MAX_DELAY + Duration::from_millis(20));
    }
}
