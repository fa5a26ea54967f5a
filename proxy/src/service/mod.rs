//! Upstream services: endpoint state, load balancing, and the per-service and per-endpoint
//! resilience state (breaker, outlier detection, health checks, retry budget).

pub mod balance;
pub mod breaker;
pub mod dns;
pub mod endpoint;
pub mod health_check;
pub mod idle;
pub mod outlier;
pub mod retry_budget;
pub mod state;
