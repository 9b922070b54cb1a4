//! Conversion at the edge between the wire (`shoal.v1`) and the domain model: `TryFrom<v1::X>` for every domain
//! type (errors name the field), `From<&domain>` and `From<domain>` for the wire types.
//!
//! Conversion only maps shapes: integers to ports, enum numbers to enums, 0 and "" to `None` (the wire's "not
//! set"), strings to addresses and service references. Whether values make sense is [`crate::model::validate`]'s
//! job, so a converted resource must still be validated before it is stored.
//!
//! Service names in specs: the admin API accepts a bare `backend` for `backend.<resource namespace>`, so the
//! [`v1::Resource`] conversion qualifies them; the per-type conversions (used for discovery payloads) require
//! qualified names. Outgoing names are always qualified.

mod backend;
mod policy;
mod route;
mod service;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::time::Duration;

use shoal_proto::v1;

use crate::model::validate::{FieldError, Invalid};
use crate::model::{DEFAULT_NAMESPACE, Metadata, Resource, ResourceKind, ServiceRef, Spec};

/// Implements `From<domain> for wire` by way of `From<&domain>`, so callers holding either can convert.
macro_rules! by_value {
    ($($domain:ty => $wire:ty),* $(,)?) => {
        $(impl From<$domain> for $wire {
            fn from(value: $domain) -> Self {
                Self::from(&value)
            }
        })*
    };
}
pub(crate) use by_value;

/// Implements `TryFrom<wire>` through a function that also takes the namespace for bare service names
/// (`None` here: outside an admin `Resource`, names must be qualified).
macro_rules! qualified_only {
    ($($wire:ty => $domain:ty: $convert:path),* $(,)?) => {
        $(impl TryFrom<$wire> for $domain {
            type Error = FieldError;

            fn try_from(wire: $wire) -> Result<Self, FieldError> {
                $convert(wire, None)
            }
        })*
    };
}
pub(crate) use qualified_only;

impl TryFrom<v1::Resource> for Resource {
    type Error = Invalid;

    /// Converts an admin API resource: fills in the namespace (`default`) and the service spec's name and
    /// namespace, qualifies bare service names with the resource's namespace, and checks that `kind` matches
    /// the spec. `metadata.resource_version` is carried over as is (the store overwrites it on write).
    fn try_from(wire: v1::Resource) -> Result<Self, Invalid> {
        let wire_meta = wire.metadata.unwrap_or_default();
        let namespace = match wire_meta.namespace.as_str() {
            "" => DEFAULT_NAMESPACE.to_owned(),
            namespace => namespace.to_owned(),
        };
        let metadata = Metadata {
            name: wire_meta.name,
            namespace,
            resource_version: wire_meta.resource_version,
            labels: wire_meta.labels.into_iter().collect(),
        };
        let kind = enumeration::<v1::ResourceKind>(wire.kind, "kind")
            .and_then(|kind| ResourceKind::try_from(kind).map_err(|e| e.within("kind")));
        let spec = match wire.spec {
            None => Err(FieldError::new("spec", "required: the resource's content")),
            Some(spec) => spec_from_wire(spec, &metadata).map_err(|e| e.within("spec")),
        };
        let subject = |kind: &str| format!("{kind} {}.{}", metadata.name, metadata.namespace);
        match (kind, spec) {
            (Ok(kind), Ok(spec)) if kind == spec.kind() => Ok(Self { metadata, spec }),
            (Ok(kind), Ok(spec)) => Err(Invalid {
                subject: subject(kind.as_str()),
                errors: vec![FieldError::new(
                    "kind",
                    format!("is {kind} but the spec is a {}", spec.kind()),
                )],
            }),
            (kind, spec) => {
                let name = spec.as_ref().ok().map(|s| s.kind().as_str());
                let name = name.or(kind.as_ref().ok().map(|k| k.as_str()));
                let errors = [kind.err(), spec.err()].into_iter().flatten().collect();
                Err(Invalid {
                    subject: subject(name.unwrap_or("resource")),
                    errors,
                })
            }
        }
    }
}

fn spec_from_wire(spec: v1::resource::Spec, meta: &Metadata) -> Result<Spec, FieldError> {
    use v1::resource::Spec as Wire;
    let ns = Some(meta.namespace.as_str());
    Ok(match spec {
        Wire::Service(mut service) => {
            // The admin API lets the spec leave them out: the metadata already says them.
            if service.name.is_empty() {
                service.name.clone_from(&meta.name);
            }
            if service.namespace.is_empty() {
                service.namespace.clone_from(&meta.namespace);
            }
            Spec::Service(service.try_into()?)
        }
        Wire::EndpointRegistration(r) => Spec::EndpointRegistration(service::registration(r, ns)?),
        Wire::Route(route) => Spec::Route(route::route(route, ns)?),
        Wire::BackendPolicy(p) => Spec::BackendPolicy(backend::backend_policy(p, ns)?),
        Wire::AuthorizationPolicy(p) => Spec::AuthorizationPolicy(policy::authorization(p, ns)?),
        Wire::RateLimit(limit) => Spec::RateLimit(policy::rate_limit(limit, ns)?),
        Wire::FaultInjection(fault) => Spec::FaultInjection(policy::fault_injection(fault, ns)?),
        Wire::Mirror(mirror) => Spec::Mirror(policy::mirror(mirror, ns)?),
    })
}

