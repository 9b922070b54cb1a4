//! The containers and the volumes the injector adds: `shoal-init` (iptables, as root with NET_ADMIN/NET_RAW
//! only) and `shoal-proxy`, a native sidecar (an init container with `restartPolicy: Always`) whose startup
//! probe on the admin `/ready` holds back the containers after it until the proxy is ready.

use serde_json::{Map, Value, json};

use super::annotations::{Overrides, TRUST_ANCHORS};
use super::template::Template;

/// The init container installing the iptables rules.
pub const INIT_NAME: &str = "shoal-init";
/// The sidecar running the proxy.
pub const PROXY_NAME: &str = "shoal-proxy";
/// The downward API volume holding the trust anchors file.
pub const ANCHORS_VOLUME: &str = "shoal-trust-anchors";
/// Where the proxy finds the trust anchors (`SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE`).
pub const ANCHORS_DIR: &str = "/var/run/shoal/trust-anchors";
const ANCHORS_FILE: &str = "anchors.pem";
/// The projected service-account token volume: the proxy's credential for `Certify`.
pub const TOKEN_VOLUME: &str = "shoal-token";
/// Where the proxy finds its token (`SHOAL_IDENTITY_TOKEN_FILE`); the kubelet rewrites it before it expires.
pub const TOKEN_DIR: &str = "/var/run/shoal/token";
const TOKEN_FILE: &str = "token";

/// What the sidecar is built from: the template, the pod's annotations, and where the control plane is.
pub(crate) struct Inputs<'a> {
    pub(crate) template: &'a Template,
    pub(crate) overrides: &'a Overrides,
    pub(crate) discovery_addr: &'a str,
    pub(crate) control_plane_identity: &'a str,
    /// `SHOAL_SERVICE_NAME`, from the pod's `app.kubernetes.io/name` or `app` label.
    pub(crate) service_name: Option<&'a str>,
}

