#!/usr/bin/env bash
# Instructions per small proxied request, counted by callgrind: the figure a noisy machine does
# not move, for judging a change to the request path.
#
#   scripts/callgrind-per-request.sh [SECONDS]
#
# Runs the release proxy (`--workers 1`) under valgrind, an nginx upstream on 127.0.0.1:19950
# and `wrk -t1 -c8` through the proxy; counters are zeroed after a warm-up, so start-up is not
# counted. Prints instructions per request and the functions that cost the most; the full
# profile stays in target/callgrind/ (read it with callgrind_annotate). Needs valgrind, nginx
# and wrk (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
for tool in valgrind nginx wrk; do
  command -v $tool >/dev/null || { sudo apt-get install -y $tool >/dev/null || apt-get install -y $tool >/dev/null; }
done
cargo build --release -q -p strait-proxy

OUT=target/callgrind
mkdir -p "$OUT"
DIR=$(mktemp -d)
mkdir -p "$DIR/logs"
cleanup() {
  pkill -f "callgrind-out-file=$OUT/strait" 2>/dev/null || true
  [ -f "$DIR/upstream.pid" ] && kill "$(cat "$DIR/upstream.pid")" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

cat >"$DIR/upstream.conf" <<EOF
worker_processes 1;
daemon on;
pid $DIR/upstream.pid;
error_log $DIR/logs/upstream.log;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:19950; location / { return 200 "hello world\n"; } }
}
EOF
cat >"$DIR/strait.yaml" <<'EOF'
apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: callgrind}
spec:
  admin: 127.0.0.1:19951
  accessLog: {enabled: false}
  listeners: [{name: web, address: "127.0.0.1:19952", protocol: http}]
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: up}
spec:
  protocol: http1
  endpoints: [{address: "127.0.0.1:19950"}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules: [{backendRefs: [{name: up}]}]
EOF
nginx -c "$DIR/upstream.conf"

rm -f "$OUT"/strait.out*
valgrind --tool=callgrind --callgrind-out-file="$OUT/strait.out" --dump-instr=no \
  target/release/strait-proxy --config "$DIR/strait.yaml" --workers 1 >"$DIR/logs/valgrind.log" 2>&1 &
for _ in $(seq 60); do
  curl -fs -o /dev/null http://127.0.0.1:19952/ && break
  sleep 0.5
done
wrk -t1 -c8 -d2s http://127.0.0.1:19952/ >/dev/null
callgrind_control -z >/dev/null
n=$(wrk -t1 -c8 -d"${SECS}s" http://127.0.0.1:19952/ | awk '/requests in/ {print $1}')
callgrind_control -d >/dev/null
sleep 1
profile=$(ls -t "$OUT"/strait.out.* | head -1)
python3 - "$profile" "$n" <<'PY'
# Self cost per function (callgrind's format: `fn=` opens a function, a `calls=` line is
# followed by the callee's inclusive cost, which is not the caller's own).
import collections, re, sys
names, cost, current, skip = {}, collections.Counter(), None, False
def name(field):
    m = re.match(r"\((\d+)\)(?: (.*))?", field)
    if not m:
        return field
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), m.group(1))
for line in open(sys.argv[1], errors="replace"):
    line = line.rstrip("\n")
    if line.startswith("fn="):
        current = name(line[3:])
    elif line.startswith("cfn="):
        name(line[4:])
    elif line.startswith("calls="):
        skip = True
    elif line[:1].isdigit() or line[:1] in "+-*":
        fields = line.split()
        if skip:
            skip = False
        elif len(fields) >= 2 and current:
            cost[current] += int(fields[1])
total, n = sum(cost.values()), int(sys.argv[2])
print(f"requests: {n}  instructions per request: {total // n}")
for function, c in cost.most_common(20):
    print(f"{c * 100 / total:5.1f}% {c // n:6d}/request  {function[:110]}")
PY
