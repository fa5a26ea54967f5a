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
    // The contract itself (every file of it, identity.yaml's host-name endpoint included),
    // when the shared folder sits beside the repository or beside its worktrees' folder.
    for shared in ["../shared/contract", "../../shared/contract"] {
        for file in ["mesh.yaml", "identity.yaml"] {
            let path = root.join(shared).join(file);
            if path.exists() {
                paths.push(path);
            }
        }
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

/// The most memory any child of this test process has held (KiB), from `getrusage`.
fn children_peak_rss_kib() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss
}

#[test]
fn aliases_spread_over_many_documents_share_one_budget() {
    // 300 documents, each with aliases just under the old per-document budget: 947 KB that
    // expanded to 30 million nodes and 2.3 GB before being rejected.
    let doc = format!(
        "x: &a [{}]\ny: [{}]\n",
        vec!["1"; 100].join(","),
        vec!["*a"; 980].join(",")
    );
    let dir = TempDir::new("check-aliases");
    let file = dir.path().join("bomb.yaml");
    std::fs::write(&file, format!("---\n{doc}").repeat(300)).unwrap();
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 1, "{stderr}");
    let want = format!(
        "{}:6:29: y[8]: anchors and aliases copy more than 100000 nodes",
        file.display()
    );
    assert!(stderr.contains(&want), "missing `{want}` in:\n{stderr}");
    let peak_mib = children_peak_rss_kib() / 1024;
    assert!(peak_mib < 256, "--check peaked at {peak_mib} MiB");
}

#[test]
fn a_mapping_of_200000_keys_is_checked_and_its_duplicate_found() {
    // Each key used to be compared with every earlier one: 2·10¹⁰ comparisons here, far past
    // the test run (160,000 keys took 28 s in a release build).
    let mut text = String::from(
        "apiVersion: strait.dev/v1alpha1\nkind: Service\nmetadata:\n  name: api\n  annotations:\n",
    );
    for i in 0..200_000 {
        text.push_str(&format!("    k{i}: v\n"));
    }
    text.push_str("    k7: again\nspec: {protocol: http1}\n");
    let dir = TempDir::new("check-keys");
    let file = dir.path().join("keys.yaml");
    std::fs::write(&file, text).unwrap();
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 1, "{stderr}");
    let want = format!(
        "{}:200006:5: metadata.annotations.k7: duplicate key `k7` (first at line 13)",
        file.display()
    );
    assert!(stderr.contains(&want), "missing `{want}` in:\n{stderr}");
}
