#!/usr/bin/env bash
# Load check (issue 5): hold N idle keep-alive connections against the gateway and report its
# RSS. Not part of CI. Each connection sends one request (an unrouted path, answered 404 by
# the gateway itself, so no upstream is involved) and then stays open, idle.
#
#   CARGO_TARGET_DIR=/work/target-bench cargo build --release --bin portcullis
#   benches/connections.sh [N=10000] [BINARY=$CARGO_TARGET_DIR/release/portcullis]
#
# Needs ~N+100 file descriptors in both the gateway and the client (`ulimit -n`).
#
# The RSS with the connections held is printed one second after the last one opened, split
# into anonymous memory (heap, stacks) and file-backed pages (the binary's code and data);
# `SETTLE=SECONDS` prints it again after that much more idle time (allocators that return
# freed memory after a delay, like jemalloc's 10 s decay, only show it then).
#
# Issue 7 variant: `PRINCIPALS=100000 benches/connections.sh ...` first fills the grant cache.
# It starts a throwaway `redis-server` on a free port (never 6379), seeds PRINCIPALS users of
# tenant `acme` with `redis-cli --pipe` (DESIGN.md §5 keys, prefix `b`; 36-character subjects,
# four role sets, one custom role, a tier and features), configures the Redis grant store with
# `cache_capacity` PRINCIPALS + 10 % (quick_cache starts evicting slightly before it is full),
# runs a small upstream, and sends one request per principal (unique HS256 token each, 64
# keep-alive connections, closed afterwards) to a route that needs `campaigns.view`: each is
# authenticated, its grants looked up in Redis and cached, decided, and forwarded (200). The
# JWT cache keeps its default size (10,000 tokens). Then the N idle connections as above.
set -euo pipefail
N=${1:-10000}
BIN=${2:-${CARGO_TARGET_DIR:-target}/release/portcullis}
ulimit -n "$(( N + 1000 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
PRINCIPALS=${PRINCIPALS:-0}
WORK=$(mktemp -d)
GW='' REDIS='' UP=''
cleanup() {
  for pid in $GW $UP $REDIS; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
UPSTREAM=127.0.0.1:9
GRANTS='[grants]
store = "file"'
if (( PRINCIPALS > 0 )); then
  RPORT=$(free_port)
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >/dev/null &
  REDIS=$!
  for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  python3 - "$PRINCIPALS" <<'PY' | redis-cli -p "$RPORT" --pipe >/dev/null
import sys
n = int(sys.argv[1])
out = sys.stdout.buffer
def cmd(*args):
    out.write(b"*%d\r\n" % len(args))
    for a in args:
        a = a.encode()
        out.write(b"$%d\r\n%s\r\n" % (len(a), a))
cmd("HSET", "b:acme:tenant", "tier", "growth", "features", '["reports"]')
cmd("HSET", "b:acme:roles", "auditor", '{"permissions":["reports.*"],"inherits":["viewer"]}')
sets = ['["viewer"]', '["editor"]', '["viewer","auditor"]', '["admin"]']
for i in range(n):
    cmd("HSET", "b:acme:user:%08x-0000-4000-8000-%012x" % (i, i * 7919), "roles", sets[i % 4])
PY
  echo "redis-server pid $REDIS: $(redis-cli -p "$RPORT" dbsize) keys seeded"
  UPORT=$(free_port)
  UPSTREAM=127.0.0.1:$UPORT
  python3 - "$UPORT" <<'PY' &
import asyncio, sys
async def serve(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        w.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
asyncio.run(main())
PY
  UP=$!
  GRANTS="[grants]
store = \"redis\"
cache_ttl = \"10m\"
[grants.redis]
url = \"redis://127.0.0.1:$RPORT/0\"
prefix = \"b\"
cache_capacity = $(( PRINCIPALS + PRINCIPALS / 10 ))"
fi
cat > "$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
[upstreams.api]
targets = ["$UPSTREAM"]
[identity.jwt]
algorithms = ["HS256"]
secret_env = "BENCH_SECRET"
$GRANTS
[roles.viewer]
permissions = ["*.view"]
[roles.editor]
inherits = ["viewer"]
permissions = ["campaigns.edit"]
[roles.admin]
inherits = ["editor"]
permissions = ["campaigns.delete", "email.send"]
[entitlements]
tiers = ["starter", "growth"]
[entitlements.require_tier]
"email.*" = "growth"
[entitlements.require_feature]
"reports.*" = "reports"
[[routes]]
methods = ["GET"]
path = "/health"
public = true
upstream = "api"
[[routes]]
methods = ["GET"]
path = "/api/campaigns/{id}"
permission = "campaigns.view"
upstream = "api"
[[routes]]
methods = ["DELETE"]
path = "/api/campaigns/{id}"
permission = "campaigns.delete"
upstream = "api"
[[routes]]
methods = ["GET"]
path = "/api/reports"
permission = "reports.view"
upstream = "api"
[[routes]]
methods = ["POST"]
path = "/api/email/send"
permission = "email.send"
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
if (( PRINCIPALS > 0 )); then
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$RPORT" pubsub numsub b:invalidate | tail -1)" = 1 ] && break
    sleep 0.1
  done
  python3 - "$PORT" "$PRINCIPALS" <<'PY'
import asyncio, base64, hashlib, hmac, json, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
secret = b"bench-secret-0123456789abcdef0123"
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
exp = int(time.time()) + 3600
def token(i):
    sub = "%08x-0000-4000-8000-%012x" % (i, i * 7919)
    body = header + b"." + b64(json.dumps({"sub": sub, "tenant": "acme", "exp": exp}).encode())
    return body + b"." + b64(hmac.new(secret, body, hashlib.sha256).digest())
statuses = {}
async def worker(queue):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    while queue:
        i = queue.pop()
        w.write(b"GET /api/campaigns/1 HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer " + token(i) + b"\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        statuses[status] = statuses.get(status, 0) + 1
        length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")), 0)
        await r.readexactly(length)
    w.close()
async def main():
    queue = list(range(n))
    start = time.time()
    await asyncio.gather(*(worker(queue) for _ in range(64)))
    print(f"{n} principals: one request each in {time.time() - start:.1f} s, statuses {statuses}")
asyncio.run(main())
PY
  LOOKUPS=$(redis-cli -p "$RPORT" info commandstats | awk -F'[=,]' '/cmdstat_hgetall/ {print $2}')
  echo "grant lookups in Redis: $(( ${LOOKUPS:-0} / 3 )) (3 HGETALL each); gateway RSS: $(( $(rss) / 1024 )) MiB"
fi
python3 - "$PORT" "$N" "$GW" <<'PY'
import asyncio, sys
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
REQ = b"GET /nothing-here HTTP/1.1\r\nHost: bench\r\n\r\n"
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
def parts():
    kib = {l.split(":")[0]: int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("Rss")}
    return f"anon {kib['RssAnon'] // 1024}, file {kib['RssFile'] // 1024} MiB"
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
    print(f"{len(held)} idle keep-alive connections held; gateway RSS: {rss()} MiB ({parts()})")
    settle = float(os.environ.get("SETTLE") or 0)
    if settle > 0:
        await asyncio.sleep(settle)
        print(f"after {settle:g} s more idle; gateway RSS: {rss()} MiB ({parts()})")
    if SILENT:
        return
    # Still alive and serving on a held connection?
    r, w = held[0]
    w.write(REQ)
    print("held connection still answers:", (await r.readuntil(b"\r\n")).decode().strip())
asyncio.run(main())
PY
