#!/usr/bin/env python3
"""Writes charts/shoal/crds/*.yaml: one CustomResourceDefinition per kind `shoalctl apply` accepts.

The specs are the shoalctl YAML (docs/shoalctl.md, control-plane/src/cli/yaml/): snake_case fields, enums as
lowercase names, oneofs as one-key mappings, so one document works with both `shoalctl apply` and
`kubectl apply`. The schemas mirror the control plane's checks (control-plane/src/model/validate/,
control-plane/src/convert/): what they can express (required fields, enums, ranges, name patterns, one-of
choices) is refused by the API server already; what needs other resources (a service must exist) or code
(regular expressions compile, weights sum to more than 0) stays with the control plane.

As in the YAML, a number left out or 0 means "not set" (the proxy's default), so 0 is accepted wherever the
control plane accepts it.

Run it after changing a kind; scripts/check-chart.sh fails when the committed files differ from its output.
"""

import json
import os
import sys

GROUP = "shoal.io"
VERSION = "v1alpha1"

# control-plane/src/model/names.rs: dns_label, host_name, ServiceRef::parse, spiffe_id.
LABEL = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_LABEL = {"type": "string", "maxLength": 63, "pattern": f"^{LABEL}$"}
HOST_NAME = {"type": "string", "maxLength": 253, "pattern": f"^{LABEL}(\\.{LABEL})*$"}
SERVICE_REF = {
    "type": "string",
    "maxLength": 127,
    "pattern": f"^{LABEL}(\\.{LABEL})?$",
    "description": "a service: `<service>.<namespace>`, or `<service>` in the resource's namespace",
}
SPIFFE_ID = {
    "type": "string",
    "pattern": f"^spiffe://{LABEL}(\\.{LABEL})*/ns/{LABEL}/sa/{LABEL}$",
    "description": "a workload identity, spiffe://<trust domain>/ns/<namespace>/sa/<service account>",
}
# RFC 9110 tchar: header names, methods, hash keys (http_token).
HTTP_TOKEN = {"type": "string", "pattern": "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"}
# validate/mod.rs: MAX_WEIGHT, MAX_DURATION (24 h), MAX_REGEX_LEN, MAX_ATTEMPTS.
MAX_WEIGHT = 1_000_000
MAX_MS = 24 * 60 * 60 * 1000
REGEX = {"type": "string", "maxLength": 1024, "description": "a regular expression the whole value must match"}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
OPTIONAL_PORT = {"type": "integer", "minimum": 0, "maximum": 65535, "description": "0 or left out: not set"}


