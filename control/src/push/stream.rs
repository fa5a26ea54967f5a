//! One proxy's stream: the full set when it connects, then a line per settled revision that
//! changes what it receives, and keep-alives in between. The caller's right to the node is
//! checked again at every revision: a ProxyConfig applied later may name another identity.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::delta::Sent;
use super::{Push, KEEPALIVE};
use crate::auth::{may_stream, Caller};

/// Writes `node`'s lines into `lines` until the proxy goes away, or `caller` may no longer
/// read the node's config.
pub async fn serve(
    push: Arc<Push>,
    caller: Caller,
    node: String,
    listeners: Vec<String>,
    lines: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    push.connected(&node, listeners.clone());
    let mut settled = push.settled();
    let mut sent = Sent::default();
    loop {
        if let Ok(false) = push.with_proxy_config(&node, |config| may_stream(&caller, config)) {
            tracing::warn!(node = %node, caller = ?caller, "stream closed: the node's ProxyConfig names another identity");
            break;
        }
        match push.view(&node, &listeners) {
            Ok(view) => {
                if let Some(line) = sent.next(view.version, view.iter()) {
                    if lines.send(Ok(Bytes::from(line))).await.is_err() {
                        break;
                    }
                    push.sent(&node, view.version);
                }
            }
            Err(e) => tracing::error!(node = %node, error = %e, "cannot render config"),
        }
        tokio::select! {
            changed = settled.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(KEEPALIVE) => {
                if lines.send(Ok(Bytes::from_static(b"\n"))).await.is_err() {
                    break;
                }
            }
            () = lines.closed() => break,
        }
    }
    push.disconnected(&node);
}
