//! Inbound policy, enforced by a service's own proxies: `AuthorizationPolicy` and `RateLimit`.

use super::ServiceRef;

/// Who may call a service. Any matching `Deny` rule denies; else any matching `Allow` rule allows; else
/// `default_action` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    /// The protected service.
    pub target: ServiceRef,
    /// What happens when no rule matches (the wire's unset value means `Deny`: fail closed).
    pub default_action: AuthorizationAction,
    /// The rules.
    pub rules: Vec<AuthorizationRule>,
}

/// The outcome of an authorization rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationAction {
    /// Let the request through.
    Allow,
    /// Refuse it (`403`, or close a TCP connection).
    Deny,
}

/// One authorization rule; it matches when every set condition holds. Empty lists match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRule {
    /// Optional name, for logs and metrics; empty when unnamed.
    pub name: String,
    /// What a match means.
    pub action: AuthorizationAction,
    /// The caller's identity matches any of these (a non-empty list never matches plain-text callers).
    pub from: Vec<IdentityMatch>,
    /// The destination port is one of these.
    pub to_ports: Vec<u16>,
    /// The request path starts with one of these prefixes, on segment boundaries.
    pub path_prefixes: Vec<String>,
    /// The request method is one of these.
    pub methods: Vec<String>,
}

/// A condition on the caller's SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMatch {
    /// Exactly this SPIFFE id.
    Exact(String),
    /// Any identity in this namespace of the local trust domain.
    Namespace(String),
    /// Any identity in this trust domain.
    TrustDomain(String),
}

/// Server-side token-bucket throttling of requests to a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// The protected service.
    pub target: ServiceRef,
    /// Sustained rate: this many requests per `unit`; 0 disables the limit.
    pub requests_per_unit: u64,
    /// The time unit of the rate.
    pub unit: RateLimitUnit,
    /// Bucket size; `None` means `requests_per_unit`.
    pub burst: Option<u64>,
    /// Who shares a bucket.
    pub scope: RateLimitScope,
    /// Which requests the limit counts (a route rule's conditions, any matching); empty: every request.
    pub matches: Vec<super::RouteMatch>,
    /// Callers with a rate of their own (inbound limits only).
    pub overrides: Vec<RateLimitOverride>,
    /// Which proxies enforce the limit.
    pub side: RateLimitSide,
}

/// A caller's own rate under a rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitOverride {
    /// The caller's SPIFFE id.
    pub identity: String,
    /// Its sustained rate per the limit's unit; 0: not limited.
    pub requests_per_unit: u64,
    /// Its bucket size; `None` means its `requests_per_unit`.
    pub burst: Option<u64>,
}

/// Which proxies enforce a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitSide {
    /// The service's own proxies (also the wire's unset value).
    #[default]
    Inbound,
    /// Every calling proxy, for its own requests to the service.
    Outbound,
}

/// The time unit of a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitUnit {
    /// Per second (also the wire's unset value).
    #[default]
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

/// Who shares a rate-limit bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitScope {
    /// One bucket for all callers, per proxy of the service (also the wire's unset value).
    #[default]
    Global,
    /// One bucket per caller identity (or source IP without one).
    PerClient,
}
