#!/usr/bin/env bash
# Side-by-side load benchmark (issue 7): Portcullis against nginx on loopback, in one run.
#
#   direct          wrk -> upstream nginx                                  (the limit)
#   nginx           wrk -> nginx proxy_pass (upstream keepalive) -> upstream; its access log is
#                   formatted per request into a buffer written to /dev/null
#   nginx-log       as nginx, with nginx's default access logging: one `write` of each request's
#                   line to a file next to the audited variants' (AUDIT_DIR), before the next
#                   request on the connection is read. The like-for-like reference for
#                   pc-redis-audit (a record per request on the same disk); not the issue's
#                   baseline, and not in the default VARIANTS.
#   authreq         wrk -> nginx + auth_request (subrequest to an nginx authz endpoint) -> upstream
#   authreq-jwt     as authreq, but the authz endpoint does what Portcullis does with the file
#                   store: verifies the HS256 JWT (signature, alg, exp) and checks the route's
#                   permission against the caller's roles, in njs (nginx's JavaScript module,
#                   Debian libnginx-mod-http-js) inside the upstream nginx. Not in the default
#                   VARIANTS: add it to VARIANTS (and HALF_VARIANTS, KERNEL_VARIANTS) to run it.
#   floor           wrk -> benches/floor -> upstream: a forwarder that only moves bytes (one upstream
#                   connection per client, four system calls per request, no authorization, no
#                   headers added): the least a proxy that forwards each request with its own reads
#                   and writes costs here. Not in the default VARIANTS.
#   floor-pipe      as floor, but every client's requests go over FLOOR_PIPELINE (default 2)
#                   upstream connections with HTTP/1.1 pipelining: one upstream write per event-loop
#                   turn for all the requests that came in (what no production proxy does: an
#                   experiment on what fewer TCP segments per request would buy). Not in the
#                   default VARIANTS.
#   pc-file         wrk -> portcullis (JWT HS256, file store, allow events not audited) -> upstream
#   pc-redis-audit  wrk -> portcullis (JWT HS256, Redis store warm, every event to a disk spool
#                          + file sink) -> upstream
#   pc-audit-h2     as pc-redis-audit, with the upstream spoken to over HTTP/2 (`protocol = "http2"`,
#                   cleartext, to an h2c listener of the same upstream nginx): one multiplexed
#                   connection, so the requests of one event-loop turn share its reads and
#                   writes. nginx's proxy_pass speaks only HTTP/1.x upstream. Not in the default
#                   VARIANTS.
#   pc-base         pc-redis-audit run by BASE_BIN (set it to compare two builds in one run:
#                   add pc-base to VARIANTS, HALF_VARIANTS, KERNEL_VARIANTS, INSTR_VARIANTS)
#
# Phases:
#   1. peak: wrk, 1 thread, CONNS connections, closed loop, DURATION s per run, ROUNDS interleaved
#      rounds (the variant order rotates every round), bodies `small` (36 B `return 200`) and
#      `big` (64 KiB static file). Medians of req/s, p50, p99 and the proxy's CPU per request.
#   2. audit A/B at a fixed rate (FIXED_RPS, default 10k req/s; issue 4's "no measurable
#      change at 10k req/s"): h2load --h1 --rps (open-ish loop, per-request log) against
#      Portcullis + Redis with allow events off and on; latency percentiles and CPU/request.
#   3. latency at 50 % of peak: the rate is half the median peak of pc-redis-audit/small;
#      direct, nginx and pc-redis-audit at that rate (HALF_VARIANTS: any of the variants,
#      including pc-redis-noaudit; HALF_RPS overrides the rate); p99 added against direct.
#      HALF_TOOLS picks the arrival process, each its own table: `uniform` and `poisson` are
#      benches/pace (one schedule for all connections, latency from when a request was due,
#      as wrk2 does; built here with cargo), `h2load` is h2load --rps, whose per-connection
#      timers fire together: FIXED_CLIENTS requests arrive as one burst, and its p99 is the
#      time the last of a burst queues.
#   4. instructions (not in the default PHASES): user-space instructions per request of
#      pc-file and pc-redis-audit (INSTR_VARIANTS; `nginx` runs the proxy's worker without a
#      master) under callgrind; needs valgrind. Repeatable
#      to ~0.1 %, where the wall-clock phases move by ±10 % from run to run on these VMs.
#   5. kernel (not in the default PHASES): per request at peak, user and system CPU, system calls,
#      context switches and disk reads of nginx, pc-file and pc-redis-audit (KERNEL_VARIANTS),
#      small body (KERNEL_BODY=big: the 64 KiB one); needs perf.
#   6. hold (not in the default PHASES): after the other phases, keep every server running for
#      measurements by hand; writes $RUN/hold.env (URL_<variant>, PID_<process>, AUTH) and waits
#      until $RUN/hold is removed (or MAX_WALL passes).
#
# CPU layout (2 cores): core SUT_CPU runs every server-side process (upstream nginx, the proxy
# under test, redis); core LOADGEN_CPU runs only the load generator. nginx proxies run with
# `worker_processes WORKERS`; Portcullis with PORTCULLIS_WORKER_THREADS=WORKERS.
#
# Not part of CI. Needs nginx, wrk, h2load (nghttp2-client), redis-server/redis-cli, python3,
# taskset, setsid; missing Debian packages are installed with apt-get when running as root.
# Build first:  CARGO_TARGET_DIR=/work/target-bench cargo build --release --bin portcullis
# Usage:        BIN=/work/target-bench/release/portcullis benches/load.sh
# Everything (configs, logs, raw.csv, summary.md) stays in the printed /tmp/portcullis-load.* dir.
# Every process the script starts runs in its own session and is stopped by its own PID/PGID.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
BODIES=${BODIES:-"small big"}
VARIANTS=${VARIANTS:-"direct nginx authreq pc-file pc-redis-audit"}
WORKERS=${WORKERS:-1}
SUT_CPU=${SUT_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
FIXED_RPS=${FIXED_RPS:-10000}
AUDIT_DURABILITY=${AUDIT_DURABILITY:-spooled}   # [audit] durability of pc-redis-audit: spooled | buffered
FIXED_CLIENTS=${FIXED_CLIENTS:-20}
PHASES=${PHASES:-"peak audit half"}
HALF_VARIANTS=${HALF_VARIANTS:-"direct nginx pc-redis-audit"}  # any of direct nginx nginx-log floor floor-pipe authreq authreq-jwt pc-file pc-redis-audit pc-redis-noaudit pc-audit-h2
HALF_TOOLS=${HALF_TOOLS:-"uniform poisson h2load"}  # arrivals at 50 % of peak: uniform | poisson (benches/pace) | h2load
PACE_CONNS=${PACE_CONNS:-32}
NICE=${NICE:-auto}            # auto: -20 (process and autogroup) when root, else 0
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/portcullis}
BASE_BIN=${BASE_BIN:-}
MAX_WALL=${MAX_WALL:-3600}
# Guest idle polling (cpuidle-haltpoll VMs, /sys/module/haltpoll/parameters/guest_halt_poll_ns):
# empty leaves the machine as it is; a number of ns makes an idle vCPU poll that long before it
# halts, for this run only (restored on exit). A machine setting, the same for every variant:
# on a VM a halted vCPU's wake-up is an exit to the host, paid per request at moderate rates.
IDLE_POLL_NS=${IDLE_POLL_NS:-}
HALTPOLL=/sys/module/haltpoll/parameters/guest_halt_poll_ns
# Where the audited variants keep their spool and file sink (default: the run dir, on disk).
# A tmpfs directory (e.g. /dev/shm) takes the disk out of the picture, for experiments only.
AUDIT_DIR=${AUDIT_DIR:-}
# UPSTREAM_SCHED=batch runs the upstream nginx (and the authz endpoints in it) as SCHED_BATCH:
# its wake-ups then no longer preempt the proxy it shares the core with, which they do once per
# few requests otherwise (a cost of this rig's one-core layout, paid by every proxy variant).
# For experiments only; the default leaves it SCHED_OTHER.
UPSTREAM_SCHED=${UPSTREAM_SCHED:-}
[[ -z $UPSTREAM_SCHED || $UPSTREAM_SCHED == batch ]] || { echo "UPSTREAM_SCHED: empty or batch, not $UPSTREAM_SCHED" >&2; exit 2; }
# CACHE_SIM=1: the instructions phase also simulates the first-level caches (callgrind
# --cache-sim=yes) and reports their misses per request; about twice as slow under valgrind.
if [[ ${CACHE_SIM:-0} == 1 ]]; then CACHE_SIM=--cache-sim=yes; else CACHE_SIM=""; fi

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -x "$BIN" ]] || die "no binary at $BIN (build: CARGO_TARGET_DIR=/work/target-bench cargo build --release --bin portcullis; then BIN=...)"
BIN=$(realpath "$BIN")
if [[ -n $BASE_BIN ]]; then
  [[ -x "$BASE_BIN" ]] || die "no binary at BASE_BIN=$BASE_BIN"
  BASE_BIN=$(realpath "$BASE_BIN")
