//! Sidecar injection, as users run it: `straitctl inject` on each workload kind (golden files
//! under tests/fixtures/inject/golden), and the webhook on real AdmissionReview JSON over TLS.
//!
//! `STRAIT_BLESS=1 cargo test -p strait-tests --test inject` rewrites the golden files; review
//! the diff before committing it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use strait_tests::control::straitctl_bin;
use strait_tests::process::TempDir;
use strait_tests::Control;

const KINDS: [&str; 7] = [
    "deployment",
    "statefulset",
    "daemonset",
    "job",
    "cronjob",
    "replicaset",
    "pod",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/inject")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `straitctl inject ARGS` with the fixture trust bundle (`tests/fixtures/inject/roots.pem`).
fn inject(args: &[&str], stdin: Option<&str>) -> Run {
    let roots = fixtures().join("roots.pem");
    inject_raw(
        &[&["--trust-bundle", &roots.to_string_lossy()], args].concat(),
        stdin,
    )
}

fn inject_raw(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(straitctl_bin())
        .arg("inject")
        .args(args)
        .env_remove("STRAIT_CA_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run straitctl inject");
    if let Some(mut pipe) = child.stdin.take() {
        // A run that reads its input from a file may exit before reading stdin (EPIPE here):
        // what it printed is the verdict.
        let _ = pipe.write_all(stdin.unwrap_or_default().as_bytes());
    }
    let output = child.wait_with_output().expect("straitctl inject");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn inject_file(path: &Path, extra: &[&str]) -> Run {
    let path = path.to_string_lossy().into_owned();
    let mut args = vec!["-f", path.as_str()];
    args.extend(extra);
    inject(&args, None)
}

/// Compares `actual` with the golden file, or rewrites it under `STRAIT_BLESS=1`.
fn golden(name: &str, actual: &str) {
    let path = fixtures().join("golden").join(name);
    if std::env::var_os("STRAIT_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with STRAIT_BLESS=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the output at line {}:\n  golden: {:?}\n  actual: {:?}\n--- actual output ---\n{actual}",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

#[test]
fn each_workload_kind_matches_its_golden_output() {
    for kind in KINDS {
        let run = inject_file(&fixtures().join(format!("{kind}.yaml")), &[]);
        assert_eq!(run.code, 0, "{kind}: {}", run.stderr);
        assert!(run.stderr.contains(" injected"), "{kind}: {}", run.stderr);
        golden(&format!("{kind}.yaml"), &run.stdout);
    }
}

#[test]
fn injecting_twice_gives_the_same_output() {
    for kind in KINDS {
        let once = inject_file(&fixtures().join(format!("{kind}.yaml")), &[]);
        let twice = inject(&["-f", "-"], Some(&once.stdout));
        assert_eq!(twice.code, 0, "{kind}: {}", twice.stderr);
        assert_eq!(twice.stdout, once.stdout, "{kind}: not idempotent");
        assert!(
            twice.stderr.contains("already injected"),
            "{}",
            twice.stderr
        );
        let again = inject_file(&fixtures().join(format!("{kind}.yaml")), &[]);
        assert_eq!(again.stdout, once.stdout, "{kind}: not deterministic");
    }
}

#[test]
fn other_kinds_opted_out_and_already_injected_are_echoed_byte_for_byte() {
    let input = std::fs::read_to_string(fixtures().join("untouched.yaml")).expect("fixture");
    let run = inject_file(&fixtures().join("untouched.yaml"), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, format!("---\n{input}"));
    for line in [
        "deployment/shop/legacy skipped: strait.dev/inject: disabled",
        "pod/shop/done skipped: already injected",
        "daemonset/kube-system/cni skipped: hostNetwork pods are never injected",
    ] {
        assert!(run.stderr.contains(line), "{line} in:\n{}", run.stderr);
    }
}

#[test]
fn an_unannotated_deployment_is_injected_since_asking_is_the_opt_in() {
    let run = inject_file(&fixtures().join("plain.yaml"), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("deployment/shop/plain injected"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("name: strait-proxy") && run.stdout.contains("name: strait-init"),
        "{}",
        run.stdout
    );
    golden("plain.yaml", &run.stdout);
}

#[test]
fn a_bad_annotation_is_an_error_naming_it() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    strait.dev/inject: enabled\n    strait.dev/exclude-outbound-ports: \"http\"\nspec:\n  containers: [{name: a, image: a}]\n";
    let run = inject(&["-f", "-"], Some(yaml));
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("document 1 (pod/p)")
            && run.stderr.contains("strait.dev/exclude-outbound-ports")
            && run.stderr.contains("`http` is not a port"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "nothing is printed on error");
}

// ---- the proxy's identity ----

/// The injected `strait-proxy` container of `pod`.
fn proxy_container(pod: &Value) -> &Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .find(|c| c["name"] == "strait-proxy")
        .unwrap_or_else(|| panic!("no strait-proxy in {pod}"))
}

/// The value after `flag` in the proxy's arguments.
fn arg<'a>(proxy: &'a Value, flag: &str) -> &'a str {
    let args = proxy["args"].as_array().expect("args");
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
}

/// The volume of `pod` mounted in the proxy at the directory of `file`.
fn volume_of<'a>(pod: &'a Value, proxy: &Value, file: &str) -> &'a Value {
    let dir = Path::new(file).parent().expect("a directory");
    let mount = proxy["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"].as_str().map(Path::new) == Some(dir))
        .unwrap_or_else(|| panic!("nothing mounted at {}: {proxy}", dir.display()));
    assert_eq!(mount["readOnly"], true, "{mount}");
    pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]))
}

