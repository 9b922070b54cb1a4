#!/usr/bin/env bash
# The release build of shoal-proxy: profile-guided (PGO) and then laid out by BOLT from a second
# profile. This is the binary to ship and the one BENCHMARKS.md measures; `cargo build --release`
# stays the plain build (no training, no LLVM tools). docs/release-build.md says why and what it costs.
#
# usage: scripts/build-release.sh [--no-verify] [--keep-profiles]
#   --no-verify      skip step 5 (the integration tests against the built binary)
#   --keep-profiles  keep the raw profiles (target/pgo-gen/profiles, target/dist/bolt-profiles)
#
#   1. instrumented build (-Cprofile-generate) into target/pgo-gen;
#   2. training: that binary carries the benchmarks' traffic for a few seconds per scenario —
#      bench/run.py --quick (HTTP/1.1 and h2c, closed loop and 1,000 req/s) and bench/mtls.py
#      --quick (the two-sidecar mTLS path, new handshakes, idle connections); a scenario that
#      fails stops the build;
#   3. llvm-profdata merges the counts; the optimised build (-Cprofile-use, linked with
#      --emit-relocs so BOLT may move functions) goes to target/pgo/release/shoal-proxy;
#   4. BOLT: llvm-bolt instruments that binary, the same training runs again, and llvm-bolt
#      reorders its blocks and functions by the new profile → target/dist/shoal-proxy;
#   5. the integration tests run against target/dist/shoal-proxy (SHOAL_PROXY_BIN).
# Needs: python3, wrk, h2load (nghttp2-client), openssl, cargo-nextest (step 5), llvm-profdata of
# the same LLVM major version as rustc, and llvm-bolt + merge-fdata (Debian: llvm-<major> and
# bolt-<major>; or LLVM_PROFDATA / LLVM_BOLT / MERGE_FDATA=path).
# Separate target dirs keep target/release (and its incremental state) untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
verify=1 keep=0
for arg in "$@"; do
    case "$arg" in
        --no-verify) verify=0 ;;
        --keep-profiles) keep=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "build-release.sh: unknown argument '$arg' (expected --no-verify, --keep-profiles)" >&2; exit 2 ;;
    esac
done

target=${CARGO_TARGET_DIR:-$repo/target}
gen_dir=$target/pgo-gen
use_dir=$target/pgo
dist=$target/dist
raw_dir=$gen_dir/profiles
bolt_dir=$dist/bolt-profiles
profdata=$use_dir/shoal-proxy.profdata

die() { echo "build-release.sh: $*" >&2; exit 1; }

