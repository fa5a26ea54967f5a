//! Upstream services: endpoint state and load balancing.

pub mod balance;
pub mod endpoint;
