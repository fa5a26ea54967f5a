//! One proxy's stream: the full set when it connects, then a line per settled revision that
//! changes what it receives, and keep-alives in between.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::delta::Sent;
use super::{Push, KEEPALIVE};

/// Writes `node`'s lines into `lines` until the proxy goes away.
pub async fn serve(
    push: Arc<Push>,
    node: String,
    listeners: Vec<String>,
    lines: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    push.connected(&node, listeners.clone());
    let mut settled = push.settled();
    let mut sent = Sent::default();
    loop {
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
