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
    /// `--tracing`: also Strait with `spec.tracing` at sampling 0 and 1.
    pub tracing: bool,
}

/// Scenario names accepted by `--only`.
const SCENARIOS: [&str; 10] = [
    "http1", "h2c", "big", "tcp", "memory", "routes", "reload", "bus", "mesh", "push",
];

impl Settings {
    /// The settings from this process's arguments.
    pub fn from_args() -> Result<Self, String> {
        Self::parse(std::env::args().skip(1))
    }

    /// The settings from `args` (without the program's name). `--quick` sets its own
    /// defaults, which `--rounds` and `--seconds` override wherever they stand.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut s = Self {
            quick: false,
            rounds: 3,
            seconds: 4.0,
            idle_connections: 10_000,
            route_counts: vec![10, 1_000, 10_000],
            tcp_bytes: 2 << 30,
            only: Vec::new(),
            tracing: false,
        };
        let (mut rounds, mut seconds) = (None, None);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => s.quick = true,
                "--tracing" => s.tracing = true,
                "--rounds" => {
                    let n = args.next().and_then(|v| v.parse::<usize>().ok());
                    rounds = Some(n.filter(|&n| n >= 1).ok_or("--rounds N (N ≥ 1)")?);
                }
                "--seconds" => {
                    let v = args.next().and_then(|v| v.parse::<f64>().ok());
                    let valid = |v: &f64| v.is_finite() && (0.1..=3600.0).contains(v);
                    seconds = Some(v.filter(valid).ok_or("--seconds S (0.1 to 3600)")?);
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
                    "unknown argument {other}; use --quick, --rounds N, --seconds S, --tracing, \
                         --only SCENARIO[,SCENARIO...] ({})",
                    SCENARIOS.join(", ")
                ))
                }
            }
        }
        if s.quick {
            s.rounds = 1;
            s.seconds = 1.0;
            s.idle_connections = 500;
            s.route_counts = vec![10, 1_000];
            s.tcp_bytes = 64 << 20;
        }
        s.rounds = rounds.unwrap_or(s.rounds);
        s.seconds = seconds.unwrap_or(s.seconds);
        Ok(s)
    }

    /// Whether scenario `name` runs.
    pub fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|n| n == name)
    }

    /// Whether any scenario that measures the proxies runs (all but `bus` and `push`).
    pub fn runs_proxies(&self) -> bool {
        self.only.is_empty() || self.only.iter().any(|n| n != "bus" && n != "push")
    }

    /// How long each target runs per scenario and round.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        Settings::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn quick_sets_its_defaults_and_explicit_values_win_wherever_they_stand() {
        let s = parse(&["--rounds", "2", "--quick"]).expect("valid");
        assert!(s.quick);
        assert_eq!((s.rounds, s.seconds, s.idle_connections), (2, 1.0, 500));
        let s = parse(&[]).expect("valid");
        assert_eq!((s.rounds, s.seconds, s.idle_connections), (3, 4.0, 10_000));
    }

    #[test]
    fn only_names_known_scenarios_and_limits_what_runs() {
        let s = parse(&["--only", "http1,reload"]).expect("valid");
        assert!(s.runs("http1") && s.runs("reload") && !s.runs("tcp"));
        assert!(parse(&[]).expect("valid").runs("tcp"));
        let e = parse(&["--only", "http1,http3"]).expect_err("http3 is no scenario");
        assert!(e.contains("unknown scenario http3"), "{e}");
    }

    #[test]
    fn values_that_cannot_make_a_run_are_refused() {
        for bad in [
            &["--rounds", "0"][..],
            &["--rounds", "x"],
            &["--rounds"],
            &["--seconds", "0"],
            &["--seconds", "-1"],
            &["--seconds", "NaN"],
            &["--seconds", "inf"],
            &["--fast"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_run_is_cut_into_slices_of_about_a_second() {
        let s = parse(&["--seconds", "4"]).expect("valid");
        assert_eq!(s.slices(), (4, Duration::from_secs(1)));
        let s = parse(&["--seconds", "0.3"]).expect("valid");
        assert_eq!(s.slices(), (1, Duration::from_millis(300)));
    }
}
