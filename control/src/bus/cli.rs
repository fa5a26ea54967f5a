//! `straitctl events ...`: publish, tail, dead letters, replay, history, subscriptions.

use std::io::{Read as _, Write as _};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, StatusCode};

use super::client::{encode_component, next_chunk, Client, SseParser};

/// Priorities as the CLI spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PriorityArg {
    /// Background information.
    Low,
    /// The default.
    Normal,
    /// Overtakes normal traffic.
    High,
    /// Overtakes everything.
    Critical,
}

/// The `events` subcommands of straitctl.
#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Publish an event; prints it as stored (with its id).
    Publish {
        /// Dotted topic, e.g. `mesh.config.applied`.
        topic: String,
        /// Delivery priority under backlog.
        #[arg(long, value_enum, default_value = "normal")]
        priority: PriorityArg,
        /// Who publishes (subscribers may filter on it).
        #[arg(long)]
        source: Option<String>,
        /// Metadata entry (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        meta: Vec<(String, String)>,
        /// The payload as JSON; `-` reads it from standard input.
        #[arg(long, value_name = "JSON", default_value = "null")]
        data: String,
    },
    /// Print matching events as JSON lines until Ctrl-C.
    Tail {
        /// Topic pattern: `*` matches one segment, a final `>` one or more (e.g. `mesh.>`).
        pattern: String,
        /// Join this consumer group: each event goes to one member.
        #[arg(long, conflicts_with = "durable")]
        group: Option<String>,
        /// Consume durable subscription NAME (created on first use).
        #[arg(long, value_name = "NAME")]
        durable: Option<String>,
        /// Acknowledge each event once printed (durable subscriptions).
        #[arg(long, requires = "durable")]
        ack: bool,
        /// Only events from this source.
        #[arg(long)]
        source: Option<String>,
        /// Only events with this metadata entry (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        meta: Vec<(String, String)>,
    },
    /// List the dead letters of durable subscription NAME.
    DeadLetters {
        /// Subscription name.
        name: String,
        /// How many at most.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Requeue dead letters of durable subscription NAME (the given ids, or all).
    Replay {
        /// Subscription name.
        name: String,
        /// Event ids (all dead letters when none).
        ids: Vec<u64>,
    },
    /// Print the last events of TOPIC.
    History {
        /// Dotted topic.
        topic: String,
        /// How many at most (default 100).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// List durable subscriptions with their backlog, unacked and dead counts.
    Subscriptions,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// Runs an `events` subcommand against the control at `server`; returns the exit code
/// (0 done, 1 refused by the server or the stream ended). Transport failures are errors.
pub async fn run(cmd: EventsCommand, server: &str, token: Option<&str>) -> anyhow::Result<i32> {
    let mut client = Client::new(server, token)?;
    match cmd {
        EventsCommand::Publish {
            topic,
            priority,
            source,
            meta,
            data,
        } => {
            let data = read_data(&data)?;
            let priority = match priority {
                PriorityArg::Low => "low",
                PriorityArg::Normal => "normal",
                PriorityArg::High => "high",
                PriorityArg::Critical => "critical",
            };
            let metadata: serde_json::Map<String, serde_json::Value> =
                meta.into_iter().map(|(k, v)| (k, v.into())).collect();
            let body = serde_json::json!({
                "priority": priority, "source": source, "metadata": metadata, "data": data,
            });
            let path = format!("/v1/events/{}", encode_component(&topic));
            let answer = client
                .call(Method::POST, &path, Some(body.to_string().into_bytes()))
                .await?;
            Ok(print_answer(answer))
        }
        EventsCommand::Tail {
            pattern,
            group,
            durable,
            ack,
            source,
            meta,
        } => {
            let mut query = vec![format!("pattern={}", encode_component(&pattern))];
            for (key, value) in [
                ("group", group),
                ("durable", durable.clone()),
                ("source", source),
            ] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", encode_component(&value)));
                }
            }
            for (k, v) in meta {
                query.push(format!(
                    "meta.{}={}",
                    encode_component(&k),
                    encode_component(&v)
                ));
            }
            let path = format!("/v1/subscribe?{}", query.join("&"));
            let ack_to = if ack { durable } else { None };
            tokio::select! {
                code = tail(&mut client, &path, ack_to.as_deref()) => code,
                _ = tokio::signal::ctrl_c() => Ok(0),
            }
        }
        EventsCommand::DeadLetters { name, limit } => {
            let mut path = format!("/v1/subscriptions/{}/dead-letters", encode_component(&name));
            if let Some(limit) = limit {
                path.push_str(&format!("?limit={limit}"));
            }
            Ok(print_answer(client.call(Method::GET, &path, None).await?))
        }
        EventsCommand::Replay { name, ids } => {
            let path = format!(
                "/v1/subscriptions/{}/dead-letters/replay",
                encode_component(&name)
            );
            let body = if ids.is_empty() {
                serde_json::json!({})
            } else {
                serde_json::json!({ "ids": ids })
            };
            let answer = client
                .call(Method::POST, &path, Some(body.to_string().into_bytes()))
                .await?;
            Ok(print_answer(answer))
        }
        EventsCommand::History { topic, limit } => {
            let mut path = format!("/v1/events/{}/history", encode_component(&topic));
            if let Some(limit) = limit {
                path.push_str(&format!("?limit={limit}"));
            }
            Ok(print_answer(client.call(Method::GET, &path, None).await?))
        }
        EventsCommand::Subscriptions => Ok(print_answer(
            client.call(Method::GET, "/v1/subscriptions", None).await?,
        )),
    }
}