def ms(description="milliseconds, at most 24 h; 0 or left out: not set"):
    return {"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_MS, "description": description}


def count(description="0 or left out: not set"):
    return {"type": "integer", "minimum": 0, "maximum": 4294967295, "description": description}


def percent(description):
    return {"type": "number", "minimum": 0, "maximum": 100, "description": description}


def ratio(description):
    return {"type": "number", "minimum": 0, "maximum": 1, "description": description + "; 0 or left out: not set"}


def enum(*values, description=None):
    schema = {"type": "string", "enum": list(values)}
    if description:
        schema["description"] = description
    return schema


def obj(properties, required=(), **extra):
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    schema.update(extra)
    return schema


def array(items, **extra):
    return {"type": "array", "items": items, **extra}


def one_key(properties, description):
    """A proto oneof as YAML: a mapping with exactly one of `properties`."""
    return obj(properties, minProperties=1, maxProperties=1, description=description)


PATH_LITERAL = {"type": "string", "pattern": "^/[^?#\\s]*$",
                "description": "starts with /; no ?, # or whitespace (the query is not matched)"}

SERVICE = obj(
    {
        "ports": array(
            obj(
                {
                    "name": DNS_LABEL,
                    "port": PORT,
                    "target_port": OPTIONAL_PORT,
                    "protocol": enum("http1", "http2", "grpc", "opaque", description="left out: detected"),
                    "tls_mode": enum("strict", "permissive", "disabled"),
                },
                required=["port"],
            ),
            minItems=1,
            # "port N is listed twice"
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port"]},
        ),
        "virtual_addresses": array({"type": "string", "description": "an IPv4 or IPv6 unicast address"},
                                   **{"x-kubernetes-list-type": "set"}),
        "hosts": array(HOST_NAME),
        "tls_mode": enum("strict", "permissive", "disabled"),
    },
    required=["ports"],
)

REGISTRATION = obj(
    {
        "service": SERVICE_REF,
        "address": {"type": "string", "description": "an IPv4 or IPv6 unicast address, no port"},
        "port": PORT,
        "weight": {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT,
                   "description": "load-balancing weight; 0 or left out: 1"},
        "zone": {"type": "string", "maxLength": 63, "pattern": "^[A-Za-z0-9._-]*$"},
        "ttl_seconds": {"type": "integer", "format": "int64", "minimum": 0, "maximum": 86400,
                        "description": "removed unless a heartbeat arrives within this many seconds; 0: never"},
        "identity": SPIFFE_ID,
        "service_port": OPTIONAL_PORT,
    },
    required=["service", "address", "port"],
)

HEADER_MATCH = obj(
    {"name": HTTP_TOKEN, "exact": {"type": "string"}, "regex": REGEX},
    required=["name"],
    oneOf=[{"required": ["exact"]}, {"required": ["regex"]}],
)

RETRY_ON = enum(
    "connect_failure", "refused_stream", "reset", "server_error", "gateway_error", "service_unavailable",
    "per_try_timeout", "grpc_unavailable", "grpc_resource_exhausted",
)

ROUTE_MATCH = obj(
    {
        "path": one_key(
            {"exact": PATH_LITERAL, "prefix": PATH_LITERAL, "regex": REGEX},
            "one of exact, prefix or regex",
        ),
        "headers": array(HEADER_MATCH),
        "method": HTTP_TOKEN,
    },
    minProperties=1,
    description="all of its fields must hold; an empty match is refused "
                "(leave `matches` out to match every request)",
)

# validate/filter.rs: header names a route may not edit (hop-by-hop, framing, routing, the mesh's own).
PROTECTED_HEADERS = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
                     "host", "content-length", "proxy-authorization"]
EDITABLE_HEADER = {
    **HTTP_TOKEN,
    "maxLength": 256,
    "description": "an HTTP header name; not hop-by-hop, host, content-length or shoal-*",
    "x-kubernetes-validations": [{
        "rule": "!self.lowerAscii().startsWith('shoal-') && !(self.lowerAscii() in "
                + json.dumps(PROTECTED_HEADERS).replace('"', "'") + ")",
        "message": "hop-by-hop, routing and mesh (shoal-*) headers cannot be edited",
    }],
}
HEADER_VALUE = obj(
    {"name": EDITABLE_HEADER,
     "value": {"type": "string", "pattern": "^[\\t -~]*$", "description": "visible ASCII, spaces, tabs"}},
    required=["name", "value"],
)
HEADER_MODIFIER = obj(
    {"set": array(HEADER_VALUE, maxItems=64), "add": array(HEADER_VALUE, maxItems=64),
     "remove": array(EDITABLE_HEADER, maxItems=64)},
    minProperties=1,
    description="remove, then set (replace), then add (append); each header named once, at most 64 edits",
)
REDIRECT_PATH = {"type": "string", "pattern": "^/[!-~]*$", "description": "starts with /; no ?, # or whitespace"}
REQUEST_REDIRECT = obj(
    {
        "scheme": enum("http", "https", description="left out: the request's"),
        "hostname": HOST_NAME,
        "port": OPTIONAL_PORT,
        "path": one_key(
            {"replace_full_path": REDIRECT_PATH, "replace_prefix_match": REDIRECT_PATH},
            "one of replace_full_path or replace_prefix_match (every match of the rule a path prefix)",
        ),
        "status_code": {"type": "integer", "enum": [0, 301, 302, 303, 307, 308], "description": "0 or left out: 302"},
    },
    description="answered by the calling proxy; the rule then has no backends, retry or request header edits",
)

