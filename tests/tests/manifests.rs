//! Everything in deploy/ and everything injection produces is valid for a real cluster:
//! Kubernetes objects against the Kubernetes 1.33 OpenAPI schemas (offline, with
//! `kubernetes-validate --strict`), Strait resources with Strait's own validator, and the
//! Grafana dashboard against the proxy's real metric names.
//!
//! `kubernetes-validate` comes from pip (scripts/test.sh installs it). Without it the schema
//! tests skip loudly, unless `STRAIT_REQUIRE_KUBERNETES_VALIDATE=1` (CI) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use strait_config::sidecar::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, TELEMETRY_PORT};
use strait_control::inject::yaml;
use strait_tests::process::{proxy_bin, TempDir};

/// The Kubernetes version the manifests target (native sidecars are stable from 1.33).
const KUBERNETES: &str = "1.33.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every document of a YAML file, as JSON, with its position.
fn documents(path: &Path) -> Vec<(usize, Value)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml::split_documents(&text)
        .iter()
        .enumerate()
        .filter_map(|(i, part)| {
            let doc = yaml::parse(part)
                .unwrap_or_else(|e| panic!("{} document {}: {e}", path.display(), i + 1))?;
            Some((i + 1, yaml::to_json(&doc)))
        })
        .collect()
}

/// API groups served by Kubernetes itself (schemas in kubernetes-validate).
fn is_kubernetes(api_version: &str, kind: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let builtin = group.is_empty()
        || group.ends_with(".k8s.io") && !group.starts_with("apiserver.config")
        || ["apps", "batch", "policy", "autoscaling"].contains(&group);
    builtin && !(api_version == "v1" && kind == "Config")
}

/// The non-Kubernetes documents deploy/ may hold, each checked some other way below.
fn is_known_other(api_version: &str, kind: &str) -> bool {
    matches!(
        (api_version, kind),
        ("strait.dev/v1alpha1", _) | ("monitoring.coreos.com/v1", "PodMonitor")
    )
}

fn validator() -> Option<PathBuf> {
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(PathBuf::from("kubernetes-validate"));
    }
    let required = std::env::var("STRAIT_REQUIRE_KUBERNETES_VALIDATE").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "kubernetes-validate is not installed (pip install kubernetes-validate)"
    );
    eprintln!(
        "\n*** SKIPPED: kubernetes-validate is not installed; `pip install kubernetes-validate` \
         (scripts/test.sh does) to check manifests against the Kubernetes schemas.\n"
    );
    None
}

/// Validates each `(label, document)` in its own file; panics with the validator's words.
fn validate(validator: &Path, docs: &[(String, Value)]) {
    let dir = TempDir::new("k8s-validate");
    let mut files = Vec::new();
    for (i, (label, doc)) in docs.iter().enumerate() {
        let name: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = dir.path().join(format!("{i:03}-{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(doc).expect("JSON")).expect("write");
        files.push(path);
    }
    let output = Command::new(validator)
        .args(["--strict", "-k", KUBERNETES])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "kubernetes-validate failed:\n{text}"
    );
    // Every document must have been checked against a schema, none skipped as unknown.
    let passed = text
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(
        passed,
        docs.len(),
        "not every document was validated:\n{text}"
    );
}

#[test]
fn deploy_manifests_validate_against_the_kubernetes_schemas() {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    let mut kubernetes = Vec::new();
    for path in &files {
        for (i, doc) in documents(path) {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            let kind = doc["kind"].as_str().unwrap_or_default();
            let label = format!(
                "{}#{i} {kind}",
                path.strip_prefix(root()).unwrap_or(path).display()
            );
            if is_kubernetes(api_version, kind) {
                kubernetes.push((label, doc));
            } else {
                assert!(
                    is_known_other(api_version, kind),
                    "{label}: unexpected apiVersion {api_version}"
                );
            }
        }
    }
    assert!(
        kubernetes.len() >= 20,
        "only {} Kubernetes objects found in deploy/",
        kubernetes.len()
    );
    let kinds: Vec<&str> = kubernetes
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    for wanted in [
        "Namespace",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "MutatingWebhookConfiguration",
        "ConfigMap",
        "Job",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(&wanted), "deploy/ has no {wanted}");
    }
    if let Some(validator) = validator() {
        validate(&validator, &kubernetes);
    }
}

