//! The CustomResourceDefinitions in deploy/crds/ are exactly what the generator makes from the
//! config types (`straitctl crds --out deploy/crds`), and every sample Strait resource (the
//! examples, the policies, the contract files) validates against its generated schema, as the
//! API server would check it. (deploy/crds is also checked against the Kubernetes schemas with
//! `kubernetes-validate --strict` by `manifests.rs`, with the rest of deploy/.)
//!
//! The schema check runs Python's `jsonschema` (installed with kubernetes-validate by
//! scripts/test.sh). Without it the test skips loudly, unless
//! `STRAIT_REQUIRE_KUBERNETES_VALIDATE=1` (CI) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use strait_control::crd::KINDS;
use strait_control::inject::yaml;
use strait_tests::process::TempDir;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

#[test]
fn committed_crds_are_what_the_generator_makes() {
    let dir = root().join("deploy/crds");
    let mut stale = Vec::new();
    for kind in KINDS {
        let (name, generated) = kind.file().expect("structural schema");
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        if committed != generated {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "deploy/crds differs from the config types for {stale:?}: run \
         `cargo run -p strait-control --bin straitctl -- crds --out deploy/crds` and commit"
    );
    let files = std::fs::read_dir(&dir).expect("deploy/crds").count();
    assert_eq!(
        files,
        KINDS.len(),
        "deploy/crds holds a file no kind generates"
    );
}

/// Every `strait.dev` document of the YAML files under `path`, labelled.
fn strait_documents(path: &Path, out: &mut Vec<(String, Value)>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .expect("read dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            strait_documents(&entry, out);
        }
        return;
    }
    if path.extension().is_none_or(|e| e != "yaml") {
        return;
    }
    let text = std::fs::read_to_string(path).expect("read");
    documents_of(&path.display().to_string(), &text, out);
}

/// The `strait.dev` documents of `text`, and of the files a ConfigMap in it carries (the
/// policies deploy/ mounts into the control), labelled from `label`.
fn documents_of(label: &str, text: &str, out: &mut Vec<(String, Value)>) {
    for (i, part) in yaml::split_documents(text).iter().enumerate() {
        let Some(doc) = yaml::parse(part).expect("YAML") else {
            continue;
        };
        let doc = yaml::to_json(&doc);
        if doc["apiVersion"] == "strait.dev/v1alpha1" {
            out.push((format!("{label}#{}", i + 1), doc));
        } else if doc["kind"] == "ConfigMap" {
            for (name, file) in doc["data"].as_object().into_iter().flatten() {
                if let Some(file) = file.as_str() {
                    documents_of(&format!("{label}#{}/{name}", i + 1), file, out);
                }
            }
        }
    }
}

/// Validates each document against the schema of its kind; the failures, one line each.
/// `None` when Python's jsonschema is missing (and not required).
fn schema_failures(docs: &[(String, Value)]) -> Option<Vec<String>> {
    let available = Command::new("python3")
        .args(["-c", "import jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        let required = std::env::var("STRAIT_REQUIRE_KUBERNETES_VALIDATE").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "python3 jsonschema is missing (pip install kubernetes-validate)"
        );
        eprintln!("\n*** SKIPPED: python3 jsonschema is missing; scripts/test.sh installs it.\n");
        return None;
    }
    let schemas: serde_json::Map<String, Value> = KINDS
        .iter()
        .map(|k| (k.kind.to_owned(), k.object_schema().expect("structural")))
        .collect();
    let input = json!({
        "schemas": schemas,
        "docs": docs.iter().map(|(label, doc)| json!({"label": label, "doc": doc})).collect::<Vec<_>>(),
    });
    let dir = TempDir::new("crd-schemas");
    let path = dir.path().join("input.json");
    std::fs::write(&path, input.to_string()).expect("write");
    const SCRIPT: &str = r#"
import json, sys, jsonschema
data = json.load(open(sys.argv[1]))
for item in data["docs"]:
    schema = data["schemas"].get(item["doc"].get("kind"))
    if schema is None:
        print(item["label"] + ": no CRD for this kind"); continue
    for error in jsonschema.Draft7Validator(schema).iter_errors(item["doc"]):
        print(item["label"] + ": " + "/".join(map(str, error.absolute_path)) + ": " + error.message)
"#;
    let output = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(&path)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn sample_resources_validate_against_their_generated_schema() {
    let mut docs = Vec::new();
    strait_documents(&root().join("deploy"), &mut docs);
    // The contract files, when the shared folder sits beside the repository.
    strait_documents(&root().join("../shared/contract"), &mut docs);
    let kinds: Vec<&str> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    for kind in KINDS {
        assert!(
            kinds.contains(&kind.kind),
            "no sample {} to check",
            kind.kind
        );
    }
    if let Some(failures) = schema_failures(&docs) {
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn the_schema_refuses_what_the_config_crate_refuses() {
    let service = |spec: Value| {
        json!({"apiVersion": "strait.dev/v1alpha1", "kind": "Service",
               "metadata": {"name": "a"}, "spec": spec})
    };
    let docs = vec![
        ("protocol".to_owned(), service(json!({"protocol": "http3"}))),
        (
            "weight".to_owned(),
            service(json!({"protocol": "http1", "endpoints": [{"address": "a:1", "weight": -1}]})),
        ),
        (
            "duration".to_owned(),
            service(json!({"protocol": "http1", "healthCheck": {"interval": "soon"}})),
        ),
        ("missing".to_owned(), service(json!({}))),
    ];
    if let Some(failures) = schema_failures(&docs) {
        for (label, _) in &docs {
            assert!(
                failures.iter().any(|f| f.starts_with(&format!("{label}:"))),
                "{label} was accepted: {failures:?}"
            );
        }
    }
}

/// Whether a rule of the ClusterRoles in deploy/control.yaml grants `verb` on `resource`.
fn granted(roles: &[Value], group: &str, resource: &str, verb: &str) -> bool {
    let has = |list: &Value, item: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|v| v == item || v == "*"))
    };
    roles.iter().any(|role| {
        role["rules"].as_array().into_iter().flatten().any(|rule| {
            has(&rule["apiGroups"], group)
                && has(&rule["resources"], resource)
                && has(&rule["verbs"], verb)
        })
    })
}

#[test]
fn the_control_may_watch_every_policy_kind_and_write_its_status() {
    let path = root().join("deploy/control.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/control.yaml");
    let roles: Vec<Value> = yaml::split_documents(&text)
        .iter()
        .filter_map(|part| yaml::parse(part).expect("YAML"))
        .map(|doc| yaml::to_json(&doc))
        .filter(|doc| doc["kind"] == "ClusterRole")
        .collect();
    let mut wanted: Vec<(&str, String)> = KINDS
        .iter()
        .map(|k| ("strait.dev", k.plural.to_owned()))
        .collect();
    wanted.push(("gateway.networking.k8s.io", "httproutes".to_owned()));
    for (group, plural) in &wanted {
        for verb in ["get", "list", "watch"] {
            assert!(
                granted(&roles, group, plural, verb),
                "no {verb} on {group}/{plural}"
            );
        }
        for verb in ["update", "patch"] {
            let status = format!("{plural}/status");
            assert!(
                granted(&roles, group, &status, verb),
                "no {verb} on {group}/{status}"
            );
        }
        for verb in ["create", "delete"] {
            assert!(
                !granted(&roles, group, plural, verb),
                "{verb} on {group}/{plural} is more than the control needs"
            );
        }
    }
}
