#!/usr/bin/env bash
# A local demo of shoal-proxy on loopback, no root, no Kubernetes: two versions of a "web"
# service behind one sidecar with a canary route, running until Ctrl-C.
# (The control-plane issue replaces this with `shoal up`, a whole mesh in one command.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p shoal-proxy --bin shoal-proxy
dir=$(mktemp -d /tmp/shoal-demo.XXXXXX)
pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
  echo "demo stopped"
}
trap cleanup INT TERM EXIT

serve() { # a tiny HTTP app answering "hello from <name>"
  python3 -c '
import http.server, sys
name = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("hello from %s (trace %s)\n" % (name, self.headers.get("traceparent", "-"))).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
' "$1" "$2" &
  pids+=($!)
}
serve 19081 web-v1
serve 19082 web-v2

cat > "$dir/state.yaml" <<'YAML'
services:
  - name: web
    port: 80
    endpoints: [{ address: 127.0.0.1:19081 }]
  - name: web-v2
    port: 80
    endpoints: [{ address: 127.0.0.1:19082 }]
routes:
  - name: web-canary
    service: web
    rules:
      - matches: [{ headers: { x-canary: "1" } }]
        backends: [{ service: web-v2 }]
      - backends: [{ service: web, weight: 90 }, { service: web-v2, weight: 10 }]
YAML

SHOAL_OUTBOUND_MODE=explicit SHOAL_OUTBOUND_ADDR=127.0.0.1:15001 \
SHOAL_INBOUND_MODE=explicit SHOAL_INBOUND_ADDR=127.0.0.1:15006 SHOAL_INBOUND_APP_ADDR=127.0.0.1:19081 \
SHOAL_ADMIN_ADDR=127.0.0.1:15021 SHOAL_SERVICE_NAME=web SHOAL_STATE_FILE="$dir/state.yaml" \
SHOAL_ACCESS_LOG=true SHOAL_LOG=warn,access=info \
  target/debug/shoal-proxy &
pids+=($!)

for _ in $(seq 100); do
  curl -sf http://127.0.0.1:15021/ready >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf http://127.0.0.1:15021/ready >/dev/null || { echo "the proxy did not become ready"; exit 1; }

cat <<MSG

shoal-proxy is running (explicit mode, no iptables):
  outbound (the app's calls)   127.0.0.1:15001   curl -H 'Host: web' http://127.0.0.1:15001/
  canary by header             curl -H 'Host: web' -H 'x-canary: 1' http://127.0.0.1:15001/
  inbound (calls to web-v1)    curl http://127.0.0.1:15006/
  metrics                      curl http://127.0.0.1:15021/metrics
  running config and state     curl http://127.0.0.1:15021/config
  routes and endpoints         $dir/state.yaml  (edit it: the proxy reloads within a second)

Ctrl-C stops everything.
MSG
wait "${pids[-1]}"
