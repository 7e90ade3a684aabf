#!/usr/bin/env bash
# User-space instructions per request through the proxy, and through nginx doing the same job
# (one static header, access log on), counted by valgrind (cachegrind, no cache simulation).
#
# Why: on a shared machine, requests/s move ±20 % between runs, so a change worth 2 % cannot be
# seen with wrk. Instructions executed per request are nearly deterministic (±0.3 % here), so
# two builds can be compared, and the count says how much user-space work a request costs
# beside nginx's. It says nothing about the kernel's share (about half of the CPU time, the same
# for both) nor about stalls; vs-nginx.sh measures the whole.
#
# Method: each program runs under cachegrind in front of the same nginx upstream, twice: once
# for SHORT seconds of wrk (-c8), once for LONG. Instructions per request is the difference of
# the two totals over the difference of the requests served (audit lines / access-log lines),
# which cancels start-up (config, TLS roots) and shutdown.
#
# Needs: valgrind, nginx, wrk, curl (apt-get install -y valgrind nginx-light wrk curl).
# Usage: benches/instructions.sh [path/to/gh-token-proxy]   Env: SHORT (5), LONG (15), SKIP_NGINX=1 to skip nginx (not NGINX=0: nginx reads $NGINX itself).
set -euo pipefail
BIN=$(realpath "${1:-target/release/gh-token-proxy}")
SHORT=${SHORT:-5}; LONG=${LONG:-15}
for t in valgrind nginx wrk curl; do command -v $t >/dev/null || { echo "missing $t: apt-get install -y valgrind nginx-light wrk curl"; exit 2; }; done
D=$(mktemp -d /tmp/instructions.XXXX); chmod 755 "$D"
cleanup() { [ -f "$D/up.pid" ] && kill "$(cat "$D/up.pid")" 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); PX=$(free_port); NG=$(free_port)
P=/repos/octocat/Hello-World

cat > "$D/body.json" <<'J'
{"id":1296269,"node_id":"MDEwOlJlcG9zaXRvcnkxMjk2MjY5","name":"Hello-World","full_name":"octocat/Hello-World","private":false,"owner":{"login":"octocat","id":1,"type":"User"},"default_branch":"main","stargazers_count":80,"watchers_count":80,"forks_count":9,"open_issues_count":0,"visibility":"public","pushed_at":"2011-01-26T19:06:43Z","created_at":"2011-01-26T19:01:12Z","updated_at":"2011-01-26T19:14:43Z"}
J
# The upstream and the nginx proxy are configured as in shared/bench/vs-nginx.sh.
cat > "$D/up.conf" <<N
worker_processes 1; daemon on; pid $D/up.pid; error_log $D/up.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$UP; root $D; location / { default_type application/json;
    add_header X-RateLimit-Remaining 4999; add_header X-RateLimit-Resource core; rewrite ^ /body.json break; } } }
N
# One process, in the foreground, so valgrind follows the process that does the work.
cat > "$D/px.conf" <<N
worker_processes 1; daemon off; master_process off; pid $D/px.pid; error_log $D/px.err;
events { worker_connections 1024; }
http { log_format audit '\$time_iso8601 \$remote_addr \$request_method \$uri \$status pat \$request_time';
  access_log $D/access.log audit; keepalive_requests 10000000;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$NG; location / { proxy_pass http://up; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_set_header Authorization "Bearer ghp_static"; } } }
N
cat > "$D/proxy.yaml" <<Y
integrations:
  github:
    - host: bench.local
      apiBaseUrl: http://127.0.0.1:$UP
      token: ghp_bench_static_token
proxy:
  listen: 127.0.0.1:$PX
  admin:
    listen: null
  defaultHost: bench.local
  audit:
    path: $D/audit.log
Y
nginx -c "$D/up.conf" -p "$D"

# run NAME SECONDS LOG PORT CMD...: "requests instructions" for one run under cachegrind.
run() {
  local name=$1 secs=$2 log=$3 port=$4; shift 4
  rm -f "$log" "$D/cg.out"
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$D/cg.out" "$@" 2>"$D/$name.valgrind" & local pid=$!
  for _ in $(seq 150); do curl -sf -o /dev/null "http://127.0.0.1:$port$P" && break; sleep 0.2; done
  curl -sf -o /dev/null "http://127.0.0.1:$port$P" || { echo "$name is not answering"; tail -5 "$D/$name.valgrind"; exit 1; }
  wrk -t1 -c8 -d"${secs}s" "http://127.0.0.1:$port$P" >/dev/null
  kill -TERM "$pid"; wait "$pid" || true
  echo "$(wc -l < "$log") $(awk '/^summary:/{print $2}' "$D/cg.out")"
}

measure() {
  local name=$1; shift
  local a b
  a=$(run "$name" "$SHORT" "$@"); b=$(run "$name" "$LONG" "$@")
  python3 - "$name" "$a" "$b" <<'PY'
import sys
name, (n1, i1), (n2, i2) = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
n1, i1, n2, i2 = int(n1), int(i1), int(n2), int(i2)
print(f"{name:6s} {(i2 - i1) / (n2 - n1):9.0f} instructions/request  ({n2 - n1} requests between the runs)")
PY
}

measure proxy "$D/audit.log" "$PX" "$BIN" serve --config "$D/proxy.yaml"
# Both exit on SIGTERM with every log line written (nginx writes its line per request, the
# proxy flushes its audit log on shutdown), so cachegrind gets to write its totals.
[ "${SKIP_NGINX:-0}" = 1 ] || measure nginx "$D/access.log" "$NG" nginx -c "$D/px.conf" -p "$D"
