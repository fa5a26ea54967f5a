//! The control's certificate authority, as a proxy and an operator meet it: HTTPS with a
//! certificate of the mesh, join tokens scoped to one identity, renewal with the issued
//! certificate, a proxy identity's least privilege, the CA across `kill -9`, root rotation,
//! a user-supplied issuer, and `straitctl identity`.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use strait_control::ca::authority::verify_chain;
use strait_control::ca::bundle::TrustBundle;
use strait_control::ca::SpiffeId;
use strait_tests::tls::{certificates, csr, ClientIdentity, TlsClient};
use strait_tests::{eventually, Control};

const TD: &str = "example.org";
const REVIEWS: &str = "spiffe://example.org/ns/default/sa/reviews";
const RATINGS: &str = "spiffe://example.org/ns/default/sa/ratings";

fn start() -> Control {
    Control::start_with_args(&["--trust-domain", TD])
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "straitctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `straitctl identity token` for default/SA.
fn join_token(control: &Control, sa: &str, ttl: &str) -> String {
    stdout(&control.straitctl(&[
        "identity",
        "token",
        "--namespace",
        "default",
        "--service-account",
        sa,
        "--ttl",
        ttl,
    ]))
    .trim()
    .to_owned()
}

/// A proxy asking for a certificate for `uri` with a new key.
async fn request_certificate(
    control: &Control,
    client: &TlsClient,
    bearer: Option<&str>,
    uri: &str,
) -> (u16, Value, String) {
    let (csr, key) = csr(uri);
    let answer = client
        .call(
            control.address(),
            Method::POST,
            "/v1/identity/certificates",
            bearer,
            Some(json!({ "csr": csr })),
        )
        .await
        .expect("control answers");
    (answer.status, answer.json, key)
}

/// Joins as default/SA with a fresh token: the identity a proxy then holds.
async fn join(control: &Control, sa: &str) -> ClientIdentity {
    let token = join_token(control, sa, "1h");
    let client = TlsClient::new(&control.bundle(), None, false);
    let uri = format!("spiffe://{TD}/ns/default/sa/{sa}");
    let (status, body, key) = request_certificate(control, &client, Some(&token), &uri).await;
    assert_eq!(status, 200, "{body}");
    ClientIdentity {
        chain_pem: body["certificateChain"].as_str().expect("chain").to_owned(),
        key_pem: key,
    }
}

/// The chain's leaf verifies against `bundle_pem`, and its one SAN is `uri`.
fn assert_issued_for(chain_pem: &str, bundle_pem: &str, uri: &str) -> Result<(), String> {
    let chain = certificates(chain_pem);
    let leaf = chain.first().ok_or("empty chain")?;
    let id = SpiffeId::from_certificate(leaf).map_err(|e| e.to_string())?;
    if id.to_string() != uri {
        return Err(format!("issued for {id}, not {uri}"));
    }
    verify_chain(&certificates(bundle_pem), leaf, &chain[1..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_trust_domain_the_api_is_https_with_h2_and_http1() {
    let control = start();
    assert!(control.url().starts_with("https://"));
    let bundle = control.bundle();
    for (h2, protocol) in [(true, b"h2".as_slice()), (false, b"http/1.1".as_slice())] {
        let answer = TlsClient::new(&bundle, None, h2)
            .call(
                control.address(),
                Method::GET,
                "/v1/resources",
                Some(control.token()),
                None,
            )
            .await
            .expect("the control's certificate verifies against the bundle");
        assert_eq!(answer.status, 200, "{}", answer.json);
        assert_eq!(answer.alpn.as_deref(), Some(protocol));
    }
    // A client trusting another CA refuses the control's certificate.
    let foreign = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let refused = TlsClient::new(&foreign.cert.pem(), None, false)
        .call(control.address(), Method::GET, "/healthz", None, None)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // straitctl over HTTPS with the bundle as --ca-file.
    let out = stdout(&control.straitctl(&["status"]));
    assert!(out.contains("control: up"), "{out}");
    let log = control
        .json_logs()
        .into_iter()
        .find(|l| l["fields"]["trust_bundle"].is_string())
        .expect("the control logs where the trust bundle is");
    assert!(log["fields"]["trust_bundle"]
        .as_str()
        .is_some_and(|p| p.ends_with("trust-bundle.pem")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_gets_a_certificate_for_exactly_its_identity() {
    let control = start();
    let bundle = control.bundle();
    let token = join_token(&control, "reviews", "1h");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(
        parts.len(),
        4,
        "strait-join.<id>.<secret>.<bundle-sha256>: {token}"
    );
    assert_eq!(parts[0], "strait-join");
    assert_eq!(
        parts[3],
        TrustBundle::from_pem(&bundle).expect("bundle").sha256(),
        "the token carries the bundle's hash"
    );
    let client = TlsClient::new(&bundle, None, false);

    let (status, body, _) = request_certificate(&control, &client, Some(&token), REVIEWS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spiffeId"], REVIEWS);
    assert_eq!(body["trustBundle"].as_str(), Some(bundle.as_str()));
    assert!(body["notAfterUnix"].as_i64().is_some());
    assert_issued_for(
        body["certificateChain"].as_str().unwrap_or(""),
        &bundle,
        REVIEWS,
    )
    .expect("leaf of exactly that identity, chaining to the bundle");

    let (status, body, _) = request_certificate(&control, &client, Some(&token), RATINGS).await;
    assert_eq!(status, 403, "another identity with this token: {body}");

    let (status, _, _) = request_certificate(&control, &client, None, REVIEWS).await;
    assert_eq!(status, 401, "no token, no certificate");
    let unknown = format!(
        "strait-join.{}.{}.{}",
        "0".repeat(16),
        "1".repeat(64),
        parts[3]
    );
    let (status, _, _) = request_certificate(&control, &client, Some(&unknown), REVIEWS).await;
    assert_eq!(status, 401, "unknown token");
    let forged = format!("{}.{}.{}.{}", parts[0], parts[1], "2".repeat(64), parts[3]);
    let (status, _, _) = request_certificate(&control, &client, Some(&forged), REVIEWS).await;
    assert_eq!(status, 401, "right id, wrong secret");

    let short = join_token(&control, "reviews", "1s");
    eventually("the 1s token expires", Duration::from_secs(5), || async {
        let (status, _, _) = request_certificate(&control, &client, Some(&short), REVIEWS).await;
        (status == 401).then_some(())
    })
    .await;

    // The store keeps no secret: the token's secret is nowhere in the database file.
    let db = std::fs::read(control.scratch().join("data/strait.redb")).expect("store");
    assert!(!db.windows(64).any(|w| w == parts[2].as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_the_issued_certificate_is_for_its_own_identity_only() {
    let control = start();
    let reviews = join(&control, "reviews").await;
    let as_reviews = TlsClient::new(&control.bundle(), Some(&reviews), true);

    let (status, body, _) = request_certificate(&control, &as_reviews, None, REVIEWS).await;
    assert_eq!(status, 200, "renewal: {body}");
    assert_issued_for(
        body["certificateChain"].as_str().unwrap_or(""),
        &control.bundle(),
        REVIEWS,
    )
    .expect("renewed leaf");
    let (status, body, _) = request_certificate(&control, &as_reviews, None, RATINGS).await;
    assert_eq!(status, 403, "renewal for another identity: {body}");

    // A certificate of another CA is refused at the handshake.
    let other = rcgen::generate_simple_self_signed(vec!["x".into()]).expect("cert");
    let stranger = TlsClient::new(
        &control.bundle(),
        Some(&ClientIdentity {
            chain_pem: other.cert.pem(),
            key_pem: other.signing_key.serialize_pem(),
        }),
        false,
    );
    let refused = stranger
        .call(control.address(), Method::GET, "/healthz", None, None)
        .await;
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(|a| a.status != 200),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_certificate_may_not_write_policy_or_read_other_resources() {
    let control = start();
    let service = "apiVersion: strait.dev/v1alpha1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  protocol: http1\n  endpoints: [{address: \"127.0.0.1:9\"}]\n";
    let pc = "apiVersion: strait.dev/v1alpha1\nkind: ProxyConfig\nmetadata: {name: someone-else, namespace: default}\nspec:\n  admin: \"127.0.0.1:15000\"\n  listeners: [{name: out, address: \"127.0.0.1:15001\", protocol: http}]\n";
    let (status, body) = control.apply("web.yaml", service).await;
    assert_eq!(status, 200, "the operator applies over TLS: {body}");
    let (status, body) = control.apply("pc.yaml", pc).await;
    assert_eq!(status, 200, "{body}");

    let proxy = TlsClient::new(
        &control.bundle(),
        Some(&join(&control, "reviews").await),
        false,
    );
    let call = |method: Method, path: &'static str, body: Option<Value>| {
        let proxy = proxy.clone();
        let address = control.address();
        async move {
            let answer = proxy
                .call(address, method, path, None, body)
                .await
                .expect("control answers");
            (answer.status, answer.json)
        }
    };
    let apply = json!({"files": [{"name": "x.yaml", "content": service}]});
    for (method, path, body) in [
        (Method::POST, "/v1/apply", Some(apply)),
        (Method::DELETE, "/v1/resources/Service/default/web", None),
        (Method::GET, "/v1/resources", None),
        (Method::GET, "/v1/resources/Service/default/web", None),
        (Method::GET, "/v1/registry/instances", None),
        (Method::GET, "/v1/proxies", None),
        (
            Method::POST,
            "/v1/identity/tokens",
            Some(json!({"namespace": "default", "serviceAccount": "admin"})),
        ),
        (Method::GET, "/v1/identity/status", None),
        (
            Method::POST,
            "/v1/identity/rotate",
            Some(json!({"step": "add-root"})),
        ),
        (Method::GET, "/v1/push/stream?node=someone-else", None),
        (
            Method::POST,
            "/v1/push/ack",
            Some(json!({"node": "someone-else", "version": 1, "accepted": true})),
        ),
        (
            Method::POST,
            "/v1/registry/instances",
            Some(
                json!({"service": "db", "namespace": "payments", "address": "127.0.0.1", "port": 5432}),
            ),
        ),
    ] {
        let (status, answer) = call(method.clone(), path, body).await;
        assert_eq!(status, 403, "{method} {path} as a proxy: {answer}");
    }
    // The resource is untouched.
    let (status, _) = control
        .call(Method::GET, "/v1/resources/Service/default/web", None)
        .await;
    assert_eq!(status, 200);

    // What a sidecar needs works.
    let (status, registered) = call(
        Method::POST,
        "/v1/registry/instances",
        Some(json!({"service": "reviews", "namespace": "default", "address": "127.0.0.1", "port": 9080})),
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    let (status, answer) = call(
        Method::POST,
        "/v1/events/mesh.test",
        Some(json!({"data": {"hello": 1}})),
    )
    .await;
    assert_eq!(status, 201, "publish: {answer}");
    let (status, answer) = call(
        Method::POST,
        "/v1/push/ack",
        Some(json!({"node": "reviews-pod", "version": 1, "accepted": true})),
    )
    .await;
    assert_eq!(status, 204, "ack of a node without ProxyConfig: {answer}");

    // Nothing at all without a token or a certificate.
    let (status, _) = control
        .call_as(None, Method::GET, "/v1/resources", None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stream_ends_when_its_node_is_claimed_for_another_identity() {
    let control = start();
    let proxy = TlsClient::new(
        &control.bundle(),
        Some(&join(&control, "reviews").await),
        false,
    );
    // A node without a ProxyConfig may be streamed by any proxy (a sidecar without one).
    let address = control.address();
    let stream = tokio::spawn(async move {
        proxy
            .call(
                address,
                Method::GET,
                "/v1/push/stream?node=claimed-later",
                None,
                None,
            )
            .await
    });
    eventually(
        "the control lists the stream",
        Duration::from_secs(5),
        || async {
            let (_, proxies) = control.call(Method::GET, "/v1/proxies", None).await;
            proxies["items"]
                .as_array()?
                .iter()
                .any(|p| p["node"] == "claimed-later" && p["connected"] == true)
                .then_some(())
        },
    )
    .await;
    let pc = "apiVersion: strait.dev/v1alpha1\nkind: ProxyConfig\nmetadata: {name: claimed-later, namespace: default}\nspec:\n  admin: \"127.0.0.1:15000\"\n  identity: {trustDomain: example.org, namespace: default, serviceAccount: ratings}\n  listeners: [{name: out, address: \"127.0.0.1:15001\", protocol: http}]\n";
    let (status, body) = control.apply("pc.yaml", pc).await;
    assert_eq!(status, 200, "{body}");
    let answer = stream
        .await
        .expect("stream task")
        .expect("the control ends the stream");
    assert_eq!(answer.status, 200);
    let lines = answer.json.to_string();
    assert!(
        !lines.contains("ProxyConfig") && !lines.contains("ratings"),
        "the other identity's config was sent: {lines}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_survives_kill_9_and_restart() {
    let mut control = start();
    let bundle = control.bundle();
    let reviews = join(&control, "reviews").await;
    let token = join_token(&control, "ratings", "1h");

    control.restart();
    assert_eq!(control.bundle(), bundle, "same roots after kill -9");
    let (status, served) = control
        .call_as(None, Method::GET, "/v1/identity/bundle", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(served["trustBundle"].as_str(), Some(bundle.as_str()));
    // A certificate from before the crash still renews; a token from before still joins.
    let as_reviews = TlsClient::new(&bundle, Some(&reviews), false);
    let (status, body, _) = request_certificate(&control, &as_reviews, None, REVIEWS).await;
    assert_eq!(status, 200, "{body}");
    let client = TlsClient::new(&bundle, None, false);
    let (status, body, _) = request_certificate(&control, &client, Some(&token), RATINGS).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn straitctl_identity_token_bundle_and_status() {
    let control = start();
    let bundle = stdout(&control.straitctl(&["identity", "bundle"]));
    assert_eq!(bundle, control.bundle());
    let status = stdout(&control.straitctl(&["identity", "status"]));
    assert!(status.contains("trust domain: example.org"), "{status}");
    assert!(status.contains("certificate ttl: 86400s"), "{status}");
    assert!(status.contains("Strait root CA example.org"), "{status}");
    let json: Value = serde_json::from_str(&stdout(
        &control.straitctl(&["identity", "status", "--json"]),
    ))
    .expect("json");
    assert_eq!(json["roots"].as_array().map(Vec::len), Some(1));
    let token = join_token(&control, "reviews", "10m");
    assert!(token.starts_with("strait-join."), "{token}");
    let bad = control.straitctl(&[
        "identity",
        "token",
        "--namespace",
        "a/b",
        "--service-account",
        "x",
    ]);
    assert!(!bad.status.success());

    // Without --trust-domain: plain HTTP as before, and identity is off.
    let plain = Control::start();
    assert!(plain.url().starts_with("http://"));
    let off = plain.straitctl(&["identity", "status"]);
    assert!(!off.status.success());
    assert!(String::from_utf8_lossy(&off.stderr).contains("--trust-domain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_keeps_old_leaves_verifying_during_the_overlap() {
    let control = Control::start_with_args(&["--trust-domain", TD, "--cert-ttl", "1h"]);
    let old_bundle = control.bundle();
    let old = join(&control, "reviews").await;

    stdout(&control.straitctl(&["identity", "rotate", "add-root"]));
    let overlap = control.bundle();
    assert_eq!(certificates(&overlap).len(), 2);
    assert!(
        overlap.starts_with(&old_bundle),
        "old root kept, new one added"
    );
    stdout(&control.straitctl(&["identity", "rotate", "switch-issuer"]));
    assert_eq!(control.bundle(), overlap);

    // New leaves come from the new root; old ones still verify and still authenticate.
    let new = join(&control, "ratings").await;
    assert_issued_for(&old.chain_pem, &overlap, REVIEWS).expect("old leaf, overlap bundle");
    assert_issued_for(&new.chain_pem, &overlap, RATINGS).expect("new leaf, overlap bundle");
    assert!(
        assert_issued_for(&new.chain_pem, &old_bundle, RATINGS).is_err(),
        "the new leaf is the new root's"
    );
    let as_old = TlsClient::new(&overlap, Some(&old), false);
    let (status, body, _) = request_certificate(&control, &as_old, None, REVIEWS).await;
    assert_eq!(status, 200, "an old leaf renews during the overlap: {body}");
    // The control's own certificate moves to the new issuer: a client with only the new
    // root verifies it.
    let new_root_only = certificates(&overlap)
        .last()
        .map(|c| strait_control::ca::bundle::pem_certificate(c))
        .expect("new root");
    eventually(
        "the control serves a certificate of the new issuer",
        Duration::from_secs(5),
        || async {
            TlsClient::new(&new_root_only, None, false)
                .call(control.address(), Method::GET, "/healthz", None, None)
                .await
                .ok()
                .filter(|a| a.status == 200)
        },
    )
    .await;

    let out = stdout(&control.straitctl(&["identity", "rotate", "remove-old-roots"]));
    assert!(out.contains("1 root"), "{out}");
    assert_eq!(control.bundle(), new_root_only);
    assert!(assert_issued_for(&old.chain_pem, &control.bundle(), REVIEWS).is_err());
    eventually(
        "a leaf of the removed root is refused",
        Duration::from_secs(5),
        || async {
            let as_old = TlsClient::new(&control.bundle(), Some(&old), false);
            let answer = as_old
                .call(control.address(), Method::GET, "/healthz", None, None)
                .await;
            answer.is_err().then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_issuer_signs_and_its_root_is_the_bundle() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let root_key = KeyPair::generate().expect("key");
    let root = ca("user root").self_signed(&root_key).expect("root");
    let issuer_key = KeyPair::generate().expect("key");
    let issuer = ca("user issuer")
        .signed_by(&issuer_key, &Issuer::new(ca("user root"), root_key))
        .expect("issuer");
    let dir = strait_tests::process::TempDir::new("issuer");
    let cert_file = dir.path().join("issuer.pem");
    let key_file = dir.path().join("issuer.key");
    std::fs::write(&cert_file, format!("{}{}", issuer.pem(), root.pem())).expect("write");
    std::fs::write(&key_file, issuer_key.serialize_pem()).expect("write");

    let control = Control::start_with_args(&[
        "--trust-domain",
        TD,
        "--issuer-cert",
        cert_file.to_str().expect("path"),
        "--issuer-key",
        key_file.to_str().expect("path"),
    ]);
    assert_eq!(
        certificates(&control.bundle()),
        vec![root.der().clone()],
        "the bundle is the issuer file's root"
    );
    let reviews = join(&control, "reviews").await;
    assert_issued_for(&reviews.chain_pem, &root.pem(), REVIEWS).expect("chains to the user's root");
    let rotate = control.straitctl(&["identity", "rotate", "add-root"]);
    assert!(!rotate.status.success(), "rotation is the user's PKI's job");
    let status = stdout(&control.straitctl(&["identity", "status"]));
    assert!(status.contains("user issuer"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_alone_verifies_the_control_on_first_contact() {
    let control = start();
    let token = join_token(&control, "reviews", "1h");
    let bundle_with = |token: &str| {
        let file = control.scratch().join("join-token");
        std::fs::write(&file, token).expect("write token");
        // No --ca-file and no operator token: only the join token.
        std::process::Command::new(strait_tests::control::straitctl_bin())
            .args([
                "--server",
                &control.url(),
                "identity",
                "bundle",
                "--join-token",
            ])
            .arg(&file)
            .output()
            .expect("straitctl")
    };
    let ok = bundle_with(&token);
    assert_eq!(stdout(&ok), control.bundle());

    // A token whose hash is another bundle's (another control's) is refused.
    let other = start();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[3] = TrustBundle::from_pem(&other.bundle())
        .expect("bundle")
        .sha256();
    let refused = bundle_with(&parts.join("."));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not the control the token is for"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
