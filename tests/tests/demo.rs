//! `cargo run --release` (the `strait-demo` binary) as a user meets it: it starts, prints what
//! to try, and what it prints works — with mTLS between its two proxies: the app behind the
//! ratings proxy sees the frontend's SPIFFE ID (a forged one removed), the ratings proxy's
//! policy denies what it does not allow (403 `forbidden`), its listener refuses plaintext and
//! TLS without a client certificate, each proxy's `/identity` shows its SPIFFE ID, and the
//! printed `straitctl` settings work (`identity status`, `proxies`).
//! The demo runs with `--free-ports`, so the addresses come from what it prints.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strait_tests::client::{get, http1, raw};
use strait_tests::control::bin;
use strait_tests::eventually;
use strait_tests::mesh_peer::get_over_tls;

const FRONTEND: &str = "spiffe://demo.local/ns/default/sa/frontend";
const RATINGS: &str = "spiffe://demo.local/ns/default/sa/ratings";

/// The demo process, its stdout (what it prints for the user) and stderr (its logs).
struct Demo {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

impl Demo {
    fn start() -> Self {
        let mut child = Command::new(bin("strait-demo"))
            .arg("--free-ports")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strait-demo");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// What the demo printed, once it has printed all of it.
    async fn instructions(&mut self) -> Vec<String> {
        eventually(
            "the demo prints what to try",
            Duration::from_secs(60),
            || {
                let printed = self.stdout.lock().expect("lines").clone();
                let exited = self.child.try_wait().ok().flatten();
                let logs = self.stderr.lock().expect("lines").join("\n");
                async move {
                    if let Some(status) = exited {
                        panic!(
                            "the demo exited ({status}):\n{}\n{logs}",
                            printed.join("\n")
                        );
                    }
                    printed
                        .iter()
                        .any(|l| l.contains("Ctrl-C stops everything"))
                        .then_some(printed)
                }
            },
        )
        .await
    }
}

impl Demo {
    /// Ctrl-C, as a user would stop it.
    fn interrupt(&self) -> bool {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Interrupted, the demo removes its files; killed only if it does not end.
        if self.interrupt() {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None))
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- strait-demo output ----\n{}\n{}\n---- end ----",
                self.stdout.lock().map(|l| l.join("\n")).unwrap_or_default(),
                self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
            );
        }
    }
}

/// The first printed line containing every one of `parts`.
fn line<'a>(printed: &'a [String], parts: &[&str]) -> &'a str {
    printed
        .iter()
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no line with {parts:?} in:\n{}", printed.join("\n")))
}

/// The `n`th `http://...` URL of a printed line.
fn url(line: &str, n: usize) -> String {
    line.match_indices("http://")
        .nth(n)
        .map(|(at, _)| {
            line[at..]
                .split(|c: char| c.is_whitespace() || c == '\'')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_else(|| panic!("no URL {n} in {line}"))
}

fn address(url: &str) -> SocketAddr {
    let rest = url.trim_start_matches("http://");
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .parse()
        .unwrap_or_else(|e| panic!("{authority}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_two_proxies_with_mtls_between_them_and_prints_what_works() {
    let mut demo = Demo::start();
    let printed = demo.instructions().await;
    let client = http1();

    // The example's routing still works on the frontend proxy.
    let reviews = url(line(&printed, &["curl", "Host: reviews.local"]), 0);
    let answer = get(&client, &reviews, "reviews.local", &[]).await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");

    // frontend -> mTLS -> ratings: the app sees who called, and only that, however the
    // client tries to claim another identity.
    let stars = url(
        line(&printed, &["curl", "Host: ratings.local", "/api/stars"]),
        0,
    );
    let forged = [(
        "x-strait-client-id",
        "spiffe://demo.local/ns/default/sa/admin",
    )];
    for headers in [&[][..], &forged[..]] {
        let answer = get(&client, &stars, "ratings.local", headers)
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        let seen = answer.json();
        assert_eq!(seen["upstream"], "ratings-app", "{seen}");
        assert_eq!(
            seen["headers"]["x-strait-client-id"],
            serde_json::json!([FRONTEND]),
            "{seen}"
        );
    }

    // The ratings proxy's policy allows GET /api/* from frontend, nothing else.
    let admin = url(
        line(&printed, &["curl -si", "Host: ratings.local", "/admin"]),
        0,
    );
    for target in [admin.clone(), admin.replace("/admin", "/api/%2e%2e/admin")] {
        let answer = get(&client, &target, "ratings.local", &[]).await.unwrap();
        assert_eq!(answer.status, 403, "{target}: {answer:?}");
        assert_eq!(answer.header("x-strait-reason"), "forbidden", "{target}");
    }

    // The ratings proxy's listener is mTLS only: neither plaintext nor TLS without a client
    // certificate gets an answer.
    let inbound = address(&url(line(&printed, &["curl -s http://", "/api/stars"]), 0));
    let plaintext = raw(
        inbound,
        b"GET /api/stars HTTP/1.1\r\nhost: ratings.local\r\n\r\n",
    )
    .await;
    assert!(!plaintext.contains("HTTP/1.1"), "{plaintext}");
    let anonymous = get_over_tls(inbound, None, "/api/stars").await;
    assert!(
        anonymous.is_err(),
        "served without a certificate: {anonymous:?}"
    );

    // Each proxy shows its identity, never its key.
    let identities = line(&printed, &["curl", "/identity"]);
    for (n, expected) in [(0, FRONTEND), (1, RATINGS)] {
        let answer = get(&client, &url(identities, n), "admin", &[])
            .await
            .unwrap();
        let id = answer.json();
        assert_eq!(id["spiffeId"], expected, "{id}");
        assert_eq!(id["status"], "active", "{id}");
        assert!(!id.to_string().contains("PRIVATE KEY"));
    }

    // The printed straitctl settings reach the control over HTTPS with the operator's token.
    let exports = line(&printed, &["export STRAIT_SERVER="]);
    let env: Vec<(String, String)> = exports
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let straitctl = |args: &[&str]| {
        let output = Command::new(bin("straitctl"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run straitctl");
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let status = straitctl(&["identity", "status"]);
    assert!(status.contains("trust domain: demo.local"), "{status}");
    let proxies = straitctl(&["proxies"]);
    assert!(
        proxies.contains("frontend") && proxies.contains("ratings"),
        "{proxies}"
    );

    // Ctrl-C ends the demo and its proxies.
    assert!(demo.interrupt());
    eventually("the demo exits", Duration::from_secs(15), || {
        let exited = demo.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    let stars_after = get(&client, &stars, "ratings.local", &[]).await;
    assert!(stars_after.is_err(), "still served: {stars_after:?}");
}
