#!/usr/bin/env bash
# The benchmark, built and run: Strait against direct, nginx and haproxy (see the README's
# Performance section).
#
#   scripts/bench.sh [--quick] [--rounds N] [--seconds S] [--only SCENARIO,...]
#
# Builds the proxy as it ships, the control (for the bus and push scenarios) and the bench
# in one cargo invocation, so the bench compiles while the proxy's crates and its fat-LTO
# link, which take one core, run on the other. The bench adds no feature to a dependency it
# shares with the proxy, so the proxy built here is the one `cargo build --release -p
# strait-proxy` builds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p strait-proxy -p strait-control -p strait-bench
exec "${CARGO_TARGET_DIR:-target}/release/strait-bench" "$@"
