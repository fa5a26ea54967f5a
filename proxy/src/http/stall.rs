//! The request-body stall guard (`limits.bodyReadTimeout`): a body that receives no byte for
//! that long fails, so that a client cannot hold a request (and its upstream connection) open
//! by sending nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Fires when no progress was noted for its duration. Progress only stores the time; the
/// timer is moved when it fires early, not on every read.
#[derive(Debug)]
pub struct StallTimer {
    timer: Pin<Box<Sleep>>,
    stall: Duration,
    last: Instant,
}

impl StallTimer {
    /// A guard that fires `stall` after the last progress (counted from now).
    pub fn new(stall: Duration) -> Self {
        let now = Instant::now();
        Self {
            timer: Box::pin(tokio::time::sleep_until(now + stall)),
            stall,
            last: now,
        }
    }

    /// Bytes arrived.
    pub fn progress(&mut self) {
        self.last = Instant::now();
    }

    /// `Ready` with the stall time once nothing arrived for that long.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Duration> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last + self.stall;
            if Instant::now() >= deadline {
                return Poll::Ready(self.stall);
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_only_after_a_quiet_stall() {
        let mut timer = StallTimer::new(Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(6)).await;
        timer.progress();
        tokio::time::advance(Duration::from_secs(6)).await;
        let early = std::future::poll_fn(|cx| Poll::Ready(timer.poll_expired(cx))).await;
        assert!(early.is_pending(), "progress 6 s ago: not stalled yet");
        let fired = std::future::poll_fn(|cx| timer.poll_expired(cx)).await;
        assert_eq!(fired, Duration::from_secs(10));
        assert!(Instant::now() >= timer.last + Duration::from_secs(10));
    }
}
