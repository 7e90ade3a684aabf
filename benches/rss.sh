#!/usr/bin/env bash
# How much memory does the release proxy hold idle, and holding 1,000 idle keep-alive client
# connections? (Targets: under 20 MiB idle, under 64 MiB with 1,000 connections.)
#
# Starts target/release/gh-token-proxy (PAT integration, audit to a file) in front of a tiny
# python3 HTTP/1.1 upstream on 127.0.0.1, reads VmRSS from /proc/PID/status idle, after one
# request, and after 1,000 client connections have each completed one request and stay open
# (keep-alive, idle); counts the established connections with ss to show they are all held.
#
# Usage: benches/rss.sh [path/to/gh-token-proxy]   Env: CONNS (default 1000).
set -euo pipefail
BIN=$(realpath "${1:-target/release/gh-token-proxy}")
CONNS=${CONNS:-1000}
ulimit -n 8192
D=$(mktemp -d /tmp/rss.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] || rm -rf "$D"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); PX=$(free_port)

cat > "$D/upstream.py" <<'PY'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = b'{"id":1296269,"name":"Hello-World","full_name":"octocat/Hello-World"}\n'
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *a): pass
class Server(ThreadingHTTPServer):
    # socketserver's default backlog is 5: a burst of 1,000 upstream connects then overflows the
    # accept queue, and some connections wait a minute on SYN/ACK retransmits. That measures
    # python's listen(), not the proxy.
    request_queue_size = 4096
Server(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$D/upstream.py" "$UP" & PIDS+=($!)

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
    path: $D/audit.jsonl
Y
RUST_LOG=warn "$BIN" serve --config "$D/proxy.yaml" 2>"$D/proxy.err" & PID=$!; PIDS+=($PID)
URL=http://127.0.0.1:$PX/repos/octocat/Hello-World
for _ in $(seq 100); do curl -sf -o /dev/null "$URL" 2>/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/{printf "%.1f MiB", $2/1024}' "/proc/$PID/status"; }

# Idle: restart so not even the readiness request has touched it.
kill "$PID"; wait "$PID" 2>/dev/null || true
RUST_LOG=warn "$BIN" serve --config "$D/proxy.yaml" 2>"$D/proxy.err" & PID=$!; PIDS+=($PID)
for _ in $(seq 100); do ss -ltn "sport = :$PX" | grep -q LISTEN && break; sleep 0.1; done
sleep 1
echo "idle (started, no request):           VmRSS $(rss)"
curl -sf -o /dev/null "$URL"; sleep 0.5
echo "after one proxied request:            VmRSS $(rss)"

python3 - "$PX" "$CONNS" "$D/held" <<'PY' &
# Connect all, send one request on each, read every response, then keep them all open and idle
# (fast: the proxy closes a connection that sends nothing for headerReadTimeoutMs, 10 s).
import socket, sys, time
port, n, flag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
req = b"GET /repos/octocat/Hello-World HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: rss-bench\r\n\r\n"
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for s in socks:
    s.sendall(req)
ok = 0
for s in socks:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, body = buf.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(65536)
    ok += head.startswith(b"HTTP/1.1 200")
print(f"{ok} of {n} connections answered 200 and are held open")
open(flag, "w").close()
time.sleep(5)
PY
PY_PID=$!; PIDS+=($PY_PID)
for _ in $(seq 300); do [ -f "$D/held" ] && break; sleep 0.1; done
sleep 1
held=$(ss -tnH state established "sport = :$PX" | wc -l)
upstream=$(ss -tnH state established "dport = :$UP" | wc -l)
echo "holding $held idle keep-alive client connections: VmRSS $(rss)"
echo "  (and $upstream idle upstream connections in the pool: the burst opened one per request, at most 256 per origin stay)"
awk '/VmHWM/{printf "peak (VmHWM) so far:                  %.1f MiB\n", $2/1024}' "/proc/$PID/status"
wait "$PY_PID" 2>/dev/null || true
echo "audit records with status 200: $(grep -c '"status":200' "$D/audit.jsonl") (expected $((CONNS + 2)): two curls and one request per connection)"
