//! `cargo run --release`: a local mesh on loopback with mTLS between its proxies. The control
//! runs in-process as the mesh's CA (trust domain `demo.local`); two proxies run as processes,
//! each with `spec.identity` and a join token: `frontend` with the contract example's listeners
//! and `ratings` with an mTLS-only inbound listener; demo upstreams behind them. The contract's
//! example policy (`deploy/examples/mesh.yaml`) and the hop between the proxies (`mtls.yaml`)
//! are applied through the control's API. `--free-ports` moves everything off the documented
//! ports (the demo's end-to-end test uses it).

mod ports;
mod proxies;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http::Method;
use strait_control::cli::client::Client;
use strait_tests::upstream::{TcpEcho, Upstream};

use ports::Ports;
use proxies::DemoProxy;

/// The contract's example: its Services, routes and policy (the frontend proxy has its listeners).
const EXAMPLE: &str = include_str!("../../../../deploy/examples/mesh.yaml");
/// The hop from the frontend proxy to the ratings proxy, and who may take it.
const MTLS: &str = include_str!("mtls.yaml");
const TRUST_DOMAIN: &str = "demo.local";
/// How long the proxies may take to get their certificates and first config.
const READY_WITHIN: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let ports = match args.next().as_deref() {
        Some(proxies::PROXY_COMMAND) => {
            let config = args.next().context("usage: strait-demo proxy CONFIG")?;
            return proxies::run_proxy(config.into());
        }
        Some("--free-ports") => Ports::free().context("no free ports")?,
        None => Ports::fixed(),
        Some(other) => anyhow::bail!("unknown argument {other}; usage: strait-demo [--free-ports]"),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(demo(ports))
}

async fn demo(mut ports: Ports) -> anyhow::Result<()> {
    strait_proxy::logging::init(strait_proxy::logging::LogFormat::Text);
    let fixed = Ports::fixed();
    let upstreams = start_upstreams(&mut ports).await?;
    let dir = std::env::temp_dir().join(format!("strait-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_mesh(&ports, &fixed, &dir).await;
    drop(upstreams);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The demo upstreams, on the ports the example names (or free ones, written into `ports`).
async fn start_upstreams(ports: &mut Ports) -> anyhow::Result<(Vec<Upstream>, TcpEcho)> {
    let mut upstreams = Vec::new();
    for (name, addr) in [
        ("reviews-v1-a", &mut ports.reviews_v1_a),
        ("reviews-v1-b", &mut ports.reviews_v1_b),
        ("reviews-v2", &mut ports.reviews_v2),
        ("ratings-app", &mut ports.ratings_app),
    ] {
        let up = Upstream::http1_at(name, *addr)
            .await
            .with_context(|| format!("cannot start demo upstream {name} on {addr} (port busy?)"))?;
        *addr = up.addr;
        upstreams.push(up);
    }
    let echo = TcpEcho::start_at(ports.echo).await.with_context(|| {
        format!(
            "cannot start the demo TCP echo on {} (port busy?)",
            ports.echo
        )
    })?;
    ports.echo = echo.addr;
    Ok((upstreams, echo))
}

/// The control, the policy, the two proxies; then waits for Ctrl-C.
async fn run_mesh(ports: &Ports, fixed: &Ports, dir: &Path) -> anyhow::Result<()> {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("demo-{:016x}", fastrand::u64(..)))?;
    let control_dir = dir.join("control");
    let options = strait_control::server::Options {
        data_dir: control_dir.clone(),
        store: None,
        listen: ports.control,
        token_file: Some(token_file.clone()),
        sweep_interval: Duration::from_millis(250),
        webhook: None,
        identity: Some(strait_control::ca::CaOptions {
            trust_domain: TRUST_DOMAIN.into(),
            issuer: None,
            cert_ttl: Duration::from_secs(24 * 3600),
            server_names: Vec::new(),
        }),
        install_metrics: true,
        bus: None,
        kubeconfig: None,
    };
    let mut control = tokio::spawn(strait_control::server::serve(options));
    let bundle = control_dir.join("trust-bundle.pem");
    let client = connect(ports.control, &token_file, &bundle, &control).await?;
    let policy = serde_json::json!({"files": [
        {"name": "deploy/examples/mesh.yaml", "content": relocate(&without_proxy_config(EXAMPLE), fixed, ports)},
        {"name": "mtls.yaml", "content": relocate(MTLS, fixed, ports)},
    ]});
    client
        .call(Method::POST, "/v1/apply", Some(policy))
        .await
        .context("the control refused the demo's policy")?;

    let mut frontend = start_proxy(
        &client,
        dir,
        "frontend",
        ports.control,
        ports.frontend_admin,
        &frontend_listeners(ports),
    )
    .await?;
    let mut ratings = start_proxy(
        &client,
        dir,
        "ratings",
        ports.control,
        ports.ratings_admin,
        &ratings_listeners(ports),
    )
    .await?;
    frontend.ready(READY_WITHIN).await?;
    ratings.ready(READY_WITHIN).await?;
    println!(
        "{}",
        instructions(ports, dir, &token_file, &bundle, &frontend, &ratings)
    );

    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        stopped = &mut control => match stopped {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context("the control stopped")),
            Err(e) => Err(anyhow::anyhow!("the control stopped: {e}")),
        },
    }
}

