//! Sidecar injection: one pure code path behind `straitctl inject` and the admission webhook.
//!
//! ```text
//!  straitctl inject -f FILE ─▶ workload::inject_documents ─┐
//!                                (pod template of each      │
//!                                 Deployment/Job/...)       ├─▶ pod::plan(pod, namespace, scope, settings)
//!  POST /inject (AdmissionReview) ─▶ webhook::review ───────┘        │ Decision::Skip(reason)
//!                                                                    │ Decision::Inject(JSON Patch)
//!                                    sidecar.rs builds the containers, identity.rs the proxy's
//!                                    identity (bootstrap, trust bundle, projected token);
//!                                    patch.rs the RFC 6902 ops
//! ```
//!
//! The webhook sends the patch (base64 in the AdmissionResponse); the CLI applies the same
//! patch to the pod template inside the YAML document, leaving everything else as written.

pub mod annotations;
pub mod cli;
pub mod identity;
pub mod patch;
pub mod pod;
pub mod server;
pub mod settings;
pub mod sidecar;
pub mod webhook;
pub mod workload;
pub mod yaml;

pub use pod::{plan, Decision, Scope, Skip};
pub use settings::Settings;

/// A pod that asks for something injection cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {message}")]
pub struct InjectError {
    /// The annotation at fault.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}
