//! Upgraded connections (WebSocket and other `Upgrade` protocols): once both sides have
//! switched, bytes are copied both ways until either closes.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Joins the client's and the upstream's upgraded connections in a background task.
pub fn spawn(client: OnUpgrade, upstream: OnUpgrade, endpoint: Arc<str>) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(endpoint = %endpoint, error = %e, "upgrade failed");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                tracing::debug!(endpoint = %endpoint, up, down, "upgraded connection closed")
            }
            Err(e) => {
                tracing::debug!(endpoint = %endpoint, error = %e, "upgraded connection broke")
            }
        }
    });
}