fi
HERE=$(cd "$(dirname "$0")" && pwd)
PACE=""
if [[ " $PHASES " == *" half "* && " $HALF_TOOLS " =~ \ (uniform|poisson)\  ]]; then
  log "building benches/pace (release)"
  (cd "$HERE/pace" && CARGO_TARGET_DIR="$HERE/pace/target" cargo build --release --quiet) \
    || die "benches/pace did not build"
  PACE="$HERE/pace/target/release/pace"
fi

FLOOR=""
if [[ " $VARIANTS $HALF_VARIANTS ${KERNEL_VARIANTS:-} ${INSTR_VARIANTS:-} " =~ \ floor(-pipe)?\  ]]; then
  log "building benches/floor (release)"
  (cd "$HERE/floor" && CARGO_TARGET_DIR="$HERE/floor/target" cargo build --release --quiet) \
    || die "benches/floor did not build"
  FLOOR="$HERE/floor/target/release/floor"
fi

# ------------------------------------------------------------ tools ----
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v h2load >/dev/null || need_pkgs+=(nghttp2-client)
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v redis-cli >/dev/null || need_pkgs+=(redis-tools)
# njs for authreq-jwt's authz endpoint, only when that variant runs.
NJS_MODULE=/usr/lib/nginx/modules/ngx_http_js_module.so
WANT_NJS=""
[[ " $VARIANTS $HALF_VARIANTS ${KERNEL_VARIANTS:-} " == *" authreq-jwt "* ]] && WANT_NJS=1
[[ -n $WANT_NJS && ! -f $NJS_MODULE ]] && need_pkgs+=(libnginx-mod-http-js)
if ((${#need_pkgs[@]})); then
  [[ $(id -u) == 0 ]] || die "missing: ${need_pkgs[*]} (apt-get install -y ${need_pkgs[*]})"
  log "installing ${need_pkgs[*]}"
  apt-get install -y "${need_pkgs[@]}" >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y "${need_pkgs[@]}" >/dev/null; }
fi
for c in nginx wrk h2load redis-server redis-cli python3 taskset setsid curl; do
  command -v "$c" >/dev/null || die "missing command: $c"
done
if [[ $NICE == auto ]]; then
  if [[ $(id -u) == 0 ]]; then NICE=-20; else NICE=0; fi
fi

RUN=$(mktemp -d /tmp/portcullis-load.XXXXXX)
chmod 755 "$RUN"
mkdir -p "$RUN/www" "$RUN/tmp" "$RUN/spool"
if [[ -n $AUDIT_DIR ]]; then AUDIT_DIR=$(mktemp -d "$AUDIT_DIR/portcullis-audit.XXXXXX"); else AUDIT_DIR=$RUN; fi
head -c 65536 /dev/urandom >"$RUN/www/big.bin"
chmod 644 "$RUN/www/big.bin"

# ------------------------------------------------------- processes ----
PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  # Up to 10 s for graceful exits (Portcullis drains its audit sinks; an instrumented build,
  # benches/pgo.sh, writes its profile at exit), then whatever is left is killed.
  local i alive
  for i in $(seq 100); do
    alive=0
    for pid in "${PIDS[@]}"; do  # a leader not yet reaped is a zombie: that counts as gone
      [[ -r /proc/$pid/stat && $(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) != Z ]] && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  log "stopped ${#PIDS[@]} process group(s); run dir: $RUN"
  if [[ -n ${AUDIT_DIR:-} && $AUDIT_DIR != "$RUN" ]]; then rm -rf "$AUDIT_DIR"; fi
  if [[ -n ${HALTPOLL_WAS:-} ]]; then echo "$HALTPOLL_WAS" >"$HALTPOLL" && log "guest_halt_poll_ns back to $HALTPOLL_WAS"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [[ -n $IDLE_POLL_NS ]]; then
  [[ -w $HALTPOLL ]] || die "IDLE_POLL_NS: $HALTPOLL is not writable (needs root and the cpuidle-haltpoll driver)"
  HALTPOLL_WAS=$(cat "$HALTPOLL")
  echo "$IDLE_POLL_NS" >"$HALTPOLL" || die "IDLE_POLL_NS: could not set $HALTPOLL"
  log "guest_halt_poll_ns $HALTPOLL_WAS -> $IDLE_POLL_NS for this run"
fi
setsid bash -c "sleep $MAX_WALL; kill -TERM $$" </dev/null >/dev/null 2>&1 &
PIDS+=($!)

# name cpu cmd... -> own session (PGID = PID), pinned, niced (process and autogroup)
declare -A PID_OF=()
start_bg() {
  local name=$1 cpu=$2
  shift 2
  setsid bash -c 'echo "$1" >/proc/self/autogroup 2>/dev/null; n=$1; c=$2; shift 2; exec nice -n "$n" taskset -c "$c" "$@"' \
    _ "$NICE" "$cpu" "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  PIDS+=($!)
  PID_OF[$name]=$!
}
on_loadgen() {
  setsid -w bash -c 'echo "$1" >/proc/self/autogroup 2>/dev/null; n=$1; c=$2; shift 2; exec nice -n "$n" taskset -c "$c" "$@"' \
    _ "$NICE" "$LOADGEN_CPU" "$@"
}
free_port() { free_ports 1; }
# n distinct free ports: all bound at once, so that none is handed out twice (one at a time,
# the kernel may return a port again before the first user binds it).
free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
wait_code() {  # url code [curl args] -> waits up to 30 s
  local url=$1 want=$2 i code
  shift 2
  for i in $(seq 300); do
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" "$url" || true)
    [[ $code == "$want" ]] && return 0
    sleep 0.1
  done
  return 1
}
# CPU seconds (user+system, all threads) of the process groups given by leader PID;
# `--split` first: user and system apart.
cpu_of() {
  python3 - "$@" <<'PY'
import os, sys
split = sys.argv[1:2] == ["--split"]
want = {int(p) for p in sys.argv[1 + split:]}
hz = os.sysconf("SC_CLK_TCK"); user = system = 0
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        s = open(f"/proc/{d}/stat").read()
    except OSError:
        continue
    f = s[s.rindex(")") + 2:].split()
    if int(f[2]) in want:
        user += int(f[11]); system += int(f[12])
print(f"{user / hz:.3f} {system / hz:.3f}" if split else f"{(user + system) / hz:.3f}")
PY
}

read -r UP UPH2 AUTHZ NX NXL AR AUTHZ_JWT ARJ FL FLP PC_FILE PC_REDIS PC_NOAUDIT PC_BASE PC_H2 REDIS <<<"$(free_ports 16)"
USER_LINE=""
[[ $(id -u) == 0 ]] && USER_LINE="user nobody nogroup;"

# The HS256 key of every JWT variant (Portcullis's `secret_env`, authreq-jwt's endpoint).
export PORTCULLIS_BENCH_SECRET=bench-secret-0123456789abcdef0123456789

# ----------------------------------------------------------- nginx ----
NJS_LOAD=""; NJS_HTTP=""
if [[ -n $WANT_NJS ]]; then
  NJS_LOAD="load_module $NJS_MODULE;"
  NJS_HTTP="js_import authz from $RUN/authz.js;
  server {
    listen 127.0.0.1:$AUTHZ_JWT backlog=4096;
    location / { js_content authz.check; }
  }"
  # authreq-jwt's authz endpoint: the checks Portcullis makes with the file store (pc-file),
  # written as a user of auth_request would write them.
  cat >"$RUN/authz.js" <<EOF
const crypto = require('crypto');
const SECRET = '$PORTCULLIS_BENCH_SECRET';
// The same route map, roles and grants as pc-file.toml.
const ROUTES = [[/^\\/small\\//, 'items.view'], [/^\\/big\\//, 'blobs.view']];
const PERMISSIONS = { reader: ['*.view'] };
const GRANTS = { acme: { bench: ['reader'] } };

function b64json(s) {
  return JSON.parse(Buffer.from(s, 'base64url').toString());
}

function grants(roles, permission) {
  return roles.some((role) => (PERMISSIONS[role] || []).some((p) =>
    p === permission || (p.startsWith('*.') && permission.endsWith(p.slice(1)))));
}

function check(r) {
  const method = r.headersIn['X-Original-Method'];
  if (method !== 'GET' && method !== 'HEAD') { r.return(403); return; }
  const uri = (r.headersIn['X-Original-URI'] || '').split('?')[0];
  const route = ROUTES.find((e) => e[0].test(uri));
  if (!route) { r.return(403); return; }
  const auth = r.headersIn['Authorization'] || '';
  if (!auth.startsWith('Bearer ')) { r.return(401); return; }
  const parts = auth.slice(7).split('.');
  if (parts.length !== 3) { r.return(401); return; }
  const mac = crypto.createHmac('sha256', SECRET).update(parts[0] + '.' + parts[1]).digest('base64url');
  if (mac !== parts[2]) { r.return(401); return; }
  let header, claims;
  try { header = b64json(parts[0]); claims = b64json(parts[1]); } catch (e) { r.return(401); return; }
  if (header.alg !== 'HS256' || typeof claims.exp !== 'number' || claims.exp * 1000 <= Date.now()) {
    r.return(401); return;
  }
  const roles = (GRANTS[claims.tenant] || {})[claims.sub] || [];
  r.return(grants(roles, route[1]) ? 204 : 403);
}

export default { check };
EOF
fi

cat >"$RUN/upstream.conf" <<EOF
$NJS_LOAD
worker_processes 1;
daemon off;
pid $RUN/upstream.pid;
error_log $RUN/upstream_error.log warn;
$USER_LINE
events { worker_connections 8192; multi_accept on; }
http {
  access_log off; server_tokens off; default_type application/octet-stream;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 75s; keepalive_requests 1000000;
  open_file_cache max=100 inactive=300s;
  client_body_temp_path $RUN/tmp/ub; proxy_temp_path $RUN/tmp/up; fastcgi_temp_path $RUN/tmp/uf;
  uwsgi_temp_path $RUN/tmp/uu; scgi_temp_path $RUN/tmp/us;
  server {
    listen 127.0.0.1:$UP backlog=4096;
    listen 127.0.0.1:$UPH2 http2 backlog=4096;
    root $RUN/www;
    location /small/ { default_type application/json; return 200 '{"ok":true,"id":42,"items":[1,2,3]}\n'; }
    location /big/ { try_files /big.bin =404; }
    location = /healthz { return 200 "ok\n"; }
    location / { return 404; }
  }
  # The DIY authz endpoint for auth_request: method + path + bearer token in an nginx map.
  # The cheapest authz service there is (no JWT verification, no grants lookup), so the
  # auth_request tier is a lower bound for the DIY pattern's cost.
  map "\$http_x_original_method:\$http_x_original_uri:\$http_authorization" \$bench_allow {
    default 0;
    "~^(GET|HEAD):/(small|big)/[^:]*:Bearer @TOKEN@\$" 1;
  }
  server {
    listen 127.0.0.1:$AUTHZ backlog=4096;
    location / { if (\$bench_allow) { return 204; } return 403; }
  }
  $NJS_HTTP
}
EOF

# An nginx server on port $1 that asks the upstream group $2 before it proxies (auth_request).
auth_request_server() {
  cat <<EOF
  server {
    listen 127.0.0.1:$1 backlog=4096;
    location / { auth_request /_authz; proxy_pass http://app; }
    location = /_authz {
      internal;
      proxy_pass http://$2;
      proxy_pass_request_body off;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method \$request_method;
      proxy_set_header X-Original-URI \$request_uri;
    }
  }
EOF
}

cat >"$RUN/proxy.conf" <<EOF
worker_processes $WORKERS;
daemon off;
pid $RUN/proxy.pid;
error_log $RUN/proxy_error.log warn;
$USER_LINE
events { worker_connections 8192; multi_accept on; }
http {
  # One log line per request (buffered, to /dev/null): nginx pays for formatting a record,
  # as Portcullis pays for its audit event in pc-redis-audit.
  access_log /dev/null combined buffer=64k flush=1s;
  server_tokens off; tcp_nodelay on;
  keepalive_timeout 75s; keepalive_requests 1000000;
  client_body_temp_path $RUN/tmp/pb; proxy_temp_path $RUN/tmp/pp; fastcgi_temp_path $RUN/tmp/pf;
  uwsgi_temp_path $RUN/tmp/pu; scgi_temp_path $RUN/tmp/ps;
  upstream app { server 127.0.0.1:$UP; keepalive 256; keepalive_requests 1000000; }
  upstream authz { server 127.0.0.1:$AUTHZ; keepalive 256; keepalive_requests 1000000; }
$([[ -z $WANT_NJS ]] || echo "  upstream authz_jwt { server 127.0.0.1:$AUTHZ_JWT; keepalive 256; keepalive_requests 1000000; }")
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$host;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_buffer_size 16k; proxy_buffers 16 16k; proxy_busy_buffers_size 32k;
  server {
    listen 127.0.0.1:$NX backlog=4096;
    location / { proxy_pass http://app; }
  }
  server {
    listen 127.0.0.1:$NXL backlog=4096;
    access_log $AUDIT_DIR/nginx-access.log combined;
    location / { proxy_pass http://app; }
  }
$(auth_request_server "$AR" authz)
$([[ -z $WANT_NJS ]] || auth_request_server "$ARJ" authz_jwt)
}
EOF

# ------------------------------------------------------ portcullis ----
gw_conf() {  # port store audit [http2] -> toml
  local port=$1 store=$2 audit=$3 protocol=${4:-}
  cat <<EOF
[server]
listen = "127.0.0.1:$port"
[upstreams.app]
EOF
  if [[ $protocol == http2 ]]; then
    printf 'targets = ["127.0.0.1:%s"]\nprotocol = "http2"\n' "$UPH2"
  else
    printf 'targets = ["127.0.0.1:%s"]\n' "$UP"
  fi
  cat <<EOF
[identity]
kinds = ["jwt"]
[identity.jwt]
algorithms = ["HS256"]
secret_env = "PORTCULLIS_BENCH_SECRET"
[limits]
max_connections = 10000
[roles.reader]
permissions = ["*.view"]
[[routes]]
methods = ["GET", "HEAD"]
path = "/small/{*rest}"
permission = "items.view"
upstream = "app"
[[routes]]
methods = ["GET", "HEAD"]
path = "/big/{*rest}"
permission = "blobs.view"
upstream = "app"
EOF
  if [[ $store == file ]]; then
    cat <<EOF
[grants]
store = "file"
[tenants.acme]
[[assignments]]
tenant = "acme"
subject = "bench"
roles = ["reader"]
EOF
  else
    cat <<EOF
[grants]
store = "redis"
cache_ttl = "60s"
[grants.redis]
url = "redis://127.0.0.1:$REDIS/0"
prefix = "bench"
EOF
  fi
  if [[ $audit == on ]]; then
    cat <<EOF
[audit]
allow_events = "all"
durability = "$AUDIT_DURABILITY"
[audit.spool]
dir = "$AUDIT_DIR/spool/$port"
fsync = "interval"
[[audit.sinks]]
type = "file"
path = "$AUDIT_DIR/audit-$port.jsonl"
format = "json"
EOF
  else
    printf '[audit]\nallow_events = "none"\n'
  fi
}
gw_conf "$PC_FILE" file off >"$RUN/pc-file.toml"
gw_conf "$PC_REDIS" redis on >"$RUN/pc-redis-audit.toml"
gw_conf "$PC_NOAUDIT" redis off >"$RUN/pc-redis-noaudit.toml"
gw_conf "$PC_BASE" redis on >"$RUN/pc-base.toml"
gw_conf "$PC_H2" redis on http2 >"$RUN/pc-audit-h2.toml"
PC_VARIANTS="pc-file pc-redis-audit pc-redis-noaudit pc-audit-h2"
[[ -n $BASE_BIN ]] && PC_VARIANTS+=" pc-base"
for f in $PC_VARIANTS; do
  "$BIN" check --config "$RUN/$f.toml" >/dev/null || die "$f.toml invalid: $("$BIN" check --config "$RUN/$f.toml" 2>&1)"
done
TOKEN=$("$BIN" token --config "$RUN/pc-file.toml" --sub bench --tenant acme --ttl 4h)
sed -i "s|@TOKEN@|$TOKEN|" "$RUN/upstream.conf"
AUTH="Authorization: Bearer $TOKEN"
# The same claims under another key's signature: every authorizing variant must refuse it.
FORGED="Authorization: Bearer $(PORTCULLIS_BENCH_SECRET=not-the-bench-secret-0123456789abcdef \
  "$BIN" token --config "$RUN/pc-file.toml" --sub bench --tenant acme --ttl 4h)"

# ----------------------------------------------------------- start ----
nginx -t -q -p "$RUN/" -e "$RUN/nginx_t.log" -c "$RUN/upstream.conf" || die "upstream.conf invalid"
nginx -t -q -p "$RUN/" -e "$RUN/nginx_t.log" -c "$RUN/proxy.conf" || die "proxy.conf invalid"
UPSTREAM_CHRT=()
[[ $UPSTREAM_SCHED == batch ]] && UPSTREAM_CHRT=(chrt --batch 0)
start_bg upstream "$SUT_CPU" "${UPSTREAM_CHRT[@]}" nginx -p "$RUN/" -e "$RUN/upstream_error.log" -c "$RUN/upstream.conf"
start_bg proxy "$SUT_CPU" nginx -p "$RUN/" -e "$RUN/proxy_error.log" -c "$RUN/proxy.conf"
start_bg redis "$SUT_CPU" redis-server --bind 127.0.0.1 --port "$REDIS" --save "" --appendonly no \
  --dir "$RUN" --protected-mode yes
for _ in $(seq 100); do redis-cli -p "$REDIS" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
redis-cli -p "$REDIS" HSET bench:acme:user:bench roles '["reader"]' >/dev/null || die "redis seed failed"
export RUST_LOG=warn PORTCULLIS_WORKER_THREADS=$WORKERS
start_bg pc-file "$SUT_CPU" "$BIN" run --config "$RUN/pc-file.toml"
start_bg pc-redis-audit "$SUT_CPU" "$BIN" run --config "$RUN/pc-redis-audit.toml"
start_bg pc-redis-noaudit "$SUT_CPU" "$BIN" run --config "$RUN/pc-redis-noaudit.toml"
start_bg pc-audit-h2 "$SUT_CPU" "$BIN" run --config "$RUN/pc-audit-h2.toml"
[[ -n $BASE_BIN ]] && start_bg pc-base "$SUT_CPU" "$BASE_BIN" run --config "$RUN/pc-base.toml"
if [[ -n $FLOOR ]]; then
  start_bg floor "$SUT_CPU" "$FLOOR" "127.0.0.1:$FL" "127.0.0.1:$UP"
  start_bg floor-pipe "$SUT_CPU" "$FLOOR" "127.0.0.1:$FLP" "127.0.0.1:$UP" --pipeline "${FLOOR_PIPELINE:-2}"
fi

declare -A URL=(
  [direct]="http://127.0.0.1:$UP" [nginx]="http://127.0.0.1:$NX" [nginx-log]="http://127.0.0.1:$NXL" [authreq]="http://127.0.0.1:$AR"
  [authreq-jwt]="http://127.0.0.1:$ARJ" [floor]="http://127.0.0.1:$FL" [floor-pipe]="http://127.0.0.1:$FLP"
  [pc-file]="http://127.0.0.1:$PC_FILE" [pc-redis-audit]="http://127.0.0.1:$PC_REDIS"
  [pc-redis-noaudit]="http://127.0.0.1:$PC_NOAUDIT" [pc-base]="http://127.0.0.1:$PC_BASE"
  [pc-audit-h2]="http://127.0.0.1:$PC_H2"
)
# process group whose CPU is "the hop" of a variant (direct: the upstream itself)
declare -A HOP=(
  [direct]=upstream [nginx]=proxy [nginx-log]=proxy [authreq]=proxy [authreq-jwt]=proxy [floor]=floor [floor-pipe]=floor-pipe [pc-file]=pc-file
  [pc-redis-audit]=pc-redis-audit [pc-redis-noaudit]=pc-redis-noaudit [pc-base]=pc-base
  [pc-audit-h2]=pc-audit-h2
)
declare -A PATH_OF=([small]=/small/items/42 [big]=/big/blob/7)

# ---------------------------------------------------------- sanity ----
for v in direct nginx nginx-log ${FLOOR:+floor floor-pipe} authreq ${WANT_NJS:+authreq-jwt} $PC_VARIANTS; do
  wait_code "${URL[$v]}/small/items/42" 200 -H "$AUTH" || die "$v: no 200 (see $RUN/*.log)"
  size=$(curl -s -o /dev/null -w '%{size_download}' -H "$AUTH" "${URL[$v]}/big/blob/7")
  [[ $size == 65536 ]] || die "$v big: got $size bytes"
  if [[ $v != direct && $v != nginx* && $v != floor* ]]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$v]}/small/items/42")
    [[ $code == 401 || $code == 403 ]] || die "$v: no credentials answered $code"
    code=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE -H "$AUTH" "${URL[$v]}/small/items/42")
    [[ $code == 403 || $code == 404 || $code == 405 ]] || die "$v: DELETE answered $code"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "$FORGED" "${URL[$v]}/small/items/42")
    [[ $code == 401 || $code == 403 ]] || die "$v: a token with a wrong signature answered $code"
  fi
done
log "sanity ok; run dir $RUN"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "cpu: $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//') x $(nproc)"
  echo "nginx: $(nginx -v 2>&1 | sed 's/.*: //'); wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}'); redis: $(redis-server --version | awk '{print $3}')"
  [[ -n $BASE_BIN ]] && echo "pc-base: $BASE_BIN"
  echo "portcullis: $BIN ($(cd "$HERE" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo "layout: server side on cpu $SUT_CPU, load generator on cpu $LOADGEN_CPU; workers $WORKERS; nice $NICE${UPSTREAM_SCHED:+; upstream SCHED_BATCH}"
  echo "peak: wrk -t1 -c$CONNS -d${DURATION}s (+${WARMUP}s warm-up), $ROUNDS interleaved rounds"
  echo "load before start: $(cut -d' ' -f1-3 /proc/loadavg)"
  if [[ -r $HALTPOLL ]]; then echo "guest_halt_poll_ns: $(cat "$HALTPOLL")"; fi
} >"$RUN/env.txt"

# wrk done() hook: one machine-readable line
cat >"$RUN/report.lua" <<'EOF'
done = function(s, lat, req)
  local secs = s.duration / 1e6
  io.write(string.format("RESULT %.1f %d %d %d %d\n", s.requests / secs,
    lat:percentile(50.0), lat:percentile(99.0), s.requests,
    s.errors.status + s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout))
end
EOF

RAW="$RUN/raw.csv"
echo "phase,round,body,variant,rps,p50_us,p99_us,requests,errors,hop_cpu_us_per_req,rate" >"$RAW"

# ------------------------------------------------------------ peak ----
read -r -a VARR <<<"$VARIANTS"
NV=${#VARR[@]}
if [[ " $PHASES " == *" peak "* ]]; then
  for v in "${VARR[@]}"; do   # global warm-up (Redis cache, pools, page cache)
    for b in $BODIES; do on_loadgen wrk -t1 -c"$CONNS" -d2s -H "$AUTH" "${URL[$v]}${PATH_OF[$b]}" >/dev/null 2>&1 || true; done
  done
  for round in $(seq "$ROUNDS"); do
    for b in $BODIES; do
      for i in $(seq 0 $((NV - 1))); do
        v=${VARR[$(((i + round - 1) % NV))]}
        url="${URL[$v]}${PATH_OF[$b]}"
        on_loadgen wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H "$AUTH" "$url" >/dev/null 2>&1 || true
        c0=$(cpu_of "${PID_OF[${HOP[$v]}]}")
        out=$(on_loadgen timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s \
          -H "$AUTH" -s "$RUN/report.lua" "$url" 2>&1 || true)
        c1=$(cpu_of "${PID_OF[${HOP[$v]}]}")
        read -r _ rps p50 p99 n err <<<"$(grep '^RESULT' <<<"$out" || echo "RESULT 0 0 0 0 1")"
        cpu=$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { printf "%.2f", (n > 0) ? (b - a) * 1e6 / n : 0 }')
        echo "peak,$round,$b,$v,$rps,$p50,$p99,$n,$err,$cpu," >>"$RAW"
        log "peak r$round $b $v: $rps req/s p50=${p50}us p99=${p99}us cpu/req=${cpu}us err=$err"
      done
    done
  done
fi

# ------------------------------------------------- fixed-rate runs ----
# h2load --h1: FIXED_CLIENTS connections, each at rate/FIXED_CLIENTS req/s; per-request log
# (start, status, duration us) -> percentiles. Requests wait for the previous response on their
# connection, so a stall delays the next send (not corrected for coordinated omission).
fixed_run() {  # phase round variant rate [tool: h2load | uniform | poisson]
  local phase=$1 round=$2 v=$3 rate=$4 tool=${5:-h2load} per c0 c1 logf out
  if [[ $tool != h2load ]]; then
    paced_run "$@"
    return
  fi
  per=$(awk -v r="$rate" -v c="$FIXED_CLIENTS" 'BEGIN { x = r / c; printf "%.2f", x < 0.1 ? 0.1 : x }')
  logf="$RUN/h2load-$phase-$round-$v.log"
  on_loadgen timeout 60 h2load --h1 -t1 -c"$FIXED_CLIENTS" --rps "$per" -D "$WARMUP" -H "$AUTH" \
    "${URL[$v]}/small/items/42" >/dev/null 2>&1 || true
  c0=$(cpu_of "${PID_OF[${HOP[$v]}]}")
  on_loadgen timeout $((DURATION + 60)) h2load --h1 -t1 -c"$FIXED_CLIENTS" --rps "$per" -D "$DURATION" \
    -H "$AUTH" --log-file="$logf" "${URL[$v]}/small/items/42" >"$RUN/h2load-last.out" 2>&1 || true
  c1=$(cpu_of "${PID_OF[${HOP[$v]}]}")
  out=$(python3 - "$logf" "$DURATION" "$c0" "$c1" <<'PY'
import sys
path, dur, c0, c1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
lat, err = [], 0
try:
    for line in open(path):
        f = line.split()
        if len(f) < 3:
            continue
        if not f[1].startswith("2"):
            err += 1
        lat.append(int(f[2]))
except OSError:
    pass
lat.sort(); n = len(lat)
pct = lambda q: lat[min(n - 1, int(q * n))] if n else 0
print(f"{n / dur:.1f} {pct(0.50)} {pct(0.99)} {n} {err} {((c1 - c0) * 1e6 / n) if n else 0:.2f}")
PY
)
  read -r rps p50 p99 n err cpu <<<"$out"
  echo "$phase,$round,small,$v,$rps,$p50,$p99,$n,$err,$cpu,$rate" >>"$RAW"
  log "$phase r$round $v @${rate}/s: $rps req/s p50=${p50}us p99=${p99}us cpu/req=${cpu}us err=$err"
}

# benches/pace: one arrival schedule over PACE_CONNS keep-alive connections; latency counts from
# when a request was due (a request waiting for a free connection waits in its latency).
paced_run() {  # phase round variant rate tool
  local phase=$1 round=$2 v=$3 rate=$4 tool=$5 c0 c1 out n
  on_loadgen timeout 60 "$PACE" --url "${URL[$v]}/small/items/42" -H "$AUTH" --rate "$rate" \
    --arrivals "$tool" --connections "$PACE_CONNS" --warmup 0 --duration "$WARMUP" >/dev/null 2>&1 || true
  c0=$(cpu_of "${PID_OF[${HOP[$v]}]}")
  out=$(on_loadgen timeout $((DURATION + 60)) "$PACE" --url "${URL[$v]}/small/items/42" -H "$AUTH" \
    --rate "$rate" --arrivals "$tool" --connections "$PACE_CONNS" --warmup 0 --duration "$DURATION" \
    --seed $((round * 7919 + 17)) 2>&1 || true)
  c1=$(cpu_of "${PID_OF[${HOP[$v]}]}")
  echo "$out" >"$RUN/pace-$phase-$round-$v.out"
  read -r _ rps p50 p99 n err <<<"$(grep '^RESULT' <<<"$out" || echo "RESULT 0 0 0 0 1")"
  cpu=$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { printf "%.2f", (n > 0) ? (b - a) * 1e6 / n : 0 }')
  echo "$phase,$round,small,$v,$rps,$p50,$p99,$n,$err,$cpu,$rate" >>"$RAW"
  log "$phase r$round $v @${rate}/s ($tool arrivals): $rps req/s p50=${p50}us p99=${p99}us cpu/req=${cpu}us err=$err"
}

if [[ " $PHASES " == *" audit "* ]]; then
  AB=(pc-redis-noaudit pc-redis-audit)
  for round in $(seq "$ROUNDS"); do
    for i in 0 1; do fixed_run audit "$round" "${AB[$(((i + round) % 2))]}" "$FIXED_RPS"; done
  done
fi

if [[ " $PHASES " == *" half "* ]]; then
  peak=$(awk -F, '$1 == "peak" && $3 == "small" && $4 == "pc-redis-audit" { print $5 }' "$RAW" | sort -n \
    | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print 0 }')
  HALF=${HALF_RPS:-$(awk -v p="$peak" 'BEGIN { printf "%d", p / 2 }')}
  if ((HALF > 0)); then
    read -ra HV <<<"$HALF_VARIANTS"
    for round in $(seq "$ROUNDS"); do
      for tool in $HALF_TOOLS; do
        phase=half; [[ $tool != h2load ]] && phase=half-$tool
        for i in "${!HV[@]}"; do fixed_run "$phase" "$round" "${HV[$(((i + round) % ${#HV[@]}))]}" "$HALF" "$tool"; done
      done
    done
  else
    log "half: no peak figure for pc-redis-audit/small (run the peak phase, or set HALF_RPS)"
  fi
fi

# --------------------------------------------------- instructions ----
# User-space instructions per request under callgrind: repeatable where the wall-clock figures
# above are not (peak req/s moves by ±10 % between runs on these VMs). A second instance of each
# Portcullis variant runs under valgrind on its own port (and spool); after a warm-up its
# counters are zeroed, wrk sends INSTR_SECONDS of requests on 16 connections, and the counters
# are dumped: Ir / requests. Kernel time is not counted; every function's count goes to
# $RUN/callgrind-<variant>.txt.
if [[ " $PHASES " == *" instructions "* ]]; then
  command -v valgrind >/dev/null || die "instructions: needs valgrind (apt-get install -y valgrind)"
  declare -A PORT_OF=([pc-file]=$PC_FILE [pc-redis-audit]=$PC_REDIS [pc-redis-noaudit]=$PC_NOAUDIT [pc-base]=$PC_BASE [pc-audit-h2]=$PC_H2)
  {
    echo "## User-space instructions per request (callgrind, wrk -c16 -d${INSTR_SECONDS:-8}s, small body)"
    echo
    echo "| variant | requests | Ir / request | without SHA-256 (portable here, SHA-NI on the hardware) |${CACHE_SIM:+ I1 misses / request | D1 misses / request |}"
    echo "|---|---:|---:|---:|${CACHE_SIM:+---:|---:|}"
  } >"$RUN/instructions.md"
  for v in ${INSTR_VARIANTS:-pc-file pc-redis-audit}; do
    port=$(free_port)
    if [[ $v == nginx ]]; then
      # The proxy's own worker in the foreground (no master), on its own port and pid file.
      sed -e "s/127.0.0.1:$NX /127.0.0.1:$port /" -e "s#$RUN/proxy.pid#$RUN/proxy-callgrind.pid#" \
        -e "s/127.0.0.1:$NXL /127.0.0.1:$(free_port) /" -e "s/127.0.0.1:$AR /127.0.0.1:$(free_port) /" -e "s/127.0.0.1:$ARJ /127.0.0.1:$(free_port) /" \
        "$RUN/proxy.conf" >"$RUN/proxy-callgrind.conf"
      start_bg "callgrind-$v" "$SUT_CPU" valgrind --tool=callgrind $CACHE_SIM \
        --callgrind-out-file="$RUN/callgrind-$v.out" nginx -p "$RUN/" -e "$RUN/proxy-callgrind_error.log" \
        -c "$RUN/proxy-callgrind.conf" -g "master_process off;"
    elif [[ $v == floor* ]]; then
      pipe=()
      [[ $v == floor-pipe ]] && pipe=(--pipeline "${FLOOR_PIPELINE:-2}")
      start_bg "callgrind-$v" "$SUT_CPU" valgrind --tool=callgrind $CACHE_SIM \
        --callgrind-out-file="$RUN/callgrind-$v.out" "$FLOOR" "127.0.0.1:$port" "127.0.0.1:$UP" "${pipe[@]}"
    else
      sed "s/${PORT_OF[$v]}/$port/g" "$RUN/$v.toml" >"$RUN/$v-callgrind.toml"
      bin=$BIN; [[ $v == pc-base ]] && bin=$BASE_BIN
      start_bg "callgrind-$v" "$SUT_CPU" valgrind --tool=callgrind $CACHE_SIM \
        --callgrind-out-file="$RUN/callgrind-$v.out" "$bin" run --config "$RUN/$v-callgrind.toml"
    fi
    url="http://127.0.0.1:$port${PATH_OF[small]}"
    wait_code "$url" 200 -H "$AUTH" || die "callgrind $v: no 200 (see $RUN/callgrind-$v.log)"
    on_loadgen wrk -t1 -c16 -d3s -H "$AUTH" "$url" >/dev/null 2>&1 || true
    callgrind_control -z "${PID_OF[callgrind-$v]}" >/dev/null
    out=$(on_loadgen wrk -t1 -c16 -d"${INSTR_SECONDS:-8}s" -H "$AUTH" -s "$RUN/report.lua" "$url" 2>&1 || true)
    callgrind_control -d "${PID_OF[callgrind-$v]}" >/dev/null
    read -r _ _ _ _ n _ <<<"$(grep '^RESULT' <<<"$out" || echo "RESULT 0 0 0 0 1")"
    dump=$(ls -t "$RUN/callgrind-$v.out".* 2>/dev/null | head -1)
    ir=$(awk '/^summary:/ { print $2; exit }' "$dump" 2>/dev/null || echo 0)
    ((n > 0)) || die "callgrind $v: no requests"
    callgrind_annotate --threshold=100 --inclusive=no --auto=no "$dump" >"$RUN/callgrind-$v.txt" 2>/dev/null || true
    # valgrind's CPUID hides SHA-NI, so the audit chain's SHA-256 runs the portable code here,
    # ~10x what it costs on the hardware: shown apart.
    # Every line of sha2's SHA-256 code, wherever it was inlined (a profile-guided build
    # inlines the software rounds, cold on the hardware, into the audit writer).
    sha=$(awk '/sha2::sha256|\/sha2-[0-9.]+\/src\/sha256/ { gsub(",", "", $1); s += $1 } END { print s + 0 }' "$RUN/callgrind-$v.txt")
    kill -TERM "${PID_OF[callgrind-$v]}" 2>/dev/null || true
    log "instructions $v: $n requests, $((ir / n)) Ir/request ($((sha / n)) of them portable SHA-256)"
    if [[ -n $CACHE_SIM ]]; then
      # The simulated first-level caches' misses (valgrind's model of this CPU's L1): code
      # layout shows in I1, repeatable like Ir.
      read -r i1 d1 <<<"$(awk '/^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
        /^summary:/ { print $col["I1mr"], $col["D1mr"] + $col["D1mw"]; exit }' "$dump")"
      misses=" $((i1 / n)) | $((d1 / n)) |"
    else
      misses=""
    fi
    echo "| $v | $n | $((ir / n)) | $(((ir - sha) / n)) |$misses" >>"$RUN/instructions.md"
  done
  echo >>"$RUN/instructions.md"
fi

# ---------------------------------------------------------- kernel ----
# Where a request's CPU goes besides user space: per request, the hop's user and system CPU
# (/proc), its system calls and context switches (perf stat software events on every process of
# the hop's group), at peak (wrk -cCONNS, KERNEL_SECONDS, small body). Counts, unlike times,
# hardly move between runs: the figure to judge a change in system calls or wake-ups by. Disk
# reads: block-layer reads the hop's processes issued themselves (a synchronous read stalls the
# thread that needs the data; the request thread's appends must never need one).
if [[ " $PHASES " == *" kernel "* ]]; then
  command -v perf >/dev/null || die "kernel: needs perf (apt-get install -y linux-perf)"
  {
    echo "## Kernel side per request (wrk -c$CONNS -d${KERNEL_SECONDS:-5}s, ${KERNEL_BODY:-small} body)"
    echo
    echo "| variant | req/s | user µs | system µs | system calls | context switches | disk reads / 100k |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
  } >"$RUN/kernel.md"
  for v in ${KERNEL_VARIANTS:-nginx pc-file pc-redis-audit}; do
    leader=${PID_OF[${HOP[$v]}]}
    pids=$(ps -eo pid=,pgid= | awk -v g="$leader" '$2 == g { printf "%s%s", sep, $1; sep = "," }')
    url="${URL[$v]}${PATH_OF[${KERNEL_BODY:-small}]}"
    on_loadgen wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H "$AUTH" "$url" >/dev/null 2>&1 || true
    read -r u0 s0 <<<"$(cpu_of --split "$leader")"
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -e block:block_rq_issue --filter 'rwbs ~ "R*"' \
      -p "$pids" -o "$RUN/perf-$v.csv" &
    perf_pid=$!
    out=$(on_loadgen wrk -t1 -c"$CONNS" -d"${KERNEL_SECONDS:-5}s" -H "$AUTH" -s "$RUN/report.lua" "$url" 2>&1 || true)
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    read -r u1 s1 <<<"$(cpu_of --split "$leader")"
    read -r _ rps _ _ n _ <<<"$(grep '^RESULT' <<<"$out" || echo "RESULT 0 0 0 0 1")"
    ((n > 0)) || die "kernel $v: no requests"
    row=$(awk -F, -v n="$n" -v rps="$rps" -v v="$v" \
      -v user="$(awk -v a="$u0" -v b="$u1" -v n="$n" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')" \
      -v sys="$(awk -v a="$s0" -v b="$s1" -v n="$n" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')" '
      $3 ~ /raw_syscalls:sys_enter/ { sc = $1 } $3 ~ /context-switches/ { cs = $1 }
      $3 ~ /block:block_rq_issue/ { rd = $1 }
      END { printf "| %s | %.0f | %s | %s | %.2f | %.3f | %.1f |", v, rps, user, sys, sc / n, cs / n, rd * 1e5 / n }' "$RUN/perf-$v.csv")
    log "kernel $v: $row"
    echo "$row" >>"$RUN/kernel.md"
  done
  echo >>"$RUN/kernel.md"
fi

# ------------------------------------------------------------ hold ----
if [[ " $PHASES " == *" hold "* ]]; then
  {
    for v in "${!URL[@]}"; do echo "URL_${v//-/_}=${URL[$v]}"; done
    for p in "${!PID_OF[@]}"; do echo "PID_${p//-/_}=${PID_OF[$p]}"; done
    printf 'AUTH=%q\n' "$AUTH"
  } >"$RUN/hold.env"
  touch "$RUN/hold"
  log "hold: servers up, see $RUN/hold.env; rm $RUN/hold to stop"
  while [[ -e $RUN/hold ]]; do sleep 1; done
fi

# ---------------------------------------------------------- report ----
python3 - "$RAW" >"$RUN/summary.md" <<'PY'
import csv, statistics, sys
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1])))
g = defaultdict(list)
for r in rows:
    g[(r["phase"], r["body"], r["variant"])].append(r)
