#!/usr/bin/env bash
# CPU cost of keep-alive serving (issue 5 parking): wrk -t1 -c64 -d5s against the gateway's own 404
# (no upstream); the gateway runs on core 0 with one worker thread, wrk on core 1. Prints
# wrk's latency and req/s and the gateway's CPU time per request (utime+stime from /proc).
# Not part of CI. Usage: benches/keepalive_cpu.sh BINARY   (run two binaries alternately)
set -euo pipefail
BIN=$1
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
WORK=$(mktemp -d)
cat > "$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
[upstreams.api]
targets = ["127.0.0.1:9"]
[identity.jwt]
algorithms = ["HS256"]
secret_env = "BENCH_SECRET"
[grants]
store = "file"
[[routes]]
methods = ["GET"]
path = "/health"
public = true
upstream = "api"
[audit]
allow_events = "none"
TOML
BENCH_SECRET=bench-secret-0123456789abcdef0123 RUST_LOG=error PORTCULLIS_WORKER_THREADS=1 taskset -c 0 "$BIN" run --config "$WORK/gateway.toml" &
GW=$!
trap 'kill "$GW" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
cpu() { awk '{print $14+$15}' /proc/$GW/stat; }
C0=$(cpu)
OUT=$(taskset -c 1 wrk -t1 -c64 -d5s "http://127.0.0.1:$PORT/nothing-here")
C1=$(cpu)
REQS=$(echo "$OUT" | awk '/requests in/ {print $1}')
echo "$OUT" | grep -E "Requests/sec|Latency|Socket|Non-2xx" | grep -v Non-2xx | tr '\n' ' '
echo " cpu_us_per_req=$(python3 -c "print(round(($C1-$C0)*10000/$REQS,2))")"
