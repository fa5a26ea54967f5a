//! `strait-proxy init-iptables`: the nat rules that send a pod's TCP through the proxy.
//!
//! ```text
//! PREROUTING ─▶ STRAIT_INBOUND:  excluded ports (and the proxy's own: admin, telemetry) RETURN,
//!                                everything else REDIRECT --to-ports INBOUND
//! OUTPUT     ─▶ STRAIT_OUTBOUND: the proxy's UID/GID, loopback destinations, excluded ports
//!                                and CIDRs RETURN, everything else REDIRECT --to-ports OUTBOUND
//! ```
//!
//! Idempotent: Strait's chains are created when missing and flushed and rebuilt every run; the
//! jumps into them are added only when absent. `--dry-run` prints the commands instead.
//! [`plan`] is pure (and unit tested); [`apply`] runs the plan with the `iptables` binary.

use std::fmt;
use std::net::IpAddr;
use std::process::Command;
use std::str::FromStr;

use strait_config::sidecar;

/// Strait's chain for inbound traffic (jumped to from `PREROUTING`).
pub const INBOUND_CHAIN: &str = "STRAIT_INBOUND";
/// Strait's chain for outbound traffic (jumped to from `OUTPUT`).
pub const OUTBOUND_CHAIN: &str = "STRAIT_OUTBOUND";

/// What to intercept: the arguments of `strait-proxy init-iptables`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// UID the proxy runs as: its own connections are never redirected.
    #[arg(long, default_value_t = sidecar::PROXY_UID)]
    pub proxy_uid: u32,
    /// GID the proxy runs as (also excluded when given).
    #[arg(long)]
    pub proxy_gid: Option<u32>,
    /// Port of the proxy's inbound listener.
    #[arg(long, default_value_t = sidecar::INBOUND_PORT)]
    pub inbound_port: u16,
    /// Port of the proxy's outbound listener.
    #[arg(long, default_value_t = sidecar::OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// Port of the proxy's admin server (never redirected inbound).
    #[arg(long, default_value_t = sidecar::ADMIN_PORT)]
    pub admin_port: u16,
    /// Port of the proxy's telemetry listener (probes, metrics; never redirected inbound).
    #[arg(long, default_value_t = sidecar::TELEMETRY_PORT)]
    pub telemetry_port: u16,
    /// Inbound destination ports left alone, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks left alone (e.g. 10.0.0.0/8,fd00::/8), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Do not intercept inbound traffic at all.
    #[arg(long)]
    pub no_inbound: bool,
    /// Also install the rules for IPv6 (with ip6tables).
    #[arg(long)]
    pub ipv6: bool,
    /// Remove Strait's rules and chains instead of installing them.
    #[arg(long)]
    pub uninstall: bool,
    /// Print the commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// The iptables binary.
    #[arg(long, default_value = "iptables", value_name = "PATH")]
    pub iptables: String,
    /// The ip6tables binary.
    #[arg(long, default_value = "ip6tables", value_name = "PATH")]
    pub ip6tables: String,
}

/// An IP network, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    address: IpAddr,
    prefix: u8,
}

/// A CIDR that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a CIDR (e.g. 10.0.0.0/8, fd00::/8, or a single address)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(text.to_owned());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { address, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// The address family a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.0/8",
            Self::V6 => "::1/128",
        }
    }

    fn holds(self, cidr: &Cidr) -> bool {
        cidr.address.is_ipv4() == (self == Self::V4)
    }
}

