//! TLS on the data path: the listeners' side ([`server`]: mTLS with the proxy's identity,
//! permissive, or termination with the user's certificate; [`verify_client`]: what a mesh
//! client must present).

pub mod server;
pub mod verify_client;