/// A client of the control with the operator's token, once the control answers.
async fn connect(
    address: SocketAddr,
    token_file: &Path,
    bundle: &Path,
    control: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<Client> {
    let token = std::fs::read_to_string(token_file)?;
    let server = format!("https://{address}");
    for _ in 0..200 {
        if control.is_finished() {
            anyhow::bail!("the control did not start (port {} busy?)", address.port());
        }
        if bundle.exists() {
            let client = Client::connect(&server, Some(token.clone()), Some(bundle))
                .map_err(anyhow::Error::msg)?;
            if client
                .call(Method::GET, "/v1/identity/status", None)
                .await
                .is_ok()
            {
                return Ok(client);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the control did not answer on {server}")
}

/// The example's documents without its ProxyConfig.
fn without_proxy_config(yaml: &str) -> String {
    yaml.split("\n---\n")
        .filter(|doc| !doc.lines().any(|l| l.trim() == "kind: ProxyConfig"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// `yaml` with each `127.0.0.1:PORT` of the documented ports moved to where the demo runs it
/// (in one pass, so a moved address is never moved again).
fn relocate(yaml: &str, fixed: &Ports, ports: &Ports) -> String {
    const LOOPBACK: &str = "127.0.0.1:";
    let moves: Vec<(u16, u16)> = fixed
        .all()
        .iter()
        .zip(ports.all())
        .map(|(from, to)| (from.port(), to.port()))
        .collect();
    let mut out = String::with_capacity(yaml.len());
    let mut rest = yaml;
    while let Some(at) = rest.find(LOOPBACK) {
        let (before, after) = rest.split_at(at + LOOPBACK.len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let (port, tail) = after.split_at(digits);
        let moved = port
            .parse::<u16>()
            .ok()
            .and_then(|p| moves.iter().find(|(from, _)| *from == p))
            .map(|(_, to)| to.to_string());
        out.push_str(moved.as_deref().unwrap_or(port));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// The frontend's listeners: the contract example's.
fn frontend_listeners(ports: &Ports) -> String {
    format!(
        "  listeners:
    - {{name: web, address: {}, protocol: http}}
    - {{name: db, address: {}, protocol: tcp}}",
        ports.web, ports.db
    )
}

/// The ratings proxy's one listener: mTLS only.
fn ratings_listeners(ports: &Ports) -> String {
    format!(
        "  listeners:
    - {{name: inbound, address: {}, protocol: http, tls: {{mode: mutual}}}}",
        ports.inbound
    )
}

/// Writes `DIR/NAME/config.yaml` (the bootstrap: identity, control, admin, `listeners`) and a
/// join token for `default/NAME` next to it, and starts the proxy.
async fn start_proxy(
    client: &Client,
    dir: &Path,
    name: &'static str,
    control: SocketAddr,
    admin: SocketAddr,
    listeners: &str,
) -> anyhow::Result<DemoProxy> {
    let token = client
        .call(
            Method::POST,
            "/v1/identity/tokens",
            Some(serde_json::json!({"namespace": "default", "serviceAccount": name, "ttl": "1h"})),
        )
        .await
        .with_context(|| format!("no join token for {name}"))?;
    let home = dir.join(name);
    std::fs::create_dir_all(&home)?;
    std::fs::write(
        home.join("join-token"),
        token["token"].as_str().unwrap_or_default(),
    )?;
    let bootstrap = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: {name}}}
spec:
  identity: {{trustDomain: {TRUST_DOMAIN}, namespace: default, serviceAccount: {name}}}
  control: {{address: \"https://{control}\", node: {name}, tokenFile: join-token}}
  admin: {admin}
{listeners}
"
    );
    std::fs::write(home.join("config.yaml"), bootstrap)?;
    DemoProxy::start(name, &home, admin)
}

/// What to try, with the addresses and files of this run.
fn instructions(
    ports: &Ports,
    dir: &Path,
    token_file: &Path,
    bundle: &Path,
    frontend: &DemoProxy,
    ratings: &DemoProxy,
) -> String {
    let id = |sa: &str| format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}");
    let (web, db, inbound) = (ports.web, ports.db, ports.inbound);
    let (fa, ra) = (ports.frontend_admin, ports.ratings_admin);
    format!(
        "
Strait demo: the control on {control} is the CA of trust domain {TRUST_DOMAIN}; each proxy got its certificate with a join token.
  frontend  {frontend_id}  web {web} (HTTP), db {db} (TCP), admin {fa}
  ratings   {ratings_id}  inbound {inbound} (mTLS only), admin {ra}
  frontend -> ratings is mTLS; ratings lets GET/HEAD /api/* from frontend in, nothing else.
  Policy: deploy/examples/mesh.yaml and tests/src/bin/strait-demo/mtls.yaml. Proxy logs: {flog}, {rlog}

Try:
  # the example's 90/10 split of reviews-v1 / reviews-v2; its canary rule; HTTP/2 without TLS
  curl -s -H 'Host: reviews.local' http://{web}/
  curl -s -H 'Host: reviews.local' -H 'x-canary: true' 'http://{web}/api?debug=1'
  curl -s --http2-prior-knowledge -H 'Host: reviews' http://{web}/
  # frontend -> mTLS -> ratings: the app saw \"x-strait-client-id\":[\"{frontend_id}\"], even when the client claims another
  curl -s -H 'Host: ratings.local' http://{web}/api/stars
  curl -s -H 'Host: ratings.local' -H 'x-strait-client-id: {admin_id}' http://{web}/api/stars
  # not allowed by AuthorizationPolicy ratings-callers: 403, x-strait-reason: forbidden
  curl -si -H 'Host: ratings.local' http://{web}/admin
  # the ratings proxy's listener: TLS without a client certificate is refused, plaintext too
  curl -skv https://{inbound}/api/stars
  curl -s http://{inbound}/api/stars
  # each proxy's identity (SPIFFE ID, serial, notAfter, roots; never the key); who called, in the metrics
  curl -s http://{fa}/identity ; curl -s http://{ra}/identity
  curl -s http://{ra}/metrics | grep client_id
  # TCP through the frontend proxy
  echo hello | nc -q1 {db_host} {db_port}

The control (operator token in {token}):
  export STRAIT_SERVER=https://{control} STRAIT_CA_FILE={bundle} STRAIT_TOKEN_FILE={token}
  alias straitctl='cargo run -q --release -p strait-control --bin straitctl --'
  straitctl identity status
  straitctl proxies
  straitctl get authorizationpolicies
  straitctl identity token --namespace default --service-account reviews

Files in {dir}. Ctrl-C stops everything.
",
        control = ports.control,
        admin_id = id("admin"),
        frontend_id = id("frontend"),
        ratings_id = id("ratings"),
        dir = dir.display(),
        flog = frontend.log().display(),
        rlog = ratings.log().display(),
        db_host = db.ip(),
        db_port = db.port(),
        token = token_file.display(),
        bundle = bundle.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocation_moves_each_documented_address_once_and_leaves_the_rest() {
        let fixed = Ports::fixed();
        let mut ports = Ports::fixed();
        // 9001 moves to 9002's documented port, 9002 elsewhere: no chain.
        ports.reviews_v1_a = ([127, 0, 0, 1], 9002).into();
        ports.reviews_v1_b = ([127, 0, 0, 1], 40000).into();
        let yaml = "a: \"127.0.0.1:9001\"\nb: 127.0.0.1:9002\nc: 127.0.0.1:7\nd: 10.0.0.1:9001\n";
        assert_eq!(
            relocate(yaml, &fixed, &ports),
            "a: \"127.0.0.1:9002\"\nb: 127.0.0.1:40000\nc: 127.0.0.1:7\nd: 10.0.0.1:9001\n"
        );
        assert_eq!(relocate(yaml, &fixed, &fixed), yaml);
    }

    #[test]
    fn the_example_goes_to_the_control_without_its_proxy_config() {
        let applied = without_proxy_config(EXAMPLE);
        assert!(!applied.contains("kind: ProxyConfig"));
        assert_eq!(
            applied.matches("\nkind: ").count() + usize::from(applied.starts_with("kind: ")),
            EXAMPLE.matches("\nkind: ").count() - 1,
            "every other document stays"
        );
    }
}
