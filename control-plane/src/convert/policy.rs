//! Wire conversions for authorization, rate limits, fault injection and mirroring.

use shoal_proto::v1;
use v1::identity_match;

use super::{
    by_value, each, enumeration, nonzero, optional_port, port, qualified_only, service_ref,
    to_millis,
};
use crate::model::validate::FieldError;
use crate::model::{
    AuthorizationAction, AuthorizationPolicy, AuthorizationRule, FaultAbort, FaultDelay,
    FaultInjection, IdentityMatch, Mirror, RateLimit, RateLimitOverride, RateLimitScope,
    RateLimitSide, RateLimitUnit,
};

qualified_only!(
    v1::AuthorizationPolicy => AuthorizationPolicy: authorization,
    v1::RateLimit => RateLimit: rate_limit,
    v1::FaultInjection => FaultInjection: fault_injection,
    v1::Mirror => Mirror: mirror,
);

pub(super) fn authorization(
    wire: v1::AuthorizationPolicy,
    ns: Option<&str>,
) -> Result<AuthorizationPolicy, FieldError> {
    let default_action = match enumeration(wire.default_action, "default_action")? {
        // Fail closed: a policy that forgets its default denies.
        v1::AuthorizationAction::Unspecified | v1::AuthorizationAction::Deny => {
            AuthorizationAction::Deny
        }
        v1::AuthorizationAction::Allow => AuthorizationAction::Allow,
    };
    Ok(AuthorizationPolicy {
        target: service_ref(&wire.target_service, ns, "target_service")?,
        default_action,
        rules: each(wire.rules, "rules", |rule| {
            Ok(AuthorizationRule {
                name: rule.name,
                action: match enumeration(rule.action, "action")? {
                    v1::AuthorizationAction::Unspecified => {
                        return Err(FieldError::new("action", "required: ALLOW or DENY"));
                    }
                    v1::AuthorizationAction::Allow => AuthorizationAction::Allow,
                    v1::AuthorizationAction::Deny => AuthorizationAction::Deny,
                },
                from: each(rule.from, "from", |from| match from.kind {
                    None => Err(FieldError::new(
                        "",
                        "set one of exact, namespace or trust_domain",
                    )),
                    Some(identity_match::Kind::Exact(id)) => Ok(IdentityMatch::Exact(id)),
                    Some(identity_match::Kind::Namespace(ns)) => Ok(IdentityMatch::Namespace(ns)),
                    Some(identity_match::Kind::TrustDomain(d)) => Ok(IdentityMatch::TrustDomain(d)),
                })?,
                to_ports: each(rule.to_ports, "to_ports", |p| port(p, ""))?,
                path_prefixes: rule.path_prefixes,
                methods: rule.methods,
            })
        })?,
    })
}

fn action_to_wire(action: AuthorizationAction) -> i32 {
    match action {
        AuthorizationAction::Allow => v1::AuthorizationAction::Allow.into(),
        AuthorizationAction::Deny => v1::AuthorizationAction::Deny.into(),
    }
}

impl From<&AuthorizationPolicy> for v1::AuthorizationPolicy {
    fn from(policy: &AuthorizationPolicy) -> Self {
        let rules = policy.rules.iter().map(|rule| v1::AuthorizationRule {
            name: rule.name.clone(),
            action: action_to_wire(rule.action),
            from: (rule.from.iter())
                .map(|from| v1::IdentityMatch {
                    kind: Some(match from {
                        IdentityMatch::Exact(id) => identity_match::Kind::Exact(id.clone()),
                        IdentityMatch::Namespace(ns) => identity_match::Kind::Namespace(ns.clone()),
                        IdentityMatch::TrustDomain(d) => {
                            identity_match::Kind::TrustDomain(d.clone())
                        }
                    }),
                })
                .collect(),
            to_ports: rule.to_ports.iter().map(|&p| p.into()).collect(),
            path_prefixes: rule.path_prefixes.clone(),
            methods: rule.methods.clone(),
        });
        Self {
            target_service: policy.target.to_string(),
            default_action: action_to_wire(policy.default_action),
            rules: rules.collect(),
        }
    }
}

pub(super) fn rate_limit(wire: v1::RateLimit, ns: Option<&str>) -> Result<RateLimit, FieldError> {
    Ok(RateLimit {
        target: service_ref(&wire.target_service, ns, "target_service")?,
        requests_per_unit: wire.requests_per_unit,
        unit: match enumeration(wire.unit, "unit")? {
            v1::RateLimitUnit::Unspecified | v1::RateLimitUnit::Second => RateLimitUnit::Second,
            v1::RateLimitUnit::Minute => RateLimitUnit::Minute,
            v1::RateLimitUnit::Hour => RateLimitUnit::Hour,
        },
        burst: nonzero(wire.burst),
        scope: match enumeration(wire.scope, "scope")? {
            v1::RateLimitScope::Unspecified | v1::RateLimitScope::Global => RateLimitScope::Global,
            v1::RateLimitScope::PerClient => RateLimitScope::PerClient,
        },
        matches: each(wire.matches, "matches", super::route::route_match)?,
        overrides: (wire.overrides.into_iter())
            .map(|o| RateLimitOverride {
                identity: o.identity,
                requests_per_unit: o.requests_per_unit,
                burst: nonzero(o.burst),
            })
            .collect(),
        side: match enumeration(wire.side, "side")? {
            v1::RateLimitSide::Unspecified | v1::RateLimitSide::Inbound => RateLimitSide::Inbound,
            v1::RateLimitSide::Outbound => RateLimitSide::Outbound,
        },
    })
}

