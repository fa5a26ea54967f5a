//! The samples a run collects and the report made of them (markdown and JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::settings::Settings;
use crate::targets::Target;
use crate::{procstat, wakeup};

/// Samples per (scenario, metric, target), one per round.
#[derive(Debug, Default)]
pub struct Results {
    pub samples: BTreeMap<(String, String), BTreeMap<String, Vec<f64>>>,
    pub order: Vec<(String, String)>,
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the run and the CPU time the hypervisor stole from the machine meanwhile.
    pub steal: Option<Steal>,
    /// Round trips to a waiting thread on the proxies' CPU and on the load generator's own.
    pub wakeup: Option<Wakeup>,
}

/// The machine's floor for added latency (see `wakeup`).
#[derive(Debug, Clone, Copy)]
pub struct Wakeup {
    pub other_cpu: wakeup::RoundTrip,
    pub same_cpu: wakeup::RoundTrip,
}

/// The hypervisor's share of the run: seconds stolen from all CPUs over `wall` seconds.
#[derive(Debug, Clone, Copy)]
pub struct Steal {
    pub stolen: f64,
    pub wall: f64,
}

impl Results {
    /// Records one round's `value` of `metric` for `target`; rows keep the order first seen.
    pub fn add(&mut self, scenario: &str, metric: &str, target: &str, value: f64) {
        let key = (scenario.to_owned(), metric.to_owned());
        if !self.samples.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.samples
            .entry(key)
            .or_default()
            .entry(target.to_owned())
            .or_default()
            .push(value);
    }

    /// Counts `n` failed requests against `target`.
    pub fn errors(&mut self, target: &str, n: u64) {
        *self.errors.entry(target.to_owned()).or_default() += n;
    }
}

/// The median of `v` (the mean of the two middle values when their count is even); NaN when
/// `v` is empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let mid = s.len() / 2;
    match (s.len() % 2, s.get(mid)) {
        (_, None) => f64::NAN,
        (1, Some(&m)) => m,
        (_, Some(&upper)) => (s[mid - 1] + upper) / 2.0,
    }
}

/// Prints the markdown report and writes it, with the JSON, to `out_dir`.
pub fn report(
    settings: &Settings,
    targets: &[Target],
    skipped: &[String],
    results: &Results,
    out_dir: &Path,
) -> Result<(), String> {
    let names: Vec<String> = {
        let mut n: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        n.dedup();
        // Columns of scenarios that measure something else than the proxies (the bus's
        // backends), in the order first seen.
        for key in &results.order {
            for name in results.samples.get(key).into_iter().flat_map(|s| s.keys()) {
                if !n.contains(name) {
                    n.push(name.clone());
                }
            }
        }
        n
    };
    let has_nginx = names.iter().any(|n| n == "nginx");
    let mut command = format!(
        "scripts/bench.sh{}",
        if settings.quick {
            " --quick".to_owned()
        } else {
            format!(
                " --rounds {} --seconds {}",
                settings.rounds, settings.seconds
            )
        }
    );
    if !settings.only.is_empty() {
        let _ = write!(command, " --only {}", settings.only.join(","));
    }
    let commit = source_commit();
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {}  ", procstat::machine());
    let _ = match &commit {
        Some(c) => writeln!(md, "Source: commit {c}  "),
        None => writeln!(md, "Source: not a git checkout  "),
    };
    let _ = writeln!(
        md,
        "Peers: {}  ",
        targets
            .iter()
            .filter(|t| t.version != "-")
            .map(|t| format!("{} {}", t.name, t.version))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if let Some(Wakeup {
        other_cpu,
        same_cpu,
    }) = results.wakeup
    {
        let _ = writeln!(
            md,
            "Floor: a round trip to a thread waiting on the proxies' CPU takes p50 {} µs, p99 {} µs \
             (on the load generator's own CPU: {} / {} µs); a proxied request makes two  ",
            other_cpu.p50, other_cpu.p99, same_cpu.p50, same_cpu.p99
        );
    }
    if !skipped.is_empty() {
        let _ = writeln!(md, "Skipped: {}  ", skipped.join("; "));
    }
    let _ = writeln!(
        md,
        "Command: `{command}` ({} round(s) of {} s, median [min–max])\n",
        settings.rounds, settings.seconds
    );
    let _ = write!(md, "| scenario | metric |");
    for n in &names {
        let _ = write!(md, " {n} |");
    }
    if has_nginx {
        let _ = write!(md, " strait / nginx |");
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "|{}",
        "---|".repeat(2 + names.len() + usize::from(has_nginx))
    );
    let mut json_rows = Vec::new();
    for key in &results.order {
        let Some(by_target) = results.samples.get(key) else {
            continue;
        };
        let _ = write!(md, "| {} | {} |", key.0, key.1);
        for n in &names {
            match by_target.get(n) {
                Some(v) => {
                    let (lo, hi) = v
                        .iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                            (l.min(x), h.max(x))
                        });
                    if v.len() > 1 {
                        let _ = write!(md, " {} [{}–{}] |", fmt(median(v)), fmt(lo), fmt(hi));
                    } else {
                        let _ = write!(md, " {} |", fmt(median(v)));
                    }
                }
                None => {
                    let _ = write!(md, " |");
                }
            }
        }
        if has_nginx {
            match (by_target.get("strait"), by_target.get("nginx")) {
                (Some(s), Some(n)) if median(n) > 0.0 => {
                    let _ = write!(md, " {:.2}× |", median(s) / median(n));
                }
                _ => {
                    let _ = write!(md, " |");
                }
            }
        }
        let _ = writeln!(md);
        json_rows.push(json!({
            "scenario": key.0, "metric": key.1,
            "targets": by_target.iter().map(|(t, v)| (t.clone(), json!({"median": median(v), "samples": v}))).collect::<serde_json::Map<_, _>>(),
        }));
    }
    if !results.errors.is_empty() {
        let _ = writeln!(
            md,
            "\nFailed requests: {}",
            results
                .errors
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(Steal { stolen, wall }) = results.steal {
        let cpus = procstat::online_cpus() as f64;
        let _ = writeln!(
            md,
            "\nHypervisor steal during the run: {stolen:.1} s of {:.0} CPU-seconds ({:.1}%)",
            wall * cpus,
            100.0 * stolen / (wall * cpus).max(1e-9)
        );
    }
    println!("{md}");
    std::fs::write(out_dir.join("results.md"), &md).map_err(|e| e.to_string())?;
    let doc = json!({
        "machine": procstat::machine(),
        "commit": commit,
        "command": command,
        "peers": targets.iter().map(|t| json!({"name": t.name, "version": t.version})).collect::<Vec<_>>(),
        "skipped": skipped,
        "errors": results.errors,
        "steal_seconds": results.steal.map(|s| s.stolen),
        "round_trip_us": results.wakeup.map(|w| json!({
            "other_cpu": {"p50": w.other_cpu.p50, "p99": w.other_cpu.p99},
            "same_cpu": {"p50": w.same_cpu.p50, "p99": w.same_cpu.p99},
        })),
        "results": json_rows,
        "at": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_vec_pretty(&doc).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    eprintln!("written: {}", out_dir.join("results.md").display());
    Ok(())
}

/// The commit of the checkout the bench was built from (`git describe --always --dirty`:
/// `-dirty` when tracked files have changes not committed), so that a table can be traced
/// to its source; None without git or outside a checkout.
fn source_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}

/// `v` with three significant digits or so, as the table shows figures.
fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_no_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }
}
