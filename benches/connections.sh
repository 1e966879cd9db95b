#!/usr/bin/env bash
# Load check (issue 5): hold N idle keep-alive connections against the gateway and report its
# RSS. Not part of CI. Each connection sends one request (an unrouted path, answered 404 by
# the gateway itself, so no upstream is involved) and then stays open, idle.
#
#   CARGO_TARGET_DIR=/work/target-bench cargo build --release --bin portcullis
#   benches/connections.sh [N=10000] [BINARY=$CARGO_TARGET_DIR/release/portcullis]
#
# Needs ~N+100 file descriptors in both the gateway and the client (`ulimit -n`).
set -euo pipefail
N=${1:-10000}
BIN=${2:-${CARGO_TARGET_DIR:-target}/release/portcullis}
ulimit -n "$(( N + 1000 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d)
trap 'kill "$GW" 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
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
[roles.viewer]
permissions = ["*.view"]
[[routes]]
methods = ["GET"]
path = "/health"
public = true
upstream = "api"
[limits]
max_connections = $(( N + 100 ))
header_read_timeout = "60s"
[audit]
allow_events = "none"
TOML
BENCH_SECRET=bench-secret-0123456789abcdef0123 RUST_LOG=warn env ${GW_ENV:-} "$BIN" run --config "$WORK/gateway.toml" &
GW=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$GW/status"; }
echo "gateway pid $GW, RSS at start: $(( $(rss) / 1024 )) MiB"
python3 - "$PORT" "$N" "$GW" <<'PY'
import asyncio, sys
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
REQ = b"GET /nothing-here HTTP/1.1\r\nHost: bench\r\n\r\n"
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
import os
SILENT = os.environ.get("SILENT") == "1"
async def one(held):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    if SILENT:
        held.append((r, w))
        return
    w.write(REQ)
    head = await r.readuntil(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
    await r.readexactly(length)
    held.append((r, w))
async def main():
    held = []
    for start in range(0, n, 500):
        await asyncio.gather(*(one(held) for _ in range(min(500, n - start))))
    await asyncio.sleep(1)
    print(f"{len(held)} idle keep-alive connections held; gateway RSS: {rss()} MiB")
    if SILENT:
        return
    # Still alive and serving on a held connection?
    r, w = held[0]
    w.write(REQ)
    print("held connection still answers:", (await r.readuntil(b"\r\n")).decode().strip())
asyncio.run(main())
PY
