//! Process-wide state shared by listeners, the admin server and the reloader.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::active::Active;

/// What every part of the proxy can see.
#[derive(Debug)]
pub struct Shared {
    /// The configuration being served. Only the reloader stores; requests `load_full` once.
    pub config: ArcSwap<Active>,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// True once a config is applied and its listeners are bound (with a control: once the
    /// control's config is, or `readyWithoutControlAfter` has passed); false while draining.
    pub ready: AtomicBool,
    /// Shutdown coordination.
    pub drain: Drain,
    /// Notified by `POST /shutdown` on the admin port: the same drain as SIGTERM follows.
    pub shutdown: Notify,
    /// The proxy's workload identity (mTLS), once it has one.
    pub identity: Arc<crate::identity::IdentityStore>,
}

impl Shared {
    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.drain.is_draining()
    }
}

/// Tells connections to finish up, and counts those still open.
#[derive(Debug)]
pub struct Drain {
    /// Woken when draining starts; sharded so that connections opening and closing on many
    /// threads (each registers once, while it idles) do not all take one lock.
    signals: [Notify; SHARDS],
    /// Set before `signals` wake anyone: one load tells a poll whether draining started.
    started: AtomicBool,
    open: Arc<()>,
}

/// Shards of [`Drain`]'s signal.
const SHARDS: usize = 8;

/// Held by every open connection; dropping it marks the connection closed.
#[derive(Debug)]
pub struct ConnToken(#[allow(dead_code)] Arc<()>);

impl Default for Drain {
    fn default() -> Self {
        Self {
            signals: std::array::from_fn(|_| Notify::new()),
            started: AtomicBool::new(false),
            open: Arc::new(()),
        }
    }
}

impl Drain {
    /// Starts draining: acceptors stop, connections close once idle.
    pub fn start(&self) {
        self.started.store(true, Ordering::Release);
        self.signals.iter().for_each(Notify::notify_waiters);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Resolves once draining has started, however late it is first polled. Cheap to keep
    /// beside a busy future in a `select!`, which polls every branch at every wake: once its
    /// first poll has registered the task, it only loads the flag until draining starts (the
    /// task's waker is assumed not to change, as within one task it does not).
    pub fn drained(&self) -> Drained<'_> {
        thread_local! {
            /// This thread's shard of the signal.
            static SHARD: usize = {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
            };
        }
        let shard = SHARD.try_with(|s| *s).unwrap_or(0);
        Drained {
            // Created before the flag is read: a `notify_waiters` after this reaches it even
            // though it is not polled yet.
            notified: self.signals[shard].notified(),
            drain: self,
            registered: false,
        }
    }

    /// Registers an open connection.
    pub fn track(&self) -> ConnToken {
        ConnToken(self.open.clone())
    }

    /// Connections still open.
    pub fn open_connections(&self) -> usize {
        Arc::strong_count(&self.open) - 1
    }

    /// Waits until every connection has closed or `deadline` passes; true if all closed.
    pub async fn wait_closed(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        while self.open_connections() > 0 {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

pin_project_lite::pin_project! {
    /// See [`Drain::drained`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Drained<'a> {
        #[pin]
        notified: Notified<'a>,
        drain: &'a Drain,
        registered: bool,
    }
}

impl Future for Drained<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.drain.is_draining() {
            return Poll::Ready(());
        }
        if *this.registered {
            return Poll::Pending;
        }
        *this.registered = true;
        this.notified.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn drained_resolves_for_waiters_made_before_and_after_the_start() {
        let drain = Arc::new(Drain::default());
        // Waiting (registered by a first poll) when draining starts.
        let waiting = tokio::spawn({
            let drain = drain.clone();
            async move { drain.drained().await }
        });
        // Made before the start, first polled after it.
        let unpolled = drain.drained();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drain.start();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting one is woken")
            .expect("joined");
        unpolled.await;
        // Made after the start.
        drain.drained().await;
    }

    #[tokio::test]
    async fn drained_stays_pending_until_the_start() {
        let drain = Drain::default();
        let drained = drain.drained();
        tokio::pin!(drained);
        for _ in 0..3 {
            assert!(drained.as_mut().now_or_never().is_none());
        }
        drain.start();
        assert!(drained.as_mut().now_or_never().is_some());
    }
}
