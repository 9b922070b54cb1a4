//! From Kubernetes objects to Shoal's model: a `Service` becomes a [`model::Service`], an `EndpointSlice` a
//! small [`Slice`], a `Pod` the SPIFFE id of its service account; [`endpoints`] joins them into a service's
//! endpoint list. Pure functions, no I/O (docs/kubernetes.md, "Discovery", is the mapping's reference).
//!
//! Only what the mapping needs is kept of each object: a cluster holds many pods and slices, and the full
//! objects are dropped as soon as they are projected.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::identity::spiffe::{TrustDomain, WorkloadId};
use crate::model::validate::validate;
use crate::model::{self, Endpoint, Metadata, Protocol, Resource, ServicePort, Spec};

/// The label the EndpointSlice controller puts on every slice, naming its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The container the sidecar injector adds (`inject`): a pod with it has a Shoal proxy, so its endpoints get
/// the identity of its service account.
pub(crate) const PROXY_CONTAINER: &str = "shoal-proxy";

/// Namespace and name of an object.
pub(crate) type ObjKey = (String, String);

/// The key of an object with `metadata`.
pub(crate) fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A Service as Shoal serves it, or why it is left out. `Ok(None)`: not a service proxies can call
/// (`ExternalName`, or no TCP port); `Err`: a service Shoal cannot represent (the message says why).
pub(crate) fn service(svc: &KubeService) -> Result<Option<model::Service>, String> {
    let (namespace, name) = key_of(&svc.metadata);
    let Some(spec) = &svc.spec else {
        return Ok(None);
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        // The mesh carries TCP only (UDP and SCTP pass beside it).
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("spec.ports[{i}].port {} is not a port", p.port))?;
        let target_port = match &p.target_port {
            Some(IntOrString::Int(t)) => Some(
                u16::try_from(*t)
                    .ok()
                    .filter(|t| *t != 0)
                    .ok_or_else(|| format!("spec.ports[{i}].targetPort {t} is not a port"))?,
            )
            .filter(|t| *t != port),
            // A named target port may be a different number in every pod: the EndpointSlices carry the
            // resolved number per endpoint, which is where the proxy connects.
            Some(IntOrString::String(_)) | None => None,
        };
        let name = p.name.clone().unwrap_or_default();
        ports.push(ServicePort {
            protocol: protocol(p.app_protocol.as_deref(), &name),
            name,
            port,
            target_port,
            tls_mode: None,
        });
    }
    if ports.is_empty() {
        return Ok(None);
    }
    let mut virtual_addresses: Vec<IpAddr> = Vec::new();
    let ips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter());
    for ip in ips {
        // `None` marks a headless service: no virtual address, clients resolve the pods directly.
        if let Ok(ip) = ip.parse::<IpAddr>()
            && !virtual_addresses.contains(&ip)
        {
            virtual_addresses.push(ip);
        }
    }
    let service = model::Service {
        name,
        namespace,
        ports,
        virtual_addresses,
        hosts: Vec::new(),
        tls_mode: None,
    };
    // The checks a stored Service passes, which are the ones a proxy makes when it is pushed: the API
    // server's own validation makes a failure unlikely, but a proxy must never be sent what it refuses.
    let resource = Resource {
        metadata: Metadata {
            name: service.name.clone(),
            namespace: service.namespace.clone(),
            ..Metadata::default()
        },
        spec: Spec::Service(service.clone()),
    };
    validate(&resource, &Vec::new()).map_err(|invalid| invalid.to_string())?;
    Ok(Some(service))
}

/// A port's protocol from its `appProtocol` (the standard field), else from its name's prefix (the
/// convention Istio and Linkerd users already follow: `http`, `http-web`, `grpc-api`...). Anything else is
/// detected by the proxy per connection.
fn protocol(app_protocol: Option<&str>, name: &str) -> Protocol {
    let by = |word: &str| match word {
        "http" | "http1" => Some(Protocol::Http1),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        "tcp" => Some(Protocol::Opaque),
        _ => None,
    };
    if let Some(p) = app_protocol.and_then(|a| by(&a.to_ascii_lowercase())) {
        return p;
    }
    let prefix = name.split('-').next().unwrap_or_default();
    by(prefix).unwrap_or(Protocol::Detect)
}