fn var(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

fn field(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// The `shoal-init` container.
pub(crate) fn init_container(i: &Inputs<'_>) -> Value {
    let t = i.template;
    let mut env = vec![
        var("SHOAL_INIT_PROXY_UID", t.uid.to_string()),
        var("SHOAL_INIT_INBOUND_PORT", t.ports.inbound.to_string()),
        var("SHOAL_INIT_OUTBOUND_PORT", t.ports.outbound.to_string()),
        var("SHOAL_INIT_ADMIN_PORT", t.ports.admin.to_string()),
    ];
    let o = i.overrides;
    for (name, value) in [
        ("SHOAL_INIT_EXCLUDE_INBOUND_PORTS", &o.exclude_inbound_ports),
        (
            "SHOAL_INIT_EXCLUDE_OUTBOUND_PORTS",
            &o.exclude_outbound_ports,
        ),
        (
            "SHOAL_INIT_EXCLUDE_OUTBOUND_CIDRS",
            &o.exclude_outbound_cidrs,
        ),
    ] {
        if let Some(value) = value {
            env.push(var(name, value.clone()));
        }
    }
    json!({
        "name": INIT_NAME,
        "image": t.init_image,
        "imagePullPolicy": t.image_pull_policy,
        "args": ["init"],
        "env": env,
        "resources": resources(i),
        "securityContext": {
            // iptables needs root and these two capabilities in the pod's network namespace, nothing else.
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            // iptables-legacy takes a lock file under /run.
            "readOnlyRootFilesystem": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

/// The `shoal-proxy` native sidecar.
pub(crate) fn proxy_container(i: &Inputs<'_>) -> Value {
    let t = i.template;
    let o = i.overrides;
    let mut env = vec![
        var("SHOAL_DISCOVERY_ADDR", i.discovery_addr),
        var(
            "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE",
            format!("{ANCHORS_DIR}/{ANCHORS_FILE}"),
        ),
        var("SHOAL_CONTROL_PLANE_IDENTITY", i.control_plane_identity),
        // The certificate comes from the control plane's CA (at SHOAL_DISCOVERY_ADDR) for this token, which
        // it verifies with TokenReview.
        var(
            "SHOAL_IDENTITY_TOKEN_FILE",
            format!("{TOKEN_DIR}/{TOKEN_FILE}"),
        ),
        var("SHOAL_IDENTITY_TOKEN_KIND", "kubernetes"),
        field("SHOAL_NAMESPACE", "metadata.namespace"),
        field("SHOAL_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        // Not a proxy setting (so no SHOAL_ prefix): only expanded into SHOAL_PROXY_ID below, since `$(VAR)`
        // refers to variables defined before it.
        field("POD_NAME", "metadata.name"),
        var("SHOAL_PROXY_ID", "$(POD_NAME).$(SHOAL_NAMESPACE)"),
        var(
            "SHOAL_OUTBOUND_ADDR",
            format!("127.0.0.1:{}", t.ports.outbound),
        ),
        var("SHOAL_INBOUND_ADDR", format!("0.0.0.0:{}", t.ports.inbound)),
        var("SHOAL_ADMIN_ADDR", format!("0.0.0.0:{}", t.ports.admin)),
        var("SHOAL_LOG", o.log_level.as_deref().unwrap_or(&t.log_level)),
        var("SHOAL_LOG_FORMAT", t.log_format.as_str()),
    ];
    if let Some(name) = i.service_name {
        env.push(var("SHOAL_SERVICE_NAME", name));
    }
    if let Some(ports) = &o.server_first_ports {
        env.push(var("SHOAL_SERVER_FIRST_PORTS", ports.as_str()));
    }
    let ready = json!({"path": "/ready", "port": t.ports.admin});
    json!({
        "name": PROXY_NAME,
        "image": t.image,
        "imagePullPolicy": t.image_pull_policy,
        "args": ["run"],
        // A native sidecar (Kubernetes 1.28+): started in order with the init containers, kept running beside
        // the app, stopped after it, and not waited for by a Job's completion.
        "restartPolicy": "Always",
        "env": env,
        "resources": resources(i),
        // The kubelet starts the next container only once this succeeds: the app never runs before its proxy.
        "startupProbe": {"httpGet": ready, "periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {"httpGet": ready, "periodSeconds": 5, "failureThreshold": 3},
        "securityContext": {
            // The uid `shoal-init` excludes from capture: the proxy's own connections leave the pod.
            "runAsUser": t.uid,
            "runAsGroup": t.uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": ANCHORS_VOLUME, "mountPath": ANCHORS_DIR, "readOnly": true},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
        ],
    })
}

/// The volume projecting the trust anchors annotation into a file.
pub(crate) fn anchors_volume() -> Value {
    json!({
        "name": ANCHORS_VOLUME,
        "downwardAPI": {"items": [{
            "path": ANCHORS_FILE,
            "fieldRef": {"fieldPath": format!("metadata.annotations['{TRUST_ANCHORS}']")},
        }]},
    })
}

/// The volume projecting the pod's service-account token for the control plane's audience.
pub(crate) fn token_volume(t: &Template) -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": t.token_audience,
            "expirationSeconds": t.token_expiration_seconds,
            "path": TOKEN_FILE,
        }}]},
    })
}

/// The proxy's requests and limits: the template's, with the annotations' values instead where given.
pub(crate) fn effective_resources(
    i: &Inputs<'_>,
) -> [(&'static str, &'static str, Option<String>); 4] {
    let (r, o) = (&i.template.resources, i.overrides);
    let pick = |over: &Option<String>, default: &Option<String>| over.clone().or(default.clone());
    [
        ("requests", "cpu", pick(&o.cpu_request, &r.requests.cpu)),
        (
            "requests",
            "memory",
            pick(&o.memory_request, &r.requests.memory),
        ),
        ("limits", "cpu", pick(&o.cpu_limit, &r.limits.cpu)),
        ("limits", "memory", pick(&o.memory_limit, &r.limits.memory)),
    ]
}

fn resources(i: &Inputs<'_>) -> Value {
    let mut out = Map::new();
    for (kind, name, value) in effective_resources(i) {
        if let Some(value) = value {
            let entry = out.entry(kind).or_insert_with(|| json!({}));
            entry[name] = Value::String(value);
        }
    }
    Value::Object(out)
}
