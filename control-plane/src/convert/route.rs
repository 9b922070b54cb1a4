//! Wire conversions for routes: rules, matches, weighted backends and retry policies.

use shoal_proto::v1;
use v1::{header_match, path_match, path_modifier};

use super::{
    by_value, each, enumeration, millis, nonzero, optional_port, service_ref, text, to_millis,
};
use crate::model::validate::FieldError;
use crate::model::{
    HeaderMatch, HeaderModifier, PathMatch, PathModifier, RequestRedirect, RetryOn, RetryPolicy,
    Route, RouteMatch, RouteRule, ValueMatch, WeightedBackend,
};

impl TryFrom<v1::Route> for Route {
    type Error = FieldError;

    /// Requires qualified service names; the `v1::Resource` conversion also accepts bare ones.
    fn try_from(wire: v1::Route) -> Result<Self, FieldError> {
        route(wire, None)
    }
}

/// A route, with bare service names taken to be in `namespace` when it is given.
pub(super) fn route(wire: v1::Route, namespace: Option<&str>) -> Result<Route, FieldError> {
    Ok(Route {
        parent: service_ref(&wire.parent_service, namespace, "parent_service")?,
        rules: each(wire.rules, "rules", |rule| self::rule(rule, namespace))?,
    })
}

fn rule(wire: v1::RouteRule, namespace: Option<&str>) -> Result<RouteRule, FieldError> {
    Ok(RouteRule {
        name: wire.name,
        matches: each(wire.matches, "matches", route_match)?,
        backends: each(wire.backends, "backends", |backend| {
            Ok(WeightedBackend {
                service: service_ref(&backend.service, namespace, "service")?,
                port: optional_port(backend.port, "port")?,
                weight: backend.weight,
            })
        })?,
        timeout: millis(wire.timeout_ms),
        retry: wire
            .retry
            .map(retry)
            .transpose()
            .map_err(|e| e.within("retry"))?,
        request_headers: wire.request_header_modifier.map(header_modifier),
        response_headers: wire.response_header_modifier.map(header_modifier),
        redirect: wire
            .request_redirect
            .map(redirect)
            .transpose()
            .map_err(|e| e.within("request_redirect"))?,
    })
}

fn header_modifier(wire: v1::HeaderModifier) -> HeaderModifier {
    let pairs =
        |values: Vec<v1::HeaderValue>| values.into_iter().map(|h| (h.name, h.value)).collect();
    HeaderModifier {
        set: pairs(wire.set),
        add: pairs(wire.add),
        remove: wire.remove,
    }
}

fn redirect(wire: v1::RequestRedirect) -> Result<RequestRedirect, FieldError> {
    let path = match wire.path.map(|p| p.kind) {
        None => None,
        Some(None) => {
            let reason = "set one of replace_full_path or replace_prefix_match";
            return Err(FieldError::new("path", reason));
        }
        Some(Some(path_modifier::Kind::ReplaceFullPath(p))) => {
            Some(PathModifier::ReplaceFullPath(p))
        }
        Some(Some(path_modifier::Kind::ReplacePrefixMatch(p))) => {
            Some(PathModifier::ReplacePrefixMatch(p))
        }
    };
    Ok(RequestRedirect {
        scheme: text(wire.scheme),
        hostname: text(wire.hostname),
        port: optional_port(wire.port, "port")?,
        path,
        status_code: match wire.status_code {
            0 => None,
            code => Some(u16::try_from(code).map_err(|_| {
                FieldError::new("status_code", format!("{code} is not an HTTP status"))
            })?),
        },
    })
}

pub(super) fn route_match(wire: v1::RouteMatch) -> Result<RouteMatch, FieldError> {
    let path = match wire.path.map(|p| p.kind) {
        None => None,
        Some(None) => return Err(FieldError::new("path", "set one of exact, prefix or regex")),
        Some(Some(path_match::Kind::Exact(path))) => Some(PathMatch::Exact(path)),
        Some(Some(path_match::Kind::Prefix(path))) => Some(PathMatch::Prefix(path)),
        Some(Some(path_match::Kind::Regex(pattern))) => Some(PathMatch::Regex(pattern)),
    };
    Ok(RouteMatch {
        path,
        headers: each(wire.headers, "headers", |header| {
            let value = match header.value {
                None => return Err(FieldError::new("", "set one of exact or regex")),
                Some(header_match::Value::Exact(value)) => ValueMatch::Exact(value),
                Some(header_match::Value::Regex(pattern)) => ValueMatch::Regex(pattern),
            };
            Ok(HeaderMatch {
                name: header.name,
                value,
            })
        })?,
        method: text(wire.method),
    })
}

fn retry(wire: v1::RetryPolicy) -> Result<RetryPolicy, FieldError> {
    Ok(RetryPolicy {
        attempts: nonzero(wire.attempts),
        per_try_timeout: millis(wire.per_try_timeout_ms),
        retry_on: each(wire.retry_on, "retry_on", |value| {
            enumeration::<v1::RetryOn>(value, "")?.try_into()
        })?,
        retryable_status_codes: each(wire.retryable_status_codes, "retryable_status_codes", |c| {
            u16::try_from(c).map_err(|_| FieldError::new("", format!("{c} is not an HTTP status")))
        })?,
        backoff_base: millis(wire.backoff_base_ms),
        backoff_max: millis(wire.backoff_max_ms),
        budget_ratio: nonzero(wire.budget_ratio),
        budget_min_retries_per_second: nonzero(wire.budget_min_retries_per_second),
        retry_non_idempotent: wire.retry_non_idempotent,
    })
}

impl TryFrom<v1::RetryOn> for RetryOn {
    type Error = FieldError;

