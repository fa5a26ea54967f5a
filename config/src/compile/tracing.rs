//! `ProxyConfig.spec.tracing` and `spec.workload`, checked.

use std::sync::Arc;

use http::Uri;

use super::Errors;
use crate::error::FieldPath;
use crate::load::LoadedDoc;
use crate::snapshot::TracingSettings;
use crate::spec::{OtlpProtocol, TracingSpec};

/// Share of new traces recorded when `sampling` is not given.
pub const DEFAULT_SAMPLING: f64 = 0.01;
/// Spans waiting for export when `queueSize` is not given.
pub const DEFAULT_QUEUE_SIZE: u32 = 2048;
/// The OTLP/HTTP path for traces.
const HTTP_TRACES_PATH: &str = "/v1/traces";
/// Longest `workload` (a label value on every request counter).
const MAX_WORKLOAD_LEN: usize = 253;

/// Checks `spec.tracing`; `None` when absent or wrong (the errors are recorded).
pub(crate) fn settings(
    errors: &mut Errors,
    doc: &LoadedDoc,
    at: &FieldPath,
    spec: &TracingSpec,
) -> Option<TracingSettings> {
    let before = errors.len();
    let sampling = spec.sampling.unwrap_or(DEFAULT_SAMPLING);
    if !(0.0..=1.0).contains(&sampling) {
        errors.at(
            doc,
            &at.key("sampling"),
            format!("{sampling} is out of range: a share of traces between 0 and 1 (0.05 is 5%)"),
        );
    }
    let queue_size = spec.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE);
    super::check_range(
        errors,
        doc,
        &at.key("queueSize"),
        Some(queue_size),
        1,
        1_000_000,
    );
    let endpoint = endpoint(errors, doc, &at.key("otlp").key("endpoint"), spec);
    let ca_file = endpoint
        .as_ref()
        .and_then(|e| ca_file(errors, doc, &at.key("otlp").key("caFile"), spec, e));
    (errors.len() == before).then_some(TracingSettings {
        endpoint: endpoint?,
        protocol: spec.otlp.protocol,
        ca_file,
        sampling,
        queue_size: queue_size as usize,
    })
}

/// The collector's URL: `http://host:port` or `https://host:port`, with `/v1/traces` added
/// for OTLP/HTTP when it has no path.
fn endpoint(
    errors: &mut Errors,
    doc: &LoadedDoc,
    at: &FieldPath,
    spec: &TracingSpec,
) -> Option<String> {
    let text = spec.otlp.endpoint.trim();
    let uri: Option<Uri> = text.parse().ok();
    let Some(uri) =
        uri.filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some())
    else {
        errors.at(
            doc,
            at,
            format!(
                "`{text}` is not a collector URL: give `http://host:port`, or `https://host:port` \
                 for TLS"
            ),
        );
        return None;
    };
    let bare = matches!(uri.path(), "" | "/");
    Some(match spec.otlp.protocol {
        OtlpProtocol::Http if bare => format!("{}{HTTP_TRACES_PATH}", text.trim_end_matches('/')),
        _ => text.to_owned(),
    })
}

/// The roots of an `https://` collector (`caFile` relative to the config file, else the
/// system's); `None` for `http://`, where `caFile` is an error.
fn ca_file(
    errors: &mut Errors,
    doc: &LoadedDoc,
    at: &FieldPath,
    spec: &TracingSpec,
    endpoint: &str,
) -> Option<std::path::PathBuf> {
    let given = spec.otlp.ca_file.as_deref();
    if !endpoint.starts_with("https://") {
        if given.is_some() {
            errors.at(doc, at, "applies to an `https://` endpoint");
        }
        return None;
    }
    if given.is_some_and(str::is_empty) {
        errors.at(doc, at, "is empty; leave it out to use the system roots");
        return None;
    }
    let base = doc.file.parent().unwrap_or(std::path::Path::new("."));
    Some(given.map_or_else(|| super::service::SYSTEM_CA_FILE.into(), |f| base.join(f)))
}

/// `spec.workload`, checked.
pub(crate) fn workload(
    errors: &mut Errors,
    doc: &LoadedDoc,
    at: &FieldPath,
    given: Option<&str>,
) -> Option<Arc<str>> {
    match given {
        Some(name) if !is_workload_name(name) => {
            errors.at(
                doc,
                at,
                format!(
                    "`{name}`: 1-{MAX_WORKLOAD_LEN} printable ASCII characters, e.g. `frontend`"
                ),
            );
            None
        }
        Some(name) => Some(Arc::from(name)),
        None => None,
    }
}

/// Whether `name` may be a `spec.workload`: 1-253 printable ASCII characters (it is a label
/// value on every request counter).
pub fn is_workload_name(name: &str) -> bool {
    (1..=MAX_WORKLOAD_LEN).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    const BASE: &str = "apiVersion: strait.dev/v1alpha1\nkind: ProxyConfig\nmetadata: {name: p}\nspec:\n  admin: 127.0.0.1:0\n";

    fn compile(extra: &str) -> Result<crate::Snapshot, String> {
        crate::load_str("p.yaml", &format!("{BASE}{extra}")).map_err(|e| {
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn defaults_and_the_http_path_are_filled_in() {
        let snap =
            compile("  tracing: {otlp: {endpoint: \"http://127.0.0.1:4318\", protocol: http}}\n")
                .unwrap();
        let t = snap.proxy.tracing.unwrap();
        assert_eq!(t.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(t.sampling, super::DEFAULT_SAMPLING);
        assert_eq!(t.queue_size, super::DEFAULT_QUEUE_SIZE as usize);
        let snap =
            compile("  tracing: {otlp: {endpoint: \"http://c:4317\"}, sampling: 1}\n").unwrap();
        assert_eq!(snap.proxy.tracing.unwrap().endpoint, "http://c:4317");
    }

    #[test]
    fn an_https_collector_gets_its_roots() {
        let snap =
            compile("  tracing: {otlp: {endpoint: \"https://c:4317\", caFile: certs/ca.pem}}\n")
                .unwrap();
        let ca = snap.proxy.tracing.unwrap().ca_file;
        assert_eq!(ca.as_deref(), Some(std::path::Path::new("certs/ca.pem")));
        let snap = compile("  tracing: {otlp: {endpoint: \"https://c:4317\"}}\n").unwrap();
        assert_eq!(
            snap.proxy.tracing.unwrap().ca_file.as_deref(),
            Some(std::path::Path::new(
                crate::compile::service::SYSTEM_CA_FILE
            ))
        );
        let err = compile("  tracing: {otlp: {endpoint: \"http://c:4317\", caFile: ca.pem}}\n")
            .unwrap_err();
        assert!(err.contains("spec.tracing.otlp.caFile"), "{err}");
        assert!(err.contains("https://"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let err = compile(
            "  tracing: {otlp: {endpoint: \"ftp://c:4317\"}, sampling: 1.5, queueSize: 0}\n",
        )
        .unwrap_err();
        for field in [
            "spec.tracing.sampling",
            "spec.tracing.queueSize",
            "spec.tracing.otlp.endpoint",
        ] {
            assert!(err.contains(field), "{field} in {err}");
        }
        let err = compile("  workload: \"a b\"\n").unwrap_err();
        assert!(err.contains("spec.workload"), "{err}");
    }
}
