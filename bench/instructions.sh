#!/usr/bin/env bash
# User-space instructions per request of shoal-proxy, counted by valgrind's callgrind.
#
# Wall-clock CPU figures (bench/run.py) need a quiet machine; instruction counts do not: they are
# the same within ~0.3 % from run to run whatever else the machine is doing, so two builds can be
# compared (A/B) while other work runs. They leave out the kernel (≈60 % of an HTTP/1.1 request's
# CPU, the same syscalls for every build) and cache effects, so a change that moves memory around
# rather than instructions still needs run.py on a quiet machine.
#
# usage: bench/instructions.sh [--scenario h1|h2c] [--path inbound|outbound] [--route|--policies|--mirror]
#                              [--lb ALGORITHM] [--grpc] [--requests N] [--keep DIR] BINARY [BINARY...]
#   Each binary runs in front of bench-backend under callgrind: `inbound` (default) is explicit
#   inbound, as in run.py; `outbound` is the explicit outbound listener with a state file naming
#   two backends as the endpoints of service `bench` (requests carry `Host: bench`): route lookup
#   and balancer. --policies (outbound) adds the resilience stack to that service: a route rule with
#   a retry policy (budget), and a backend policy with a cap on requests in flight and a circuit
#   breaker — every stage does its per-request work, none fires. --route adds the same route rule
#   without the policies (the baseline --policies is compared with). --lb ALGORITHM (outbound, not
#   with --policies) gives the service a backend policy with that load-balancing algorithm;
#   `ring_hash` hashes the header `x-user`, which every request carries (one key: the same endpoint
#   every time; the lookup costs the same for any key). --mirror adds that route rule
#   and a Mirror copying every request to a shadow service (a third backend) and comparing the
#   answers: the instructions of the copy, its task and the comparison are in the figure.
#   --grpc (h2c): requests carry `content-type: application/grpc`, so the proxy handles them as gRPC
#   calls (its answers as gRPC statuses, the response counted when it ends: http::grpc_outcome);
#   bench-backend's answers carry no grpc-status, so they count as 500 — the same work as an OK.
#   after 1,000 warm-up requests the counters are zeroed, N requests (default 10,000) run with
#   h2load (h1: --h1 -c10; h2c: -c10 -m10), and the total is divided by N.
#   Extra proxy settings: SHOAL_* variables in the environment are passed on.
#   --keep DIR keeps each callgrind file (DIR/<n>.callgrind) for callgrind_annotate.
set -euo pipefail

scenario=h1
policies=""
lb=""
path=inbound
requests=10000
keep=""
grpc=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --scenario) scenario=$2; shift 2 ;;
        --requests) requests=$2; shift 2 ;;
        --path) path=$2; shift 2 ;;
        --keep) keep=$2; shift 2 ;;
        --policies) policies=all; shift ;;
        --route) policies=route; shift ;;
        --lb) lb=$2; shift 2 ;;
        --mirror) policies=mirror; shift ;;
        --grpc) grpc=1; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        --*) echo "instructions.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[[ $# -ge 1 ]] || { echo "instructions.sh: give at least one shoal-proxy binary" >&2; exit 2; }
case "$scenario" in
    h1) load=(h2load --h1 -c10 -m1) ;;
    h2c) load=(h2load -c10 -m10) ;;
    *) echo "instructions.sh: --scenario must be h1 or h2c, not '$scenario'" >&2; exit 2 ;;
esac
for tool in valgrind callgrind_control h2load curl; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is not installed (apt-get install valgrind nghttp2-client curl)" >&2; exit 2; }
done
repo=$(cd "$(dirname "$0")/.." && pwd)
host=()
[[ $path == outbound ]] && host=(-H ":authority: bench")
if [[ -n $lb ]]; then
    [[ $path == outbound && $policies != all ]] || { echo "instructions.sh: --lb needs --path outbound and no --policies" >&2; exit 2; }
    host+=(-H "x-user: alice")
fi
if [[ -n $grpc ]]; then
    [[ $scenario == h2c ]] || { echo "instructions.sh: --grpc needs --scenario h2c (gRPC is HTTP/2)" >&2; exit 2; }
    host+=(-H "content-type: application/grpc" -H "te: trailers")