    fn try_from(wire: v1::RetryOn) -> Result<Self, FieldError> {
        use v1::RetryOn as Wire;
        Ok(match wire {
            Wire::Unspecified => return Err(FieldError::new("", "UNSPECIFIED is not a condition")),
            Wire::ConnectFailure => Self::ConnectFailure,
            Wire::RefusedStream => Self::RefusedStream,
            Wire::Reset => Self::Reset,
            Wire::ServerError => Self::ServerError,
            Wire::GatewayError => Self::GatewayError,
            Wire::ServiceUnavailable => Self::ServiceUnavailable,
            Wire::PerTryTimeout => Self::PerTryTimeout,
            Wire::GrpcUnavailable => Self::GrpcUnavailable,
            Wire::GrpcResourceExhausted => Self::GrpcResourceExhausted,
        })
    }
}

impl From<RetryOn> for v1::RetryOn {
    fn from(on: RetryOn) -> Self {
        match on {
            RetryOn::ConnectFailure => Self::ConnectFailure,
            RetryOn::RefusedStream => Self::RefusedStream,
            RetryOn::Reset => Self::Reset,
            RetryOn::ServerError => Self::ServerError,
            RetryOn::GatewayError => Self::GatewayError,
            RetryOn::ServiceUnavailable => Self::ServiceUnavailable,
            RetryOn::PerTryTimeout => Self::PerTryTimeout,
            RetryOn::GrpcUnavailable => Self::GrpcUnavailable,
            RetryOn::GrpcResourceExhausted => Self::GrpcResourceExhausted,
        }
    }
}

impl From<&Route> for v1::Route {
    fn from(route: &Route) -> Self {
        Self {
            parent_service: route.parent.to_string(),
            rules: route.rules.iter().map(rule_to_wire).collect(),
        }
    }
}

fn rule_to_wire(rule: &RouteRule) -> v1::RouteRule {
    v1::RouteRule {
        name: rule.name.clone(),
        matches: rule.matches.iter().map(match_to_wire).collect(),
        backends: (rule.backends.iter())
            .map(|backend| v1::WeightedBackend {
                service: backend.service.to_string(),
                port: backend.port.unwrap_or(0).into(),
                weight: backend.weight,
            })
            .collect(),
        timeout_ms: to_millis(rule.timeout),
        retry: rule.retry.as_ref().map(retry_to_wire),
        request_header_modifier: rule.request_headers.as_ref().map(header_modifier_to_wire),
        response_header_modifier: rule.response_headers.as_ref().map(header_modifier_to_wire),
        request_redirect: rule.redirect.as_ref().map(redirect_to_wire),
    }
}

fn header_modifier_to_wire(edits: &HeaderModifier) -> v1::HeaderModifier {
    let pairs = |values: &[(String, String)]| {
        (values.iter())
            .map(|(name, value)| v1::HeaderValue {
                name: name.clone(),
                value: value.clone(),
            })
            .collect()
    };
    v1::HeaderModifier {
        set: pairs(&edits.set),
        add: pairs(&edits.add),
        remove: edits.remove.clone(),
    }
}

fn redirect_to_wire(redirect: &RequestRedirect) -> v1::RequestRedirect {
    let kind = redirect.path.as_ref().map(|path| match path {
        PathModifier::ReplaceFullPath(p) => path_modifier::Kind::ReplaceFullPath(p.clone()),
        PathModifier::ReplacePrefixMatch(p) => path_modifier::Kind::ReplacePrefixMatch(p.clone()),
    });
    v1::RequestRedirect {
        scheme: redirect.scheme.clone().unwrap_or_default(),
        hostname: redirect.hostname.clone().unwrap_or_default(),
        port: redirect.port.unwrap_or(0).into(),
        path: kind.map(|kind| v1::PathModifier { kind: Some(kind) }),
        status_code: redirect.status_code.unwrap_or(0).into(),
    }
}

pub(super) fn match_to_wire(entry: &RouteMatch) -> v1::RouteMatch {
    let kind = entry.path.as_ref().map(|path| match path {
        PathMatch::Exact(path) => path_match::Kind::Exact(path.clone()),
        PathMatch::Prefix(path) => path_match::Kind::Prefix(path.clone()),
        PathMatch::Regex(pattern) => path_match::Kind::Regex(pattern.clone()),
    });
    v1::RouteMatch {
        path: kind.map(|kind| v1::PathMatch { kind: Some(kind) }),
        headers: (entry.headers.iter())
            .map(|header| v1::HeaderMatch {
                name: header.name.clone(),
                value: Some(match &header.value {
                    ValueMatch::Exact(value) => header_match::Value::Exact(value.clone()),
                    ValueMatch::Regex(pattern) => header_match::Value::Regex(pattern.clone()),
                }),
            })
            .collect(),
        method: entry.method.clone().unwrap_or_default(),
    }
}

fn retry_to_wire(retry: &RetryPolicy) -> v1::RetryPolicy {
    v1::RetryPolicy {
        attempts: retry.attempts.unwrap_or(0),
        per_try_timeout_ms: to_millis(retry.per_try_timeout),
        retry_on: (retry.retry_on.iter())
            .map(|&on| v1::RetryOn::from(on).into())
            .collect(),
        retryable_status_codes: (retry.retryable_status_codes.iter())
            .map(|&c| c.into())
            .collect(),
        backoff_base_ms: to_millis(retry.backoff_base),
        backoff_max_ms: to_millis(retry.backoff_max),
        budget_ratio: retry.budget_ratio.unwrap_or(0.0),
        budget_min_retries_per_second: retry.budget_min_retries_per_second.unwrap_or(0),
        retry_non_idempotent: retry.retry_non_idempotent,
    }
}

by_value!(Route => v1::Route);
