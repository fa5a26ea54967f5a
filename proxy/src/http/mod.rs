//! The HTTP side of the proxy.

pub mod authority;
pub mod body;
pub mod deadline;
pub mod error;
pub mod h1;
pub mod h2_preface;
pub mod headers;
pub mod mirror;
pub mod pipeline;
pub mod response;
pub mod retry;
pub mod server;
pub mod stall;
pub mod tunnel;
pub mod upstream;
