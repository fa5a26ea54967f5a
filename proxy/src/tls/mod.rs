//! TLS on the data path.
//!
//! The listeners' side: [`server`] (mTLS with the proxy's identity, permissive, or
//! termination with the user's certificate) and [`verify_client`] (what a mesh client must
//! present). The client side (to upstreams): [`client`] builds one rustls configuration per
//! service's TLS settings, [`verify_server`] checks a mesh peer's identity, and
//! [`upstream_stream`] is the connection type Strait's clients read and write, plaintext or
//! TLS.

pub mod client;
pub mod server;
pub mod upstream_stream;
pub mod verify_client;
pub mod verify_server;

/// The workspace's one crypto provider: ring.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
