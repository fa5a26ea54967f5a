//! An optional deadline on a future, without storing the future twice.
//!
//! `match limit { Some(l) => timeout(l, fut).await, None => fut.await }` keeps room for both
//! `fut` and `Timeout<fut>` in the caller's state: kilobytes per request for the request
//! pipeline's futures. [`within`] is one type either way.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

/// The deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project! {
    /// `inner`, failing with [`Elapsed`] if `limit` passes first.
    #[must_use = "futures do nothing unless polled"]
    pub struct Deadline<F> {
        #[pin]
        inner: F,
        #[pin]
        timer: Timer,
    }
}

pin_project! {
    #[project = TimerProj]
    enum Timer {
        Never,
        At { #[pin] sleep: Sleep },
    }
}

/// Runs `inner` with `limit` (none: no deadline).
pub fn within<F: Future>(limit: Option<Duration>, inner: F) -> Deadline<F> {
    Deadline {
        inner,
        timer: match limit {
            Some(limit) => Timer::At {
                sleep: tokio::time::sleep(limit),
            },
            None => Timer::Never,
        },
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(value) = this.inner.poll(cx) {
            return Poll::Ready(Ok(value));
        }
        match this.timer.project() {
            TimerProj::At { sleep } => sleep.poll(cx).map(|()| Err(Elapsed)),
            TimerProj::Never => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finishes_first_or_times_out() {
        let quick = within(Some(Duration::from_millis(50)), async { 7 });
        assert_eq!(quick.await, Ok(7));
        let slow = within(
            Some(Duration::from_millis(50)),
            tokio::time::sleep(Duration::from_secs(1)),
        );
        assert_eq!(slow.await, Err(Elapsed));
        let unbounded = within(None, async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            8
        });
        assert_eq!(unbounded.await, Ok(8));
    }
}
