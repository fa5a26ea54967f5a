//! `straitctl identity token | bundle | status | rotate`: the control's CA.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use http::Method;
use serde_json::json;

use super::client::{CallError, Client};

/// The mesh's certificate authority (controls started with `--trust-domain`).
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Print a join token that gets certificates for one identity (and nothing else).
    Token {
        /// Namespace of the identity.
        #[arg(short, long)]
        namespace: String,
        /// Service account of the identity.
        #[arg(long)]
        service_account: String,
        /// How long the token works (s, m, h or d).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Print the trust bundle (PEM roots).
    Bundle {
        /// Trust nothing but this join token: fetch the bundle, check it against the hash the
        /// token carries, then verify the control with it (no --ca-file needed).
        #[arg(long, value_name = "FILE")]
        join_token: Option<PathBuf>,
    },
    /// Trust domain, roots, issuer and certificate lifetime.
    Status {
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// One step of a root rotation: `add-root`, then `switch-issuer` (proxies get leaves of the
    /// new root from then on; old leaves keep verifying), then `remove-old-roots` once every
    /// proxy has renewed (after one --cert-ttl).
    Rotate {
        /// add-root, switch-issuer or remove-old-roots.
        #[arg(value_parser = ["add-root", "switch-issuer", "remove-old-roots"])]
        step: String,
    },
}

/// Runs one identity command.
pub async fn run(client: &Client, command: IdentityCommand) -> Result<(), CallError> {
    match command {
        IdentityCommand::Token {
            namespace,
            service_account,
            ttl,
        } => {
            let answer = client
                .call(
                    Method::POST,
                    "/v1/identity/tokens",
                    Some(json!({
                        "namespace": namespace,
                        "serviceAccount": service_account,
                        "ttl": ttl,
                    })),
                )
                .await?;
            eprintln!(
                "join token for {} (expires at unix {})",
                answer["spiffeId"].as_str().unwrap_or("?"),
                answer["expiresAtUnix"]
            );
            println!("{}", answer["token"].as_str().unwrap_or_default());
        }
        IdentityCommand::Bundle { .. } => {
            let answer = client
                .call(Method::GET, "/v1/identity/bundle", None)
                .await?;
            print!("{}", answer["trustBundle"].as_str().unwrap_or_default());
        }
        IdentityCommand::Status { json } => {
            let answer = client
                .call(Method::GET, "/v1/identity/status", None)
                .await?;
            if json {
                super::print_json(&answer);
                return Ok(());
            }
            let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
            println!("trust domain: {}", text(&answer["trustDomain"]));
            println!(
                "issuer: {} (not after {}, from the {})",
                text(&answer["issuer"]["subject"]),
                text(&answer["issuer"]["notAfter"]),
                text(&answer["issuerSource"])
            );
            println!("certificate ttl: {}s", answer["certTtlSeconds"]);
            println!("trust bundle sha256: {}", text(&answer["bundleSha256"]));
            println!("trust bundle file: {}", text(&answer["trustBundleFile"]));
            println!("roots:");
            for root in answer["roots"].as_array().into_iter().flatten() {
                println!(
                    "  {} (not after {}, sha256 {})",
                    text(&root["subject"]),
                    text(&root["notAfter"]),
                    text(&root["sha256"])
                );
            }
        }
        IdentityCommand::Rotate { step } => {
            let answer = client
                .call(
                    Method::POST,
                    "/v1/identity/rotate",
                    Some(json!({ "step": step })),
                )
                .await?;
            println!(
                "{step}: done; the bundle has {} root(s)",
                answer["status"]["roots"].as_array().map_or(0, Vec::len)
            );
        }
    }
    Ok(())
}

/// `straitctl identity bundle --join-token FILE`: exit code.
pub async fn bundle_by_token(server: &str, token_file: &Path) -> u8 {
    let token = match std::fs::read_to_string(token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("straitctl: {}: {e}", token_file.display());
            return 2;
        }
    };
    let (bundle, verified) = match super::bootstrap::bundle_by_token(server, token.trim()).await {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("straitctl: {e}");
            return 1;
        }
    };
    // The control's certificate now verifies against the bundle just checked.
    if let Err(e) = verified.call(Method::GET, "/healthz", None).await {
        eprintln!("straitctl: the control's certificate does not verify against its bundle: {e}");
        return 1;
    }
    print!("{bundle}");
    0
}