/// What Shoal keeps of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slice {
    /// The Service it belongs to (same namespace).
    pub service: String,
    /// Its TCP ports: name (empty for an unnamed port) and number.
    pub ports: Vec<(String, u16)>,
    /// Its endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of a [`Slice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SliceEndpoint {
    /// Its addresses (one in practice).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`; an unset condition counts as ready, as Kubernetes documents.
    pub ready: bool,
    /// `conditions.serving`; unset means the same as `ready`.
    pub serving: bool,
    /// `conditions.terminating`; unset means not terminating.
    pub terminating: bool,
    /// `zone`, empty if unset.
    pub zone: String,
    /// The pod behind it (`targetRef` of kind `Pod`), in the slice's namespace.
    pub pod: Option<String>,
}

/// The projection of an EndpointSlice; `None` for slices Shoal does not use (no service label, or FQDN
/// addresses).
pub(crate) fn slice(s: &EndpointSlice) -> Option<Slice> {
    let service = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    if s.address_type != "IPv4" && s.address_type != "IPv6" {
        return None;
    }
    let (namespace, _) = key_of(&s.metadata);
    let ports = (s.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok().filter(|p| *p != 0)?;
            Some((p.name.clone().unwrap_or_default(), port))
        })
        .collect();
    let endpoints = (s.endpoints.iter())
        .map(|e| {
            let conditions = e.conditions.clone().unwrap_or_default();
            let ready = conditions.ready.unwrap_or(true);
            let pod = e.target_ref.as_ref().filter(|r| {
                r.kind.as_deref() == Some("Pod")
                    && r.namespace.as_deref().is_none_or(|ns| ns == namespace)
            });
            SliceEndpoint {
                addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
                zone: e.zone.clone().unwrap_or_default(),
                pod: pod.and_then(|r| r.name.clone()),
            }
        })
        .collect();
    Some(Slice {
        service,
        ports,
        endpoints,
    })
}

/// The SPIFFE id of a pod's endpoints: `spiffe://<td>/ns/<namespace>/sa/<service account>` for a pod with
/// Shoal's sidecar (its proxy presents that identity), `None` for a pod outside the mesh (it is called in
/// plain text) or whose service account is not a DNS label (no certificate can name it).
pub(crate) fn pod_identity(pod: &Pod, trust_domain: &TrustDomain) -> Option<String> {
    let (namespace, _) = key_of(&pod.metadata);
    let spec = pod.spec.as_ref()?;
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    if !containers.into_iter().any(|c| c.name == PROXY_CONTAINER) {
        return None;
    }
    let account = spec.service_account_name.as_deref().unwrap_or("default");
    let workload = WorkloadId::new(&namespace, account).ok()?;
    Some(workload.spiffe_id(trust_domain))
}

/// A service's endpoints: for every port of `service`, every address of every slice endpoint whose slice has
/// a port of the same name (the EndpointSlice controller names slice ports after the service's, and resolves
/// named target ports per pod), connected to on the slice's port number and serving that service port.
///
/// `ready` follows the endpoint's `ready` condition, so a not-ready or terminating endpoint keeps its
/// connections but gets no new requests. When a service port has no ready endpoint at all, its endpoints that
/// are still `serving` while `terminating` are used instead (what kube-proxy does), so a rollout that
/// replaces every pod at once does not fail requests while the old pods drain.
pub(crate) fn endpoints<'a>(
    service: &model::Service,
    slices: impl Iterator<Item = &'a Slice> + Clone,
    identity: impl Fn(&str) -> Option<String>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for sp in &service.ports {
        let first = out.len();
        let mut fallback = Vec::new();
        for slice in slices.clone() {
            let Some((_, port)) = slice.ports.iter().find(|(name, _)| *name == sp.name) else {
                continue;
            };
            for e in &slice.endpoints {
                let identity = e.pod.as_deref().and_then(&identity);
                for address in &e.addresses {
                    if !e.ready && e.serving && e.terminating {
                        fallback.push(out.len());
                    }
                    out.push(Endpoint {
                        address: *address,
                        port: *port,
                        weight: 1,
                        zone: e.zone.clone(),
                        identity: identity.clone(),
                        ready: e.ready,
                        service_port: Some(sp.port),
                    });
                }
            }
        }
        if !out[first..].iter().any(|e| e.ready) {
            for i in fallback {
                out[i].ready = true;
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
