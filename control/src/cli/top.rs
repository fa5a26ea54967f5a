//! `straitctl top`: the live view's per-edge table in a terminal (`GET /v1/live`), redrawn
//! every `--interval`, or printed once with `--once`.

use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::client::{CallError, Client};

/// Prints the view once, or redraws it until interrupted.
pub async fn run(client: &Client, once: bool, interval: Duration) -> Result<(), CallError> {
    loop {
        let view = client.call(Method::GET, "/v1/live", None).await?;
        if once {
            print!("{}", render(&view));
            return Ok(());
        }
        // Clear the screen and home the cursor, then draw.
        print!("\x1b[2J\x1b[H{}", render(&view));
        tokio::time::sleep(interval).await;
    }
}

/// The edges table (source, destination, route, rate, success, p99), then the services whose
/// circuit is not closed.
pub fn render(view: &Value) -> String {
    let edges = view["edges"].as_array().cloned().unwrap_or_default();
    let mut rows: Vec<Vec<String>> = vec![[
        "SOURCE",
        "DESTINATION",
        "ROUTE",
        "RPS",
        "SUCCESS",
        "P99",
        "REQUESTS",
    ]
    .iter()
    .map(|h| (*h).to_owned())
    .collect()];
    for e in &edges {
        rows.push(vec![
            text(&e["source"]),
            text(&e["destination"]),
            text(&e["route"]),
            format!("{:.1}", e["rps"].as_f64().unwrap_or(0.0)),
            format!("{:.1}%", e["successRate"].as_f64().unwrap_or(1.0) * 100.0),
            match e["p99Ms"].as_f64() {
                Some(ms) => format!("{ms} ms"),
                None => "-".into(),
            },
            text(&e["requests"]),
        ]);
    }
    let mut out = format!(
        "edges over the last {} s\n",
        view["windowSeconds"].as_u64().unwrap_or(0)
    );
    out.push_str(&columns(&rows));
    let tripped: Vec<String> = view["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let state = s["circuit"]["state"].as_str()?;
            (state != "closed").then(|| {
                format!(
                    "circuit {state}: {} (seen by {})\n",
                    text(&s["name"]),
                    text(&s["node"])
                )
            })
        })
        .collect();
    for line in tripped {
        out.push_str(&line);
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn columns(rows: &[Vec<String>]) -> String {
    let mut widths = vec![0; rows.first().map_or(0, Vec::len)];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_edge_and_open_circuits_below() {
        let view = serde_json::json!({
            "windowSeconds": 10,
            "edges": [{"source": "pod-a", "destination": "api", "route": "r", "rps": 12.34,
                       "successRate": 0.5, "p99Ms": 5.0, "requests": 123}],
            "services": [{"name": "api", "node": "pod-a", "circuit": {"state": "open"}},
                         {"name": "db", "node": "pod-a", "circuit": {"state": "closed"}}],
        });
        let text = render(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "edges over the last 10 s");
        assert!(lines[1].starts_with("SOURCE"), "{text}");
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cells,
            ["pod-a", "api", "r", "12.3", "50.0%", "5", "ms", "123"]
        );
        assert_eq!(lines[3], "circuit open: api (seen by pod-a)");
        assert_eq!(lines.len(), 4);
    }
}
