//! Reading admin requests: resource keys, kind and namespace filters, resources from the wire. Errors name the
//! request field.

use shoal_proto::v1;
use tonic::Status;

use super::errors::{bad_field, from_invalid};
use crate::model::{DEFAULT_NAMESPACE, Resource, ResourceKey, ResourceKind};

/// The resource of a write request, converted to the domain (not yet validated: the store does that).
pub(super) fn resource(wire: Option<v1::Resource>) -> Result<Resource, Status> {
    let wire = wire.ok_or_else(|| bad_field("resource", "required"))?;
    Resource::try_from(wire).map_err(|invalid| from_invalid(&invalid))
}

/// The key named by a `Get`/`Delete`-style request; an empty namespace means `default`.
pub(super) fn key(kind: i32, namespace: &str, name: &str) -> Result<ResourceKey, Status> {
    let kind = kind_filter(kind)?.ok_or_else(|| {
        bad_field(
            "kind",
            "required: the kind of the resource (RESOURCE_KIND_SERVICE, ...)",
        )
    })?;
    if name.is_empty() {
        return Err(bad_field("name", "required: the resource's name"));
    }
    Ok(ResourceKey::new(
        kind,
        namespace_or_default(namespace),
        name,
    ))
}

/// A kind in `List`/`Watch`: `UNSPECIFIED` means every kind.
pub(super) fn kind_filter(kind: i32) -> Result<Option<ResourceKind>, Status> {
    let wire = v1::ResourceKind::try_from(kind)
        .map_err(|_| bad_field("kind", format!("unknown resource kind {kind}")))?;
    match wire {
        v1::ResourceKind::Unspecified => Ok(None),
        wire => ResourceKind::try_from(wire)
            .map(Some)
            .map_err(|e| bad_field("kind", e.reason)),
    }
}

/// A namespace in `List`/`Watch`: empty means every namespace.
pub(super) fn namespace_filter(namespace: &str) -> Option<&str> {
    Some(namespace).filter(|ns| !ns.is_empty())
}

/// A namespace naming one resource: empty means `default`, as in `metadata.namespace`.
pub(super) fn namespace_or_default(namespace: &str) -> &str {
    if namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        namespace
    }
}

/// Whether a resource passes a `Watch` filter.
pub(super) fn matches(resource: &Resource, kind: Option<ResourceKind>, ns: Option<&str>) -> bool {
    kind.is_none_or(|kind| resource.kind() == kind)
        && ns.is_none_or(|ns| resource.metadata.namespace == ns)
}
