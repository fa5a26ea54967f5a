//! Upstream services: endpoint state and load balancing.

pub mod balance;
pub mod endpoint;
pub mod retry_budget;
pub mod state;
