//! Upgraded connections (WebSocket and other `Upgrade` protocols): once the upstream has
//! answered 101 to a request that asked to upgrade, the client's connection and the
//! upstream's are joined and bytes are copied both ways until either closes.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::tls::upstream_stream::UpstreamStream;

/// Joins `client` to `upstream`. `client_early`: bytes the client sent behind its request,
/// read with it; `upstream_early`: bytes the upstream sent right behind its 101.
pub async fn join(
    mut client: impl AsyncRead + AsyncWrite + Unpin,
    client_early: BytesMut,
    (mut upstream, upstream_early): (UpstreamStream, BytesMut),
    endpoint: &str,
) {
    let early = async {
        if !upstream_early.is_empty() {
            client.write_all(&upstream_early).await?;
            client.flush().await?;
        }
        if !client_early.is_empty() {
            upstream.write_all(&client_early).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    if let Err(e) = early.await {
        tracing::debug!(endpoint, error = %e, "upgraded connection broke");
        return;
    }
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(endpoint, up, down, "upgraded connection closed"),
        Err(e) => tracing::debug!(endpoint, error = %e, "upgraded connection broke"),
    }
}
