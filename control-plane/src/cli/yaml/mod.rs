//! The YAML format of `shoalctl apply` and `get -o yaml|json`: kubectl-style documents
//!
//! ```yaml
//! kind: Route
//! metadata: {name: backend, namespace: default}
//! spec: {parent_service: backend, rules: [...]}
//! ```
//!
//! whose `spec` fields are the `shoal.v1` proto fields, in snake_case, with enums as lowercase names
//! (`protocol: grpc`). Keeping the proto's names means the server's validation errors (`spec.rules[0].
//! backends`) point at exactly what the operator wrote. Unknown fields are errors, so typos never pass.

mod backend;
mod common;
mod policy;
mod route;
mod service;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_proto::v1;

use super::kinds;
use crate::model::ResourceKind;
pub use common::Meta;

/// One document's spec in YAML form, convertible to and from the wire.
trait SpecYaml: Serialize + DeserializeOwned {
    /// The wire spec; the error names the field (`spec.rules[0]...: ...`).
    fn into_wire(self) -> Result<v1::resource::Spec, String>;
    /// The YAML form of a wire spec, if it is this kind.
    fn from_wire(spec: &v1::resource::Spec) -> Option<Self>;
}

/// A whole document of one kind.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document<S> {
    kind: String,
    metadata: Meta,
    spec: S,
}

/// A resource read from a YAML stream.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// 1-based position among the stream's non-empty documents.
    pub index: usize,
    /// The resource, ready for `Apply`.
    pub resource: v1::Resource,
}

/// Just enough of a document to pick its kind.
#[derive(Deserialize)]
struct Header {
    kind: Option<String>,
}

/// Reads every document of a YAML stream. Fails on the first problem, naming the document (1-based) and,
/// for syntax and type errors, the line.
pub fn parse(text: &str) -> Result<Vec<Parsed>, String> {
    // First pass: each document's kind (and every syntax error, before anything is converted).
    let mut kinds = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let at = |e: String| format!("document {}: {e}", i + 1);
        // A syntax error repeats for every later document: stop at the first.
        let value = serde_yaml_ng::Value::deserialize(document).map_err(|e| at(e.to_string()))?;
        if value.is_null() {
            kinds.push(None);
            continue;
        }
        let header = Header::deserialize(value).map_err(|e| {
            at(format!(
                "expected a mapping with kind, metadata and spec ({e})"
            ))
        })?;
        let kind = header.kind.ok_or_else(|| {
            at(format!(
                "missing `kind`; valid kinds: {}",
                kinds::valid_names()
            ))
        })?;
        kinds.push(Some(kinds::parse(&kind).map_err(at)?));
    }
    // Second pass: each document as its kind, so errors carry the field path and line.
    let documents = serde_yaml_ng::Deserializer::from_str(text);
    let mut parsed = Vec::new();
    for (i, (document, kind)) in documents.zip(kinds).enumerate() {
        let Some(kind) = kind else { continue };
        let resource = typed(kind, document).map_err(|e| format!("document {}: {e}", i + 1))?;
        let index = parsed.len() + 1;
        parsed.push(Parsed { index, resource });
    }
    Ok(parsed)
}

fn typed(
    kind: ResourceKind,
    document: serde_yaml_ng::Deserializer<'_>,
) -> Result<v1::Resource, String> {
    match kind {
        ResourceKind::Service => read::<service::ServiceSpec>(kind, document),
        ResourceKind::EndpointRegistration => read::<service::RegistrationSpec>(kind, document),
        ResourceKind::Route => read::<route::RouteSpec>(kind, document),
        ResourceKind::BackendPolicy => read::<backend::BackendPolicySpec>(kind, document),
        ResourceKind::AuthorizationPolicy => read::<policy::AuthorizationSpec>(kind, document),
        ResourceKind::RateLimit => read::<policy::RateLimitSpec>(kind, document),
        ResourceKind::FaultInjection => read::<policy::FaultInjectionSpec>(kind, document),
        ResourceKind::Mirror => read::<policy::MirrorSpec>(kind, document),
    }
}

