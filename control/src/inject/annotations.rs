//! The annotations a pod (template) uses to steer injection, read and checked in one place.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::settings::{Resources, Settings};
use super::InjectError;

/// `enabled` opts a pod in, `disabled` out (also honoured as a label, which is what a
/// webhook's `objectSelector` can see).
pub const INJECT: &str = "strait.dev/inject";
/// `"false"`: the proxy as a classic sidecar container instead of a native one.
pub const NATIVE_SIDECAR: &str = "strait.dev/native-sidecar";
/// Inbound ports not redirected to the proxy, comma-separated.
pub const EXCLUDE_INBOUND_PORTS: &str = "strait.dev/exclude-inbound-ports";
/// Outbound ports not redirected to the proxy, comma-separated.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "strait.dev/exclude-outbound-ports";
/// Outbound networks not redirected to the proxy, comma-separated CIDRs.
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "strait.dev/exclude-outbound-cidrs";
/// Proxy `requests.cpu`.
pub const PROXY_CPU_REQUEST: &str = "strait.dev/proxy-cpu-request";
/// Proxy `requests.memory`.
pub const PROXY_MEMORY_REQUEST: &str = "strait.dev/proxy-memory-request";
/// Proxy `limits.cpu`.
pub const PROXY_CPU_LIMIT: &str = "strait.dev/proxy-cpu-limit";
/// Proxy `limits.memory`.
pub const PROXY_MEMORY_LIMIT: &str = "strait.dev/proxy-memory-limit";
/// Set by injection (value: the Strait version): the pod is left alone from then on.
pub const INJECTED: &str = "strait.dev/injected";
/// Set by injection: the proxy's bootstrap `ProxyConfig` (with the pod's `spec.identity`),
/// mounted into the proxy through a downwardAPI volume.
pub const BOOTSTRAP: &str = "strait.dev/bootstrap";
/// Set by injection: the mesh's trust bundle (PEM), mounted next to the bootstrap.
pub const TRUST_BUNDLE: &str = "strait.dev/trust-bundle";
/// kubectl's default container for `logs`/`exec`, set to the app's first container.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// What the pod's annotations ask for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOptions {
    /// Native sidecar (initContainer with `restartPolicy: Always`) or classic container.
    pub native: bool,
    /// Inbound ports left alone.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound CIDRs left alone.
    pub exclude_outbound_cidrs: Vec<String>,
    /// Proxy resources.
    pub resources: Resources,
}

fn error(key: &str, message: String) -> InjectError {
    InjectError {
        key: key.to_owned(),
        message,
    }
}

fn text<'a>(
    annotations: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, InjectError> {
    match annotations.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim())),
        Some(other) => Err(error(key, format!("`{other}` must be a string"))),
    }
}

fn list(annotations: &Map<String, Value>, key: &str) -> Result<Vec<String>, InjectError> {
    Ok(text(annotations, key)?
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

fn ports(annotations: &Map<String, Value>, key: &str) -> Result<Vec<u16>, InjectError> {
    list(annotations, key)?
        .iter()
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(error(
                key,
                format!(
                    "`{p}` is not a port (1-65535); give a comma-separated list like \"22,5432\""
                ),
            )),
        })
        .collect()
}

fn cidrs(annotations: &Map<String, Value>, key: &str) -> Result<Vec<String>, InjectError> {
    let items = list(annotations, key)?;
    for item in &items {
        let (address, prefix) = item.split_once('/').unwrap_or((item, ""));
        let ok = match address.parse::<IpAddr>() {
            Ok(ip) => {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                prefix.is_empty() || prefix.parse::<u8>().is_ok_and(|p| p <= max)
            }
            Err(_) => false,
        };
        if !ok {
            return Err(error(
                key,
                format!("`{item}` is not a CIDR; give a comma-separated list like \"10.0.0.0/8,fd00::/8\""),
            ));
        }
    }
    Ok(items)
}

/// Whether `value` is a Kubernetes quantity (`100m`, `0.5`, `64Mi`, `1G`, `1e3`).
pub fn is_quantity(value: &str) -> bool {
    let digits_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.chars().filter(|&c| c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .is_some_and(|exp| !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit()));
    number_ok && suffix_ok
}

fn quantity(
    annotations: &Map<String, Value>,
    key: &str,
    default: &str,
) -> Result<String, InjectError> {
    match text(annotations, key)? {
        None => Ok(default.to_owned()),
        Some(q) if is_quantity(q) => Ok(q.to_owned()),
        Some(q) => Err(error(
            key,
            format!("`{q}` is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi)"),
        )),
    }
}

/// Reads the pod's annotations against the injector's defaults.
pub fn read(
    annotations: &Map<String, Value>,
    settings: &Settings,
) -> Result<PodOptions, InjectError> {
    let native = match text(annotations, NATIVE_SIDECAR)? {
        None => true,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(error(
                NATIVE_SIDECAR,
                format!("`{v}` must be \"true\" or \"false\""),
            ))
        }
    };
    let defaults = &settings.resources;
    Ok(PodOptions {
        native,
        exclude_inbound_ports: ports(annotations, EXCLUDE_INBOUND_PORTS)?,
        exclude_outbound_ports: ports(annotations, EXCLUDE_OUTBOUND_PORTS)?,
        exclude_outbound_cidrs: cidrs(annotations, EXCLUDE_OUTBOUND_CIDRS)?,
        resources: Resources {
            cpu_request: quantity(annotations, PROXY_CPU_REQUEST, &defaults.cpu_request)?,
            memory_request: quantity(annotations, PROXY_MEMORY_REQUEST, &defaults.memory_request)?,
            cpu_limit: quantity(annotations, PROXY_CPU_LIMIT, &defaults.cpu_limit)?,
            memory_limit: quantity(annotations, PROXY_MEMORY_LIMIT, &defaults.memory_limit)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(annotations: Value) -> Result<PodOptions, InjectError> {
        let map = annotations.as_object().cloned().unwrap_or_default();
        read(&map, &Settings::default())
    }

    #[test]
    fn defaults_without_annotations() {
        let o = options(json!({})).expect("valid");
        assert!(o.native);
        assert!(o.exclude_inbound_ports.is_empty());
        assert_eq!(o.resources, Settings::default().resources);
    }

    #[test]
    fn annotations_override_and_are_checked() {
        let o = options(json!({
            NATIVE_SIDECAR: "false",
            EXCLUDE_INBOUND_PORTS: "22, 8081",
            EXCLUDE_OUTBOUND_CIDRS: "10.0.0.0/8,fd00::/8,169.254.169.254",
            PROXY_MEMORY_LIMIT: "1Gi",
        }))
        .expect("valid");
        assert!(!o.native);
        assert_eq!(o.exclude_inbound_ports, [22, 8081]);
        assert_eq!(o.exclude_outbound_cidrs.len(), 3);
        assert_eq!(o.resources.memory_limit, "1Gi");
        for (key, bad) in [
            (EXCLUDE_OUTBOUND_PORTS, "http"),
            (EXCLUDE_INBOUND_PORTS, "0"),
            (EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/40"),
            (PROXY_CPU_REQUEST, "lots"),
            (NATIVE_SIDECAR, "maybe"),
        ] {
            let e = options(json!({ key: bad })).expect_err(bad);
            assert_eq!(e.key, key);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "0.5", "64Mi", "1G", "2", "1e3"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "10mb", "Mi", "-1"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
