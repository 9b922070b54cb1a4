//! YAML of the inbound and chaos policies: `AuthorizationPolicy`, `RateLimit`, `FaultInjection`, `Mirror`.

use serde::{Deserialize, Serialize};
use shoal_proto::v1;
use v1::resource::Spec as Wire;

use super::SpecYaml;
use super::common::{is_zero, plain_message, wire_enum};
use super::route::{Match, match_from_wire, match_to_wire};

wire_enum! {
    /// `default_action` and a rule's `action`.
    Action => v1::AuthorizationAction { Allow, Deny }
}

wire_enum! {
    /// `unit` of a rate limit; left out: `second`.
    Unit => v1::RateLimitUnit { Second, Minute, Hour }
}

wire_enum! {
    /// `scope` of a rate limit; left out: `global`.
    Scope => v1::RateLimitScope { Global, PerClient }
}

wire_enum! {
    /// `side` of a rate limit; left out: `inbound`.
    Side => v1::RateLimitSide { Inbound, Outbound }
}

plain_message! {
    /// One of a rate limit's `overrides`: a caller's own rate.
    Override => v1::RateLimitOverride { identity: String, requests_per_unit: u64, burst: u64 }
}

/// `kind: AuthorizationPolicy`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct AuthorizationSpec {
    target_service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_action: Option<Action>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rules: Vec<AuthorizationRule>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AuthorizationRule {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<Action>,
    /// Each one of `exact`, `namespace`, `trust_domain`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    from: Vec<IdentityMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    to_ports: Vec<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    path_prefixes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    methods: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum IdentityMatch {
    Exact(String),
    Namespace(String),
    TrustDomain(String),
}

impl SpecYaml for AuthorizationSpec {
    fn into_wire(self) -> Result<Wire, String> {
        use v1::identity_match::Kind;
        let rules = self.rules.into_iter().map(|rule| v1::AuthorizationRule {
            name: rule.name,
            action: Action::to_wire(rule.action),
            from: (rule.from.into_iter())
                .map(|from| v1::IdentityMatch {
                    kind: Some(match from {
                        IdentityMatch::Exact(id) => Kind::Exact(id),
                        IdentityMatch::Namespace(ns) => Kind::Namespace(ns),
                        IdentityMatch::TrustDomain(td) => Kind::TrustDomain(td),
                    }),
                })
                .collect(),
            to_ports: rule.to_ports,
            path_prefixes: rule.path_prefixes,
            methods: rule.methods,
        });
        Ok(Wire::AuthorizationPolicy(v1::AuthorizationPolicy {
            target_service: self.target_service,
            default_action: Action::to_wire(self.default_action),
            rules: rules.collect(),
        }))
    }

    fn from_wire(spec: &Wire) -> Option<Self> {
        use v1::identity_match::Kind;
        let Wire::AuthorizationPolicy(policy) = spec else {
            return None;
        };
        let rules = policy.rules.iter().map(|rule| AuthorizationRule {
            name: rule.name.clone(),
            action: Action::from_wire(rule.action),
            from: (rule.from.iter())
                .filter_map(|from| match from.kind.clone()? {
                    Kind::Exact(id) => Some(IdentityMatch::Exact(id)),
                    Kind::Namespace(ns) => Some(IdentityMatch::Namespace(ns)),
                    Kind::TrustDomain(td) => Some(IdentityMatch::TrustDomain(td)),
                })
                .collect(),
            to_ports: rule.to_ports.clone(),
            path_prefixes: rule.path_prefixes.clone(),
            methods: rule.methods.clone(),
        });
        Some(Self {
            target_service: policy.target_service.clone(),
            default_action: Action::from_wire(policy.default_action),
            rules: rules.collect(),
        })
    }
}

/// `kind: RateLimit`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RateLimitSpec {
    target_service: String,
    requests_per_unit: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<Unit>,
    #[serde(skip_serializing_if = "is_zero")]
    burst: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<Scope>,
    /// Which requests the limit counts: a route rule's `matches`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    matches: Vec<Match>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    overrides: Vec<Override>,
    #[serde(skip_serializing_if = "Option::is_none")]
    side: Option<Side>,
}

impl SpecYaml for RateLimitSpec {
    fn into_wire(self) -> Result<Wire, String> {
        let mut matches = Vec::with_capacity(self.matches.len());
        for (m, matched) in self.matches.into_iter().enumerate() {
            matches.push(match_to_wire(matched, &format!("spec.matches[{m}]"))?);
        }
        Ok(Wire::RateLimit(v1::RateLimit {
            target_service: self.target_service,
            requests_per_unit: self.requests_per_unit,
            unit: Unit::to_wire(self.unit),
            burst: self.burst,
            scope: Scope::to_wire(self.scope),
            matches,
            overrides: self.overrides.into_iter().map(Into::into).collect(),
            side: Side::to_wire(self.side),
        }))
    }

    fn from_wire(spec: &Wire) -> Option<Self> {
        let Wire::RateLimit(limit) = spec else {
            return None;
        };
        Some(Self {
            target_service: limit.target_service.clone(),
            requests_per_unit: limit.requests_per_unit,
            unit: Unit::from_wire(limit.unit),
            burst: limit.burst,
            scope: Scope::from_wire(limit.scope),
            matches: limit.matches.iter().map(match_from_wire).collect(),
            overrides: limit.overrides.iter().map(Into::into).collect(),
            side: Side::from_wire(limit.side),
        })
    }
}

plain_message! {
    /// `delay`: a share of requests delayed.
    Delay => v1::FaultDelay { percent: f64, duration_ms: u64 }
}

plain_message! {
    /// `abort`: a share of requests answered with an error.
    Abort => v1::FaultAbort { percent: f64, http_status: u32, grpc_status: u32 }
}

/// `kind: FaultInjection`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FaultInjectionSpec {
    target_service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay: Option<Delay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    abort: Option<Abort>,
    /// Which requests the faults may hit: a route rule's `matches`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    matches: Vec<Match>,
}

impl SpecYaml for FaultInjectionSpec {
    fn into_wire(self) -> Result<Wire, String> {
        let mut matches = Vec::with_capacity(self.matches.len());
        for (m, matched) in self.matches.into_iter().enumerate() {
            matches.push(match_to_wire(matched, &format!("spec.matches[{m}]"))?);
        }
        Ok(Wire::FaultInjection(v1::FaultInjection {
            target_service: self.target_service,
            delay: self.delay.map(Into::into),
            abort: self.abort.map(Into::into),
            matches,
        }))
    }

    fn from_wire(spec: &Wire) -> Option<Self> {
        let Wire::FaultInjection(fault) = spec else {
            return None;
        };
        Some(Self {
            target_service: fault.target_service.clone(),
            delay: fault.delay.as_ref().map(Into::into),
            abort: fault.abort.as_ref().map(Into::into),
            matches: fault.matches.iter().map(match_from_wire).collect(),
        })
    }
}

plain_message! {
    /// `kind: Mirror`.
    MirrorSpec => v1::Mirror { target_service: String, mirror_service: String, mirror_port: u32, percent: f64, compare_headers: Vec<String> }
}

impl SpecYaml for MirrorSpec {
    fn into_wire(self) -> Result<Wire, String> {
        Ok(Wire::Mirror(self.into()))
    }

    fn from_wire(spec: &Wire) -> Option<Self> {
        match spec {
            Wire::Mirror(mirror) => Some(mirror.into()),
            _ => None,
        }
    }
}
