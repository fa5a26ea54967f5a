//! `strait-control`: the companion control process of the Strait sidecar — the versioned
//! policy store, the service registry, config push to proxies with ACK/NACK, and the event
//! bus, durable in one embedded database (redb) in `--data-dir`, or with policies, registry and
//! CA state in etcd (`--store etcd://`) for any number of replicas ([`backend`]).
//!
//! ```text
//!  straitctl / proxies / services ──HTTP or HTTPS (bearer token, proxy certificates)──▶ api
//!     api ─▶ ca (--trust-domain: SPIFFE certificates for CSRs, join tokens, trust bundle)
//!     api ─▶ policy (validate with strait-config, resourceVersion, history) ─┐
//!     api ─▶ registry (TTL heartbeats, discovery)  ──────────────────────────┼─▶ revision ─▶ push ─▶ proxies
//!     api ─▶ bus (topics, groups, durable subscriptions, dead letters)       │   (watch)     (NDJSON stream,
//!              backend: redb file | etcd ◀──────────────────┘                ACK/NACK)
//!              (etcd: other replicas' changes come back through a watch ─▶ revision)
//! ```

pub mod api;
pub mod auth;
pub mod backend;
pub mod bus;
pub mod ca;
pub mod cli;
pub mod events;
pub mod inject;
pub mod kube;
pub mod openapi;
pub mod policy;
pub mod push;
pub mod registry;
pub mod server;
pub mod store;
