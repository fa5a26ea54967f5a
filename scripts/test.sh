#!/usr/bin/env bash
# Runs every test of the workspace: unit tests and the end-to-end tests, which start the real
# binaries against real upstreams on 127.0.0.1. Installs the external tools the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  echo "test.sh: installing promtool (Debian package 'prometheus') for the /metrics format check"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# The end-to-end tests start target/debug/strait-proxy: build it first.
cargo build --workspace --bins
cargo test --workspace "$@"