fi
backend_bin=${CARGO_TARGET_DIR:-$repo/target}/release/bench-backend
[[ -x $backend_bin ]] || { echo "instructions.sh: build it first: cargo build --release -p shoal-bench" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

n=0
for bin in "$@"; do
    n=$((n + 1))
    [[ -x $bin ]] || { echo "instructions.sh: $bin is not an executable" >&2; exit 2; }
    bport=$(free_port); pport=$(free_port); aport=$(free_port)
    "$backend_bin" "127.0.0.1:$bport" 2>/dev/null &
    bpid=$!; pids+=("$bpid")
    case "$path" in
        inbound) listener=(SHOAL_INBOUND_MODE=explicit SHOAL_INBOUND_ADDR="127.0.0.1:$pport"
                           SHOAL_INBOUND_APP_ADDR="127.0.0.1:$bport" SHOAL_OUTBOUND_MODE=off) ;;
        outbound)
            # Two endpoints (a second backend), so every pick compares two costs as in production.
            bport2=$(free_port)
            "$backend_bin" "127.0.0.1:$bport2" 2>/dev/null &
            pids+=("$!")
            printf 'services:\n  - name: bench\n    port: 80\n    endpoints:\n      - address: "127.0.0.1:%s"\n      - address: "127.0.0.1:%s"\n' \
                "$bport" "$bport2" >"$work/state.$n.yaml"
            if [[ $policies == mirror ]]; then
                bport3=$(free_port)
                "$backend_bin" "127.0.0.1:$bport3" 2>/dev/null &
                pids+=("$!")
                printf '  - name: bench-shadow\n    port: 80\n    endpoints:\n      - address: "127.0.0.1:%s"\n' \
                    "$bport3" >>"$work/state.$n.yaml"
                printf 'mirrors:\n  - {service: bench, mirror: bench-shadow, percent: 100, compare_headers: [content-type]}\n' \
                    >>"$work/state.$n.yaml"
            fi
            if [[ -n $policies ]]; then
                printf 'routes:\n  - name: bench\n    service: bench\n    rules:\n      - backends: [{service: bench}]\n' >>"$work/state.$n.yaml"
            fi
            if [[ $policies == all ]]; then
                printf '        retry: {attempts: 2}\nbackend_policies:\n  - service: bench\n    limits: {max_concurrent_requests: 10000}\n    circuit_breaker: {failure_ratio_threshold: 0.5}\n' \
                    >>"$work/state.$n.yaml"
            fi
            if [[ $lb == ring_hash ]]; then
                printf 'backend_policies:\n  - service: bench\n    load_balancer: {algorithm: ring_hash, hash_key: {header: x-user}}\n' >>"$work/state.$n.yaml"
            elif [[ -n $lb ]]; then
                printf 'backend_policies:\n  - service: bench\n    load_balancer: {algorithm: %s}\n' "$lb" >>"$work/state.$n.yaml"
            fi
            listener=(SHOAL_OUTBOUND_MODE=explicit SHOAL_OUTBOUND_ADDR="127.0.0.1:$pport"
                      SHOAL_INBOUND_MODE=off SHOAL_STATE_FILE="$work/state.$n.yaml") ;;
        *) echo "instructions.sh: --path must be inbound or outbound, not '$path'" >&2; exit 2 ;;
    esac
    env "${listener[@]}" SHOAL_ADMIN_ADDR="127.0.0.1:$aport" \
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.$n" "$bin" >"$work/log.$n" 2>&1 &
    vpid=$!; pids+=("$vpid")
    ready=""
    for _ in $(seq 150); do
        if curl -sf -o /dev/null "http://127.0.0.1:$aport/ready"; then ready=1; break; fi
        sleep 0.2
    done
    [[ -n $ready ]] || { echo "instructions.sh: $bin did not become ready; its log:" >&2; tail -20 "$work/log.$n" >&2; exit 1; }
    "${load[@]}" "${host[@]}" -n 1000 "http://127.0.0.1:$pport/" >/dev/null
    callgrind_control -z "$vpid" >/dev/null 2>&1
    out=$("${load[@]}" "${host[@]}" -n "$requests" "http://127.0.0.1:$pport/")
    grep -q "$requests succeeded" <<<"$out" || { echo "instructions.sh: not every request succeeded:" >&2; grep requests: <<<"$out" >&2; exit 1; }
    callgrind_control -d "$vpid" >/dev/null 2>&1
    kill "$vpid" "$bpid"; wait "$vpid" 2>/dev/null || true
    dump=$(ls -t "$work"/cg."$n".* | head -1)
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    printf '%s\t%s\t%s\t%d instructions/request\n' "$scenario" "$path" "$bin" $((total / requests))
    if [[ -n $keep ]]; then mkdir -p "$keep"; cp "$dump" "$keep/$n.callgrind"; fi
done