/// One step of a plan, in the nat table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the chain unless it exists.
    NewChain(&'static str),
    /// Empty the chain.
    Flush(&'static str),
    /// Append a rule (the arguments after `-A CHAIN`).
    Append(&'static str, Vec<String>),
    /// Jump from a built-in chain to one of Strait's for TCP, unless the jump is there.
    Jump {
        /// Built-in chain.
        from: &'static str,
        /// Strait's chain.
        to: &'static str,
    },
    /// Remove every jump from `from` to `to`.
    RemoveJump {
        /// Built-in chain.
        from: &'static str,
        /// Strait's chain.
        to: &'static str,
    },
    /// Delete the chain if it exists (it must be empty and unreferenced).
    DeleteChain(&'static str),
}

impl Step {
    /// The iptables arguments of the step's main command.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["-t".into(), "nat".into()];
        match self {
            Self::NewChain(c) => args.extend(["-N".into(), (*c).into()]),
            Self::Flush(c) => args.extend(["-F".into(), (*c).into()]),
            Self::Append(c, rule) => {
                args.extend(["-A".into(), (*c).into()]);
                args.extend(rule.iter().cloned());
            }
            Self::Jump { from, to } => args.extend(jump("-A", from, to)),
            Self::RemoveJump { from, to } => args.extend(jump("-D", from, to)),
            Self::DeleteChain(c) => args.extend(["-X".into(), (*c).into()]),
        }
        args
    }

    /// The step as a shell line (what `--dry-run` prints).
    pub fn render(&self, binary: &str) -> String {
        let line = format!("{binary} {}", self.args().join(" "));
        match self {
            Self::NewChain(_) => format!("{line}    # unless it exists"),
            Self::Jump { .. } => format!("{line}    # unless present"),
            Self::RemoveJump { .. } => format!("{line}    # while present"),
            Self::DeleteChain(_) => format!("{line}    # if it exists"),
            _ => line,
        }
    }
}

fn jump(op: &str, from: &str, to: &str) -> [String; 6] {
    [
        op.into(),
        from.into(),
        "-p".into(),
        "tcp".into(),
        "-j".into(),
        to.into(),
    ]
}

fn rule(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

/// The steps that install (or with `uninstall`, remove) the rules for `family`.
pub fn plan(args: &InitArgs, family: Family) -> Vec<Step> {
    if args.uninstall {
        return vec![
            Step::RemoveJump {
                from: "PREROUTING",
                to: INBOUND_CHAIN,
            },
            Step::RemoveJump {
                from: "OUTPUT",
                to: OUTBOUND_CHAIN,
            },
            Step::Flush(INBOUND_CHAIN),
            Step::Flush(OUTBOUND_CHAIN),
            Step::DeleteChain(INBOUND_CHAIN),
            Step::DeleteChain(OUTBOUND_CHAIN),
        ];
    }
    let mut steps = Vec::new();
    if !args.no_inbound {
        steps.push(Step::NewChain(INBOUND_CHAIN));
        steps.push(Step::Flush(INBOUND_CHAIN));
        let mut skipped = vec![
            args.admin_port,
            args.telemetry_port,
            args.inbound_port,
            args.outbound_port,
        ];
        skipped.extend(&args.exclude_inbound_ports);
        for port in dedup(skipped) {
            let port = port.to_string();
            steps.push(Step::Append(
                INBOUND_CHAIN,
                rule(&["-p", "tcp", "--dport", &port, "-j", "RETURN"]),
            ));
        }
        let to = args.inbound_port.to_string();
        steps.push(Step::Append(
            INBOUND_CHAIN,
            rule(&["-p", "tcp", "-j", "REDIRECT", "--to-ports", &to]),
        ));
    }
    steps.push(Step::NewChain(OUTBOUND_CHAIN));
    steps.push(Step::Flush(OUTBOUND_CHAIN));
    let uid = args.proxy_uid.to_string();
    steps.push(Step::Append(
        OUTBOUND_CHAIN,
        rule(&["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]),
    ));
    if let Some(gid) = args.proxy_gid {
        let gid = gid.to_string();
        steps.push(Step::Append(
            OUTBOUND_CHAIN,
            rule(&["-m", "owner", "--gid-owner", &gid, "-j", "RETURN"]),
        ));
    }
    steps.push(Step::Append(
        OUTBOUND_CHAIN,
        rule(&["-d", family.loopback(), "-j", "RETURN"]),
    ));
    for cidr in args
        .exclude_outbound_cidrs
        .iter()
        .filter(|c| family.holds(c))
    {
        let cidr = cidr.to_string();
        steps.push(Step::Append(
            OUTBOUND_CHAIN,
            rule(&["-d", &cidr, "-j", "RETURN"]),
        ));
    }
    for port in dedup(args.exclude_outbound_ports.clone()) {
        let port = port.to_string();
        steps.push(Step::Append(
            OUTBOUND_CHAIN,
            rule(&["-p", "tcp", "--dport", &port, "-j", "RETURN"]),
        ));
    }
    let to = args.outbound_port.to_string();
    steps.push(Step::Append(
        OUTBOUND_CHAIN,
        rule(&["-p", "tcp", "-j", "REDIRECT", "--to-ports", &to]),
    ));
    if !args.no_inbound {
        steps.push(Step::Jump {
            from: "PREROUTING",
            to: INBOUND_CHAIN,
        });
    }
    steps.push(Step::Jump {
        from: "OUTPUT",
        to: OUTBOUND_CHAIN,
    });
    steps
}

fn dedup(mut ports: Vec<u16>) -> Vec<u16> {
    let mut seen = std::collections::HashSet::new();
    ports.retain(|p| seen.insert(*p));
    ports
}

/// An iptables command failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The binary could not be started.
    #[error(
        "cannot run `{command}`: {source} (is iptables installed, and are we root with NET_ADMIN?)"
    )]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
}

fn run(binary: &str, args: &[String]) -> Result<(), ApplyError> {
    let command = format!("{binary} {}", args.join(" "));
    let output = Command::new(binary)
        .args(args)
        .output()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ApplyError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn check(binary: &str, args: &[String]) -> bool {
    Command::new(binary)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn chain_exists(binary: &str, chain: &str) -> bool {
    check(binary, &rule(&["-t", "nat", "-S", chain]))
}

/// Runs the steps with `binary` (`iptables` or `ip6tables`).
pub fn apply(binary: &str, steps: &[Step]) -> Result<(), ApplyError> {
    for step in steps {
        let args = step.args();
        match step {
            Step::NewChain(chain) if chain_exists(binary, chain) => {}
            Step::DeleteChain(chain) | Step::Flush(chain) if !chain_exists(binary, chain) => {}
            Step::Jump { .. } => {
                let mut probe = args.clone();
                if let Some(op) = probe.get_mut(2) {
                    "-C".clone_into(op);
                }
                if !check(binary, &probe) {
                    run(binary, &args)?;
                }
            }
            Step::RemoveJump { .. } => {
                // -D removes one match per call: repeat while one is left.
                while check(binary, &args) {}
            }
            _ => run(binary, &args)?,
        }
    }
    Ok(())
}

/// Runs `strait-proxy init-iptables`: prints (dry run) or applies the plan for IPv4, and for
/// IPv6 with `--ipv6`.
pub fn run_init(args: &InitArgs, out: &mut impl std::io::Write) -> Result<(), ApplyError> {
    let mut families = vec![(Family::V4, args.iptables.as_str())];
    if args.ipv6 {
        families.push((Family::V6, args.ip6tables.as_str()));
    }
    for (family, binary) in families {
        let steps = plan(args, family);
        if args.dry_run {
            for step in &steps {
                let _ = writeln!(out, "{}", step.render(binary));
            }
        } else {
            apply(binary, &steps)?;
            let _ = writeln!(
                out,
                "strait-proxy init-iptables: {} {} rules ({} steps)",
                if args.uninstall {
                    "removed"
                } else {
                    "installed"
                },
                binary,
                steps.len()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn args(extra: &[&str]) -> InitArgs {
        let mut argv = vec!["init-iptables"];
        argv.extend(extra);
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{e}"))
            .init
    }

    fn lines(a: &InitArgs, family: Family) -> Vec<String> {
        plan(a, family)
            .iter()
            .map(|s| s.render("iptables"))
            .collect()
    }

    #[test]
    fn default_plan_redirects_both_ways_and_skips_the_proxy() {
        let got = lines(&args(&[]), Family::V4);
        let want = [
            "iptables -t nat -N STRAIT_INBOUND    # unless it exists",
            "iptables -t nat -F STRAIT_INBOUND",
            "iptables -t nat -A STRAIT_INBOUND -p tcp --dport 15300 -j RETURN",
            "iptables -t nat -A STRAIT_INBOUND -p tcp --dport 15303 -j RETURN",
            "iptables -t nat -A STRAIT_INBOUND -p tcp --dport 15302 -j RETURN",
            "iptables -t nat -A STRAIT_INBOUND -p tcp --dport 15301 -j RETURN",
            "iptables -t nat -A STRAIT_INBOUND -p tcp -j REDIRECT --to-ports 15302",
            "iptables -t nat -N STRAIT_OUTBOUND    # unless it exists",
            "iptables -t nat -F STRAIT_OUTBOUND",
            "iptables -t nat -A STRAIT_OUTBOUND -m owner --uid-owner 1530 -j RETURN",
            "iptables -t nat -A STRAIT_OUTBOUND -d 127.0.0.0/8 -j RETURN",
            "iptables -t nat -A STRAIT_OUTBOUND -p tcp -j REDIRECT --to-ports 15301",
            "iptables -t nat -A PREROUTING -p tcp -j STRAIT_INBOUND    # unless present",
            "iptables -t nat -A OUTPUT -p tcp -j STRAIT_OUTBOUND    # unless present",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn exclusions_are_returned_before_the_redirect_and_split_by_family() {
        let a = args(&[
            "--exclude-inbound-ports",
            "22,15300",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,fd00::/8,169.254.169.254",
            "--proxy-gid",
            "1530",
        ]);
        let v4 = lines(&a, Family::V4);
        assert!(v4
            .contains(&"iptables -t nat -A STRAIT_INBOUND -p tcp --dport 22 -j RETURN".to_owned()));
        assert_eq!(v4.iter().filter(|l| l.contains("--dport 15300")).count(), 1);
        let redirect = v4
            .iter()
            .position(|l| l.contains("REDIRECT --to-ports 15301"))
            .unwrap_or(0);
        for needle in [
            "--gid-owner 1530",
            "-d 10.96.0.0/12 -j RETURN",
            "-d 169.254.169.254/32 -j RETURN",
            "--dport 5432 -j RETURN",
        ] {
            let at = v4.iter().position(|l| l.contains(needle));
            assert!(at.is_some_and(|i| i < redirect), "{needle} in {v4:#?}");
        }
        assert!(!v4.iter().any(|l| l.contains("fd00::")));
        let v6 = lines(&a, Family::V6);
        assert!(v6.iter().any(|l| l.contains("-d fd00::/8 -j RETURN")));
        assert!(v6.iter().any(|l| l.contains("-d ::1/128 -j RETURN")));
        assert!(!v6.iter().any(|l| l.contains("10.96.0.0")));
    }

    #[test]
    fn no_inbound_and_uninstall() {
        let got = lines(&args(&["--no-inbound"]), Family::V4);
        assert!(
            !got.iter().any(|l| l.contains("STRAIT_INBOUND")),
            "{got:#?}"
        );
        let got = plan(&args(&["--uninstall"]), Family::V4);
        assert_eq!(got.last(), Some(&Step::DeleteChain(OUTBOUND_CHAIN)));
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().map(|c| c.to_string()).ok(),
            Some("10.0.0.0/8".into())
        );
        for bad in ["10.0.0.0/33", "nope", "::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn dry_run_prints_the_plan() {
        let mut out = Vec::new();
        run_init(&args(&["--dry-run", "--ipv6"]), &mut out).expect("dry run needs no iptables");
        let text = String::from_utf8(out).unwrap_or_default();
        assert!(text.contains("iptables -t nat -A OUTPUT -p tcp -j STRAIT_OUTBOUND"));
        assert!(text.contains("ip6tables -t nat -A STRAIT_OUTBOUND -d ::1/128 -j RETURN"));
    }
}
