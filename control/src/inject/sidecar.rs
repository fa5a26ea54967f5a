//! What injection adds to a pod: the `strait-init` container that installs the iptables
//! rules, the proxy (native or classic sidecar) and its annotations; the identity's volumes
//! are [`super::identity`]'s.

use serde_json::{json, Map, Value};
use strait_config::sidecar::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID, TELEMETRY_PORT};

use super::annotations::PodOptions;
use super::identity;
use super::settings::{Resources, Settings};

/// Name of the proxy container.
pub const PROXY_CONTAINER: &str = "strait-proxy";
/// Name of the init container that installs the iptables rules.
pub const INIT_CONTAINER: &str = "strait-init";
/// Name of the proxy's telemetry container port (the PodMonitor selects it; at most 15
/// characters, as Kubernetes requires).
pub const TELEMETRY_PORT_NAME: &str = "strait-metrics";
/// Seconds a classic sidecar waits before it starts draining (the app shuts down first).
pub const CLASSIC_PRESTOP_SECONDS: u32 = 5;

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn resources(r: &Resources) -> Value {
    let pick = |pairs: [(&str, &String); 2]| -> Map<String, Value> {
        pairs
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect()
    };
    let mut out = Map::new();
    let requests = pick([("cpu", &r.cpu_request), ("memory", &r.memory_request)]);
    let limits = pick([("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]);
    if !requests.is_empty() {
        out.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        out.insert("limits".into(), Value::Object(limits));
    }
    Value::Object(out)
}

/// `strait-init`: root with NET_ADMIN/NET_RAW just long enough to install the rules.
pub fn init_container(options: &PodOptions, settings: &Settings) -> Value {
    let uid = PROXY_UID.to_string();
    let mut args = vec![
        "init-iptables".to_owned(),
        "--proxy-uid".into(),
        uid.clone(),
        "--proxy-gid".into(),
        uid,
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--admin-port".into(),
        ADMIN_PORT.to_string(),
        "--telemetry-port".into(),
        TELEMETRY_PORT.to_string(),
    ];
    if !options.exclude_inbound_ports.is_empty() {
        args.extend([
            "--exclude-inbound-ports".into(),
            join(&options.exclude_inbound_ports),
        ]);
    }
    if !options.exclude_outbound_ports.is_empty() {
        args.extend([
            "--exclude-outbound-ports".into(),
            join(&options.exclude_outbound_ports),
        ]);
    }
    if !options.exclude_outbound_cidrs.is_empty() {
        args.extend([
            "--exclude-outbound-cidrs".into(),
            join(&options.exclude_outbound_cidrs),
        ]);
    }
    json!({
        "name": INIT_CONTAINER,
        "image": settings.proxy_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// The proxy container. Native (`restartPolicy: Always` in initContainers): its startup probe
/// holds back every container after it until the proxy is ready (serving the control's
/// config), and it gets SIGTERM only after the app has exited. Classic: a container with a
/// preStop pause so the app stops first. Probes and Prometheus use the telemetry port; the
/// admin port is bound on loopback and not declared.
pub fn proxy_container(options: &PodOptions, settings: &Settings) -> Value {
    let probe = |period: u32, failures: u32| {
        json!({
            "httpGet": {"path": "/ready", "port": TELEMETRY_PORT},
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };
    let mut container = json!({
        "name": PROXY_CONTAINER,
        "image": settings.proxy_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "--config", identity::BOOTSTRAP_FILE,
            "--control", "$(STRAIT_CONTROL_ADDRESS)",
            "--node", "$(STRAIT_POD_NAME).$(STRAIT_POD_NAMESPACE)",
            "--token-file", identity::TOKEN_FILE,
            "--log-format", "json",
        ],
        "env": [
            {"name": "STRAIT_CONTROL_ADDRESS", "value": settings.control_address},
            field_env("STRAIT_NODE_NAME", "spec.nodeName"),
            field_env("STRAIT_POD_NAME", "metadata.name"),
            field_env("STRAIT_POD_NAMESPACE", "metadata.namespace"),
            field_env("STRAIT_POD_IP", "status.podIP"),
        ],
        "ports": [{"name": TELEMETRY_PORT_NAME, "containerPort": TELEMETRY_PORT, "protocol": "TCP"}],
        "startupProbe": probe(1, 120),
        "readinessProbe": probe(5, 3),
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": TELEMETRY_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": resources(&options.resources),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": identity::volume_mounts(),
    });
    if let Some(map) = container.as_object_mut() {
        if options.native {
            map.insert("restartPolicy".into(), json!("Always"));
        } else {
            map.insert(
                "lifecycle".into(),
                json!({"preStop": {"sleep": {"seconds": CLASSIC_PRESTOP_SECONDS}}}),
            );
        }
    }
    container
}

/// Annotations injection adds: the marker, Prometheus scraping (unless the pod already says
/// how it is scraped), and kubectl's default container (the app, not the proxy).
pub fn added_annotations(
    existing: &Map<String, Value>,
    app_container: Option<&str>,
) -> Vec<(String, Value)> {
    let mut out = vec![(
        super::annotations::INJECTED.to_owned(),
        json!(env!("CARGO_PKG_VERSION")),
    )];
    if !existing.keys().any(|k| k.starts_with("prometheus.io/")) {
        out.push(("prometheus.io/scrape".into(), json!("true")));
        out.push((
            "prometheus.io/port".into(),
            json!(TELEMETRY_PORT.to_string()),
        ));
        out.push(("prometheus.io/path".into(), json!("/metrics")));
    }
    if let Some(app) = app_container {
        if !existing.contains_key(super::annotations::DEFAULT_CONTAINER) {
            out.push((super::annotations::DEFAULT_CONTAINER.into(), json!(app)));
        }
    }
    out
}