med = lambda rs, k: statistics.median(float(r[k]) for r in rs)
# Medians, and the rounds' range of what the phase varies (req/s at peak, p99 at a fixed
# rate): on these VMs the range says how far a ratio of medians can be trusted.
spread = lambda rs, k: f"{min(float(r[k]) for r in rs):,.0f}–{max(float(r[k]) for r in rs):,.0f}"
def table(phase, bodies, variants):
    varied = "rps" if phase == "peak" else "p99_us"
    print("| body | variant | req/s | p50 µs | p99 µs | hop CPU µs/req | runs | "
          + ("req/s" if varied == "rps" else "p99 µs") + " range |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for b in bodies:
        for v in variants:
            rs = g.get((phase, b, v))
            if rs:
                print(f"| {b} | {v} | {med(rs,'rps'):,.0f} | {med(rs,'p50_us'):,.0f} | "
                      f"{med(rs,'p99_us'):,.0f} | {med(rs,'hop_cpu_us_per_req'):.1f} | {len(rs)} | "
                      f"{spread(rs, varied)} |")
    print()
bodies = [b for b in ("small", "big") if any(k[1] == b for k in g)]
pv = [v for v in ("direct", "nginx", "nginx-log", "floor", "floor-pipe", "authreq", "authreq-jwt", "pc-file", "pc-redis-audit", "pc-audit-h2", "pc-base") if any(k[2] == v and k[0] == "peak" for k in g)]
if pv:
    print("## Peak (wrk closed loop; medians over rounds)\n")
    table("peak", bodies, pv)
    jwt = "authreq-jwt" in pv
    logged = "nginx-log" in pv
    print("| body | variant | ÷ nginx |" + (" ÷ nginx with access log to disk |" if logged else "")
          + " ÷ nginx+auth_request |" + (" ÷ nginx+auth_request (JWT) |" if jwt else "") + " ÷ direct |")
    print("|---|---|---:|" + ("---:|" if logged else "") + "---:|" + ("---:|" if jwt else "") + "---:|")
    for b in bodies:
        base = {v: med(g[("peak", b, v)], "rps") for v in ("direct", "nginx", "nginx-log", "authreq", "authreq-jwt") if g.get(("peak", b, v))}
        for v in ("floor", "floor-pipe", "pc-file", "pc-redis-audit", "pc-audit-h2", "pc-base"):
            rs = g.get(("peak", b, v))
            if not rs:
                continue
            x = med(rs, "rps")
            cell = lambda k: f"{x / base[k]:.2f}×" if base.get(k) else "-"
            print(f"| {b} | {v} | {cell('nginx')} |" + (f" {cell('nginx-log')} |" if logged else "")
                  + f" {cell('authreq')} |" + (f" {cell('authreq-jwt')} |" if jwt else "") + f" {cell('direct')} |")
    print()
    for b in bodies:
        new, old = g.get(("peak", b, "pc-redis-audit")), g.get(("peak", b, "pc-base"))
        if new and old:
            print(f"- {b}: pc-redis-audit ÷ pc-base (BASE_BIN) {med(new, 'rps') / med(old, 'rps'):.2f}× req/s, "
                  f"CPU/request {med(new, 'hop_cpu_us_per_req'):.1f} against {med(old, 'hop_cpu_us_per_req'):.1f} µs")
    print()
if any(k[0] == "audit" for k in g):
    print("## Audit off vs on at a fixed rate (h2load --h1 --rps, small body)\n")
    table("audit", ["small"], ["pc-redis-noaudit", "pc-redis-audit"])
HOW = {
    "half-uniform": "benches/pace, uniform arrivals, latency from the due time",
    "half-poisson": "benches/pace, Poisson arrivals, latency from the due time",
    "half": "h2load --h1 --rps: per-connection timers, arrivals in bursts",
}
for phase, how in HOW.items():
    if not any(k[0] == phase for k in g):
        continue
    rate = next(r["rate"] for r in rows if r["phase"] == phase)
    print(f"## Latency at 50 % of pc-redis-audit's peak ({rate} req/s, {how}, small body)\n")
    hv = ["direct", "nginx", "nginx-log", "floor", "floor-pipe", "authreq", "authreq-jwt", "pc-file", "pc-redis-noaudit", "pc-redis-audit", "pc-audit-h2", "pc-base"]
    table(phase, ["small"], hv)
    d = g.get((phase, "small", "direct"))
    for v in hv[1:]:
        rs = g.get((phase, "small", v))
        if d and rs:
            print(f"- {v}: added p50 {med(rs,'p50_us') - med(d,'p50_us'):+.0f} µs, "
                  f"added p99 {med(rs,'p99_us') - med(d,'p99_us'):+.0f} µs against direct")
    print()
PY
[[ -f $RUN/instructions.md ]] && cat "$RUN/instructions.md" >>"$RUN/summary.md"
[[ -f $RUN/kernel.md ]] && cat "$RUN/kernel.md" >>"$RUN/summary.md"
{ echo '```'; cat "$RUN/env.txt"; echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"; echo '```'; echo; cat "$RUN/summary.md"; } >"$RUN/report.md"
cat "$RUN/report.md"