impl From<&Resource> for v1::Resource {
    fn from(resource: &Resource) -> Self {
        use v1::resource::Spec as Wire;
        let meta = &resource.metadata;
        let spec = match &resource.spec {
            Spec::Service(s) => Wire::Service(s.into()),
            Spec::EndpointRegistration(r) => Wire::EndpointRegistration(r.into()),
            Spec::Route(r) => Wire::Route(r.into()),
            Spec::BackendPolicy(p) => Wire::BackendPolicy(p.into()),
            Spec::AuthorizationPolicy(p) => Wire::AuthorizationPolicy(p.into()),
            Spec::RateLimit(l) => Wire::RateLimit(l.into()),
            Spec::FaultInjection(f) => Wire::FaultInjection(f.into()),
            Spec::Mirror(m) => Wire::Mirror(m.into()),
        };
        Self {
            kind: v1::ResourceKind::from(resource.kind()).into(),
            metadata: Some(v1::Metadata {
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                resource_version: meta.resource_version,
                labels: meta.labels.clone().into_iter().collect(),
            }),
            spec: Some(spec),
        }
    }
}

by_value!(Resource => v1::Resource);

impl TryFrom<v1::ResourceKind> for ResourceKind {
    type Error = FieldError;

    /// Fails for `UNSPECIFIED`, which only `List` and `Watch` accept (meaning every kind).
    fn try_from(kind: v1::ResourceKind) -> Result<Self, FieldError> {
        use v1::ResourceKind as Wire;
        Ok(match kind {
            Wire::Unspecified => return Err(FieldError::new("", "required: a resource kind")),
            Wire::Service => Self::Service,
            Wire::EndpointRegistration => Self::EndpointRegistration,
            Wire::Route => Self::Route,
            Wire::BackendPolicy => Self::BackendPolicy,
            Wire::AuthorizationPolicy => Self::AuthorizationPolicy,
            Wire::RateLimit => Self::RateLimit,
            Wire::FaultInjection => Self::FaultInjection,
            Wire::Mirror => Self::Mirror,
        })
    }
}

impl From<ResourceKind> for v1::ResourceKind {
    fn from(kind: ResourceKind) -> Self {
        match kind {
            ResourceKind::Service => Self::Service,
            ResourceKind::EndpointRegistration => Self::EndpointRegistration,
            ResourceKind::Route => Self::Route,
            ResourceKind::BackendPolicy => Self::BackendPolicy,
            ResourceKind::AuthorizationPolicy => Self::AuthorizationPolicy,
            ResourceKind::RateLimit => Self::RateLimit,
            ResourceKind::FaultInjection => Self::FaultInjection,
            ResourceKind::Mirror => Self::Mirror,
        }
    }
}

impl From<ResourceKind> for v1::ResourceType {
    /// The discovery type a kind is served as: registrations become their service's `ENDPOINTS`; every other
    /// kind is served under its own type, named after the service it is for.
    fn from(kind: ResourceKind) -> Self {
        match kind {
            ResourceKind::Service => Self::Service,
            ResourceKind::EndpointRegistration => Self::Endpoints,
            ResourceKind::Route => Self::Route,
            ResourceKind::BackendPolicy => Self::BackendPolicy,
            ResourceKind::AuthorizationPolicy => Self::AuthorizationPolicy,
            ResourceKind::RateLimit => Self::RateLimit,
            ResourceKind::FaultInjection => Self::FaultInjection,
            ResourceKind::Mirror => Self::Mirror,
        }
    }
}

/// A port number: must fit 16 bits (0 passes; validation decides where it is allowed).
fn port(value: u32, field: &str) -> Result<u16, FieldError> {
    u16::try_from(value)
        .map_err(|_| FieldError::new(field, format!("{value} is not a port (1–65535)")))
}

/// A port where the wire's 0 means "not set".
fn optional_port(value: u32, field: &str) -> Result<Option<u16>, FieldError> {
    Ok(Some(port(value, field)?).filter(|&p| p != 0))
}

/// A wire number where 0 means "not set".
fn nonzero<T: Default + PartialEq>(value: T) -> Option<T> {
    Some(value).filter(|v| *v != T::default())
}

/// A wire string where "" means "not set".
fn text(value: String) -> Option<String> {
    Some(value).filter(|v| !v.is_empty())
}

fn millis(value: u64) -> Option<Duration> {
    nonzero(value).map(Duration::from_millis)
}

fn to_millis(value: Option<Duration>) -> u64 {
    value.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A wire enum; unknown numbers (from a newer peer) are an error rather than silently a default.
fn enumeration<E: TryFrom<i32>>(value: i32, field: &str) -> Result<E, FieldError> {
    E::try_from(value).map_err(|_| FieldError::new(field, format!("unknown value {value}")))
}

fn service_ref(
    value: &str,
    namespace: Option<&str>,
    field: &str,
) -> Result<ServiceRef, FieldError> {
    ServiceRef::parse(value, namespace).map_err(|reason| FieldError::new(field, reason))
}

fn ip(value: &str, field: &str) -> Result<IpAddr, FieldError> {
    value.parse().map_err(|_| {
        FieldError::new(
            field,
            format!("{value:?} is not an IP address (without port)"),
        )
    })
}

/// Converts every element, naming the failing one `field[i]`.
fn each<W, D>(
    items: Vec<W>,
    field: &str,
    mut convert: impl FnMut(W) -> Result<D, FieldError>,
) -> Result<Vec<D>, FieldError> {
    let indexed = items.into_iter().enumerate();
    indexed
        .map(|(i, item)| convert(item).map_err(|e| e.within(&format!("{field}[{i}]"))))
        .collect()
}
