#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 5), starting from its committed
# corpus (fuzz/corpus/TARGET, read only: new inputs go to a scratch directory). Fails on the
# first crash, leak or timeout; libFuzzer writes the reproducer to fuzz/artifacts/TARGET/.
# Installs the nightly toolchain (cargo-fuzz needs it) and cargo-fuzz when missing.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-5}"
shift || true
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
# One build of every target (the sanitizer build of the proxy takes minutes), then the runs.
cargo +nightly fuzz build
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  echo "fuzz.sh: $target for ${seconds}s"
  mkdir -p "$scratch/$target"
  # -timeout: an input that takes more than 10 s is a hang, and fails the run.
  cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1
done
