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

# The control's etcd backend: etcd-client's build runs protoc (with the well-known types of
# libprotobuf-dev); the end-to-end tests start real etcd servers (Debian's etcd-server, 3.4).
missing=""
command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing="$missing libprotobuf-dev"
command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
if [ -n "$missing" ]; then
  echo "test.sh: installing$missing for the etcd backend"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The interception test needs iptables, iproute2 and setpriv (util-linux); the manifest test
# validates deploy/ and injected output offline with kubernetes-validate, and the CRD test checks
# the sample resources against the generated schemas with the jsonschema it brings.
missing=""
for tool in iptables:iptables ip:iproute2 setpriv:util-linux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing="$missing ${tool##*:}"
done
if [ -n "$missing" ]; then
  echo "test.sh: installing$missing for the interception test"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "test.sh: installing kubernetes-validate (pip) for the offline manifest check"
  python3 -m pip install -q kubernetes-validate
fi

# The event-bus tests run every case against a real NATS JetStream as well (Debian's 2.9).
if ! command -v nats-server >/dev/null 2>&1; then
  echo "test.sh: installing nats-server (Debian package) for the JetStream event-bus tests"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nats-server >/dev/null
fi

# The live view's browser test drives a real headless Chromium over WebDriver (Debian's
# chromium and chromium-driver; screenshots land in target/test-artifacts/live-view/).
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
if [ -n "$missing" ]; then
  echo "test.sh: installing$missing for the live view's browser test"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The end-to-end tests start target/debug/strait-proxy: build it first.
cargo build --workspace --bins
cargo test --workspace "$@"
