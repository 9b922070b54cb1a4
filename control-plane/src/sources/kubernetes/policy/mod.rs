//! Policy from Kubernetes (`SHOAL_CP_KUBERNETES=true`): Shoal's custom resources (`shoal.io/v1alpha1`, one
//! CRD per kind, charts/shoal/crds) and the Gateway API's `HTTPRoute` and `GRPCRoute` attached to a Service
//! (GAMMA), watched beside Services, EndpointSlices and Pods (docs/kubernetes.md, "Policy as custom resources",
//! "Gateway API").
//!
//! - [`crd`]: a custom resource's spec through the same path as `shoalctl apply` (the YAML document format,
//!   the wire conversion, `model::validate`), and which resources are served.
//! - [`gateway`]: the translation of `HTTPRoute` and `GRPCRoute` into Shoal routes, refusing (naming the field)
//!   what the proxy would not enforce.
//! - [`status`]: the `Accepted` condition written back with the status subresource.
//!
//! The seam: accepted resources are contributed to the discovery hub as their own catalog sources
//! (`kubernetes-crd/<kind>/<namespace>/<name>`, `kubernetes-gateway/<service>`), with exactly what a stored
//! resource contributes (`discovery::hub::contributions`). The redb store is not written: in Kubernetes mode the
//! API server is the source of truth, and the store keeps the CA and registrations only.

pub(crate) mod crd;
pub(crate) mod gateway;
pub(crate) mod status;

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;

use super::cluster::{Event, Table};
use super::translate::ObjKey;
use crate::discovery::catalog::{Contribution, Key};
use crate::model::{ResourceKind, Service};

/// A watched policy kind.
#[derive(Debug)]
pub(crate) struct WatchedKind {
    /// API group.
    pub(crate) group: &'static str,
    /// API version.
    pub(crate) version: &'static str,
    /// `kind`.
    pub(crate) kind: &'static str,
    /// Plural (the resource path).
    pub(crate) plural: &'static str,
    /// The Shoal kind of a Shoal custom resource; `None` for a Gateway API route.
    pub(crate) shoal: Option<ResourceKind>,
    /// `<plural>.<group>`: the `kind` label of metrics and logs.
    pub(crate) label: &'static str,
}

impl WatchedKind {
    /// kube's description of the resource, for a dynamic API.
    pub(crate) fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_owned(),
            version: self.version.to_owned(),
            api_version: format!("{}/{}", self.group, self.version),
            kind: self.kind.to_owned(),
            plural: self.plural.to_owned(),
        }
    }
}

/// The group of Shoal's custom resources.
pub(crate) const SHOAL_GROUP: &str = "shoal.io";
/// Their version.
pub(crate) const SHOAL_VERSION: &str = "v1alpha1";
/// The Gateway API's group.
pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

macro_rules! shoal {
    ($kind:literal, $plural:literal, $shoal:ident) => {
        WatchedKind {
            group: SHOAL_GROUP,
            version: SHOAL_VERSION,
            kind: $kind,
            plural: $plural,
            shoal: Some(ResourceKind::$shoal),
            label: concat!($plural, ".shoal.io"),
        }
    };
}

/// Every watched policy kind: Shoal's (names and plurals as in charts/shoal/crds; services first, as the other
/// kinds are checked against them), then the Gateway API's routes.
pub(crate) const WATCHED: [WatchedKind; 10] = [
    shoal!("Service", "services", Service),
    shoal!(
        "EndpointRegistration",
        "endpointregistrations",
        EndpointRegistration
    ),
    shoal!("Route", "routes", Route),
    shoal!("BackendPolicy", "backendpolicies", BackendPolicy),
    shoal!(
        "AuthorizationPolicy",
        "authorizationpolicies",
        AuthorizationPolicy
    ),
    shoal!("RateLimit", "ratelimits", RateLimit),
    shoal!("FaultInjection", "faultinjections", FaultInjection),
    shoal!("Mirror", "mirrors", Mirror),
    WatchedKind {
        group: GATEWAY_GROUP,
        version: "v1",
        kind: "HTTPRoute",
        plural: "httproutes",
        shoal: None,
        label: "httproutes.gateway.networking.k8s.io",
    },
    WatchedKind {
        group: GATEWAY_GROUP,
        version: "v1",
        kind: "GRPCRoute",
        plural: "grpcroutes",
        shoal: None,
        label: "grpcroutes.gateway.networking.k8s.io",
    },
];