/// What an injected pod must be: a proxy whose only credential is a short-lived projected
/// ServiceAccount token for audience `strait`, whose bootstrap has `spec.identity` for
/// `namespace`/`service_account` and the mesh's `bundle`, which talks to the control over
/// https, and no operator token anywhere.
fn assert_least_privilege_identity(
    pod: &Value,
    namespace: &str,
    service_account: &str,
    bundle: &str,
) {
    let proxy = proxy_container(pod);
    let token = volume_of(pod, proxy, arg(proxy, "--token-file"));
    let sources = token["projected"]["sources"]
        .as_array()
        .expect("a projected volume");
    assert_eq!(sources.len(), 1, "{token}");
    let sa_token = &sources[0]["serviceAccountToken"];
    assert_eq!(sa_token["audience"], "strait", "{token}");
    assert_eq!(
        Some(arg(proxy, "--token-file")),
        Path::new(arg(proxy, "--token-file"))
            .parent()
            .map(|d| d.join(sa_token["path"].as_str().unwrap_or_default()))
            .as_deref()
            .and_then(Path::to_str),
    );
    let lifetime = sa_token["expirationSeconds"]
        .as_u64()
        .expect("expirationSeconds");
    assert!((600..=3600).contains(&lifetime), "short-lived: {lifetime}s");

    let config = arg(proxy, "--config");
    let bootstrap = volume_of(pod, proxy, config);
    let items = bootstrap["downwardAPI"]["items"]
        .as_array()
        .expect("a downwardAPI volume");
    let annotation_of = |file: &str| {
        let item = items
            .iter()
            .find(|i| i["path"] == file)
            .unwrap_or_else(|| panic!("no {file} in {bootstrap}"));
        let field = item["fieldRef"]["fieldPath"].as_str().expect("fieldPath");
        let key = field
            .strip_prefix("metadata.annotations['")
            .and_then(|k| k.strip_suffix("']"))
            .unwrap_or_else(|| panic!("not an annotation: {field}"));
        pod["metadata"]["annotations"][key]
            .as_str()
            .unwrap_or_else(|| panic!("no annotation {key}"))
            .to_owned()
    };
    let file_name = Path::new(config)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file");
    let text = annotation_of(file_name);
    let snapshot =
        strait_config::load_str(file_name, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let identity = snapshot
        .proxy
        .identity
        .expect("spec.identity in the bootstrap");
    assert_eq!(
        identity.spiffe_id(),
        Some(format!("spiffe://{TD}/ns/{namespace}/sa/{service_account}")),
        "{text}"
    );
    let strait_config::snapshot::IdentitySource::Control { trust_bundle, .. } = identity else {
        panic!("an identity the control issues: {text}");
    };
    let trust_bundle = trust_bundle.expect("identity.trustBundleFile");
    let bundle_file = trust_bundle
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file");
    assert_eq!(
        annotation_of(bundle_file),
        bundle,
        "the mesh's trust bundle"
    );

    let address = proxy["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "STRAIT_CONTROL_ADDRESS")
        .and_then(|e| e["value"].as_str())
        .expect("STRAIT_CONTROL_ADDRESS");
    assert!(address.starts_with("https://"), "{address}");

    // No operator token: no Secret mounted by injection, nothing named after it.
    let text = pod.to_string();
    assert!(!text.contains("strait-token"), "{pod}");
    for mount in proxy["volumeMounts"].as_array().expect("mounts") {
        let volume = &pod["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("volume");
        assert!(volume.get("secret").is_none(), "{volume}");
    }
    assert!(!proxy.to_string().contains("secretKeyRef"), "{proxy}");
}

#[test]
fn straitctl_inject_gives_the_proxy_its_identity_and_no_operator_token() {
    let run = inject_file(&fixtures().join("deployment.yaml"), &["--trust-domain", TD]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = strait_control::inject::yaml::parse(&run.stdout)
        .expect("YAML")
        .expect("a document");
    let deployment = strait_control::inject::yaml::to_json(&doc);
    let roots = std::fs::read_to_string(fixtures().join("roots.pem")).expect("roots");
    assert_least_privilege_identity(&deployment["spec"]["template"], "shop", "reviews", &roots);

    // A workload naming no namespace gets the one given (where kubectl will create it).
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: a}]\n";
    let run = inject(
        &["--trust-domain", TD, "-n", "payments", "-f", "-"],
        Some(pod),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = strait_control::inject::yaml::parse(&run.stdout)
        .expect("YAML")
        .expect("a document");
    assert_least_privilege_identity(
        &strait_control::inject::yaml::to_json(&doc),
        "payments",
        "default",
        &roots,
    );

    // Without the trust bundle the proxy could not verify the control: refused.
    let run = inject_raw(&["-f", "-"], Some(pod));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--trust-bundle"), "{}", run.stderr);
}

// ---- the webhook ----

struct Pki {
    dir: TempDir,
    ca: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate, written as PEM.
    fn new() -> Self {
        let dir = TempDir::new("webhook-pki");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(
            ca_params,
            rcgen::KeyPair::generate().expect("key"),
        )
        .expect("CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write");
        for (name, sans) in [
            (
                "server",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ),
            ("client", vec!["kube-apiserver".to_owned()]),
        ] {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(sans)
                .expect("params")
                .signed_by(&key, &ca)
                .expect("sign");
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).expect("write");
            std::fs::write(
                dir.path().join(format!("{name}-key.pem")),
                key.serialize_pem(),
            )
            .expect("write");
        }
        let ca = ca.der().clone();
        Self { dir, ca }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// A client trusting this PKI's CA, presenting the client certificate of `certificate`.
    fn client(&self, certificate: Option<&Pki>) -> tokio_rustls::TlsConnector {
        use rustls::pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = if let Some(issuer) = certificate {
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(issuer.path("client.pem"))
                .expect("client cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert");
            let key =
                rustls::pki_types::PrivateKeyDer::from_pem_file(issuer.path("client-key.pem"))
                    .expect("client key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client auth")
        } else {
            builder.with_no_client_auth()
        };
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

struct Webhook {
    /// The control serving the webhook (and the mesh's CA).
    control: Control,
    pki: Pki,
    address: std::net::SocketAddr,
}

/// The trust domain of the webhook's control.
const TD: &str = "example.org";

impl Webhook {
    fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// The webhook of a control with `env` (the stand-in API server's, for TokenReview).
    fn start_with_env(env: &[(String, String)]) -> Self {
        let pki = Pki::new();
        let (cert, key, ca) = (
            pki.path("server.pem"),
            pki.path("server-key.pem"),
            pki.path("ca.pem"),
        );
        let control = Control::start_with_env(
            &[
                "--trust-domain",
                TD,
                "--webhook-listen",
                "127.0.0.1:0",
                "--webhook-cert",
                &cert,
                "--webhook-key",
                &key,
                "--webhook-client-ca",
                &ca,
            ],
            env,
        );
        let address = control
            .json_logs()
            .iter()
            .find(|v| v["fields"]["message"] == "injection webhook listening (TLS)")
            .and_then(|v| v["fields"]["address"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no webhook address in:\n{}", control.logs().join("\n")));
        Self {
            control,
            pki,
            address,
        }
    }

    /// POSTs `body` to `path` over TLS as the API server of a managed cluster does (no
    /// credentials); returns the status and the JSON answer.
    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.post_as(None, path, body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// POSTs `body` to `path` over TLS, presenting the client certificate `certificate`
    /// issued (from its own CA); `Err` when the connection fails.
    async fn post_as(
        &self,
        certificate: Option<&Pki>,
        path: &str,
        body: &str,
    ) -> Result<(u16, Value), String> {
        let tcp = tokio::net::TcpStream::connect(self.address)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let tls = self
            .pki
            .client(certificate)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(connection);
        let req = http::Request::post(path)
            .header("host", "strait-control.strait-system.svc")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("response: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        Ok((status, json))
    }
}

fn admission(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("admission").join(name)).expect("admission fixture")
}

/// `patch` with the trust bundle it gives the proxy (checked to be `bundle`, the control's,
/// which is made at its first start) replaced by a fixed text, for the golden files.
fn without_bundle(mut patch: Value, bundle: &str) -> Value {
    const KEY: &str = "strait.dev/trust-bundle";
    const PLACEHOLDER: &str = "<the control's trust bundle>";
    let mut seen = 0;
    for op in patch.as_array_mut().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or_default().to_owned();
        let value = if path == "/metadata/annotations/strait.dev~1trust-bundle" {
            Some(&mut op["value"])
        } else if path == "/metadata/annotations" {
            op["value"].get_mut(KEY)
        } else {
            None
        };
        if let Some(value) = value {
            assert_eq!(
                value.as_str(),
                Some(bundle),
                "the CA's current trust bundle"
            );
            *value = Value::from(PLACEHOLDER);
            seen += 1;
        }
    }
    assert_eq!(seen, 1, "one trust bundle annotation in {patch}");
    patch
}

/// The JSON Patch of an AdmissionReview answer, decoded (checking the wire format on the way).
fn decoded_patch(answer: &Value) -> Value {
    let response = &answer["response"];
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(response["allowed"], true, "{answer}");
    assert_eq!(response["patchType"], "JSONPatch", "{answer}");
    let text = response["patch"]
        .as_str()
        .expect("patch is a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("valid base64");
    serde_json::from_slice(&bytes).expect("patch is JSON")
}

/// The pod of AdmissionReview `review` with `patch` applied.
fn patched(review: &str, patch: &Value) -> Value {
    let mut pod: Value =
        serde_json::from_str::<Value>(review).expect("JSON")["request"]["object"].clone();
    let ops: Vec<strait_control::inject::patch::Op> = patch
        .as_array()
        .expect("array")
        .iter()
        .map(|op| {
            strait_control::inject::patch::Op::add(
                op["path"].as_str().unwrap_or_default(),
                op["value"].clone(),
            )
        })
        .collect();
    strait_control::inject::patch::apply(&mut pod, &ops).expect("the patch applies");
    pod
}

#[tokio::test]
async fn webhook_patches_pods_from_real_admission_reviews() {
    let hook = Webhook::start();
    let review = admission("pod-create.json");
    let (status, answer) = hook.post("/inject", &review).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    let patch = decoded_patch(&answer);
    golden(
        "admission-pod-create.patch.json",
        &format!(
            "{}\n",
            serde_json::to_string_pretty(&without_bundle(patch.clone(), &hook.control.bundle()))
                .expect("JSON")
        ),
    );
    // Annotation keys are escaped; the containers go first in initContainers, which is created.
    let paths: Vec<&str> = patch
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|op| op["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"/metadata/annotations/prometheus.io~1scrape"),
        "{paths:?}"
    );
    assert!(paths.contains(&"/spec/initContainers"), "{paths:?}");
    assert!(paths.contains(&"/spec/volumes/-"), "{paths:?}");

    // The same review again: the same answer.
    let (_, again) = hook.post("/inject", &review).await;
    assert_eq!(again, answer);

    // Applying the patch gives a pod with the proxy as a native sidecar after strait-init.
    let pod = patched(&review, &patch);
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "strait-init");
    assert_eq!(pod["spec"]["initContainers"][1]["name"], "strait-proxy");
    assert_eq!(pod["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(
        pod["metadata"]["annotations"]["strait.dev/injected"],
        env!("CARGO_PKG_VERSION")
    );
    // The pod's namespace comes from the request, its ServiceAccount from its spec.
    assert_least_privilege_identity(&pod, "shop", "reviews", &hook.control.bundle());
}

#[tokio::test]
async fn webhook_leaves_opted_out_pods_and_honours_namespace_opt_in() {
    let hook = Webhook::start();
    let (status, answer) = hook.post("/inject", &admission("pod-opted-out.json")).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["response"],
        serde_json::json!({"uid": "b2a1c0de-0000-4000-8000-000000000002", "allowed": true})
    );
    // Opted out even where the namespace opted in.
    let (_, answer) = hook
        .post(
            "/inject/namespace-enabled",
            &admission("pod-opted-out.json"),
        )
        .await;
    assert!(answer["response"].get("patch").is_none(), "{answer}");

    let unannotated = admission("pod-unannotated.json");
    let (_, answer) = hook.post("/inject", &unannotated).await;
    assert!(
        answer["response"].get("patch").is_none(),
        "not opted in: {answer}"
    );
    let (_, answer) = hook.post("/inject/namespace-enabled", &unannotated).await;
    let patch = decoded_patch(&answer);
    // No annotations map yet: it is created whole, before anything is added to it.
    assert_eq!(patch[0]["path"], "/metadata/annotations", "{patch}");
    golden(
        "admission-pod-unannotated.namespace-enabled.patch.json",
        &format!(
            "{}\n",
            serde_json::to_string_pretty(&without_bundle(patch, &hook.control.bundle()))
                .expect("JSON")
        ),
    );

    let (status, answer) = hook
        .post("/inject", &admission("pod-bad-annotation.json"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("strait.dev/exclude-outbound-ports"),
        "{message}"
    );

    let (status, _) = hook.post("/inject", "{\"not\": \"a review\"}").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn webhook_needs_no_credentials_and_verifies_a_presented_certificate() {
    let hook = Webhook::start();
    let review = admission("pod-create.json");
    // A managed API server (EKS, GKE, AKS) sends neither a token nor a certificate.
    let (status, answer) = hook.post("/inject", &review).await;
    assert_eq!(status, 200, "no credentials: {answer}");
    decoded_patch(&answer);
    let (status, answer) = hook
        .post_as(Some(&hook.pki), "/inject", &review)
        .await
        .expect("a certificate from --webhook-client-ca is accepted");
    assert_eq!(status, 200, "a client certificate from the CA: {answer}");
    decoded_patch(&answer);
    // A certificate that is presented must chain to --webhook-client-ca.
    let stranger = Pki::new();
    let refused = hook.post_as(Some(&stranger), "/inject", &review).await;
    assert!(
        refused.is_err(),
        "a certificate from another CA is refused: {refused:?}"
    );
}

/// What a projected token looks like (the stand-in API server only compares it).
const POD_JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsic3RyYWl0Il19.c2lnbmF0dXJl";

#[tokio::test]
async fn a_webhook_injected_proxy_gets_its_certificate_with_the_projected_token_alone() {
    let kube = strait_tests::kube::TokenReviewServer::start().await;
    kube.add_service_account(POD_JWT, "shop", "reviews");
    let hook = Webhook::start_with_env(&kube.env());
    let review = admission("pod-create.json");
    let (_, answer) = hook.post("/inject", &review).await;
    let pod = patched(&review, &decoded_patch(&answer));
    let proxy = proxy_container(&pod);

    // What the kubelet would mount: the bootstrap and the bundle from the pod's annotations,
    // the projected token. The pod's fixed ports become free loopback ones (no network
    // namespace here) and the mount paths local files.
    let annotations = &pod["metadata"]["annotations"];
    let dir = TempDir::new("injected-pod");
    let bundle = dir.path().join("trust-bundle.pem");
    let token = dir.path().join("token");
    std::fs::write(
        &bundle,
        annotations["strait.dev/trust-bundle"]
            .as_str()
            .expect("bundle"),
    )
    .expect("write bundle");
    std::fs::write(&token, POD_JWT).expect("write token");
    let bootstrap = [
        "127.0.0.1:15300",
        "127.0.0.1:15301",
        "0.0.0.0:15302",
        "0.0.0.0:15303",
    ]
    .iter()
    .fold(
        annotations["strait.dev/bootstrap"]
            .as_str()
            .expect("bootstrap")
            .to_owned(),
        |text, fixed| text.replace(fixed, "127.0.0.1:0"),
    )
    .replace(
        "trustBundleFile: trust-bundle.pem",
        &format!("trustBundleFile: \"{}\"", bundle.display()),
    )
    .lines()
    .filter(|l| !matches!(l.trim(), "mode: inbound" | "mode: outbound"))
    .collect::<Vec<_>>()
    .join("\n");
    assert!(arg(proxy, "--token-file").ends_with("/token"));
    let node = "reviews-v1-6b8f9c7d5-x2k9p.shop";
    let proxy =
        strait_tests::Proxy::start_with_control(&bootstrap, &hook.control.url(), node, &token);

    strait_tests::eventually(
        "the injected proxy is ready",
        std::time::Duration::from_secs(20),
        || async {
            let (status, _) = strait_tests::metrics::admin_get(proxy.admin(), "/ready").await;
            (status == 200).then_some(())
        },
    )
    .await;
    let (_, identity) = strait_tests::metrics::admin_get(proxy.admin(), "/identity").await;
    let identity: Value = serde_json::from_str(&identity).expect("JSON");
    assert_eq!(
        identity["spiffeId"],
        format!("spiffe://{TD}/ns/shop/sa/reviews"),
        "{identity}"
    );
    let reviews = kube.reviews.lock().expect("reviews").clone();
    let (_, asked) = reviews
        .first()
        .expect("the control asked for a TokenReview");
    assert_eq!(asked["spec"]["token"], POD_JWT);
    assert_eq!(asked["spec"]["audiences"], serde_json::json!(["strait"]));
    let proxies = hook.control.straitctl(&["proxies"]);
    let listed = String::from_utf8_lossy(&proxies.stdout);
    assert!(listed.contains(node), "connected over mTLS: {listed}");
}
