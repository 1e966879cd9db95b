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
# Build directories: $PGO_DIR (default /work/target-pgo): gen/, use/, profiles/.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
PGO_DIR=${PGO_DIR:-/work/target-pgo}
TRAIN_SECONDS=${TRAIN_SECONDS:-5}
TARGET=$(rustc -vV | awk '/^host:/ {print $2}')
LLVM_MAJOR=$(rustc -vV | awk '/^LLVM version:/ {split($3, v, "."); print v[1]}')

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PROFDATA=""
for c in "llvm-profdata-$LLVM_MAJOR" "/usr/lib/llvm-$LLVM_MAJOR/bin/llvm-profdata"; do
  if command -v "$c" >/dev/null 2>&1; then PROFDATA=$(command -v "$c"); break; fi
done
if [[ -z $PROFDATA ]]; then
  [[ $(id -u) == 0 ]] || die "needs llvm-profdata for LLVM $LLVM_MAJOR (apt-get install llvm-$LLVM_MAJOR)"
  log "installing llvm-$LLVM_MAJOR (llvm-profdata matching rustc's LLVM $LLVM_MAJOR)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "llvm-$LLVM_MAJOR" >/dev/null \
    || die "apt-get install llvm-$LLVM_MAJOR failed"
  PROFDATA=$(command -v "llvm-profdata-$LLVM_MAJOR") || die "no llvm-profdata-$LLVM_MAJOR after install"
fi

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

log "training: benches/load.sh, pc-file and pc-redis-audit, ${TRAIN_SECONDS}s per body"
BIN=$GEN ROUNDS=1 WARMUP=1 DURATION=$TRAIN_SECONDS BODIES="small big" \
  VARIANTS="pc-file pc-redis-audit" PHASES=peak "$HERE/benches/load.sh" >"$PGO_DIR/train.log" 2>&1 \
  || die "training run failed (see $PGO_DIR/train.log)"
ls "$PGO_DIR"/profiles/*.profraw >/dev/null 2>&1 || die "no profile written (see $PGO_DIR/train.log)"
"$PROFDATA" merge -o "$PGO_DIR/merged.profdata" "$PGO_DIR"/profiles/*.profraw

log "building the profile-guided binary"
USE=$(build use "-Cprofile-use=$PGO_DIR/merged.profdata")
if [[ -n ${OUT:-} ]]; then cp "$USE" "$OUT" && log "copied to $OUT"; fi
echo "$USE"
