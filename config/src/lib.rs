//! `strait-config`: Strait's configuration language.
//!
//! Kubernetes-style YAML documents (`ProxyConfig`, `Service`, `HTTPRoute`, `TCPRoute`) go
//! through three forms:
//!
//! ```text
//!  files ──read──▶ Source ──parse──▶ LoadedDoc (spec types + YAML tree) ──compile──▶ Snapshot
//! ```
//!
//! Parsing rejects unknown fields and duplicate keys; compiling checks everything else
//! (references, weights, regexes, addresses). Every error carries file, line, column and field
//! path, and all errors are reported at once. A [`Snapshot`] is only ever built from a set with
//! no error, so the proxy uses it without checking anything again.

pub mod compile;
pub mod de;
pub mod error;
pub mod load;
pub mod matching;
pub mod redact;
pub mod sidecar;
pub mod snapshot;
pub mod spec;
pub mod yaml;

use std::path::Path;

pub use compile::compile;
pub use error::{ConfigError, ConfigErrors, FieldPath, Mark};
pub use load::{LoadedDoc, Source};
pub use snapshot::Snapshot;

/// Reads, validates and compiles the file or directory at `path`.
pub fn load_path(path: &Path) -> Result<Snapshot, ConfigErrors> {
    load_sources(&load::read_sources(path)?)
}

/// Validates and compiles YAML texts.
pub fn load_sources(sources: &[Source]) -> Result<Snapshot, ConfigErrors> {
    compile(&load::parse_sources(sources)?)
}

/// Validates and compiles one YAML text labelled `file` (handy for tests and the control).
pub fn load_str(file: &str, text: &str) -> Result<Snapshot, ConfigErrors> {
    load_sources(&[Source {
        file: file.into(),
        text: text.to_owned(),
    }])
}
