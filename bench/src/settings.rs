//! What a run does: the settings from the command line.

use std::time::Duration;

/// Run settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub seconds: f64,
    pub idle_connections: usize,
    pub route_counts: Vec<usize>,
    pub tcp_bytes: u64,
    /// Scenarios to run (`--only`); all when empty.
    pub only: Vec<String>,
}

/// Scenario names accepted by `--only`.
pub const SCENARIOS: [&str; 7] = ["http1", "h2c", "big", "tcp", "memory", "routes", "reload"];

impl Settings {
    pub fn from_args() -> Result<Self, String> {
        let mut s = Self {
            quick: false,
            rounds: 3,
            seconds: 4.0,
            idle_connections: 10_000,
            route_counts: vec![10, 1_000, 10_000],
            tcp_bytes: 2 << 30,
            only: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => {
                    s.quick = true;
                    s.rounds = 1;
                    s.seconds = 1.0;
                    s.idle_connections = 500;
                    s.route_counts = vec![10, 1_000];
                    s.tcp_bytes = 64 << 20;
                }
                "--rounds" => {
                    s.rounds = args
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--rounds N")?
                }
                "--seconds" => {
                    s.seconds = args
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--seconds S")?
                }
                "--only" => {
                    let list = args.next().ok_or("--only SCENARIO[,SCENARIO...]")?;
                    for name in list.split(',') {
                        if !SCENARIOS.contains(&name) {
                            return Err(format!(
                                "unknown scenario {name}; one of {}",
                                SCENARIOS.join(", ")
                            ));
                        }
                        s.only.push(name.to_owned());
                    }
                }
                other => {
                    return Err(format!(
                        "unknown argument {other}; use --quick, --rounds N, --seconds S, \
                         --only SCENARIO[,SCENARIO...] ({})",
                        SCENARIOS.join(", ")
                    ))
                }
            }
        }
        Ok(s)
    }

    /// Whether scenario `name` runs.
    pub fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|n| n == name)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    /// How a run interleaved across the targets is cut: the number of slices (about one a
    /// second) and each one's length.
    pub fn slices(&self) -> (u32, Duration) {
        let n = self.seconds.round().max(1.0) as u32;
        (n, self.duration() / n)
    }
}
