//! Shoal's custom resources: each object's spec read as `shoalctl apply` reads a document (the YAML format of
//! `cli::yaml`, then the wire conversion), checked by `model::validate::validate` against the Services the
//! cluster serves (Kubernetes Services and accepted Service resources), and served when accepted.
//!
//! - An accepted object is served as it is: its contributions go into the discovery hub under
//!   `kubernetes-crd/<kind>/<namespace>/<name>`, and its status says `Accepted=True`.
//! - A refused object gets `Accepted=False`, reason `Invalid`, the message naming the field. A new object that
//!   was never accepted serves nothing; an update that is refused keeps the last accepted version served (its
//!   message says so), as a refused `shoalctl apply` leaves the stored version.
//! - A deleted object stops being served.
//! - Like the store, each service has at most one policy of a kind: a second one (in namespace, name order) is
//!   refused naming the first.

use std::collections::BTreeMap;

use serde_json::json;

use super::status::{self, Condition};
use super::{Outcome, WATCHED, Watched};
use crate::discovery::hub::contributions;
use crate::model::validate::{self, FieldError, Invalid};
use crate::model::{Resource, ResourceKey, ResourceKind, Service, ServiceRef, Spec};
use crate::sources::kubernetes::cluster::Table;

/// The prefix of the catalog sources of served custom resources.
pub(crate) const SOURCE_PREFIX: &str = "kubernetes-crd/";

/// A custom resource's `spec` as the resource `shoalctl apply` would send for the document
/// `{kind, metadata: {name, namespace}, spec}`; the error names the field (`spec.rules[0]...`).
pub(crate) fn convert(
    kind: ResourceKind,
    namespace: &str,
    name: &str,
    spec: &serde_json::Value,
) -> Result<Resource, String> {
    let document = json!({
        "kind": crate::cli::kinds::yaml_name(kind),
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    // JSON is YAML: the very parser of `shoalctl apply`, unknown fields refused.
    let parsed = crate::cli::yaml::parse(&document.to_string()).map_err(|e| {
        e.strip_prefix("document 1: ")
            .map(str::to_owned)
            .unwrap_or(e)
    })?;
    let wire = parsed
        .into_iter()
        .next()
        .ok_or_else(|| "spec: required".to_owned())?
        .resource;
    Resource::try_from(wire).map_err(|invalid| invalid.to_string())
}

/// The custom resources served, by key, and the generation each served version came from.
#[derive(Debug, Default)]
pub(crate) struct Served {
    served: BTreeMap<ResourceKey, (Resource, i64)>,
}

impl Served {
    /// Re-evaluates every custom resource (see the module's doc); adds the catalog sources that changed and
    /// the wanted conditions to `outcome`. Returns the services known afterwards: `kubernetes` plus the
    /// served Service resources, by qualified name.
    pub(crate) fn evaluate(
        &mut self,
        tables: &[Table<Watched>; 10],
        kubernetes: &BTreeMap<String, Service>,
        outcome: &mut Outcome,
    ) -> BTreeMap<String, Service> {
        let mut services: BTreeMap<String, Service> = kubernetes.clone();
        let mut next: BTreeMap<ResourceKey, (Resource, i64)> = BTreeMap::new();
        // Per (kind, service): the policy served for it.
        let mut targets: BTreeMap<(ResourceKind, ServiceRef), ResourceKey> = BTreeMap::new();
        let mut unsynced = Vec::new();
        for (index, watched) in WATCHED.iter().enumerate() {
            let Some(kind) = watched.shoal else { continue };
            let table = &tables[index];
            if !table.synced() {
                unsynced.push(kind);
                continue;
            }
            let mut objects: Vec<_> = table.iter().collect();
            objects.sort_by(|a, b| a.0.cmp(b.0));
            // Services accepted in this pass join the catalog as they are (services come first).
            let mut catalog: Vec<Service> = services.values().cloned().collect();
            for ((namespace, name), object) in objects {
                let key = ResourceKey::new(kind, namespace, name);
                let checked = convert(kind, namespace, name, &object.spec)
                    .and_then(|resource| check(&resource, &catalog, &targets).map(|()| resource));
                let condition = match checked {
                    Ok(resource) => {
                        next.insert(key.clone(), (resource, object.generation));
                        Condition::accepted(object.generation, "the spec is served to proxies")
                    }
                    Err(message) => {
                        let kept = self.served.get(&key).cloned();
                        let message = match &kept {
                            Some((_, generation)) => format!(
                                "{message} (generation {generation}, the last accepted, is still served)"
                            ),
                            None => format!("{message} (nothing of it is served)"),
                        };
                        if let Some(kept) = kept {
                            next.insert(key.clone(), kept);
                        }
                        Condition::refused(object.generation, "Invalid", message)
                    }
                };
                if let Some((resource, _)) = next.get(&key) {
                    if let Spec::Service(s) = &resource.spec {
                        catalog.retain(|c| c.qualified() != s.qualified());
                        catalog.push(s.clone());
                        services.insert(s.qualified().to_string(), s.clone());
                    }
                    if let Some(target) = resource.spec.policy_target() {
                        targets.insert((kind, target.clone()), key.clone());
                    }
                }
                outcome.patches.push(status::StatusPatch::crd(
                    index,
                    namespace,
                    name,
                    &object.status,
                    condition,
                ));
            }
        }
        // Kinds still listing keep what they served.
        for (key, served) in &self.served {
            if unsynced.contains(&key.kind) {
                next.insert(key.clone(), served.clone());
            }
        }
        for key in self.served.keys().chain(next.keys()) {
            let (old, new) = (self.served.get(key), next.get(key));
            if old.map(|(r, _)| r) == new.map(|(r, _)| r) {
                continue;
            }
            let source = format!("{SOURCE_PREFIX}{}/{}/{}", key.kind, key.namespace, key.name);
            let contributed = new.map(|(r, _)| contributions(r)).unwrap_or_default();
            if !outcome.sources.iter().any(|(s, _)| *s == source) {
                outcome.sources.push((source, contributed));
            }
        }
        self.served = next;
        services
    }

    /// The services a served Shoal policy of `kind` is for (a Route, a Mirror: the Gateway API's routes, or
    /// their `RequestMirror` filters, are not served for them).
    pub(crate) fn targets(&self, kind: ResourceKind) -> BTreeMap<ServiceRef, ResourceKey> {
        (self.served.iter())
            .filter(|(key, _)| key.kind == kind)
            .filter_map(|(key, (resource, _))| {
                Some((resource.spec.policy_target()?.clone(), key.clone()))
            })
            .collect()
    }
}

/// `model::validate::validate` against `catalog`, and one policy of a kind per service.
fn check(
    resource: &Resource,
    catalog: &dyn validate::Catalog,
    targets: &BTreeMap<(ResourceKind, ServiceRef), ResourceKey>,
) -> Result<(), String> {
    validate::validate(resource, catalog).map_err(|invalid| invalid.to_string())?;
    let key = resource.key();
    if let Some(target) = resource.spec.policy_target()
        && let Some(first) = targets.get(&(key.kind, target.clone()))
        && *first != key
    {
        let field = match &resource.spec {
            Spec::Route(_) => "spec.parent_service",
            Spec::BackendPolicy(_) => "spec.service",
            _ => "spec.target_service",
        };
        let invalid = Invalid {
            subject: key.to_string(),
            errors: vec![FieldError::new(
                field,
                format!(
                    "service {target} already has a {} ({first}); a service has one of each policy",
                    key.kind
                ),
            )],
        };
        return Err(invalid.to_string());
    }
    Ok(())
}