/// Index of `HTTPRoute` in [`WATCHED`].
pub(crate) const HTTP_ROUTES: usize = 8;
/// Index of `GRPCRoute` in [`WATCHED`].
pub(crate) const GRPC_ROUTES: usize = 9;

/// What is kept of a watched object: what evaluation reads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Watched {
    /// `metadata.generation` (what `observedGeneration` reports).
    pub(crate) generation: i64,
    /// `spec`.
    pub(crate) spec: Value,
    /// `status` as the API server holds it (`Null` when none).
    pub(crate) status: Value,
}

impl Watched {
    /// The projection of a watched object.
    pub(crate) fn of(object: &DynamicObject) -> Self {
        Self {
            generation: object.metadata.generation.unwrap_or(0),
            spec: object.data.get("spec").cloned().unwrap_or(Value::Null),
            status: object.data.get("status").cloned().unwrap_or(Value::Null),
        }
    }
}

/// One object's identity: its index in [`WATCHED`], namespace and name.
pub(crate) type ObjId = (usize, ObjKey);

/// A catalog source and what it contributes now (empty: withdrawn).
pub(crate) type SourceUpdate = (String, Vec<(Key, Contribution)>);

/// The policy objects, as listed and watched, and what of them is served.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    /// One table per [`WATCHED`] kind.
    pub(crate) tables: [Table<Watched>; 10],
    /// The Shoal custom resources served.
    crds: crd::Served,
    /// The Gateway API routes served.
    gateway: gateway::Served,
    /// Status patches already sent, so one is not repeated before its own watch event arrives.
    sent: status::Sent,
    /// The kinds the API server does not serve (its list answered 404: the CRD is not installed), by index.
    missing: BTreeSet<usize>,
}

/// What an evaluation changes: catalog sources and status patches.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Catalog sources to set (only those that changed).
    pub(crate) sources: Vec<SourceUpdate>,
    /// Status patches to write.
    pub(crate) patches: Vec<status::StatusPatch>,
}

impl Policies {
    /// Applies a watch event of kind `index`; whether anything changed.
    pub(crate) fn event(&mut self, index: usize, event: Event<Watched>) -> bool {
        !self.tables[index].apply(event).is_empty()
    }

    /// The API server answered the list of kind `index` 404: its CustomResourceDefinition is not installed.
    /// A kind never listed counts as listed with no objects, so the other kinds are served and the policies
    /// sync; a kind listed before keeps what it had (a 404 may be passing, as while a CRD is replaced).
    /// Whether this is news (it was served until now).
    pub(crate) fn not_installed(&mut self, index: usize) -> bool {
        if !self.tables[index].synced() {
            self.tables[index].apply(Event::Relist);
            self.tables[index].apply(Event::RelistDone);
        }
        self.missing.insert(index)
    }

    /// Kind `index` was listed; whether it was missing until now (its CRD was installed since).
    pub(crate) fn listed(&mut self, index: usize) -> bool {
        self.missing.remove(&index)
    }

    /// The kinds whose CRD is not installed (logs).
    pub(crate) fn missing(&self) -> Vec<&'static str> {
        self.missing.iter().map(|i| WATCHED[*i].label).collect()
    }

    /// Whether every kind completed its first list.
    pub(crate) fn synced(&self) -> bool {
        self.tables.iter().all(Table::synced)
    }

    /// Re-evaluates every object against the Services the cluster serves (`kubernetes`, by qualified name):
    /// which resources are served, and the status each object should show. Kinds whose first list is not
    /// complete wait (nothing of theirs is served yet, and no status is written).
    pub(crate) fn evaluate(&mut self, kubernetes: &BTreeMap<String, Service>) -> Outcome {
        let mut outcome = Outcome::default();
        let services = self.crds.evaluate(&self.tables, kubernetes, &mut outcome);
        let routes = self.crds.targets(ResourceKind::Route);
        let mirrors = self.crds.targets(ResourceKind::Mirror);
        (self.gateway).evaluate(&self.tables, &services, &routes, &mirrors, &mut outcome);
        outcome.patches = self.sent.filter(&self.tables, outcome.patches);
        outcome
    }

    /// Objects of each kind (logs).
    pub(crate) fn counts(&self) -> Vec<(&'static str, usize)> {
        (WATCHED.iter().zip(&self.tables))
            .map(|(kind, table)| (kind.label, table.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
