#!/usr/bin/env python3
"""Checks the CRDs' schemas against documents: every example of docs/shoalctl.md ("The YAML format"), as a
custom resource, must pass its kind's schema, and each known-invalid variant below must fail it, as the
control plane refuses it; and every shoal.io document of the MANIFEST files (Kubernetes manifests, e.g.
docs/examples/walkthrough/route.yaml) must pass its kind's schema. Runs the OpenAPI schemas with jsonschema
(which ignores the x-kubernetes-* extensions: the CEL rules are not evaluated here).

Usage: check-crd-examples.py CRD_DIR SHOALCTL_MD [MANIFEST...]
"""

import copy
import glob
import json
import re
import sys

import jsonschema
import yaml

GROUP_VERSION = "shoal.io/v1alpha1"


def load_schemas(crd_dir):
    schemas = {}
    for path in glob.glob(f"{crd_dir}/*.yaml"):
        with open(path) as f:
            crd = yaml.safe_load(f)
        kind = crd["spec"]["names"]["kind"]
        schemas[kind] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schemas


def doc_examples(markdown):
    """The YAML blocks of the shoalctl page that hold one whole resource (kind, metadata and spec)."""
    examples = []
    for block in re.findall(r"```yaml\n(.*?)```", markdown, re.S):
        try:
            doc = yaml.safe_load(block)
        except yaml.YAMLError:
            continue  # the format overview has `spec: {...}`
        if "{...}" in block:
            continue  # the format overview: `spec: {...}` stands for any spec
        if isinstance(doc, dict) and {"kind", "metadata", "spec"} <= doc.keys():
            examples.append(doc)
    return examples


