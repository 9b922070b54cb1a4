#!/usr/bin/env bash
# The release build of shoal-proxy: profile-guided (PGO). This is the binary to ship and the one
# BENCHMARKS.md measures; `cargo build --release` stays the plain build (no training, no LLVM tools).
#
# usage: scripts/build-release.sh [--keep-profiles]
#
# Three steps (docs/release-build.md says why and what it costs):
#   1. an instrumented build (-Cprofile-generate) into target/pgo-gen;
#   2. training: that binary carries the benchmarks' traffic for a few seconds each —
#      bench/run.py --quick (HTTP/1.1 and h2c, closed loop and 1,000 req/s) and bench/mtls.py
#      --quick (the two-sidecar mTLS path, new handshakes, idle connections) — and writes its
#      execution counts; a scenario that fails stops the build;
#   3. llvm-profdata merges the counts, and the optimised build (-Cprofile-use) goes to
#      target/pgo/release/shoal-proxy.
# Needs: python3, wrk, h2load (nghttp2-client), openssl, and llvm-profdata of the same LLVM major
# version as rustc (Debian: llvm-<major>; or `rustup component add llvm-tools`; or LLVM_PROFDATA=path).
# Separate target dirs keep target/release (and its incremental state) untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
keep=0
case "${1:-}" in
    --keep-profiles) keep=1 ;;
    "") ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build-release.sh: unknown argument '$1' (expected --keep-profiles)" >&2; exit 2 ;;
esac

target=${CARGO_TARGET_DIR:-$repo/target}
gen_dir=$target/pgo-gen
use_dir=$target/pgo
raw_dir=$gen_dir/profiles
profdata=$use_dir/shoal-proxy.profdata

die() { echo "build-release.sh: $*" >&2; exit 1; }

# llvm-profdata must read the raw profile format of rustc's own LLVM: same major version.
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[[ -n "$llvm_major" ]] || die "cannot tell rustc's LLVM version from 'rustc -vV'"
find_profdata() {
    local c
    for c in "${LLVM_PROFDATA:-}" \
             "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata \
             "llvm-profdata-$llvm_major" "/usr/lib/llvm-$llvm_major/bin/llvm-profdata" llvm-profdata; do
        [[ -n "$c" ]] || continue
        c=$(command -v "$c" 2>/dev/null) || continue
        if "$c" --version 2>/dev/null | grep -Eq "LLVM version $llvm_major\."; then
            echo "$c"
            return 0
        fi
    done
    return 1
}
profdata_tool=$(find_profdata) || die "no llvm-profdata for LLVM $llvm_major (rustc's) found: \
apt-get install llvm-$llvm_major, or rustup component add llvm-tools, or set LLVM_PROFDATA"
for tool in python3 wrk h2load openssl; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install python3 wrk nghttp2-client openssl)"
done

echo "== 1/3 instrumented build ($gen_dir)"
rm -rf "$raw_dir"
RUSTFLAGS="-Cprofile-generate=$raw_dir" cargo build --release -p shoal-proxy --target-dir "$gen_dir"
# The load generators' backend is not part of the profile: plain build, usual target dir.
cargo build --release -p shoal-bench
# Build scripts compiled in step 1 were instrumented too and ran: drop their counts.
rm -rf "$raw_dir"

echo "== 2/3 training"
train=$gen_dir/training
mkdir -p "$train"
instrumented=$gen_dir/release/shoal-proxy
python3 bench/run.py --quick --targets direct,shoal --scenarios h1,h2c,h1-rate,h2c-rate \
    --shoal-bin "$instrumented" --json "$train/run.json" >"$train/run.log" 2>&1 \
    || die "training with bench/run.py failed: see $train/run.log"
python3 bench/mtls.py --quick --targets direct,shoal \
    --shoal-bin "$instrumented" --json "$train/mtls.json" >"$train/mtls.log" 2>&1 \
    || die "training with bench/mtls.py failed: see $train/mtls.log"
# The benchmark scripts record a failed measurement as "skipped" and carry on; training must not.
for f in run mtls; do
    if grep -q '"skipped"' "$train/$f.json"; then
        die "a training scenario did not run (\"skipped\" in $train/$f.json): see $train/$f.log"
    fi
done
compgen -G "$raw_dir/*.profraw" >/dev/null || die "training wrote no profile to $raw_dir"

echo "== 3/3 optimised build ($use_dir)"
mkdir -p "$use_dir"
"$profdata_tool" merge -o "$profdata" "$raw_dir"
RUSTFLAGS="-Cprofile-use=$profdata" cargo build --release -p shoal-proxy --target-dir "$use_dir"
((keep)) || rm -rf "$raw_dir"
echo "release binary: $use_dir/release/shoal-proxy (profile: $profdata)"
