//! Sidecar injection: one pure function (no I/O) from a pod to the JSONPatch that adds Shoal's proxy to it,
//! used by the admission webhook (`server::webhook`) and by `shoalctl inject`.
//!
//! What a pod gets (docs/kubernetes.md, "Sidecar injection"):
//!
//! - `shoal-init`, the first init container: `shoal-proxy init` (iptables capture) as root with only
//!   NET_ADMIN and NET_RAW;
//! - `shoal-proxy`, the second: a native sidecar (`restartPolicy: Always`) running as the uid `shoal-init`
//!   excludes, whose startup probe on the admin `/ready` holds back every later container;
//! - a downward API volume with the control plane's trust anchors, which the injector writes into the
//!   `shoal.io/trust-anchors` annotation; and scrape annotations for the proxy's `/metrics`.
//!
//! Whether a pod is injected: the webhook is only called for pods whose namespace or own label opted in (the
//! chart's selectors); here a pod-level `shoal.io/inject` label or annotation `disabled` opts out, and pods in
//! `kube-system`, on the host network, or already injected are left alone. Every `shoal.io/` annotation is
//! checked: a bad value, or an unknown name, refuses the pod with a message naming it.

pub mod annotations;
pub mod patch;
mod quantity;
pub mod sidecar;
mod template;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value, json};

pub use template::{Amounts, ControlPlaneRef, Ports, Resources, Template};

use annotations::{INJECT, Overrides};
use sidecar::{ANCHORS_VOLUME, INIT_NAME, Inputs, PROXY_NAME, TOKEN_VOLUME};

/// The namespace whose pods are never injected (the cluster's own components).
pub const KUBE_SYSTEM: &str = "kube-system";

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Add the sidecar: these JSONPatch operations, relative to the pod.
    Inject(Vec<Value>),
    /// Leave the pod as it is (an empty patch).
    Skip {
        /// Why, for logs and tests.
        reason: String,
        /// Set when the pod asked for injection (`shoal.io/inject: enabled`) and does not get it: shown to
        /// the user (admission warnings, `shoalctl inject`'s stderr).
        warning: Option<String>,
    },
}

/// The pod cannot be admitted as it is; the message names the label or annotation to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// The injector: a checked [`Template`] and where the control plane is.
#[derive(Debug, Clone)]
pub struct Injector {
    template: Template,
    discovery_addr: String,
    control_plane_identity: String,
}

impl Injector {
    /// Checks `template`; the error names the field.
    pub fn new(template: Template, control_plane: &ControlPlaneRef) -> Result<Self, String> {
        template.validate()?;
        let ns = &control_plane.namespace;
        let discovery_addr = (template.discovery_addr.clone())
            .unwrap_or_else(|| format!("https://shoal-control-plane.{ns}.svc:15010"));
        let control_plane_identity =
            (template.control_plane_identity.clone()).unwrap_or_else(|| {
                format!(
                    "spiffe://{}/ns/{ns}/sa/shoal-control-plane",
                    control_plane.trust_domain
                )
            });
        Ok(Self {
            template,
            discovery_addr,
            control_plane_identity,
        })
    }

