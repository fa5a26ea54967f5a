#!/usr/bin/env bash
# Instructions per small proxied request, counted by callgrind: the figure a noisy machine does
# not move, for judging a change to the request path.
#
#   scripts/callgrind-per-request.sh [SECONDS]
#   BODY_BYTES=256 scripts/callgrind-per-request.sh ...   # POSTs with a 256-byte body instead
#
# Runs the release proxy (`--workers 1`) under valgrind, an nginx upstream on 127.0.0.1:19950
# and `wrk -t1 -c8` through the proxy; counters are zeroed after a warm-up, so start-up is not
# counted. Prints instructions per request and the functions that cost the most; the full
# profile stays in target/callgrind/ (read it with callgrind_annotate). Needs valgrind, nginx
# and wrk (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
source scripts/small-request-setup.sh
need_tools valgrind nginx wrk
cargo build --release -q -p strait-proxy

OUT=target/callgrind
mkdir -p "$OUT"
VALGRIND=
cleanup() {
  if [ -n "$VALGRIND" ]; then
    kill "$VALGRIND" 2>/dev/null || true
    wait "$VALGRIND" 2>/dev/null || true
  fi
  setup_cleanup
}
trap cleanup EXIT
start_upstream

rm -f "$OUT"/strait.out*
valgrind --tool=callgrind --callgrind-out-file="$OUT/strait.out" --dump-instr=no \
  target/release/strait-proxy --config "$DIR/strait.yaml" --workers 1 >"$DIR/logs/valgrind.log" 2>&1 &
VALGRIND=$!
for _ in $(seq 60); do
  curl -fs -o /dev/null http://127.0.0.1:19952/ && break
  sleep 0.5
done
wrk "${WRK_REQUEST[@]}" -t1 -c8 -d2s http://127.0.0.1:19952/ >/dev/null
callgrind_control -z >/dev/null
n=$(wrk "${WRK_REQUEST[@]}" -t1 -c8 -d"${SECS}s" http://127.0.0.1:19952/ | awk '/requests in/ {print $1}')
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