def closed(schema):
    """The schema with unknown fields refused, as the API server does with strict field validation (kubectl's
    default since Kubernetes 1.27: `unknown field "spec.ports[0].prot"`); the CRD itself cannot say it, a
    structural schema prunes unknown fields instead."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [closed(value) for value in schema]
    return schema


def errors(schemas, doc):
    resource = {"apiVersion": GROUP_VERSION, **doc}
    schema = closed(schemas[doc["kind"]])
    # ObjectMeta has many more fields than the name the CRD restricts.
    schema["properties"]["metadata"]["additionalProperties"] = True
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(resource)]


def variant(base, path, value):
    """`base` with the field at `path` (a list of keys and indexes) set to `value`, or removed if value is DELETE."""
    doc = copy.deepcopy(base)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


DELETE = object()

# (kind, path, value, the control plane's message for it)
INVALID = [
    ("Service", ["metadata", "name"], "Backend", "metadata.name: must be lowercase letters, digits and `-`"),
    ("Service", ["spec", "ports"], [], "spec.ports: at least one port is required"),
    ("Service", ["spec", "ports", 0, "port"], 0, "port 0 is not a valid port"),
    ("Service", ["spec", "ports", 0, "protocol"], "HTTP1", "enum: lowercase names"),
    ("Service", ["spec", "ports", 0, "prot"], "http1", "unknown field `prot`"),
    ("Service", ["spec", "hosts"], ["Backend.example"], "host names are lowercase DNS labels"),
    ("EndpointRegistration", ["spec", "weight"], 1_000_001, "not a weight in 1-1000000"),
    ("EndpointRegistration", ["spec", "identity"], "spiffe://cluster.local/backend", "must be a workload identity"),
    ("EndpointRegistration", ["spec", "ttl_seconds"], 86401, "longer than the maximum (24 h)"),
    ("EndpointRegistration", ["spec", "service"], DELETE, "required: a service name"),
    ("Route", ["spec", "rules"], [], "spec.rules: at least one rule is required"),
    ("Route", ["spec", "rules", 0, "matches", 0, "path"], {"prefix": "/a", "exact": "/b"}, "set one of exact, prefix or regex"),
    ("Route", ["spec", "rules", 0, "matches", 0, "path"], {"prefix": "api"}, "must start with `/`"),
    ("Route", ["spec", "rules", 0, "matches", 0], {}, "empty match"),
    ("Route", ["spec", "rules", 0, "matches", 0, "headers", 0], {"name": "x-canary"}, "set exactly one of `exact` and `regex`"),
    ("Route", ["spec", "rules", 0, "matches", 0, "method"], "GET POST", "not an HTTP token"),
    ("Route", ["spec", "rules", 1, "retry", "attempts"], 11, "not a number of attempts in 1-10"),
    ("Route", ["spec", "rules", 1, "retry", "retry_on"], ["everything"], "unknown retry_on"),
    ("Route", ["spec", "rules", 1, "retry", "retryable_status_codes"], [600], "not an HTTP status code"),
    ("Route", ["spec", "rules", 1, "retry", "budget_ratio"], 1.5, "not a ratio in (0, 1]"),
    ("Route", ["spec", "rules", 1, "timeout_ms"], 86_400_001, "longer than the maximum (24 h)"),
    ("Route", ["spec", "rules", 1, "backends", 0, "weight"], 2_000_000, "more than the maximum, 1000000"),
    ("Route", ["spec", "rules", 2, "request_redirect", "status_code"], 200, "not a redirect status"),
    ("Route", ["spec", "rules", 2, "request_redirect", "scheme"], "ftp", "not `http` or `https`"),
    ("Route", ["spec", "rules", 2, "request_redirect", "path"], {"replace_full_path": "/a", "replace_prefix_match": "/b"},
     "set one of replace_full_path or replace_prefix_match"),
    ("Route", ["spec", "rules", 1, "request_header_modifier", "set", 0], {"name": "x-env"}, "a value is required"),
    ("Route", ["spec", "rules", 1, "request_header_modifier", "remove"], ["bad name"], "not an HTTP token"),
    ("Route", ["spec", "rules", 1, "response_header_modifier"], {}, "edits nothing"),
    ("BackendPolicy", ["spec", "load_balancer", "algorithm"], "random", "unknown algorithm"),
    ("BackendPolicy", ["spec", "load_balancer", "hash_key"], {"header": "x", "cookie": "y"}, "one of the hash keys"),
    ("BackendPolicy", ["spec", "load_balancer", "hash_key"], {"source_ip": False}, "source_ip: must be true when set"),
    ("BackendPolicy", ["spec", "outlier_detection", "max_ejection_percent"], 101, "not a percentage from 0 to 100"),
    ("BackendPolicy", ["spec", "outlier_detection", "success_rate", "stdev_factor"], 11, "not in (0, 10]"),
    ("BackendPolicy", ["spec", "circuit_breaker", "override"], "open", "unknown override"),
    ("BackendPolicy", ["spec", "health_check", "http", "path"], "healthz", "not a request path starting with /"),
    ("BackendPolicy", ["spec", "health_check", "http", "expected_statuses", "end"], 600, "not a range of statuses"),
    ("AuthorizationPolicy", ["spec", "rules", 0, "action"], DELETE, "action: required: ALLOW or DENY"),
    ("AuthorizationPolicy", ["spec", "rules", 0, "from", 0], {"namespace": "Shop"}, "namespace must be lowercase"),
    ("AuthorizationPolicy", ["spec", "rules", 0, "to_ports"], [0], "port 0 is not a valid port"),
    ("AuthorizationPolicy", ["spec", "rules", 0, "path_prefixes"], ["api"], "must start with `/`"),
    ("AuthorizationPolicy", ["spec", "default_action"], "maybe", "unknown action"),
    ("RateLimit", ["spec", "unit"], "day", "unknown unit"),
    ("RateLimit", ["spec", "scope"], "per_user", "unknown scope"),
    ("RateLimit", ["spec", "side"], "both", "unknown side"),
    ("RateLimit", ["spec", "overrides"], [{"identity": "batch"}], "must be a SPIFFE id"),
    ("FaultInjection", ["spec", "delay", "percent"], 120, "not a percentage from 0 to 100"),
    ("FaultInjection", ["spec", "delay", "duration_ms"], 0, "must be positive"),
    ("FaultInjection", ["spec", "abort", "http_status"], 100, "not an HTTP status in 200-599"),
    ("FaultInjection", ["spec", "abort", "grpc_status"], 17, "not a gRPC status in 1-16"),
    ("FaultInjection", ["spec", "abort"], {"percent": 1}, "set `http_status`, `grpc_status` or both"),
    ("FaultInjection", ["spec"], {"target_service": "backend"}, "injects nothing"),
    ("FaultInjection", ["spec", "matches", 0], {}, "empty match"),
    ("Mirror", ["spec", "percent"], -1, "not a percentage from 0 to 100"),
    ("Mirror", ["spec", "mirror_service"], DELETE, "required: a service name"),
    ("Mirror", ["spec", "mirror_port"], 70000, "not a port"),
    ("Mirror", ["spec", "compare_headers"], ["Content-Type"], "must be lower-case"),
    ("Mirror", ["spec", "compare_headers"], ["x"] * 33, "at most 32"),
]


def check_manifests(schemas, paths):
    """Whether every shoal.io document of the manifests at `paths` passes its kind's schema (printing each)."""
    failed = False
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
        ours = [d for d in docs if str(d.get("apiVersion", "")).startswith("shoal.io/")]
        if not ours:
            print(f"FAIL: {path} has no {GROUP_VERSION} document")
            failed = True
        for doc in ours:
            kind = doc.get("kind")
            if doc["apiVersion"] != GROUP_VERSION or kind not in schemas:
                print(f"FAIL: {path}: {doc['apiVersion']} {kind} is not a kind of the CRDs")
                failed = True
                continue
            problems = errors(schemas, doc)
            if problems:
                print(f"FAIL: the {kind} of {path} does not pass its CRD: {problems}")
                failed = True
            else:
                print(f"ok: {kind} manifest {path} passes")
    return failed