    /// Decides about `pod` (a Pod, or a workload's pod template: `metadata` and `spec`) in `namespace`, and
    /// builds the patch. `trust_anchors` is the PEM the proxy verifies the control plane with.
    pub fn inject(
        &self,
        pod: &Value,
        namespace: Option<&str>,
        trust_anchors: &str,
    ) -> Result<Outcome, Denied> {
        let metadata = pod.get("metadata").and_then(Value::as_object);
        let labels = metadata
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        let annotations = metadata
            .and_then(|m| m.get("annotations"))
            .and_then(Value::as_object);
        let asked = opt_in(labels, annotations)?;
        let skip = |reason: String| {
            let warning = (asked == Some(true))
                .then(|| format!("{INJECT}=enabled, but the sidecar is not injected: {reason}"));
            Ok(Outcome::Skip { reason, warning })
        };
        if asked == Some(false) {
            return Ok(Outcome::Skip {
                reason: format!("{INJECT}=disabled"),
                warning: None,
            });
        }
        if namespace == Some(KUBE_SYSTEM) {
            return skip(format!("pods in {KUBE_SYSTEM} are never injected"));
        }
        let spec = pod.get("spec").and_then(Value::as_object);
        let Some(spec) = spec else {
            return Err(Denied("the pod has no spec".to_owned()));
        };
        if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
            return skip(
                "the pod uses the host network: its iptables rules would capture the node's traffic"
                    .to_owned(),
            );
        }
        if already_injected(spec)? {
            return Ok(Outcome::Skip {
                reason: "already injected".to_owned(),
                warning: None,
            });
        }
        let overrides = annotations::read(annotations).map_err(Denied)?;
        let service_name = labels.and_then(|l| {
            ["app.kubernetes.io/name", "app"]
                .iter()
                .find_map(|k| l.get(*k).and_then(Value::as_str))
        });
        let inputs = Inputs {
            template: &self.template,
            overrides: &overrides,
            discovery_addr: &self.discovery_addr,
            control_plane_identity: &self.control_plane_identity,
            service_name,
        };
        check_resources(&inputs)?;
        Ok(Outcome::Inject(self.patch(
            spec,
            annotations,
            &inputs,
            trust_anchors,
            metadata.is_some(),
        )))
    }

    fn patch(
        &self,
        spec: &Map<String, Value>,
        annotations: Option<&Map<String, Value>>,
        inputs: &Inputs<'_>,
        trust_anchors: &str,
        has_metadata: bool,
    ) -> Vec<Value> {
        let mut ops = Vec::new();
        let (init, proxy) = (
            sidecar::init_container(inputs),
            sidecar::proxy_container(inputs),
        );
        // First the iptables rules, then the proxy, then the pod's own init containers: those run with the
        // rules in place, so their connections need the proxy already up.
        match spec.get("initContainers").and_then(Value::as_array) {
            Some(_) => {
                ops.push(patch::add("/spec/initContainers/0", init));
                ops.push(patch::add("/spec/initContainers/1", proxy));
            }
            None => ops.push(patch::add("/spec/initContainers", json!([init, proxy]))),
        }
        let volumes = [
            sidecar::anchors_volume(),
            sidecar::token_volume(&self.template),
        ];
        match spec.get("volumes").and_then(Value::as_array) {
            Some(_) => ops.extend(volumes.map(|v| patch::add("/spec/volumes/-", v))),
            None => ops.push(patch::add("/spec/volumes", json!(volumes))),
        }
        let mut added = Map::new();
        added.insert(
            annotations::TRUST_ANCHORS.to_owned(),
            Value::String(trust_anchors.to_owned()),
        );
        let scraped =
            annotations.is_some_and(|a| a.keys().any(|k| k.starts_with("prometheus.io/")));
        // The app's own scrape settings win: the proxy's metrics are then scraped by other means.
        if self.template.scrape_annotations && !scraped {
            let port = self.template.ports.admin.to_string();
            for (key, value) in [
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", port.as_str()),
                ("prometheus.io/path", "/metrics"),
            ] {
                added.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        }
        match (has_metadata, annotations) {
            (false, _) => ops.push(patch::add("/metadata", json!({"annotations": added}))),
            (true, None) => ops.push(patch::add("/metadata/annotations", Value::Object(added))),
            (true, Some(_)) => {
                for (key, value) in added {
                    let path = format!("/metadata/annotations/{}", patch::escape(&key));
                    ops.push(patch::add(&path, value));
                }
            }
        }
        ops
    }
}