/// `--data`: JSON text, or `-` for standard input.
fn read_data(arg: &str) -> anyhow::Result<serde_json::Value> {
    let text = if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading --data from standard input")?;
        text
    } else {
        arg.to_owned()
    };
    serde_json::from_str(&text)
        .with_context(|| format!("--data is not JSON (quote strings: --data '\"text\"'): {text}"))
}

/// Prints a JSON answer (pretty) on success, or the server's error on stderr; the exit code.
fn print_answer((status, body): (StatusCode, Bytes)) -> i32 {
    let text = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(json) if status.is_success() => {
            serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string())
        }
        Ok(json) => json["error"]
            .as_str()
            .map_or_else(|| json.to_string(), str::to_owned),
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    if status.is_success() {
        if !text.is_empty() {
            println!("{text}");
        }
        0
    } else {
        eprintln!("straitctl: {status}: {text}");
        1
    }
}

/// Streams `path`, printing each event's JSON on its own line; acknowledges each printed
/// event to durable subscription `ack_to` if given.
async fn tail(client: &mut Client, path: &str, ack_to: Option<&str>) -> anyhow::Result<i32> {
    let response = client.stream(path).await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let mut bytes = Vec::new();
        while let Some(chunk) = next_chunk(&mut body).await? {
            bytes.extend_from_slice(&chunk);
        }
        return Ok(print_answer((status, Bytes::from(bytes))));
    }
    let mut parser = SseParser::default();
    let ack_path = ack_to.map(|name| format!("/v1/subscriptions/{}/ack", encode_component(name)));
    while let Some(chunk) = next_chunk(&mut body).await? {
        let messages = parser.push(&chunk);
        let mut ids = Vec::new();
        {
            let mut out = std::io::stdout().lock();
            for message in &messages {
                writeln!(out, "{}", message.data).context("writing to standard output")?;
                if let Some(id) = message.id.as_deref().and_then(|id| id.parse::<u64>().ok()) {
                    ids.push(id);
                }
            }
            out.flush().context("writing to standard output")?;
        }
        if let (Some(path), false) = (&ack_path, ids.is_empty()) {
            let body = serde_json::json!({ "ids": ids }).to_string().into_bytes();
            let (status, answer) = client.call(Method::POST, path, Some(body)).await?;
            if !status.is_success() {
                return Ok(print_answer((status, answer)));
            }
        }
    }
    eprintln!("straitctl: the server ended the event stream");
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        events: EventsCommand,
    }

    #[test]
    fn arguments_parse() {
        let cli = Cli::try_parse_from([
            "x",
            "publish",
            "a.b",
            "--priority",
            "high",
            "--meta",
            "zone=eu",
            "--data",
            "{\"n\":1}",
        ])
        .expect("publish");
        match cli.events {
            EventsCommand::Publish { priority, meta, .. } => {
                assert_eq!(priority, PriorityArg::High);
                assert_eq!(meta, [("zone".to_owned(), "eu".to_owned())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["x", "tail", "a.>", "--ack"]).is_err(),
            "--ack needs --durable"
        );
        assert!(Cli::try_parse_from(["x", "tail", "a.>", "--durable", "d", "--ack"]).is_ok());
        assert!(Cli::try_parse_from(["x", "replay", "d", "3", "4"]).is_ok());
        assert!(Cli::try_parse_from(["x", "publish", "a", "--meta", "novalue"]).is_err());
        assert!(read_data("{").is_err());
        assert_eq!(read_data("\"s\"").expect("json"), serde_json::json!("s"));
    }
}