ROUTE = obj(
    {
        "parent_service": SERVICE_REF,
        "rules": array(
            obj(
                {
                    "name": DNS_LABEL,
                    "matches": array(ROUTE_MATCH),
                    "backends": array(
                        obj(
                            {
                                "service": SERVICE_REF,
                                "port": OPTIONAL_PORT,
                                "weight": {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT,
                                           "default": 1, "description": "left out: 1"},
                            },
                            required=["service"],
                        )
                    ),
                    "timeout_ms": ms(),
                    "retry": obj(
                        {
                            "attempts": {"type": "integer", "minimum": 0, "maximum": 10,
                                         "description": "attempts, the first included, 1-10; 0 or left out: not set"},
                            "per_try_timeout_ms": ms(),
                            "retry_on": array(RETRY_ON),
                            "retryable_status_codes": array({"type": "integer", "minimum": 100, "maximum": 599}),
                            "backoff_base_ms": ms(),
                            "backoff_max_ms": ms(),
                            "budget_ratio": ratio("retries as a share of requests, (0, 1]"),
                            "budget_min_retries_per_second": count(),
                            "retry_non_idempotent": {"type": "boolean"},
                        }
                    ),
                    "request_header_modifier": HEADER_MODIFIER,
                    "response_header_modifier": HEADER_MODIFIER,
                    "request_redirect": REQUEST_REDIRECT,
                }
            ),
            minItems=1,
            maxItems=256,
        ),
    },
    required=["parent_service", "rules"],
)

BACKEND_POLICY = obj(
    {
        "service": SERVICE_REF,
        "load_balancer": obj(
            {
                "algorithm": enum("round_robin", "least_request", "p2c_ewma", "ring_hash",
                                  description="left out: p2c_ewma"),
                "hash_key": one_key(
                    {
                        "header": HTTP_TOKEN,
                        "cookie": HTTP_TOKEN,
                        "query_parameter": HTTP_TOKEN,
                        "source_ip": {"type": "boolean", "enum": [True]},
                    },
                    "ring_hash only: one of header, cookie, query_parameter or source_ip: true",
                ),
                "slow_start_ms": ms("milliseconds, at most 24 h: a new or readmitted endpoint's share grows over it; 0 or left out: off"),
            },
            **{"x-kubernetes-validations": [{
                "rule": "has(self.algorithm) && self.algorithm == 'ring_hash' ? has(self.hash_key) : !has(self.hash_key)",
                "message": "hash_key is required with algorithm ring_hash and only used with it",
            }]},
        ),
        "limits": obj(
            {
                "max_connections": count(),
                "max_pending_requests": count(),
                "max_concurrent_requests": count(),
                "max_requests_per_connection": count(),
                "connect_timeout_ms": ms(),
                "max_concurrent_retries": count(),
            }
        ),
        "outlier_detection": obj(
            {
                "consecutive_5xx": count(),
                "interval_ms": ms(),
                "base_ejection_time_ms": ms(),
                "max_ejection_percent": percent("0 or left out: not set"),
                "success_rate": obj(
                    {
                        "minimum_hosts": count(),
                        "request_volume": count(),
                        "stdev_factor": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 10,
                            "description": "standard deviations below the mean that eject, at most 10; 0 or left out: not set",
                        },
                    }
                ),
            }
        ),
        "health_check": obj(
            {
                "http": obj(
                    {
                        "path": {"type": "string", "pattern": "^/\\S*$",
                                 "description": "the probe's GET path: starts with /, no whitespace"},
                        "expected_statuses": obj(
                            {
                                "start": {"type": "integer", "minimum": 100, "maximum": 599},
                                "end": {"type": "integer", "minimum": 100, "maximum": 599},
                            },
                            required=["start", "end"],
                            description="statuses counted healthy, both ends included; left out: 200-399",
                        ),
                    },
                    required=["path"],
                ),
                "grpc": obj(
                    {"service": {"type": "string",
                                 "description": "grpc.health.v1.Health/Check's service; empty or left out: the server"}}
                ),
                "interval_ms": ms("milliseconds, at most 24 h, between rounds of probes; 0 or left out: 10 s"),
                "timeout_ms": ms("milliseconds, at most 24 h, per probe; 0 or left out: 1 s"),
                "healthy_threshold": count("passing probes in a row that bring an endpoint back; 0 or left out: 2"),
                "unhealthy_threshold": count("failing probes in a row that take it out; 0 or left out: 3"),
            },
            **{"x-kubernetes-validations": [{
                "rule": "has(self.http) != has(self.grpc)",
                "message": "exactly one of http or grpc",
            }]},
        ),
        "circuit_breaker": obj(
            {
                "failure_ratio_threshold": ratio("failure share that opens the breaker, (0, 1]"),
                "min_requests": count(),
                "window_ms": ms(),
                "open_duration_ms": ms(),
                "half_open_max_requests": count(),
                "override": enum("force_open", "force_closed"),
            }
        ),
    },
    required=["service"],
)