impl From<&RateLimit> for v1::RateLimit {
    fn from(limit: &RateLimit) -> Self {
        Self {
            target_service: limit.target.to_string(),
            requests_per_unit: limit.requests_per_unit,
            unit: match limit.unit {
                RateLimitUnit::Second => v1::RateLimitUnit::Second,
                RateLimitUnit::Minute => v1::RateLimitUnit::Minute,
                RateLimitUnit::Hour => v1::RateLimitUnit::Hour,
            }
            .into(),
            burst: limit.burst.unwrap_or(0),
            scope: match limit.scope {
                RateLimitScope::Global => v1::RateLimitScope::Global,
                RateLimitScope::PerClient => v1::RateLimitScope::PerClient,
            }
            .into(),
            matches: (limit.matches.iter())
                .map(super::route::match_to_wire)
                .collect(),
            overrides: (limit.overrides.iter())
                .map(|o| v1::RateLimitOverride {
                    identity: o.identity.clone(),
                    requests_per_unit: o.requests_per_unit,
                    burst: o.burst.unwrap_or(0),
                })
                .collect(),
            side: match limit.side {
                RateLimitSide::Inbound => v1::RateLimitSide::Inbound,
                RateLimitSide::Outbound => v1::RateLimitSide::Outbound,
            }
            .into(),
        }
    }
}

pub(super) fn fault_injection(
    wire: v1::FaultInjection,
    ns: Option<&str>,
) -> Result<FaultInjection, FieldError> {
    Ok(FaultInjection {
        target: service_ref(&wire.target_service, ns, "target_service")?,
        delay: wire.delay.map(|d| FaultDelay {
            percent: d.percent,
            duration: std::time::Duration::from_millis(d.duration_ms),
        }),
        abort: match wire.abort {
            None => None,
            Some(a) => Some(FaultAbort {
                percent: a.percent,
                // 0 is unset on the wire.
                http_status: match a.http_status {
                    0 => None,
                    s => Some(u16::try_from(s).map_err(|_| {
                        FieldError::new("abort.http_status", format!("{s} is not an HTTP status"))
                    })?),
                },
                grpc_status: match a.grpc_status {
                    0 => None,
                    c => Some(u8::try_from(c).map_err(|_| {
                        FieldError::new("abort.grpc_status", format!("{c} is not a gRPC status"))
                    })?),
                },
            }),
        },
        matches: each(wire.matches, "matches", super::route::route_match)?,
    })
}

impl From<&FaultInjection> for v1::FaultInjection {
    fn from(fault: &FaultInjection) -> Self {
        Self {
            target_service: fault.target.to_string(),
            delay: fault.delay.as_ref().map(|d| v1::FaultDelay {
                percent: d.percent,
                duration_ms: to_millis(Some(d.duration)),
            }),
            abort: fault.abort.as_ref().map(|a| v1::FaultAbort {
                percent: a.percent,
                http_status: a.http_status.map_or(0, u32::from),
                grpc_status: a.grpc_status.map_or(0, u32::from),
            }),
            matches: (fault.matches.iter())
                .map(super::route::match_to_wire)
                .collect(),
        }
    }
}

pub(super) fn mirror(wire: v1::Mirror, ns: Option<&str>) -> Result<Mirror, FieldError> {
    Ok(Mirror {
        target: service_ref(&wire.target_service, ns, "target_service")?,
        mirror: service_ref(&wire.mirror_service, ns, "mirror_service")?,
        port: optional_port(wire.mirror_port, "mirror_port")?,
        percent: wire.percent,
        compare_headers: wire.compare_headers,
    })
}

impl From<&Mirror> for v1::Mirror {
    fn from(mirror: &Mirror) -> Self {
        Self {
            target_service: mirror.target.to_string(),
            mirror_service: mirror.mirror.to_string(),
            mirror_port: mirror.port.unwrap_or(0).into(),
            percent: mirror.percent,
            compare_headers: mirror.compare_headers.clone(),
        }
    }
}

by_value!(
    AuthorizationPolicy => v1::AuthorizationPolicy,
    RateLimit => v1::RateLimit,
    FaultInjection => v1::FaultInjection,
    Mirror => v1::Mirror,
);