fn read<S: SpecYaml>(
    kind: ResourceKind,
    document: serde_yaml_ng::Deserializer<'_>,
) -> Result<v1::Resource, String> {
    // `path: {prefix: /api}` rather than YAML tags (`path: !prefix /api`) for the spec's oneofs.
    let document: Document<S> = serde_yaml_ng::with::singleton_map_recursive::deserialize(document)
        .map_err(|e| e.to_string())?;
    Ok(v1::Resource {
        kind: v1::ResourceKind::from(kind).into(),
        metadata: Some(document.metadata.into_wire()),
        spec: Some(document.spec.into_wire()?),
    })
}

/// A document of any kind, for printing: serialises as the document itself, fields in spec order.
#[derive(Serialize)]
#[serde(transparent)]
pub struct AnyDocument(Any);

#[derive(Serialize)]
#[serde(untagged)]
enum Any {
    /// `kind: Service`.
    Service(Document<service::ServiceSpec>),
    /// `kind: EndpointRegistration`.
    EndpointRegistration(Document<service::RegistrationSpec>),
    /// `kind: Route`.
    Route(Document<route::RouteSpec>),
    /// `kind: BackendPolicy`.
    BackendPolicy(Document<backend::BackendPolicySpec>),
    /// `kind: AuthorizationPolicy`.
    AuthorizationPolicy(Document<policy::AuthorizationSpec>),
    /// `kind: RateLimit`.
    RateLimit(Document<policy::RateLimitSpec>),
    /// `kind: FaultInjection`.
    FaultInjection(Document<policy::FaultInjectionSpec>),
    /// `kind: Mirror`.
    Mirror(Document<policy::MirrorSpec>),
}

impl AnyDocument {
    /// The document form of a wire resource (what `get -o yaml|json` prints), or `None` for a resource this
    /// build does not know.
    pub fn from_wire(resource: &v1::Resource) -> Option<Self> {
        use v1::resource::Spec as Wire;
        let spec = resource.spec.as_ref()?;
        let meta = Meta::from_wire(resource.metadata.clone().unwrap_or_default());
        let any = match spec {
            Wire::Service(_) => Any::Service(document(spec, meta)?),
            Wire::EndpointRegistration(_) => Any::EndpointRegistration(document(spec, meta)?),
            Wire::Route(_) => Any::Route(document(spec, meta)?),
            Wire::BackendPolicy(_) => Any::BackendPolicy(document(spec, meta)?),
            Wire::AuthorizationPolicy(_) => Any::AuthorizationPolicy(document(spec, meta)?),
            Wire::RateLimit(_) => Any::RateLimit(document(spec, meta)?),
            Wire::FaultInjection(_) => Any::FaultInjection(document(spec, meta)?),
            Wire::Mirror(_) => Any::Mirror(document(spec, meta)?),
        };
        Some(Self(any))
    }

    /// The document as YAML, in the format `parse` reads (oneofs as `{prefix: /api}`, not YAML tags).
    pub fn to_yaml(&self) -> Result<String, String> {
        let mut text = Vec::new();
        let mut serializer = serde_yaml_ng::Serializer::new(&mut text);
        serde_yaml_ng::with::singleton_map_recursive::serialize(self, &mut serializer)
            .map_err(|e| e.to_string())?;
        String::from_utf8(text).map_err(|e| e.to_string())
    }
}

fn document<S: SpecYaml>(spec: &v1::resource::Spec, metadata: Meta) -> Option<Document<S>> {
    let kind = ResourceKind::try_from(kind_of(spec)).ok()?;
    Some(Document {
        kind: kinds::yaml_name(kind).to_owned(),
        metadata,
        spec: S::from_wire(spec)?,
    })
}

/// The kind a wire spec is.
pub fn kind_of(spec: &v1::resource::Spec) -> v1::ResourceKind {
    use v1::resource::Spec as Wire;
    match spec {
        Wire::Service(_) => v1::ResourceKind::Service,
        Wire::EndpointRegistration(_) => v1::ResourceKind::EndpointRegistration,
        Wire::Route(_) => v1::ResourceKind::Route,
        Wire::BackendPolicy(_) => v1::ResourceKind::BackendPolicy,
        Wire::AuthorizationPolicy(_) => v1::ResourceKind::AuthorizationPolicy,
        Wire::RateLimit(_) => v1::ResourceKind::RateLimit,
        Wire::FaultInjection(_) => v1::ResourceKind::FaultInjection,
        Wire::Mirror(_) => v1::ResourceKind::Mirror,
    }
}

#[cfg(test)]
mod tests;