AUTHORIZATION = obj(
    {
        "target_service": SERVICE_REF,
        "default_action": enum("allow", "deny", description="when no rule matches; left out: deny"),
        "rules": array(
            obj(
                {
                    "name": DNS_LABEL,
                    "action": enum("allow", "deny"),
                    "from": array(one_key(
                        {"exact": SPIFFE_ID, "namespace": DNS_LABEL, "trust_domain": HOST_NAME},
                        "one of exact, namespace or trust_domain",
                    )),
                    "to_ports": array(PORT),
                    "path_prefixes": array({"type": "string", "pattern": "^/"}),
                    "methods": array(HTTP_TOKEN),
                },
                required=["action"],
            ),
            maxItems=1024,
        ),
    },
    required=["target_service"],
)

RATE_LIMIT = obj(
    {
        "target_service": SERVICE_REF,
        "requests_per_unit": {"type": "integer", "format": "int64", "minimum": 0},
        "unit": enum("second", "minute", "hour", description="left out: second"),
        "burst": {"type": "integer", "format": "int64", "minimum": 0,
                  "description": "0 or left out: requests_per_unit"},
        "scope": enum("global", "per_client", description="left out: global; outbound limits: global only"),
        "matches": array(ROUTE_MATCH, description="the requests the limit counts; left out: every request"),
        "overrides": array(
            obj(
                {
                    "identity": SPIFFE_ID,
                    "requests_per_unit": {"type": "integer", "format": "int64", "minimum": 0,
                                          "description": "0: this caller is not limited"},
                    "burst": {"type": "integer", "format": "int64", "minimum": 0,
                              "description": "0 or left out: requests_per_unit"},
                },
                required=["identity"],
            ),
            description="callers with a rate of their own (inbound limits only)",
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["identity"]},
        ),
        "side": enum("inbound", "outbound",
                     description="left out: inbound (the service's proxies); outbound: each calling proxy"),
    },
    required=["target_service"],
)

FAULT_INJECTION = obj(
    {
        "target_service": SERVICE_REF,
        "delay": obj(
            {"percent": percent("share of requests delayed"),
             "duration_ms": {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_MS}},
            required=["duration_ms"],
        ),
        "abort": obj(
            {"percent": percent("share of requests aborted"),
             "http_status": {"type": "integer", "minimum": 200, "maximum": 599},
             # A gRPC code, 1-16 (OK is no abort).
             "grpc_status": {"type": "integer", "minimum": 1, "maximum": 16}},
            # "abort: set `http_status`, `grpc_status` or both"
            anyOf=[{"required": ["http_status"]}, {"required": ["grpc_status"]}],
        ),
        "matches": array(ROUTE_MATCH, description="the requests the faults may hit; left out: every request"),
    },
    required=["target_service"],
    # "injects nothing: set `delay`, `abort` or both"
    anyOf=[{"required": ["delay"]}, {"required": ["abort"]}],
)

MIRROR = obj(
    {
        "target_service": SERVICE_REF,
        "mirror_service": SERVICE_REF,
        "mirror_port": OPTIONAL_PORT,
        "percent": percent("share of requests copied"),
        # validate/policy.rs: MAX_COMPARE_HEADERS, lower-case header names, each once.
        "compare_headers": array(
            {"type": "string", "pattern": "^[a-z0-9!#$%&'*+.^_`|~-]+$"},
            maxItems=32,
            **{"x-kubernetes-list-type": "set"},
        ),
    },
    required=["target_service", "mirror_service"],
    **{"x-kubernetes-validations": [{
        "rule": "self.mirror_service != self.target_service",
        "message": "mirror_service must name another service than target_service",
    }]},
)