# The first of the candidates that runs and whose --version output matches the pattern.
find_tool() {
    local pattern=$1 c
    shift
    for c in "$@"; do
        [[ -n "$c" ]] || continue
        c=$(command -v "$c" 2>/dev/null) || continue
        if "$c" --version 2>/dev/null | grep -Eq "$pattern"; then
            echo "$c"
            return 0
        fi
    done
    return 1
}
# llvm-profdata must read the raw profile format of rustc's own LLVM: same major version.
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[[ -n "$llvm" ]] || die "cannot tell rustc's LLVM version from 'rustc -vV'"
sysroot_bin=$(echo "$(rustc --print sysroot)"/lib/rustlib/*/bin)
profdata_tool=$(find_tool "LLVM version $llvm\." "${LLVM_PROFDATA:-}" "$sysroot_bin/llvm-profdata" \
    "llvm-profdata-$llvm" "/usr/lib/llvm-$llvm/bin/llvm-profdata" llvm-profdata) \
    || die "no llvm-profdata of LLVM $llvm (rustc's) found: apt-get install llvm-$llvm, or rustup component add llvm-tools, or set LLVM_PROFDATA"
# BOLT works on the linked binary: any recent version will do.
bolt_tool=$(find_tool "BOLT|LLVM" "${LLVM_BOLT:-}" "llvm-bolt-$llvm" "/usr/lib/llvm-$llvm/bin/llvm-bolt" llvm-bolt) \
    || die "no llvm-bolt found: apt-get install bolt-$llvm, or set LLVM_BOLT"
merge_fdata=${MERGE_FDATA:-$(dirname "$bolt_tool")/merge-fdata}
[[ -x "$merge_fdata" ]] || merge_fdata=$(command -v "merge-fdata-$llvm" || command -v merge-fdata) \
    || die "no merge-fdata next to $bolt_tool: apt-get install bolt-$llvm, or set MERGE_FDATA"
for tool in python3 wrk h2load openssl; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install python3 wrk nghttp2-client openssl)"
done
if ((verify)); then
    cargo nextest --version >/dev/null 2>&1 || die "cargo-nextest is needed for the verification (cargo install cargo-nextest --locked), or pass --no-verify"
fi

# train BINARY DIR: the benchmark scripts' quick runs through BINARY, logs and results in DIR.
train() {
    local bin=$1 out=$2 f
    mkdir -p "$out"
    python3 bench/run.py --quick --targets direct,shoal --scenarios h1,h2c,h1-rate,h2c-rate \
        --shoal-bin "$bin" --json "$out/run.json" >"$out/run.log" 2>&1 \
        || die "training with bench/run.py failed: see $out/run.log"
    python3 bench/mtls.py --quick --targets direct,shoal \
        --shoal-bin "$bin" --json "$out/mtls.json" >"$out/mtls.log" 2>&1 \
        || die "training with bench/mtls.py failed: see $out/mtls.log"
    # The benchmark scripts record a failed measurement as "skipped" and carry on; training must not:
    # a scenario missing from the profile would make its code look cold.
    for f in run mtls; do
        if grep -q '"skipped"' "$out/$f.json"; then
            die "a training scenario did not run (\"skipped\" in $out/$f.json): see $out/$f.log"
        fi
    done
}

echo "== 1/5 instrumented build ($gen_dir)"
RUSTFLAGS="-Cprofile-generate=$raw_dir" cargo build --release -p shoal-proxy --target-dir "$gen_dir"
# The load generators' backend is not part of the profile: plain build, usual target dir.
cargo build --release -p shoal-bench
# Build scripts compiled in step 1 were instrumented too and may have run: drop their counts.
rm -rf "$raw_dir"

echo "== 2/5 training (PGO)"
train "$gen_dir/release/shoal-proxy" "$gen_dir/training"
compgen -G "$raw_dir/*.profraw" >/dev/null || die "training wrote no profile to $raw_dir"

echo "== 3/5 optimised build ($use_dir)"
mkdir -p "$use_dir"
"$profdata_tool" merge -o "$profdata" "$raw_dir"
RUSTFLAGS="-Cprofile-use=$profdata -Clink-arg=-Wl,--emit-relocs" \
    cargo build --release -p shoal-proxy --target-dir "$use_dir"

echo "== 4/5 BOLT ($dist)"
mkdir -p "$dist"
rm -rf "$bolt_dir"
mkdir -p "$bolt_dir"
"$bolt_tool" "$use_dir/release/shoal-proxy" -o "$dist/shoal-proxy.instrumented" -instrument \
    --instrumentation-file="$bolt_dir/shoal-proxy.fdata" --instrumentation-file-append-pid \
    >"$dist/bolt-instrument.log" 2>&1 || die "llvm-bolt -instrument failed: see $dist/bolt-instrument.log"
train "$dist/shoal-proxy.instrumented" "$dist/training"
compgen -G "$bolt_dir/*.fdata" >/dev/null || die "training wrote no BOLT profile to $bolt_dir"
"$merge_fdata" "$bolt_dir"/*.fdata -o "$dist/shoal-proxy.fdata" 2>/dev/null
# Blocks in the order they run, hot functions together (cache-directed sort), cold parts of hot
# functions split away, identical functions folded. Debug sections are dropped (BOLT cannot rewrite
# Rust's DWARF); symbols stay, so backtraces and profiles still name functions.
"$bolt_tool" "$use_dir/release/shoal-proxy" -o "$dist/shoal-proxy" -data="$dist/shoal-proxy.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold -split-eh \
    -icf=1 -use-gnu-stack -dyno-stats >"$dist/bolt-optimize.log" 2>&1 \
    || die "llvm-bolt failed: see $dist/bolt-optimize.log"
rm -f "$dist/shoal-proxy.instrumented"
((keep)) || rm -rf "$raw_dir" "$bolt_dir"

if ((verify)); then
    echo "== 5/5 integration tests against $dist/shoal-proxy"
    cargo build --workspace --bins
    SHOAL_PROXY_BIN=$dist/shoal-proxy cargo nextest run -p shoal-tests --no-fail-fast
else
    echo "== 5/5 skipped (--no-verify)"
fi
echo "release binary: $dist/shoal-proxy"
