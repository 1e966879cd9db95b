#!/usr/bin/env bash
# Profile-guided release build (issue 7): the same code, laid out and inlined for the paths
# that run. Not part of CI (two release builds and a load run: about 12 minutes here).
#
#   benches/pgo.sh                 -> prints the path of the optimized binary
#   OUT=/usr/local/bin/portcullis benches/pgo.sh   (copies it there too)
#
# 1. Builds an instrumented binary (`-Cprofile-generate`).
# 2. Trains it with `benches/load.sh` (ROUNDS=1): pc-file and pc-redis-audit under wrk at peak,
#    small and 64 KiB bodies, plus the script's sanity requests (401, 403/405, 200). Its
#    graceful shutdown on SIGTERM writes the profile.
# 3. Merges the profile with the `llvm-profdata` of rustc's own LLVM version (Debian package
#    `llvm-<major>`; installed with apt-get when missing and running as root).
# 4. Builds the release binary with `-Cprofile-use`.
# 5. With BOLT=1, also lays out that binary's machine code by where it ran (LLVM BOLT, Debian
#    package `bolt-<major>`, installed when missing and running as root): the profile-guided
#    build is linked with `--emit-relocs`, instrumented by `llvm-bolt -instrument`, trained with
#    the same load as step 2, and rewritten from the merged profile (hot blocks together, cold
#    ones split off, functions ordered by calls). About 8 more minutes.
# Build directories: $PGO_DIR (default /work/target-pgo): gen/, use/, profiles/, bolt/.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
PGO_DIR=${PGO_DIR:-/work/target-pgo}
TRAIN_SECONDS=${TRAIN_SECONDS:-5}
TARGET=$(rustc -vV | awk '/^host:/ {print $2}')
LLVM_MAJOR=$(rustc -vV | awk '/^LLVM version:/ {split($3, v, "."); print v[1]}')

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A tool of LLVM $LLVM_MAJOR, by name or in its lib dir; apt-get installs the package when missing.
llvm_tool() {  # name package
  local c
  for c in "$1-$LLVM_MAJOR" "/usr/lib/llvm-$LLVM_MAJOR/bin/$1"; do
    if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return; fi
  done
  [[ $(id -u) == 0 ]] || die "needs $1 of LLVM $LLVM_MAJOR (apt-get install $2)"
  log "installing $2 ($1 of LLVM $LLVM_MAJOR)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >/dev/null \
    || die "apt-get install $2 failed"
  command -v "/usr/lib/llvm-$LLVM_MAJOR/bin/$1" || die "no $1 after installing $2"
}

PROFDATA=$(llvm_tool llvm-profdata "llvm-$LLVM_MAJOR")

# `--target` keeps RUSTFLAGS off build scripts and proc macros: only the binary is profiled.
build() {  # dir rustflags
  (cd "$HERE" && CARGO_TARGET_DIR="$PGO_DIR/$1" RUSTFLAGS="$2" \
    cargo build --release --bin portcullis --target "$TARGET" --quiet)
  echo "$PGO_DIR/$1/$TARGET/release/portcullis"
}

rm -rf "$PGO_DIR/profiles"
mkdir -p "$PGO_DIR/profiles"
log "building the instrumented binary"
GEN=$(build gen "-Cprofile-generate=$PGO_DIR/profiles")

train() {  # binary log
  BIN=$1 ROUNDS=1 WARMUP=1 DURATION=$TRAIN_SECONDS BODIES="small big" \
    VARIANTS="pc-file pc-redis-audit" PHASES=peak "$HERE/benches/load.sh" >"$2" 2>&1 \
    || die "training run failed (see $2)"
}

log "training: benches/load.sh, pc-file and pc-redis-audit, ${TRAIN_SECONDS}s per body"
train "$GEN" "$PGO_DIR/train.log"
ls "$PGO_DIR"/profiles/*.profraw >/dev/null 2>&1 || die "no profile written (see $PGO_DIR/train.log)"
"$PROFDATA" merge -o "$PGO_DIR/merged.profdata" "$PGO_DIR"/profiles/*.profraw

log "building the profile-guided binary"
if [[ ${BOLT:-0} == 1 ]]; then
  # BOLT rewrites a linked binary; it needs the linker's relocations kept in it.
  USE=$(build use-relocs "-Cprofile-use=$PGO_DIR/merged.profdata -Clink-arg=-Wl,--emit-relocs")
  BOLT_BIN=$(llvm_tool llvm-bolt "bolt-$LLVM_MAJOR")
  MERGE_FDATA=$(llvm_tool merge-fdata "bolt-$LLVM_MAJOR")
  rm -rf "$PGO_DIR/bolt" && mkdir -p "$PGO_DIR/bolt/fdata"
  log "instrumenting it with llvm-bolt"
  # One profile per process (load.sh starts several gateways), written at exit.
  "$BOLT_BIN" "$USE" -o "$PGO_DIR/bolt/portcullis.instrumented" -instrument \
    -instrumentation-file="$PGO_DIR/bolt/fdata/prof" -instrumentation-file-append-pid \
    >"$PGO_DIR/bolt/instrument.log" 2>&1 || die "llvm-bolt -instrument failed (see $PGO_DIR/bolt/instrument.log)"
  log "training the instrumented binary"
  train "$PGO_DIR/bolt/portcullis.instrumented" "$PGO_DIR/bolt/train.log"
  ls "$PGO_DIR"/bolt/fdata/prof.* >/dev/null 2>&1 || die "no BOLT profile written (see $PGO_DIR/bolt/train.log)"
  "$MERGE_FDATA" "$PGO_DIR"/bolt/fdata/prof.* >"$PGO_DIR/bolt/merged.fdata" 2>"$PGO_DIR/bolt/merge.log"
  log "rewriting the binary's layout from the profile"
  "$BOLT_BIN" "$USE" -o "$PGO_DIR/bolt/portcullis" -data="$PGO_DIR/bolt/merged.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
    -split-eh -icf=1 -use-gnu-stack -dyno-stats \
    >"$PGO_DIR/bolt/optimize.log" 2>&1 || die "llvm-bolt failed (see $PGO_DIR/bolt/optimize.log)"
  USE=$PGO_DIR/bolt/portcullis
else
  USE=$(build use "-Cprofile-use=$PGO_DIR/merged.profdata")
fi
if [[ -n ${OUT:-} ]]; then cp "$USE" "$OUT" && log "copied to $OUT"; fi
echo "$USE"