def main():
    crd_dir, markdown_path = sys.argv[1], sys.argv[2]
    schemas = load_schemas(crd_dir)
    manifests_failed = check_manifests(schemas, sys.argv[3:])
    with open(markdown_path) as f:
        every = doc_examples(f.read())
    # Every example must pass its CRD; the invalid variants start from each kind's first (fullest)
    # example (the page shows some kinds twice, e.g. a Route with a field apply refuses).
    examples = {}
    for doc in every:
        examples.setdefault(doc["kind"], doc)
    failed = False
    missing = sorted(set(schemas) - set(examples))
    if missing:
        print(f"FAIL: {markdown_path} has no example of {', '.join(missing)}")
        failed = True
    for doc in every:
        kind = doc["kind"]
        problems = errors(schemas, doc)
        if problems:
            failed = True
            print(f"FAIL: a {kind} example of {markdown_path} does not pass its CRD: {problems}")
        else:
            print(f"ok: {kind} example passes")
    def has(doc, path):
        node = doc
        for key in path:
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                return False
        return True

    for kind, path, value, why in INVALID:
        # The first example of the kind that has the field's parent (a Route's `retry` is in the
        # page's refused section, for example).
        base = next((d for d in every if d["kind"] == kind and has(d, path[:-1])), examples[kind])
        doc = variant(base, path, value)
        shown = "deleted" if value is DELETE else json.dumps(value)
        if errors(schemas, doc):
            print(f"ok: {kind} {'.'.join(map(str, path))} = {shown} refused ({why})")
        else:
            failed = True
            print(f"FAIL: {kind} {'.'.join(map(str, path))} = {shown} passes the CRD; the control plane refuses it ({why})")
    sys.exit(1 if failed or manifests_failed else 0)


if __name__ == "__main__":
    main()
