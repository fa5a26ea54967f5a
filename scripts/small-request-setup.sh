# Shared by cpu-per-request.sh and callgrind-per-request.sh (sourced, not run): the tools they
# need, a scratch folder, an nginx upstream answering "hello world" on 127.0.0.1:19950, and a
# Strait config proxying 127.0.0.1:19952 to it (admin on 19951).

# Installs each of the named tools that is missing.
need_tools() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { sudo apt-get install -y "$tool" >/dev/null || apt-get install -y "$tool" >/dev/null; }
  done
}

DIR=$(mktemp -d)
mkdir -p "$DIR/logs"
# Stops the upstream and removes the scratch folder; a script adding its own cleanup calls this.
setup_cleanup() {
  [ -f "$DIR/upstream.pid" ] && kill "$(cat "$DIR/upstream.pid")" 2>/dev/null || true
  rm -rf "$DIR"
}
trap setup_cleanup EXIT

# Writes $DIR/$1.conf for an nginx with one worker (daemon $2: on or off), its pid and error
# log in $DIR, access log off, and the http block's servers read from stdin.
nginx_conf() {
  {
    cat <<EOF
worker_processes 1;
daemon $2;
pid $DIR/$1.pid;
error_log $DIR/logs/$1.log;
events { worker_connections 1024; }
http {
  access_log off;
EOF
    cat
    echo "}"
  } >"$DIR/$1.conf"
}

# wrk's arguments for the request to send: a GET, or with BODY_BYTES=N in the environment a
# POST with an N-byte JSON body (a wrk script in $DIR).
WRK_REQUEST=()
if [ -n "${BODY_BYTES:-}" ]; then
  cat >"$DIR/post.lua" <<EOF
wrk.method = "POST"
wrk.body = string.rep("x", $BODY_BYTES)
wrk.headers["Content-Type"] = "application/json"
EOF
  WRK_REQUEST=(-s "$DIR/post.lua")
fi

# Starts the nginx upstream, with $1 (a taskset CPU list, or nothing) as its CPUs.
start_upstream() {
  nginx_conf upstream on <<'EOF'
  server { listen 127.0.0.1:19950; location / { return 200 "hello world\n"; } }
EOF
  if [ -n "${1:-}" ]; then taskset -c "$1" nginx -c "$DIR/upstream.conf"; else nginx -c "$DIR/upstream.conf"; fi
}

cat >"$DIR/strait.yaml" <<'EOF'
apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: small-request}
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