/// The pod's own `shoal.io/inject` (label or annotation): `Some(true)` enabled, `Some(false)` disabled,
/// `None` unset (the namespace decided).
fn opt_in(
    labels: Option<&Map<String, Value>>,
    annotations: Option<&Map<String, Value>>,
) -> Result<Option<bool>, Denied> {
    let read = |what: &str, map: Option<&Map<String, Value>>| match map.and_then(|m| m.get(INJECT))
    {
        None => Ok(None),
        Some(Value::String(s)) if s == "enabled" => Ok(Some(true)),
        Some(Value::String(s)) if s == "disabled" => Ok(Some(false)),
        Some(other) => Err(Denied(format!(
            "{what} {INJECT}={other}: expected enabled or disabled"
        ))),
    };
    let (label, annotation) = (read("label", labels)?, read("annotation", annotations)?);
    match (label, annotation) {
        (Some(l), Some(a)) if l != a => Err(Denied(format!(
            "label {INJECT} and annotation {INJECT} disagree ({} and {}): keep one",
            word(l),
            word(a)
        ))),
        (label, annotation) => Ok(label.or(annotation)),
    }
}

fn word(enabled: bool) -> &'static str {
    if enabled { "enabled" } else { "disabled" }
}

/// Whether the pod already has its sidecar. A container that merely takes one of the injector's names is a
/// conflict the API server would refuse later with a less helpful message.
fn already_injected(spec: &Map<String, Value>) -> Result<bool, Denied> {
    let names = |field: &str| -> Vec<&str> {
        spec.get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str))
            .collect()
    };
    let (init, main, volumes) = (
        names("initContainers"),
        names("containers"),
        names("volumes"),
    );
    if init.contains(&INIT_NAME) && init.contains(&PROXY_NAME) && volumes.contains(&ANCHORS_VOLUME)
    {
        return Ok(true);
    }
    for name in [INIT_NAME, PROXY_NAME] {
        if init.contains(&name) || main.contains(&name) {
            return Err(Denied(format!(
                "the pod has a container named {name}, which the sidecar injector adds: rename it, or opt the pod out with {INJECT}=disabled"
            )));
        }
    }
    for name in [ANCHORS_VOLUME, TOKEN_VOLUME] {
        if volumes.contains(&name) {
            return Err(Denied(format!(
                "the pod has a volume named {name}, which the sidecar injector adds: rename it, or opt the pod out with {INJECT}=disabled"
            )));
        }
    }
    Ok(false)
}

/// A request above its limit would make the API server refuse the pod without naming the annotation.
fn check_resources(inputs: &Inputs<'_>) -> Result<(), Denied> {
    use annotations::{
        PROXY_CPU_LIMIT, PROXY_CPU_REQUEST, PROXY_MEMORY_LIMIT, PROXY_MEMORY_REQUEST,
    };
    let o: &Overrides = inputs.overrides;
    let effective = sidecar::effective_resources(inputs);
    let value = |kind: &str, name: &str| {
        effective
            .iter()
            .find(|(k, n, _)| *k == kind && *n == name)
            .and_then(|(_, _, v)| v.clone())
    };
    for (name, request_key, limit_key, request_set, limit_set) in [
        (
            "cpu",
            PROXY_CPU_REQUEST,
            PROXY_CPU_LIMIT,
            &o.cpu_request,
            &o.cpu_limit,
        ),
        (
            "memory",
            PROXY_MEMORY_REQUEST,
            PROXY_MEMORY_LIMIT,
            &o.memory_request,
            &o.memory_limit,
        ),
    ] {
        let (Some(request), Some(limit)) = (value("requests", name), value("limits", name)) else {
            continue;
        };
        // Both parse: the template is validated and the annotations were checked by `annotations::read`.
        let (Ok(r), Ok(l)) = (quantity::parse(&request), quantity::parse(&limit)) else {
            continue;
        };
        if r > l {
            let request_from = if request_set.is_some() {
                format!("annotation {request_key}")
            } else {
                "the injector's default".to_owned()
            };
            let limit_from = if limit_set.is_some() {
                format!("annotation {limit_key}")
            } else {
                format!("the injector's default; set {limit_key} too")
            };
            return Err(Denied(format!(
                "the proxy's {name} request {request} ({request_from}) is more than its {name} limit {limit} ({limit_from})"
            )));
        }
    }
    Ok(())
}
