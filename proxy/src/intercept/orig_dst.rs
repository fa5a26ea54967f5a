//! Recovering where an intercepted connection was going (`SO_ORIGINAL_DST`, via socket2: no
//! `unsafe` here).

use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination of a connection the iptables rules redirected to this listener,
/// or `None` when it was not redirected (a client that dialled the listener itself: the
/// original destination is then the listener's own address, and passing the connection
/// through to it would loop).
pub fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let socket = SockRef::from(stream);
    // A v4 client on a dual-stack socket is tracked by IPv4 conntrack.
    let v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    let original = if v4 {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    let original = match original {
        Ok(address) => address.as_socket()?,
        Err(e) => {
            tracing::debug!(error = %e, "no original destination");
            return None;
        }
    };
    let same = |a: SocketAddr, b: SocketAddr| a.port() == b.port() && a.ip() == b.ip();
    let local_canonical = SocketAddr::new(local.ip().to_canonical(), local.port());
    if same(original, local) || same(original, local_canonical) {
        return None;
    }
    Some(original)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let client = TcpStream::connect(address).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        assert_eq!(original_destination(&server), None);
        drop(client);
    }
}
