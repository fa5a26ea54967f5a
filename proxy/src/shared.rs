//! Process-wide state shared by listeners, the admin server and the reloader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::active::Active;

/// What every part of the proxy can see.
#[derive(Debug)]
pub struct Shared {
    /// The configuration being served. Only the reloader stores; requests `load_full` once.
    pub config: ArcSwap<Active>,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// True once a config is applied and its listeners are bound, false again while draining.
    pub ready: AtomicBool,
    /// Shutdown coordination.
    pub drain: Drain,
    /// Notified by `POST /shutdown` on the admin port: the same drain as SIGTERM follows.
    pub shutdown: tokio::sync::Notify,
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
    signal: watch::Sender<bool>,
    /// Set before `signal` wakes anyone: one load tells a poll whether draining started.
    started: AtomicBool,
    open: Arc<()>,
}

/// Held by every open connection; dropping it marks the connection closed.
#[derive(Debug)]
pub struct ConnToken(#[allow(dead_code)] Arc<()>);

impl Default for Drain {
    fn default() -> Self {
        Self {
            signal: watch::channel(false).0,
            started: AtomicBool::new(false),
            open: Arc::new(()),
        }
    }
}

impl Drain {
    /// Starts draining: acceptors stop, connections close once idle.
    pub fn start(&self) {
        self.started.store(true, Ordering::Release);
        self.signal.send_replace(true);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// A receiver that sees `true` when draining starts.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
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

/// Resolves when draining starts (or the drain handle is gone).
pub async fn draining(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

pin_project_lite::pin_project! {
    /// [`draining`] for a `select!` beside a busy future, which polls every branch at every
    /// wake: once its first poll has registered the task with the signal, it is polled again
    /// only after draining started (the flag is set before the signal wakes the task).
    #[must_use = "futures do nothing unless polled"]
    pub struct UntilDrain<'a, F> {
        #[pin]
        signal: F,
        drain: &'a Drain,
        registered: bool,
    }
}

/// Waits for `signal` (a [`draining`] future of `drain`), cheaply.
pub fn until_drain<F: std::future::Future<Output = ()>>(
    drain: &Drain,
    signal: F,
) -> UntilDrain<'_, F> {
    UntilDrain {
        signal,
        drain,
        registered: false,
    }
}

impl<F: std::future::Future<Output = ()>> std::future::Future for UntilDrain<'_, F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        if *this.registered && !this.drain.is_draining() {
            return std::task::Poll::Pending;
        }
        *this.registered = true;
        this.signal.poll(cx)
    }
}
