#!/usr/bin/env bash
# Checks charts/shoal offline (no cluster): the CRDs match scripts/gen-crds.py and accept docs/shoalctl.md's
# examples; `helm lint` and `helm template` for each values variant; every rendered manifest validated with
# `kubernetes-validate --strict` for every Kubernetes version from 1.28 (the oldest the chart supports) to the
# newest kubernetes-validate ships; the dashboard's PromQL parsed by promtool; the combinations the chart refuses
# are refused; the walkthrough's manifests validated too. Exit 1 on any failure, including a missing tool. `.ci/run` installs the tools and runs this.
#
#   scripts/check-chart.sh            # HELM=/path/to/helm to use another helm binary
set -euo pipefail
cd "$(dirname "$0")/.."
chart=charts/shoal
HELM=${HELM:-helm}
OLDEST=1.28.0

fail() { echo "FAIL: $*" >&2; exit 1; }

for tool in "$HELM" kubernetes-validate python3 promtool; do
  command -v "$tool" >/dev/null || fail "$tool not found: run .ci/run as root once (it installs helm, kubernetes-validate and promtool), or see charts/shoal/README.md"
done
python3 -c 'import jsonschema, yaml' 2>/dev/null || fail "python3 lacks jsonschema/yaml (installed with kubernetes-validate)"
# Every Kubernetes version from $OLDEST whose schemas this kubernetes-validate ships, oldest first.
mapfile -t VERSIONS < <(python3 - "$OLDEST" <<'EOF'
import os, re, sys, kubernetes_validate
d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
key = lambda v: tuple(map(int, v.split(".")))
versions = {m.group(1) for m in (re.match(r"v(\d+\.\d+\.\d+)-local-strict$", n) for n in os.listdir(d)) if m}
print("\n".join(sorted((v for v in versions if key(v) >= key(sys.argv[1])), key=key)))
EOF
)
((${#VERSIONS[@]})) && [ "${VERSIONS[0]}" = "$OLDEST" ] || fail "kubernetes-validate ships no schemas for Kubernetes $OLDEST"
NEWEST=${VERSIONS[-1]}
echo "helm $("$HELM" version --template '{{.Version}}'), kubernetes-validate $(kubernetes-validate --version | awk '{print $NF}'), schemas ${VERSIONS[*]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "-- CRDs are what scripts/gen-crds.py writes"
python3 scripts/gen-crds.py "$work/crds"
diff -ru "$chart/crds" "$work/crds" || fail "charts/shoal/crds differ from scripts/gen-crds.py's output: run scripts/gen-crds.py and commit"

echo "-- CRD schemas against docs/shoalctl.md's examples and the walkthrough's Route"
python3 scripts/check-crd-examples.py "$chart/crds" docs/shoalctl.md docs/examples/walkthrough/route.yaml >"$work/examples.log" ||
  { cat "$work/examples.log"; fail "CRD schema check"; }
grep -c '^ok' "$work/examples.log" | sed 's/$/ checks passed/'

# name|helm arguments
variants=(
  "default|"
  "ha|-f $chart/values-ha.yaml"
  "ha-own-root|-f $chart/values-ha.yaml --set ca.existingSecret=shoal-ca"
  "webhook-helm-certs|--set injector.enabled=true"
  "webhook-cert-manager|--set injector.enabled=true --set injector.certificate.source=cert-manager"
  "webhook-cert-manager-issuer|--set injector.enabled=true --set injector.certificate.source=cert-manager --set injector.certificate.certManager.issuerRef.name=ca --set injector.certificate.certManager.issuerRef.kind=ClusterIssuer"
  "extras|--set controlPlane.admin.expose=true --set metrics.serviceMonitor.enabled=true --set controlPlane.endpoints.dns[0].service=payments.external --set controlPlane.endpoints.dns[0].host=api.example.com --set controlPlane.endpoints.dns[0].port=443 --set ca.existingSecret=my-ca"
)
# Kinds of other projects' CRDs, which kubernetes-validate has no schema for (it warns and passes them).
third_party='ServiceMonitor|Certificate|Issuer'

for entry in "${variants[@]}"; do
  name=${entry%%|*}
  # shellcheck disable=SC2206 # the arguments are word-split on purpose
  args=(${entry#*|})
  echo "-- $name: helm lint, helm template, kubernetes-validate --strict $OLDEST to $NEWEST"
  "$HELM" lint --strict "$chart" "${args[@]}" >"$work/lint.log" || { cat "$work/lint.log"; fail "helm lint ($name)"; }
  out="$work/$name"
  mkdir -p "$out"
  "$HELM" template shoal "$chart" --namespace shoal-system --include-crds --kube-version "$OLDEST" \
    --output-dir "$out" "${args[@]}" >/dev/null || fail "helm template ($name)"
  mapfile -t files < <(find "$out" -name '*.yaml' | sort)
  ((${#files[@]})) || fail "helm template ($name) rendered nothing"
  for version in "${VERSIONS[@]}"; do
    if ! kubernetes-validate --strict --quiet -k "$version" "${files[@]}" >"$work/validate.log" 2>&1; then
      cat "$work/validate.log"
      fail "kubernetes-validate ($name, Kubernetes $version)"
    fi
    # A warning is a manifest that was not validated: only other projects' kinds may be.
    if grep -v -E "Couldn't find schema for kind ($third_party) " "$work/validate.log" | grep -q .; then
      cat "$work/validate.log"
      fail "kubernetes-validate ($name, Kubernetes $version): unexpected output"
    fi
  done
  echo "   ${#files[@]} files valid"
done

echo "-- every SHOAL_ setting the chart renders is one the binaries read"
# The control plane stops on an unknown SHOAL_CP_ variable; a proxy setting that is not documented would be a
# knob that does nothing. Names from every variant's rendering.
mapfile -t settings < <(grep -rhoE '\bSHOAL_[A-Z0-9_]+' "$work"/*/ | sort -u)
((${#settings[@]})) || fail "no SHOAL_ setting rendered"
for setting in "${settings[@]}"; do
  case $setting in
    SHOAL_CP_* | SHOAL_LOG | SHOAL_LOG_FORMAT)
      grep -q "\"$setting\"" control-plane/src/server/config.rs || fail "$setting is not a control-plane setting (control-plane/src/server/config.rs)" ;;
    SHOAL_INIT_*)
      grep -q "\`$setting\`" docs/init.md || fail "$setting is not a shoal-proxy init setting (docs/init.md)" ;;
    *)
      grep -q "\`$setting\`" docs/configuration.md || fail "$setting is not a shoal-proxy setting (docs/configuration.md)" ;;
  esac
done
echo "   ${#settings[@]} settings known: ${settings[*]}"

echo "-- docs/kubernetes-walkthrough.md's manifests (docs/examples/walkthrough; route.yaml is shoalctl's, tested in tests/tests/walkthrough_examples.rs)"
walkthrough=(docs/examples/walkthrough/{namespace,web,client}.yaml)
for version in "${VERSIONS[@]}"; do
  kubernetes-validate --strict --quiet -k "$version" "${walkthrough[@]}" >"$work/validate.log" 2>&1 && ! grep -q . "$work/validate.log" ||
    { cat "$work/validate.log"; fail "kubernetes-validate (walkthrough, Kubernetes $version)"; }
done
echo "   ${#walkthrough[@]} files valid"

echo "-- combinations the chart refuses"
refuse() {
  local why=$1
  shift
  if "$HELM" template shoal "$chart" "$@" >/dev/null 2>"$work/refused.log"; then
    fail "helm template $* rendered; it must refuse ($why)"
  fi
  grep -q "$why" "$work/refused.log" || { cat "$work/refused.log"; fail "helm template $* failed without saying '$why'"; }
  echo "   refused: $*"
}
refuse "needs controlPlane.persistence.enabled=false" --set controlPlane.replicas=3
refuse "needs controlPlane.kubernetesDiscovery=true (the replicas then share one CA" --set controlPlane.replicas=3 --set controlPlane.persistence.enabled=false --set controlPlane.kubernetesDiscovery=false
refuse "expected Fail or Ignore" --set injector.failurePolicy=Maybe
refuse "expected helm or cert-manager" --set injector.certificate.source=vault
refuse "needs controlPlane.kubernetesDiscovery=true" --set injector.enabled=true --set controlPlane.kubernetesDiscovery=false

echo "-- the Grafana dashboard's queries parse (promtool)"
python3 - "$chart/dashboards/shoal-golden.json" >"$work/rules.yaml" <<'EOF'
import json, sys
# Grafana's variables replaced by values Prometheus accepts, each query as a recording rule promtool parses.
dash = json.load(open(sys.argv[1]))
rules = []
for panel in dash["panels"]:
    for target in panel["targets"]:
        expr = target["expr"].replace("$__rate_interval", "1m").replace("$service", ".*").replace("$called", ".*")
        rules.append({"record": f"shoal:dashboard_panel_{panel['id']}{target['refId'].lower()}", "expr": expr})
print(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
EOF
promtool check rules "$work/rules.yaml" >/dev/null || { promtool check rules "$work/rules.yaml"; fail "dashboard PromQL"; }
echo "   $(grep -o '"record"' "$work/rules.yaml" | wc -l) queries parse"

echo "chart checks passed"