fn patched_admission_pod() -> Value {
    let fixtures = root().join("tests/fixtures/inject");
    let review: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("admission/pod-create.json")).expect("fixture"),
    )
    .expect("JSON");
    let patch: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("golden/admission-pod-create.patch.json"))
            .expect("golden"),
    )
    .expect("JSON");
    let ops: Vec<strait_control::inject::patch::Op> = patch
        .iter()
        .map(|op| {
            strait_control::inject::patch::Op::add(
                op["path"].as_str().unwrap_or_default(),
                op["value"].clone(),
            )
        })
        .collect();
    let mut pod = review["request"]["object"].clone();
    strait_control::inject::patch::apply(&mut pod, &ops).expect("the golden patch applies");
    // The validator names what it checks; the API server fills in a generateName'd name.
    pod["metadata"]["name"] = Value::from("reviews-v1-6b8f9c7d5-x2k9p");
    pod
}

#[test]
fn injected_probes_and_scrapes_use_the_telemetry_port_not_the_admin_port() {
    let pod = patched_admission_pod();
    let proxy = pod["spec"]["initContainers"]
        .as_array()
        .expect("initContainers")
        .iter()
        .find(|c| c["name"] == "strait-proxy")
        .expect("the proxy container");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            proxy[probe]["httpGet"]["port"], TELEMETRY_PORT,
            "{probe}: {proxy}"
        );
    }
    let ports: Vec<u64> = proxy["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    assert_eq!(
        ports,
        [u64::from(TELEMETRY_PORT)],
        "only telemetry is declared"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        TELEMETRY_PORT.to_string()
    );
    let monitor = documents(&root().join("deploy/observability/podmonitor.yaml"));
    let (_, monitor) = monitor.first().expect("the PodMonitor");
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"],
        proxy["ports"][0]["name"]
    );
}

#[test]
fn injected_output_validates_against_the_kubernetes_schemas() {
    let golden = root().join("tests/fixtures/inject/golden");
    let mut files = Vec::new();
    yaml_files(&golden, &mut files);
    let mut docs = Vec::new();
    for path in &files {
        for (i, doc) in documents(path) {
            docs.push((
                format!(
                    "{}#{i}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ),
                doc,
            ));
        }
    }
    assert!(docs.len() >= 8, "golden outputs missing: {}", docs.len());
    docs.push(("webhook-patched-pod".into(), patched_admission_pod()));
    if let Some(validator) = validator() {
        validate(&validator, &docs);
    }
}

#[test]
fn the_validator_rejects_a_wrong_manifest() {
    let Some(validator) = validator() else { return };
    let mut pod = patched_admission_pod();
    // A typo in a field the injector writes: strict validation must catch it.
    pod["spec"]["initContainers"][1]["restartPolicyy"] = Value::from("Always");
    let dir = TempDir::new("k8s-validate-bad");
    let path = dir.path().join("bad.json");
    std::fs::write(&path, serde_json::to_vec(&pod).expect("JSON")).expect("write");
    let output = Command::new(validator)
        .args(["--strict", "-k", KUBERNETES])
        .arg(&path)
        .output()
        .expect("run");
    assert!(
        !output.status.success(),
        "an unknown field passed validation"
    );
}

#[test]
fn the_sidecar_bootstrap_uses_the_fixed_ports_and_passes_check() {
    let path = root().join("deploy/proxy/sidecar.yaml");
    let snapshot = strait_config::load_path(&path).unwrap_or_else(|e| panic!("{e}"));
    // The full admin API (config, shutdown) on loopback; probes and scrapes on the pod address.
    assert_eq!(snapshot.proxy.admin.port(), ADMIN_PORT);
    assert!(snapshot.proxy.admin.ip().is_loopback());
    let telemetry = snapshot.proxy.telemetry.expect("a telemetry listener");
    assert_eq!(telemetry.port(), TELEMETRY_PORT);
    assert!(telemetry.ip().is_unspecified());
    let port = |name: &str| {
        snapshot
            .listeners
            .iter()
            .find(|l| &*l.name == name)
            .map(|l| l.address.port())
    };
    assert_eq!(
        port(strait_config::sidecar::INBOUND_LISTENER),
        Some(INBOUND_PORT)
    );
    assert_eq!(
        port(strait_config::sidecar::OUTBOUND_LISTENER),
        Some(OUTBOUND_PORT)
    );
    let check = Command::new(proxy_bin())
        .arg("--check")
        .arg(&path)
        .output()
        .expect("strait-proxy --check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn the_example_policies_validate_with_the_sidecar_bootstrap() {
    let policies = documents(&root().join("deploy/policies.yaml"));
    let data = policies
        .iter()
        .find(|(_, d)| d["kind"] == "ConfigMap")
        .map(|(_, d)| d["data"].clone())
        .expect("a ConfigMap");
    let sidecar =
        std::fs::read_to_string(root().join("deploy/proxy/sidecar.yaml")).expect("sidecar");
    for (name, text) in data.as_object().expect("data") {
        let text = text.as_str().expect("text");
        let set = format!("{sidecar}\n---\n{text}");
        let snapshot =
            strait_config::load_str(name, &set).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!snapshot.services.is_empty(), "{name}: no Services");
    }
}

/// Every rule of the ClusterRoles bound to the control's ServiceAccount in `file`, as
/// (API group, resource, verb).
fn control_cluster_permissions(file: &str) -> std::collections::BTreeSet<(String, String, String)> {
    let docs = documents(&root().join(file));
    let bound: Vec<String> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "ClusterRoleBinding")
        .filter(|(_, d)| {
            d["subjects"].as_array().is_some_and(|s| {
                s.iter().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == "strait-control"
                        && s["namespace"] == "strait-system"
                })
            })
        })
        .filter_map(|(_, d)| d["roleRef"]["name"].as_str().map(str::to_owned))
        .collect();
    let mut permissions = std::collections::BTreeSet::new();
    for (_, role) in docs.iter().filter(|(_, d)| d["kind"] == "ClusterRole") {
        if !bound.iter().any(|b| role["metadata"]["name"] == b.as_str()) {
            continue;
        }
        for rule in role["rules"].as_array().into_iter().flatten() {
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            };
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        permissions.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    permissions
}