CONDITIONS = array(
    obj(
        {
            "type": {"type": "string", "maxLength": 316},
            "status": enum("True", "False", "Unknown"),
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "reason": {"type": "string", "maxLength": 1024},
            "message": {"type": "string", "maxLength": 32768},
        },
        required=["type", "status", "lastTransitionTime", "reason", "message"],
    ),
    **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
)


def column(name, path, kind="string", priority=None):
    c = {"name": name, "type": kind, "jsonPath": path}
    if priority is not None:
        c["priority"] = priority
    return c


# (kind, plural, short names, spec schema, printer columns, what it is)
KINDS = [
    ("Service", "services", ["shsvc"], SERVICE,
     [column("Hosts", ".spec.hosts"), column("Virtual addresses", ".spec.virtual_addresses", priority=1)],
     "A mesh service: its ports, host names and virtual addresses."),
    ("EndpointRegistration", "endpointregistrations", ["shreg"], REGISTRATION,
     [column("Service", ".spec.service"), column("Address", ".spec.address"),
      column("Port", ".spec.port", "integer"), column("Weight", ".spec.weight", "integer", 1)],
     "One instance of a service outside Kubernetes."),
    ("Route", "routes", ["shrt"], ROUTE,
     [column("Parent", ".spec.parent_service")],
     "Rules that match requests to a service and split them over weighted backends."),
    ("BackendPolicy", "backendpolicies", ["shbp"], BACKEND_POLICY,
     [column("Service", ".spec.service"), column("Algorithm", ".spec.load_balancer.algorithm")],
     "Load balancing, limits, outlier detection and circuit breaking for calls to a service."),
    ("AuthorizationPolicy", "authorizationpolicies", ["shauthz"], AUTHORIZATION,
     [column("Target", ".spec.target_service"), column("Default", ".spec.default_action")],
     "Which callers a service's proxy admits."),
    ("RateLimit", "ratelimits", ["shrl"], RATE_LIMIT,
     [column("Target", ".spec.target_service"), column("Requests", ".spec.requests_per_unit", "integer"),
      column("Unit", ".spec.unit"), column("Scope", ".spec.scope", priority=1)],
     "A request rate limit at a service's proxy."),
    ("FaultInjection", "faultinjections", ["shfault"], FAULT_INJECTION,
     [column("Target", ".spec.target_service"), column("Delay %", ".spec.delay.percent", "number"),
      column("Abort %", ".spec.abort.percent", "number")],
     "Delays and errors injected into a share of a service's requests."),
    ("Mirror", "mirrors", ["shmirror"], MIRROR,
     [column("Target", ".spec.target_service"), column("Mirror", ".spec.mirror_service"),
      column("Percent", ".spec.percent", "number")],
     "A share of a service's requests copied to another service."),
]


def crd(kind, plural, short, spec, columns, doc):
    columns = columns + [
        column("Accepted", '.status.conditions[?(@.type=="Accepted")].status'),
        column("Age", ".metadata.creationTimestamp", "date"),
    ]
    schema = obj(
        {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # The control plane requires DNS labels (a resource name is part of qualified names).
            "metadata": obj({"name": {"type": "string", "maxLength": 63, "pattern": f"^{LABEL}$"}}),
            "spec": spec,
            "status": obj(
                {
                    "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                    "conditions": CONDITIONS,
                },
                description="Written by the control plane: whether the spec was accepted (condition Accepted, reason Accepted or Invalid)",
            ),
        },
        required=["spec"],
        description=doc,
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/name": "shoal"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["shoal"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "charts", "shoal", "crds")
    os.makedirs(out, exist_ok=True)
    for entry in KINDS:
        plural = entry[1]
        path = os.path.join(out, f"{plural}.{GROUP}.yaml")
        with open(path, "w") as f:
            f.write("# Generated by scripts/gen-crds.py; edit that script, not this file.\n")
            # JSON is YAML: no YAML library needed, and the output is stable.
            f.write(json.dumps(crd(*entry), indent=2) + "\n")


if __name__ == "__main__":
    main()
