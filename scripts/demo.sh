#!/usr/bin/env bash
# A whole Shoal mesh on loopback, no root, no Kubernetes: the control plane, demo services (HTTP and gRPC)
# each behind its own shoal-proxy sidecar, running until Ctrl-C. Arguments go to `shoal up`
# (--base-port, --data-dir, ...); docs/shoal-up.md says what starts and what to try.
set -euo pipefail
cd "$(dirname "$0")/.."
# Not quiet: the first build compiles every dependency (a few minutes on a small machine), and cargo's
# progress shows it is working; later builds take seconds.
echo "demo.sh: building shoal-proxy, shoal-control-plane, shoalctl and shoal (the first build takes a few minutes)" >&2
cargo build -p shoal-proxy -p shoal-control-plane --bins
# exec: Ctrl-C and SIGTERM reach `shoal up` directly, which stops everything it started.
exec "${CARGO_TARGET_DIR:-target}/debug/shoal" up "$@"
