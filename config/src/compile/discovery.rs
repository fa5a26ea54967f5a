//! `Service.spec.discovery`: where endpoints come from, and that a Service says it one way
//! only (static `endpoints`, or `discovery: registry`, or `discovery: kubernetes` with its
//! `kubernetes` block).

use super::Errors;
use crate::error::FieldPath;
use crate::load::LoadedDoc;
use crate::spec::{Discovery, KubernetesDiscoverySpec, PortRef, ServiceSpec};

/// Checks `spec.discovery`, `spec.kubernetes` and `spec.endpoints` against each other.
pub(crate) fn check(doc: &LoadedDoc, at: &FieldPath, spec: &ServiceSpec, errors: &mut Errors) {
    match spec.discovery {
        Some(Discovery::Registry) if !spec.endpoints.is_empty() => {
            errors.at(doc, &at.key("endpoints"), "`discovery: registry` takes endpoints from the registry; remove the static `endpoints` or drop `discovery`");
        }
        Some(Discovery::Kubernetes) if !spec.endpoints.is_empty() => {
            errors.at(doc, &at.key("endpoints"), "`discovery: kubernetes` takes endpoints from the cluster's EndpointSlices; remove the static `endpoints` or drop `discovery`");
        }
        Some(Discovery::Kubernetes) if spec.kubernetes.is_none() => {
            errors.at(doc, &at.key("kubernetes"), "`discovery: kubernetes` needs the Kubernetes Service to follow, e.g. `kubernetes: {service: reviews, port: http}`");
        }
        _ => {}
    }
    let Some(kubernetes) = &spec.kubernetes else {
        return;
    };
    let at = at.key("kubernetes");
    if spec.discovery != Some(Discovery::Kubernetes) {
        errors.at(
            doc,
            &at,
            "`kubernetes` applies to `discovery: kubernetes`; add it or remove this block",
        );
    }
    check_names(doc, &at, kubernetes, errors);
}

fn check_names(
    doc: &LoadedDoc,
    at: &FieldPath,
    kubernetes: &KubernetesDiscoverySpec,
    errors: &mut Errors,
) {
    if !is_dns_label(&kubernetes.service) {
        errors.at(doc, &at.key("service"), format!("`{}` is not a Kubernetes Service name (up to 63 lower-case letters, digits and `-`, starting with a letter)", kubernetes.service));
    }
    if let Some(ns) = &kubernetes.namespace {
        if !is_dns_label(ns) {
            errors.at(doc, &at.key("namespace"), format!("`{ns}` is not a Kubernetes namespace name (up to 63 lower-case letters, digits and `-`)"));
        }
    }
    match &kubernetes.port {
        PortRef::Number(n) if !(1..=65535).contains(n) => {
            errors.at(
                doc,
                &at.key("port"),
                format!("port {n} is out of range 1-65535"),
            );
        }
        PortRef::Name(name) if !is_port_name(name) => {
            errors.at(doc, &at.key("port"), format!("`{name}` is neither a port number nor a port name (up to 15 lower-case letters, digits and `-`, with at least one letter)"));
        }
        _ => {}
    }
}

/// A DNS-1035 label: what Kubernetes Service names are (and namespaces, near enough).
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An IANA service name, as Kubernetes port names are.
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names_as_the_api_checks_them() {
        assert!(is_dns_label("reviews-v2"));
        assert!(!is_dns_label("2reviews"));
        assert!(!is_dns_label("Reviews"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_port_name("http"));
        assert!(is_port_name("grpc-web"));
        assert!(!is_port_name("8080"));
        assert!(!is_port_name("a--b"));
        assert!(!is_port_name("much-too-long-name"));
    }
}
