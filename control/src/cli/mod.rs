//! `straitctl`: the command line of the control.

pub mod bootstrap;
pub mod client;
pub mod identity;
pub mod top;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use http::Method;
use serde_json::{json, Value};

use client::{CallError, Client};

/// Talk to a Strait control process.
#[derive(Debug, Parser)]
#[command(name = "straitctl", version, about)]
pub struct Args {
    /// Control URL.
    #[arg(
        long,
        env = "STRAIT_SERVER",
        default_value = "http://127.0.0.1:15010",
        global = true
    )]
    server: String,
    /// File holding the bearer token.
    #[arg(long, env = "STRAIT_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// PEM roots to verify an `https://` control with (its `DATA_DIR/trust-bundle.pem`).
    #[arg(long, env = "STRAIT_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and store resources from YAML files or directories.
    Apply {
        /// File or directory (repeatable).
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show resources.
    Get {
        /// Service, HTTPRoute, TCPRoute, TLSRoute, ProxyConfig or AuthorizationPolicy (plural and
        /// lowercase work too).
        kind: String,
        /// One resource.
        name: Option<String>,
        /// Namespace (default: all for lists, `default` for one).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete a resource.
    Delete {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Only if still at this version.
        #[arg(long)]
        resource_version: Option<String>,
    },
    /// Versions of a resource.
    History {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Every proxy: connected, applied version, last ACK/NACK.
    Proxies {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Per-edge traffic (source, destination, rate, success, p99) from the proxies' reports.
    Top {
        /// Print the table once and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between redraws.
        #[arg(long, default_value_t = 2)]
        interval: u64,
    },
    /// Registered service instances.
    Services {
        /// Service name.
        #[arg(long)]
        name: Option<String>,
        /// Namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Carrying this tag.
        #[arg(long)]
        tag: Option<String>,
        /// With this capability.
        #[arg(long)]
        capability: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The event bus.
    #[command(subcommand)]
    Events(crate::bus::cli::EventsCommand),
    /// Add the Strait sidecar to workloads in YAML (local; writes the result to stdout).
    Inject(crate::inject::cli::InjectArgs),
    /// The mesh's certificate authority: join tokens, trust bundle, status, rotation.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Is the control up, and what does it hold?
    Status,
    /// Print the CustomResourceDefinitions of Strait's kinds (local; generated from the
    /// config types).
    Crds {
        /// Write one file per kind into this directory (deploy/crds) instead of stdout.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

/// Runs `straitctl` with the process arguments.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let token = match &args.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                eprintln!("straitctl: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("straitctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(
        args.command,
        &args.server,
        token,
        args.ca_file.as_deref(),
    ));
    ExitCode::from(code)
}

async fn run(command: Command, server: &str, token: Option<String>, ca_file: Option<&Path>) -> u8 {
    if let Command::Inject(args) = &command {
        return crate::inject::cli::run(args);
    }
    if let Command::Crds { out } = &command {
        return crds(out.as_deref());
    }
    if let Command::Events(cmd) = command {
        return match crate::bus::cli::run(cmd, server, token.as_deref()).await {
            Ok(code) => u8::try_from(code).unwrap_or(1),
            Err(e) => {
                eprintln!("straitctl: {e:#}");
                1
            }
        };
    }
    if let Command::Identity(identity::IdentityCommand::Bundle {
        join_token: Some(path),
    }) = &command
    {
        return identity::bundle_by_token(server, path).await;
    }
    let client = match Client::connect(server, token, ca_file) {
        Ok(c) => c,
        Err(m) => {
            eprintln!("straitctl: {m}");
            return 2;
        }
    };
    match execute(&client, command).await {
        Ok(()) => 0,
        Err(Failure::Usage(m)) => {
            eprintln!("straitctl: {m}");
            2
        }
        Err(Failure::Call(CallError::Api {
            status,
            message,
            details,
        })) => {
            eprintln!("Error ({status}): {message}");
            for d in details {
                eprintln!("  {d}");
            }
            1
        }
        Err(Failure::Call(e)) => {
            eprintln!("straitctl: {e}");
            1
        }
    }
}

enum Failure {
    Usage(String),
    Call(CallError),
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        Self::Call(e)
    }
}

async fn execute(client: &Client, command: Command) -> Result<(), Failure> {
    match command {
        Command::Apply { paths } => {
            let mut files = Vec::new();
            for path in &paths {
                files.extend(read_files(path).map_err(Failure::Usage)?);
            }
            let answer = client
                .call(Method::POST, "/v1/apply", Some(json!({ "files": files })))
                .await?;
            for a in answer["applied"].as_array().into_iter().flatten() {
                println!(
                    "{}/{} ({}) {} (resourceVersion {})",
                    a["kind"].as_str().unwrap_or("").to_lowercase(),
                    a["name"].as_str().unwrap_or(""),
                    a["namespace"].as_str().unwrap_or(""),
                    a["result"].as_str().unwrap_or(""),
                    a["resourceVersion"]
                );
            }
        }
        Command::Get {
            kind,
            name,
            namespace,
            output,
        } => {
            let items: Vec<Value> = match &name {
                Some(name) => {
                    let ns = namespace.as_deref().unwrap_or("default");
                    vec![
                        client
                            .call(
                                Method::GET,
                                &format!("/v1/resources/{kind}/{ns}/{name}"),
                                None,
                            )
                            .await?,
                    ]
                }
                None => {
                    let query = namespace
                        .map(|ns| format!("?namespace={ns}"))
                        .unwrap_or_default();
                    let answer = client
                        .call(Method::GET, &format!("/v1/resources/{kind}{query}"), None)
                        .await?;
                    answer["items"].as_array().cloned().unwrap_or_default()
                }
            };
            let documents: Vec<Value> = items.iter().map(|i| i["document"].clone()).collect();
            match output {
                Output::Json if name.is_some() => print_json(&documents[0]),
                Output::Json => print_json(&json!({ "items": documents })),
                Output::Yaml => print!("{}", yaml::documents(&documents)),
                Output::Table => table(
                    &["KIND", "NAMESPACE", "NAME", "VERSION"],
                    items.iter().map(|i| {
                        vec![
                            text(&i["kind"]),
                            text(&i["namespace"]),
                            text(&i["name"]),
                            text(&i["resourceVersion"]),
                        ]
                    }),
                ),
            }
        }
        Command::Delete {
            kind,
            name,
            namespace,
            resource_version,
        } => {
            let query = resource_version
                .map(|v| format!("?resourceVersion={v}"))
                .unwrap_or_default();
            client
                .call(
                    Method::DELETE,
                    &format!("/v1/resources/{kind}/{namespace}/{name}{query}"),
                    None,
                )
                .await?;
            println!("{} {namespace}/{name} deleted", kind.to_lowercase());
        }
        Command::History {
            kind,
            name,
            namespace,
        } => {
            let answer = client
                .call(
                    Method::GET,
                    &format!("/v1/resources/{kind}/{namespace}/{name}/history"),
                    None,
                )
                .await?;
            table(
                &["VERSION", "CHANGE", "AT (unix ms)"],
                answer["items"].as_array().into_iter().flatten().map(|i| {
                    vec![
                        text(&i["resourceVersion"]),
                        if i["deleted"] == true {
                            "deleted"
                        } else {
                            "applied"
                        }
                        .to_owned(),
                        text(&i["updatedAt"]),
                    ]
                }),
            );
        }
        Command::Top { once, interval } => {
            top::run(
                client,
                once,
                std::time::Duration::from_secs(interval.max(1)),
            )
            .await?
        }
        Command::Proxies { output } => {
            let answer = client.call(Method::GET, "/v1/proxies", None).await?;
            let items = answer["items"].as_array().cloned().unwrap_or_default();
            match output {
                Output::Table => table(
                    &[
                        "NODE",
                        "CONNECTED",
                        "APPLIED",
                        "SENT",
                        "LAST ACK",
                        "LAST NACK",
                        "LAST SEEN (unix ms)",
                    ],
                    items.iter().map(|p| {
                        vec![
                            text(&p["node"]),
                            text(&p["connected"]),
                            text(&p["appliedVersion"]),
                            text(&p["sentVersion"]),
                            text(&p["lastAck"][0]),
                            match p["lastNack"].as_array() {
                                Some(n) => format!("v{}: {}", text(&n[0]), text(&n[1])),
                                None => "-".into(),
                            },
                            text(&p["lastSeen"]),
                        ]
                    }),
                ),
                Output::Json => print_json(&answer),
                Output::Yaml => print!("{}", yaml::documents(&items)),
            }
        }
        Command::Services {
            name,
            namespace,
            tag,
            capability,
            output,
        } => {
            let query: Vec<String> = [
                ("service", name),
                ("namespace", namespace),
                ("tag", tag),
                ("capability", capability),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
            .collect();
            let answer = client
                .call(
                    Method::GET,
                    &format!("/v1/registry/instances?{}", query.join("&")),
                    None,
                )
                .await?;
            let items = answer["items"].as_array().cloned().unwrap_or_default();
            match output {
                Output::Table => table(
                    &[
                        "NAMESPACE",
                        "SERVICE",
                        "ID",
                        "ENDPOINT",
                        "VERSION",
                        "TAGS",
                        "CAPABILITIES",
                    ],
                    items.iter().map(|i| {
                        vec![
                            text(&i["namespace"]),
                            text(&i["service"]),
                            text(&i["id"]),
                            format!("{}:{}", text(&i["address"]), text(&i["port"])),
                            text(&i["version"]),
                            list(&i["tags"]),
                            list(&i["capabilities"]),
                        ]
                    }),
                ),
                Output::Json => print_json(&answer),
                Output::Yaml => print!("{}", yaml::documents(&items)),
            }
        }
        Command::Status => {
            let resources = client.call(Method::GET, "/v1/resources", None).await?;
            let proxies = client.call(Method::GET, "/v1/proxies", None).await?;
            let instances = client
                .call(Method::GET, "/v1/registry/instances", None)
                .await?;
            let count = |v: &Value| v["items"].as_array().map_or(0, Vec::len);
            let connected = proxies["items"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|p| p["connected"] == true).count());
            println!(
                "control: up\nresources: {}\nproxies: {} connected ({} known)\ninstances: {}",
                count(&resources),
                connected,
                count(&proxies),
                count(&instances)
            );
        }
        Command::Identity(cmd) => identity::run(client, cmd).await?,
        Command::Events(_) | Command::Inject(_) | Command::Crds { .. } => {}
    }
    Ok(())
}

/// `straitctl crds`: every CRD to stdout, or one file each into `out`.
fn crds(out: Option<&Path>) -> u8 {
    for kind in crate::crd::KINDS {
        let (name, text) = match kind.file() {
            Ok(file) => file,
            Err(e) => {
                eprintln!("straitctl: {}: {e}", kind.kind);
                return 1;
            }
        };
        match out {
            None => print!("{text}"),
            Some(dir) => {
                let path = dir.join(name);
                if let Err(e) =
                    std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text))
                {
                    eprintln!("straitctl: cannot write {}: {e}", path.display());
                    return 1;
                }
                println!("{}", path.display());
            }
        }
    }
    0
}

/// The YAML files of `path` (a file, or the `*.yaml`/`*.yml` files of a directory).
fn read_files(path: &Path) -> Result<Vec<Value>, String> {
    let sources = strait_config::load::read_sources(path).map_err(|e| e.to_string())?;
    Ok(sources
        .into_iter()
        .map(|s| json!({"name": s.file.display().to_string(), "content": s.text}))
        .collect())
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> String {
    let items: Vec<String> = v.as_array().into_iter().flatten().map(text).collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("   ").trim_end());
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}
