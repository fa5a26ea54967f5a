#!/usr/bin/env bash
# What the resilience policies cost per request: the same route served with no policy and with
# every policy configured (none of them refusing), measured with wrk in interleaved rounds.
#
#   scripts/bench-policies.sh [ROUNDS] [SECONDS]
#
# Proxies run on CPU 0; wrk and the upstream on CPU 1. Prints requests/s and p99 per round and
# the median per target.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-5}
command -v wrk >/dev/null || { sudo apt-get install -y wrk >/dev/null || apt-get install -y wrk >/dev/null; }
cargo build --release -q -p strait-proxy -p strait-tests --bins

DIR=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

# The upstream: the demo's (it serves 127.0.0.1:9001 and answers /healthz).
taskset -c 1 target/release/strait-demo >"$DIR/demo.log" 2>&1 &
PIDS+=($!)

head() { # name port admin
  cat <<YAML
apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: $1}
spec:
  admin: 127.0.0.1:$3
  accessLog: {enabled: false}
  listeners: [{name: web, address: 127.0.0.1:$2, protocol: http}]
YAML
}

{ head none 19080 19000; cat <<'YAML'
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: up}
spec:
  protocol: http1
  endpoints: [{address: 127.0.0.1:9001}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules: [{backendRefs: [{name: up}]}]
YAML
} >"$DIR/none.yaml"

{ head all 19081 19001; cat <<'YAML'
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: up}
spec:
  protocol: http1
  endpoints: [{address: 127.0.0.1:9001}]
  healthCheck: {http: {path: /healthz}, interval: 1s, timeout: 500ms, unhealthyThreshold: 2, healthyThreshold: 1}
  outlierDetection: {consecutiveErrors: 5, interval: 1s, baseEjectionTime: 10s, maxEjectionPercent: 50}
  circuitBreaker: {failureThreshold: 5, openTimeout: 5s, successThreshold: 2, maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: shadow}
spec:
  protocol: http1
  endpoints: [{address: 127.0.0.1:9002}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules:
    - backendRefs: [{name: up}]
      timeouts: {request: 2s, perTry: 500ms}
      retries: {attempts: 3, retryOn: [5xx, gateway-error, connect-failure, reset], backoff: {base: 25ms, max: 250ms}, budget: {percent: 20, minRetriesPerSecond: 10}}
      rateLimit: {requestsPerSecond: 10000000, burst: 10000000, key: client-ip}
      fault: {delay: {fixed: 100ms, percent: 0}, abort: {status: 503, percent: 0}}
      mirror: {backendRef: {name: shadow}, percent: 0}
      requestHeaders: {set: {x-mesh: strait}, remove: [x-debug]}
      responseHeaders: {add: {x-served-by: strait}}
YAML
} >"$DIR/all.yaml"

for t in none all; do
  taskset -c 0 target/release/strait-proxy --config "$DIR/$t.yaml" >"$DIR/$t.log" 2>&1 &
  PIDS+=($!)
done
for port in 9001 19080 19081; do
  for _ in $(seq 100); do curl -sf -o /dev/null -H 'Host: x' "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

declare -A RPS P99
for round in $(seq "$ROUNDS"); do
  for t in none all; do
    port=$([ "$t" = none ] && echo 19080 || echo 19081)
    out=$(taskset -c 1 wrk -t1 -c32 -d"${SECS}s" --latency -H 'Host: x' "http://127.0.0.1:$port/")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
    echo "round $round  $t  ${rps} req/s  p99 ${p99}  ${errors}"
    RPS[$t]+="$rps "
    P99[$t]+="$p99 "
  done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
for t in none all; do
  echo "median $t: $(echo "${RPS[$t]}" | median) req/s, p99 $(echo "${P99[$t]}" | sed 's/ms//g; s/us/e-3/g' | median) ms"
done
