//! What one stream has sent, and the next line it sends: the full set first, then only what
//! changed (like incremental xDS). Pure: rendered pieces in, bytes out.
//!
//! Lines (newline-delimited JSON):
//! - full: `{"version":V,"resources":[{"name":"Kind/ns/name","document":{...}},...]}`
//! - delta: `{"version":V,"base":B,"resources":[...added or changed...],"removed":["Kind/ns/name",...]}`
//!   where `B` is the version of the line before on the same stream; the proxy applies it to
//!   what it received last (applied or not), so a NACKed version is fixed by the next delta.

use std::collections::HashMap;
use std::sync::Arc;

use super::render::Piece;

/// One stream's memory of what it sent: a hash per resource key.
#[derive(Debug, Default)]
pub struct Sent {
    hashes: HashMap<Arc<str>, u64>,
    version: Option<u64>,
}

impl Sent {
    /// The line that brings the proxy to `pieces` at `version`, or `None` when nothing it
    /// receives changed since the last line (it needs no push).
    pub fn next<'a>(
        &mut self,
        version: u64,
        pieces: impl Iterator<Item = &'a Piece> + Clone,
    ) -> Option<Vec<u8>> {
        let base = self.version;
        let changed: Vec<&Piece> = pieces
            .clone()
            .filter(|p| base.is_none() || self.hashes.get(&p.key) != Some(&p.hash))
            .collect();
        let mut now: HashMap<Arc<str>, u64> = HashMap::with_capacity(self.hashes.len());
        for p in pieces {
            now.insert(p.key.clone(), p.hash);
        }
        let removed: Vec<&Arc<str>> = self
            .hashes
            .keys()
            .filter(|k| !now.contains_key(*k))
            .collect();
        if base.is_some() && changed.is_empty() && removed.is_empty() {
            return None;
        }
        let line = line(version, base, &changed, &removed);
        now.shrink_to_fit();
        self.hashes = now;
        self.version = Some(version);
        Some(line)
    }
}

/// Writes the JSON by hand: the documents are JSON text already, shared by every stream.
fn line(version: u64, base: Option<u64>, changed: &[&Piece], removed: &[&Arc<str>]) -> Vec<u8> {
    let size: usize = changed
        .iter()
        .map(|p| p.json.len() + p.key.len() + 32)
        .sum();
    let mut out = String::with_capacity(size + 64);
    out.push_str("{\"version\":");
    out.push_str(&version.to_string());
    if let Some(base) = base {
        out.push_str(",\"base\":");
        out.push_str(&base.to_string());
    }
    out.push_str(",\"resources\":[");
    for (i, piece) in changed.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        out.push_str(&quoted(&piece.key));
        out.push_str(",\"document\":");
        out.push_str(&piece.json);
        out.push('}');
    }
    out.push(']');
    if base.is_some() {
        out.push_str(",\"removed\":[");
        for (i, key) in removed.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&quoted(key));
        }
        out.push(']');
    }
    out.push_str("}\n");
    out.into_bytes()
}

fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn piece(name: &str, value: u32) -> Piece {
        Piece::new("Service", "default", name, &json!({"spec": {"v": value}}))
    }

    fn parse(line: &[u8]) -> Value {
        assert_eq!(line.last(), Some(&b'\n'));
        serde_json::from_slice(line).unwrap()
    }

    #[test]
    fn the_first_line_is_everything_then_only_what_changed() {
        let mut sent = Sent::default();
        let (a, b) = (piece("a", 1), piece("b", 1));
        let full = parse(&sent.next(3, [&a, &b].into_iter()).unwrap());
        assert_eq!(full["version"], 3);
        assert!(full.get("base").is_none() && full.get("removed").is_none());
        assert_eq!(full["resources"][1]["name"], "Service/default/b");
        assert_eq!(full["resources"][1]["document"], json!({"spec": {"v": 1}}));

        assert!(
            sent.next(4, [&a, &b].into_iter()).is_none(),
            "nothing changed for this stream: no line"
        );

        let b2 = piece("b", 2);
        let delta = parse(&sent.next(5, [&a, &b2].into_iter()).unwrap());
        assert_eq!(
            delta["base"], 3,
            "the last line sent, not the last revision seen"
        );
        assert_eq!(delta["resources"].as_array().unwrap().len(), 1);
        assert_eq!(delta["resources"][0]["document"]["spec"]["v"], 2);
        assert_eq!(delta["removed"], json!([]));

        let gone = parse(&sent.next(6, [&b2].into_iter()).unwrap());
        assert_eq!(gone["base"], 5);
        assert_eq!(gone["resources"], json!([]));
        assert_eq!(gone["removed"], json!(["Service/default/a"]));
    }

    #[test]
    fn an_empty_first_set_is_still_sent() {
        let mut sent = Sent::default();
        let full = parse(&sent.next(1, std::iter::empty()).unwrap());
        assert_eq!(full["resources"], json!([]));
    }
}
