//! The control plane's domain model: resources as operators write them, independent of the wire and of
//! Kubernetes. `convert` maps them to and from `shoal.v1`; `validate` checks them before the store accepts them.

mod backend;
mod chaos;
#[cfg(test)]
pub(crate) mod fixtures;
mod inbound;
mod names;
mod route;
mod service;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;

pub use backend::{
    BackendPolicy, BreakerOverride, CircuitBreaker, ConnectionLimits, HashKey, HealthCheck,
    HealthProbe, LoadBalancer, LoadBalancingAlgorithm, OutlierDetection, SuccessRateEjection,
};
pub use chaos::{FaultAbort, FaultDelay, FaultInjection, Mirror};
pub use inbound::{
    AuthorizationAction, AuthorizationPolicy, AuthorizationRule, IdentityMatch, RateLimit,
    RateLimitOverride, RateLimitScope, RateLimitSide, RateLimitUnit,
};
pub use names::{DEFAULT_NAMESPACE, ServiceRef, dns_label, host_name, http_token, spiffe_id};
pub use route::{
    HeaderMatch, HeaderModifier, PathMatch, PathModifier, RequestRedirect, RetryOn, RetryPolicy,
    Route, RouteMatch, RouteRule, ValueMatch, WeightedBackend,
};
pub use service::{
    Endpoint, EndpointRegistration, Endpoints, Protocol, Service, ServicePort, TlsMode,
};

/// The kinds of resource operators manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    /// [`Service`].
    Service,
    /// [`EndpointRegistration`].
    EndpointRegistration,
    /// [`Route`].
    Route,
    /// [`BackendPolicy`].
    BackendPolicy,
    /// [`AuthorizationPolicy`].
    AuthorizationPolicy,
    /// [`RateLimit`].
    RateLimit,
    /// [`FaultInjection`].
    FaultInjection,
    /// [`Mirror`].
    Mirror,
}

impl ResourceKind {
    /// Every kind, in the order listings sort them.
    pub const ALL: [ResourceKind; 8] = [
        Self::Service,
        Self::EndpointRegistration,
        Self::Route,
        Self::BackendPolicy,
        Self::AuthorizationPolicy,
        Self::RateLimit,
        Self::FaultInjection,
        Self::Mirror,
    ];

    /// Lowercase name used in messages and in the store's keys (so it must never change).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::EndpointRegistration => "endpoint-registration",
            Self::Route => "route",
            Self::BackendPolicy => "backend-policy",
            Self::AuthorizationPolicy => "authorization-policy",
            Self::RateLimit => "rate-limit",
            Self::FaultInjection => "fault-injection",
            Self::Mirror => "mirror",
        }
    }

    /// The kind named by [`Self::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// Whether resources of this kind are policies of which each service has at most one (the control plane
    /// serves them to proxies under the target service's name).
    pub fn is_per_service_policy(self) -> bool {
        !matches!(self, Self::Service | Self::EndpointRegistration)
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one resource: at most one exists per key. Ordered by kind, namespace, name (listing order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// Its kind.
    pub kind: ResourceKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ResourceKey {
    /// The key of `kind` `namespace`/`name`.
    pub fn new(kind: ResourceKind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    /// `route backend.default`: the kind, then name and namespace like a qualified service name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}.{}", self.kind, self.name, self.namespace)
    }
}

/// Identifies a resource and carries its version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Name, unique per kind within the namespace (a DNS label).
    pub name: String,
    /// Namespace (a DNS label; the wire's empty value becomes [`DEFAULT_NAMESPACE`]).
    pub namespace: String,
    /// The store revision of the resource's last write; set by the store, 0 before the first write.
    pub resource_version: u64,
    /// Free-form labels, for selection and bookkeeping.
    pub labels: BTreeMap<String, String>,
}

/// A configuration resource: metadata plus the spec of one kind. The kind is the spec's variant, so the two
/// can never disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Name, namespace, version, labels.
    pub metadata: Metadata,
    /// What the resource says.
    pub spec: Spec,
}

/// The spec of a resource, one variant per kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A service.
    Service(Service),
    /// A registered instance of a service.
    EndpointRegistration(EndpointRegistration),
    /// A service's routing rules.
    Route(Route),
    /// How clients call a service.
    BackendPolicy(BackendPolicy),
    /// Who may call a service.
    AuthorizationPolicy(AuthorizationPolicy),
    /// Throttling of a service.
    RateLimit(RateLimit),
    /// Faults injected into calls to a service.
    FaultInjection(FaultInjection),
    /// Shadow traffic from a service.
    Mirror(Mirror),
}

impl Spec {
    /// The spec's kind.
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::Service(_) => ResourceKind::Service,
            Self::EndpointRegistration(_) => ResourceKind::EndpointRegistration,
            Self::Route(_) => ResourceKind::Route,
            Self::BackendPolicy(_) => ResourceKind::BackendPolicy,
            Self::AuthorizationPolicy(_) => ResourceKind::AuthorizationPolicy,
            Self::RateLimit(_) => ResourceKind::RateLimit,
            Self::FaultInjection(_) => ResourceKind::FaultInjection,
            Self::Mirror(_) => ResourceKind::Mirror,
        }
    }

    /// The service a per-service policy applies to (`None` for services and registrations).
    pub fn policy_target(&self) -> Option<&ServiceRef> {
        match self {
            Self::Service(_) | Self::EndpointRegistration(_) => None,
            Self::Route(route) => Some(&route.parent),
            Self::BackendPolicy(policy) => Some(&policy.service),
            Self::AuthorizationPolicy(policy) => Some(&policy.target),
            Self::RateLimit(limit) => Some(&limit.target),
            Self::FaultInjection(fault) => Some(&fault.target),
            Self::Mirror(mirror) => Some(&mirror.target),
        }
    }
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> ResourceKind {
        self.spec.kind()
    }

    /// The key the resource is stored under.
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(self.kind(), &self.metadata.namespace, &self.metadata.name)
    }

    /// The store revision of its last write.
    pub fn version(&self) -> u64 {
        self.metadata.resource_version
    }
}
