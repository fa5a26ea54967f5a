//! Upgraded connections (WebSocket and other `Upgrade` protocols): once both sides have
//! switched, bytes are copied both ways until either closes.

use std::sync::Arc;

use bytes::BytesMut;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::body::UpstreamResponseBody;

/// After a 101, joins the client's upgraded connection to the upstream's in a background
/// task. Without a client upgrade (the client did not ask) the upstream side is dropped.
pub fn join(client: Option<OnUpgrade>, body: &mut UpstreamResponseBody, endpoint: &Arc<str>) {
    let UpstreamResponseBody::Http1(body) = body else {
        return;
    };
    if let (Some(client), Some(upstream)) = (client, body.take_upgraded()) {
        spawn(client, upstream, endpoint.clone());
    }
}

fn spawn(client: OnUpgrade, (mut upstream, early): (TcpStream, BytesMut), endpoint: Arc<str>) {
    tokio::spawn(async move {
        let mut client = match client.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(endpoint = %endpoint, error = %e, "upgrade failed");
                return;
            }
        };
        // Bytes the upstream sent right behind its 101 were read with it.
        if !early.is_empty() {
            if let Err(e) = client.write_all(&early).await {
                tracing::debug!(endpoint = %endpoint, error = %e, "upgraded connection broke");
                return;
            }
        }
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
