#!/usr/bin/env bash
# Proxy CPU per small HTTP/1 request, Strait against nginx, with wrk as the load generator
# (a second view of the benchmark's headline, whose load generator is the repo's own).
#
#   scripts/cpu-per-request.sh [ROUNDS] [SECONDS]
#   BODY_BYTES=256 scripts/cpu-per-request.sh ...   # POSTs with a 256-byte body instead of GETs
#
# The proxy runs on CPU 0; wrk (-t1 -c32) and an nginx upstream on CPU 1. Rounds interleave
# the two proxies; each prints requests/s, the proxy's CPU µs per request (utime + stime over
# the run / requests) split into user and system time, and its epoll_wait calls and voluntary
# context switches per request. Needs nginx and wrk (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-6}
SECS=${2:-5}
source scripts/small-request-setup.sh
need_tools nginx wrk
cargo build --release -q -p strait-proxy

nginx_conf nginx off <<'EOF'
  upstream up { server 127.0.0.1:19950; keepalive 64; }
  server {
    listen 127.0.0.1:19952;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
EOF
start_upstream 1

# The proxy's pid (nginx: its one worker), with the proxy started on CPU 0.
start() {
  if [ "$1" = strait ]; then
    taskset -c 0 target/release/strait-proxy --config "$DIR/strait.yaml" >"$DIR/logs/strait.log" 2>&1 &
    sleep 0.8
    echo $!
  else
    taskset -c 0 nginx -c "$DIR/nginx.conf" >/dev/null 2>&1 &
    sleep 0.8
    pgrep -P "$(cat "$DIR/nginx.pid")"
  fi
}
stop() {
  if [ "$1" = strait ]; then kill "$2"; else kill "$(cat "$DIR/nginx.pid")"; fi
  sleep 0.5
}
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
switches() { awk '/^voluntary_ctxt_switches/ {print $2}' "/proc/$1/status"; }

declare -A RESULTS
for round in $(seq "$ROUNDS"); do
  for target in strait nginx; do
    pid=$(start $target)
    taskset -c 1 wrk "${WRK_REQUEST[@]}" -t1 -c32 -d1s http://127.0.0.1:19952/ >/dev/null
    read -r u0 s0 <<<"$(ticks "$pid")"
    v0=$(switches "$pid")
    n=$(taskset -c 1 perf stat -e syscalls:sys_enter_epoll_wait -x, -o "$DIR/epoll" -p "$pid" -- \
      wrk "${WRK_REQUEST[@]}" -t1 -c32 -d"${SECS}s" http://127.0.0.1:19952/ 2>/dev/null | awk '/requests in/ {print $1}')
    read -r u1 s1 <<<"$(ticks "$pid")"
    v1=$(switches "$pid")
    e=$(awk -F, '/epoll_wait/ {print $1}' "$DIR/epoll")
    e=${e:-0}
    stop $target "$pid"
    line=$(python3 -c "
hz = $(getconf CLK_TCK); n = $n
print(f'{n / $SECS:.0f} req/s  cpu {($u1 + $s1 - $u0 - $s0) * 1e6 / hz / n:.2f} us/req  '
      f'(user {($u1 - $u0) * 1e6 / hz / n:.2f}, sys {($s1 - $s0) * 1e6 / hz / n:.2f})  '
      f'epoll_wait/req {$e / n:.3f}  voluntary switches/req {($v1 - $v0) / n:.3f}')")
    echo "round $round $target: $line"
    RESULTS[$target]+="$(echo "$line" | awk '{print $4}') "
  done
done
for target in strait nginx; do
  echo "$target median cpu us/req: $(echo ${RESULTS[$target]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')"
done