#[test]
fn the_control_may_do_exactly_what_discovery_token_review_and_policies_need() {
    let base: std::collections::BTreeSet<(String, String, String)> = [
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("discovery.k8s.io", "endpointslices", "get"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("", "pods", "get"),
    ]
    .iter()
    .map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
    .collect();
    // `--policies kubernetes` (the single control only: no leader election among replicas):
    // read the policy kinds, write their status.
    let mut policies = base.clone();
    let kinds = [
        ("strait.dev", "proxyconfigs"),
        ("strait.dev", "services"),
        ("strait.dev", "httproutes"),
        ("strait.dev", "tcproutes"),
        ("strait.dev", "tlsroutes"),
        ("strait.dev", "authorizationpolicies"),
        ("gateway.networking.k8s.io", "httproutes"),
    ];
    for (group, resource) in kinds {
        for verb in ["get", "list", "watch"] {
            policies.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
        }
        for verb in ["get", "update", "patch"] {
            policies.insert((
                group.to_owned(),
                format!("{resource}/status"),
                verb.to_owned(),
            ));
        }
    }
    assert_eq!(
        control_cluster_permissions("deploy/control.yaml"),
        policies,
        "deploy/control.yaml"
    );
    assert_eq!(
        control_cluster_permissions("deploy/control/replicated.yaml"),
        base,
        "deploy/control/replicated.yaml"
    );
}

#[test]
fn the_dashboard_uses_the_proxys_metric_names() {
    use strait_proxy::metrics::*;
    let known = [
        REQUESTS_TOTAL,
        REQUEST_DURATION,
        CONFIG_RELOADS,
        CONFIG_VERSION,
        TCP_CONNECTIONS,
        TCP_BYTES,
        CONNECTIONS_REJECTED,
        CONNECTIONS_ACTIVE,
        UPSTREAM_RETRIES,
        RATELIMIT_REJECTED,
        CIRCUIT_STATE,
        ENDPOINT_HEALTHY,
        TRACING_SPANS_DROPPED,
        TRACING_SPANS_EXPORTED,
    ];
    let text = std::fs::read_to_string(root().join("deploy/observability/grafana-dashboard.json"))
        .expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut used = std::collections::BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let names: Vec<String> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("strait_"))
                .map(|w| {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| w.strip_suffix(s))
                        .unwrap_or(w)
                        .to_owned()
                })
                .collect();
            assert!(!names.is_empty(), "no Strait metric in `{expr}`");
            for name in names {
                assert!(
                    known.contains(&name.as_str()),
                    "`{name}` is not a proxy metric (in `{expr}`)"
                );
                used.insert(name);
            }
        }
    }
    assert!(
        used.contains(REQUESTS_TOTAL) && used.contains(REQUEST_DURATION),
        "{used:?}"
    );
}
