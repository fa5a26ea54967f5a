//! HTTP/1.1 on the wire, written for the proxy's hot path: the client side (requests to
//! upstreams over pooled keep-alive connections) and the server side, which serves every
//! HTTP/1 request of a downstream connection ([`serve`], [`request`], [`inbound`]).
//!
//! The exchange runs in the task of the request it serves: [`Connection::send`] writes the
//! request and reads the response head, and the [`Body`] it leads to is read off the same
//! socket by whoever polls it — the downstream connection's task. hyper's client would put a
//! task per connection and two channels between that task and the request (13.7k of the
//! 37k instructions a small proxied request cost, by callgrind); here it is one task and no
//! channel. The downstream side likewise runs each exchange in its connection's task.

mod body;
mod conn;
pub mod decode;
pub mod downstream;
pub mod encode;
pub mod inbound;
mod recycle;
pub mod request;
pub mod respond;
pub mod serve;
mod write;

pub use body::{Body, Lease};
pub use conn::Connection;
pub use inbound::{strip_framing_fields, Inbound, RequestBody};
pub use write::RequestWriter;

/// Why an exchange with an upstream over HTTP/1 failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream closed or reset the connection before sending any of a response: on a
    /// reused connection, it had closed it while idle.
    #[error("connection closed before a response")]
    Closed,
    /// The connection failed mid-exchange.
    #[error("connection broke: {0}")]
    Io(#[source] std::io::Error),
    /// The response is not valid HTTP/1.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The response head exceeds [`decode::MAX_HEAD_BYTES`].
    #[error("response head larger than {} bytes", decode::MAX_HEAD_BYTES)]
    HeadTooLarge,
    /// The upstream closed the connection before the response was complete.
    #[error("response cut short")]
    Truncated,
    /// The client's request body failed while it was being sent.
    #[error("request body: {0}")]
    RequestBody(#[source] crate::http::body::BodyError),
    /// The client's request body does not match its announced length.
    #[error("request body does not match its content-length")]
    RequestBodyLength,
}
