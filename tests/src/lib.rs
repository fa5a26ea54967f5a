//! Test harness for Strait's end-to-end tests: start the real `strait-proxy` binary, real
//! upstream servers on 127.0.0.1, and observe what a user would (status codes, headers,
//! hit counts, metrics, logs). Everything binds port 0; nothing sleeps to synchronise.

pub mod client;
pub mod config;
pub mod control;
pub mod etcd;
pub mod h2_wire;
pub mod kube;
pub mod kube_api;
pub mod mesh_peer;
pub mod metrics;
pub mod nats;
pub mod netns;
pub mod otlp;
pub mod process;
pub mod recording;
pub mod tls;
pub mod tls_upstream;
pub mod upstream;
pub mod wait;
pub mod webdriver;

pub use control::Control;
pub use nats::Nats;
pub use process::Proxy;
pub use recording::RecordingUpstream;
pub use upstream::{CaptureUpstream, ScriptedUpstream, TcpEcho, Upstream};
pub use wait::eventually;
