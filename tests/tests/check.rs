//! `strait-proxy --check`: exit 0 for a valid set, 1 with located errors otherwise.

use std::path::PathBuf;
use std::process::Command;

use strait_tests::process::{proxy_bin, TempDir};

fn check(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(proxy_bin())
        .arg("--check")
        .arg(path)
        .output()
        .expect("run --check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_contract_example_is_valid() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut paths = vec![root.join("deploy/examples/mesh.yaml")];
    // The contract itself, when the shared folder sits beside the repository.
    let shared = root.join("../shared/contract/mesh.yaml");
    if shared.exists() {
        paths.push(shared);
    }
    for path in paths {
        let (code, stdout, stderr) = check(&path);
        assert_eq!(code, 0, "{}: {stdout}{stderr}", path.display());
        assert!(stdout.contains("valid"), "{stdout}");
    }
}

#[test]
fn every_error_is_printed_with_its_location() {
    let dir = TempDir::new("check");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: p}
spec:
  admin: 127.0.0.1:15000
  listeners: [{name: web, address: 127.0.0.1:15080, protocol: http}]
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: api}
spec:
  protocol: http1
  endpoints: [{address: 127.0.0.1:9001}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules:
    - matches: [{path: {type: RegularExpression, value: \"(\"}}]
      backendRefs: [{name: api, weight: 0}]
    - backendRefs: [{name: nope}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: other}
spec:
  rules: [{backendRefs: [{name: api}]}]
",
    )
    .unwrap();
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 1, "{stderr}");
    let f = file.display();
    for want in [
        format!("{f}:20:57: spec.rules[0].matches[0].path.value: invalid regular expression"),
        format!("{f}:21:20: spec.rules[0].backendRefs: backend weights sum to 0"),
        format!("{f}:22:28: spec.rules[1].backendRefs[0].name: no Service `nope`"),
    ] {
        assert!(stderr.contains(&want), "missing `{want}` in:\n{stderr}");
    }

    // Syntax and shape errors are reported first, every one of them, across documents.
    std::fs::write(
        &file,
        "apiVersion: strait.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules: [{backendRefs: [{name: api}], retires: 3}]\n---\nkind: Gateway\n",
    )
    .unwrap();
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "{f}:5:40: spec.rules[0].retires: unknown field `retires`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{f}:7:")) && stderr.contains("apiVersion: missing `apiVersion`"),
        "{stderr}"
    );

    std::fs::write(&file, "apiVersion: strait.dev/v1alpha1\nkind: Service\nmetadata: {name: a, name: b}\nspec: {protocol: http1}\n").unwrap();
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{f}:3:21: metadata.name: duplicate key `name`")),
        "{stderr}"
    );
}
