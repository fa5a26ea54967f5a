//! Endpoints written as `host:port`: the name is resolved in the background, never on a
//! request's path.
//!
//! Each such endpoint has one [`Resolution`]. A task resolves the name when the endpoint
//! appears and again every [`REFRESH`] for as long as the endpoint is in the config (Envoy's
//! LOGICAL_DNS, with its default `dns_refresh_rate` of 5 s): a new connection goes to the
//! addresses of the latest answer, read without a lock, in order until one accepts (so a
//! `localhost` that answers `::1` first still reaches a server on 127.0.0.1); established
//! connections stay where they are. A failed lookup keeps the last good answer. Before the
//! first answer a new connection waits for it, within its connect timeout.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

/// How often a host name is resolved again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// What is known of the name.
#[derive(Debug, Clone)]
enum Answer {
    /// Not resolved yet.
    Pending,
    /// The addresses of the latest successful lookup, in the resolver's order.
    Resolved(Arc<[SocketAddr]>),
    /// Every lookup so far failed: the last error.
    Failed(Arc<str>),
}

/// One `host:port`, kept resolved.
#[derive(Debug)]
pub struct Resolution {
    host: Arc<str>,
    port: u16,
    answer: ArcSwap<Answer>,
    /// Woken at each lookup's end (connections waiting for the first answer).
    answered: Notify,
}

impl Resolution {
    /// Starts resolving `host` (port `port`) now and every [`REFRESH`] until the returned
    /// value is dropped. Must be called inside the runtime.
    pub fn start(host: Arc<str>, port: u16) -> Arc<Self> {
        let resolution = Arc::new(Self {
            host,
            port,
            answer: ArcSwap::from_pointee(Answer::Pending),
            answered: Notify::new(),
        });
        tokio::spawn(refresh(Arc::downgrade(&resolution)));
        resolution
    }

    /// The host name.
    pub fn host(&self) -> &Arc<str> {
        &self.host
    }

    /// Where a new connection goes: the latest answer, or the first one once it arrives.
    pub async fn addresses(&self) -> std::io::Result<Arc<[SocketAddr]>> {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            match &**self.answer.load() {
                Answer::Resolved(addresses) => return Ok(addresses.clone()),
                Answer::Failed(why) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("cannot resolve {}: {why}", self.host),
                    ))
                }
                Answer::Pending => {}
            }
            answered.await;
        }
    }

    /// Records one lookup's outcome; a failure does not replace a good answer.
    fn record(&self, outcome: std::io::Result<Vec<SocketAddr>>) {
        let previous = self.answer.load_full();
        let next = match (outcome, &*previous) {
            (Ok(addresses), Answer::Resolved(old)) if **old == *addresses => None,
            (Ok(addresses), _) if !addresses.is_empty() => {
                tracing::debug!(host = %self.host, addresses = ?addresses, "resolved");
                Some(Answer::Resolved(addresses.into()))
            }
            (outcome, Answer::Resolved(addresses)) => {
                let why = outcome
                    .err()
                    .map_or("no address".to_owned(), |e| e.to_string());
                tracing::warn!(host = %self.host, addresses = ?addresses, error = %why, "cannot resolve; connecting to the addresses last resolved");
                None
            }
            (outcome, _) => {
                let why = outcome
                    .err()
                    .map_or("no address".to_owned(), |e| e.to_string());
                tracing::warn!(host = %self.host, error = %why, "cannot resolve the endpoint's host name");
                Some(Answer::Failed(why.into()))
            }
        };
        if let Some(next) = next {
            self.answer.store(Arc::new(next));
        }
        self.answered.notify_waiters();
    }
}

/// Resolves until the [`Resolution`] is dropped (the endpoint left the config).
async fn refresh(resolution: Weak<Resolution>) {
    loop {
        let Some((host, port)) = resolution.upgrade().map(|r| (r.host.clone(), r.port)) else {
            return;
        };
        // getaddrinfo runs on tokio's blocking pool.
        let outcome = tokio::net::lookup_host((&*host, port))
            .await
            .map(Iterator::collect);
        let Some(live) = resolution.upgrade() else {
            return;
        };
        live.record(outcome);
        drop(live);
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_resolves_and_the_task_ends_with_the_endpoint() {
        let resolution = Resolution::start("localhost".into(), 8443);
        let addresses = resolution.addresses().await.expect("localhost resolves");
        assert!(!addresses.is_empty());
        for address in addresses.iter() {
            assert!(address.ip().is_loopback(), "{address}");
            assert_eq!(address.port(), 8443);
        }
        let weak = Arc::downgrade(&resolution);
        drop(resolution);
        assert!(
            weak.upgrade().is_none(),
            "the task holds no strong reference"
        );
    }

    #[tokio::test]
    async fn a_failure_keeps_the_last_good_answer() {
        let resolution = Resolution::start("localhost".into(), 80);
        let good = resolution.addresses().await.expect("resolves");
        resolution.record(Err(std::io::Error::other("servfail")));
        resolution.record(Ok(Vec::new()));
        assert_eq!(resolution.addresses().await.expect("still good"), good);
    }

    #[tokio::test]
    async fn a_name_that_never_resolved_fails_fast() {
        // Not started: no lookup races the one recorded here.
        let unresolved = Arc::new(Resolution {
            host: "nowhere.invalid".into(),
            port: 80,
            answer: ArcSwap::from_pointee(Answer::Pending),
            answered: Notify::new(),
        });
        unresolved.record(Err(std::io::Error::other("nxdomain")));
        let e = unresolved.addresses().await.expect_err("failed");
        assert!(e.to_string().contains("nowhere.invalid"), "{e}");
    }
}
