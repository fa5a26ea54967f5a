//! `strait-proxy`: Strait's data plane, a per-pod L4/L7 sidecar.
//!
//! ```text
//!             ┌──────────── reload (only writer) ◀── SIGHUP / file change
//!             ▼
//!   ArcSwap<Active>  ◀── load once per request / connection
//!             │
//!  accept ──▶ listen ──┬─ http::server ──▶ http::pipeline::handle
//!  (limit)             │      check limits + Host → route (config::matching) → authorize
//!                      │      (listener's, then route's policies: authz) → weighted service
//!                      │      → balancer picks endpoint → headers → http::upstream (pooled)
//!                      │      → stream response back (body returns the connection to the pool)
//!                      ├─ tcp::serve ──▶ authorize (listener's policies) → pick service/endpoint
//!                      │                 → splice both ways (half-close)
//!                      └─ sni::serve (listeners with TLSRoutes) ──▶ peek ClientHello → route by
//!                                        SNI → splice, TLS untouched; else as without TLSRoutes
//!
//!  admin: /metrics /ready /live /config /clusters, POST /shutdown (loopback only)
//!  telemetry (optional): /metrics /ready /live only, for probes and scrapes
//!  intercept: mode inbound/outbound listeners: SO_ORIGINAL_DST, sniff, passthrough
//! ```
//!
//! The active config is one immutable value: a request uses the version it loaded to the end.
//! Long-lived state (endpoints with their pools and in-flight counts, listeners) is keyed by
//! identity and reconciled on reload.

pub mod active;
pub mod admin;
pub mod app;
pub mod authz;
pub mod background;
pub mod clock;
pub mod control;
pub mod http;
pub mod identity;
pub mod intercept;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod ratelimit;
pub mod reload;
pub mod report;
pub mod service;
pub mod shared;
pub mod sni;
pub mod stamp;
pub mod tcp;
pub mod tls;
pub mod trace;
