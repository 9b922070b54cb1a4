//! YAML of `Route`: rules of matches → weighted backends, with timeouts and retries.

use serde::{Deserialize, Serialize};
use shoal_proto::v1;
use v1::resource::Spec as Wire;

use super::SpecYaml;
use super::common::{is_zero, wire_enum};

wire_enum! {
    /// `retry_on`: a class of failure that may be retried.
    RetryOn => v1::RetryOn {
        ConnectFailure, RefusedStream, Reset, ServerError, GatewayError, ServiceUnavailable,
        PerTryTimeout, GrpcUnavailable, GrpcResourceExhausted,
    }
}

/// `kind: Route`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RouteSpec {
    parent_service: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Rule {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    matches: Vec<Match>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    backends: Vec<Backend>,
    #[serde(skip_serializing_if = "is_zero")]
    timeout_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry: Option<Retry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_header_modifier: Option<HeaderModifier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_header_modifier: Option<HeaderModifier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_redirect: Option<Redirect>,
}

/// `request_header_modifier` / `response_header_modifier`: `set` and `add` are lists of `{name, value}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HeaderModifier {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    set: Vec<HeaderValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    add: Vec<HeaderValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    remove: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HeaderValue {
    name: String,
    value: String,
}

/// `request_redirect`; `path` is one of `replace_full_path`, `replace_prefix_match`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Redirect {
    #[serde(skip_serializing_if = "String::is_empty")]
    scheme: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    hostname: String,
    #[serde(skip_serializing_if = "is_zero")]
    port: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<PathModifier>,
    #[serde(skip_serializing_if = "is_zero")]
    status_code: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PathModifier {
    ReplaceFullPath(String),
    ReplacePrefixMatch(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Match {
    /// One of `exact`, `prefix`, `regex`: `path: {prefix: /api}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<PathMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    headers: Vec<HeaderMatch>,
    #[serde(skip_serializing_if = "String::is_empty")]
    method: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HeaderMatch {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backend {
    service: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    port: u32,
    /// Left out: 1. (On the wire 0 means "no traffic", which is never what a forgotten weight means.)
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Retry {
    #[serde(skip_serializing_if = "is_zero")]
    attempts: u32,
    #[serde(skip_serializing_if = "is_zero")]
    per_try_timeout_ms: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    retry_on: Vec<RetryOn>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    retryable_status_codes: Vec<u32>,
    #[serde(skip_serializing_if = "is_zero")]
    backoff_base_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    backoff_max_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    budget_ratio: f64,
    #[serde(skip_serializing_if = "is_zero")]
    budget_min_retries_per_second: u32,
    #[serde(skip_serializing_if = "is_zero")]
    retry_non_idempotent: bool,
}

impl SpecYaml for RouteSpec {
    fn into_wire(self) -> Result<Wire, String> {
        let mut rules = Vec::with_capacity(self.rules.len());
        for (r, rule) in self.rules.into_iter().enumerate() {
            let mut matches = Vec::with_capacity(rule.matches.len());
            for (m, matched) in rule.matches.into_iter().enumerate() {
                let at = format!("spec.rules[{r}].matches[{m}]");
                matches.push(match_to_wire(matched, &at)?);
            }
            rules.push(v1::RouteRule {
                name: rule.name,
                matches,
                backends: rule.backends.into_iter().map(backend_to_wire).collect(),
                timeout_ms: rule.timeout_ms,
                retry: rule.retry.map(retry_to_wire),
                request_header_modifier: rule.request_header_modifier.map(modifier_to_wire),
                response_header_modifier: rule.response_header_modifier.map(modifier_to_wire),
                request_redirect: rule.request_redirect.map(redirect_to_wire),
            });
        }
        Ok(Wire::Route(v1::Route {
            parent_service: self.parent_service,
            rules,
        }))
    }

    fn from_wire(spec: &Wire) -> Option<Self> {
        let Wire::Route(route) = spec else {
            return None;
        };
        let rules = route.rules.iter().map(|rule| Rule {
            name: rule.name.clone(),
            matches: rule.matches.iter().map(match_from_wire).collect(),
            backends: rule.backends.iter().map(backend_from_wire).collect(),
            timeout_ms: rule.timeout_ms,
            retry: rule.retry.as_ref().map(retry_from_wire),
            request_header_modifier: rule
                .request_header_modifier
                .as_ref()
                .map(modifier_from_wire),
            response_header_modifier: (rule.response_header_modifier.as_ref())
                .map(modifier_from_wire),
            request_redirect: rule.request_redirect.as_ref().map(redirect_from_wire),
        });
        Some(Self {
            parent_service: route.parent_service.clone(),
            rules: rules.collect(),
        })
    }
}

pub(super) fn match_to_wire(matched: Match, at: &str) -> Result<v1::RouteMatch, String> {
    use v1::header_match::Value;
    let mut headers = Vec::with_capacity(matched.headers.len());
    for (h, header) in matched.headers.into_iter().enumerate() {
        let value = match (header.exact, header.regex) {
            (Some(exact), None) => Value::Exact(exact),
            (None, Some(regex)) => Value::Regex(regex),
            _ => {
                return Err(format!(
                    "{at}.headers[{h}]: set exactly one of `exact` and `regex`"
                ));
            }
        };
        headers.push(v1::HeaderMatch {
            name: header.name,
            value: Some(value),
        });
    }
    let path = matched.path.map(|path| v1::PathMatch {
        kind: Some(match path {
            PathMatch::Exact(p) => v1::path_match::Kind::Exact(p),
            PathMatch::Prefix(p) => v1::path_match::Kind::Prefix(p),
            PathMatch::Regex(p) => v1::path_match::Kind::Regex(p),
        }),
    });
    Ok(v1::RouteMatch {
        path,
        headers,
        method: matched.method,
    })
}

pub(super) fn match_from_wire(matched: &v1::RouteMatch) -> Match {
    use v1::header_match::Value;
    let path = matched
        .path
        .as_ref()
        .and_then(|p| p.kind.clone())
        .map(|kind| match kind {
            v1::path_match::Kind::Exact(p) => PathMatch::Exact(p),
            v1::path_match::Kind::Prefix(p) => PathMatch::Prefix(p),
            v1::path_match::Kind::Regex(p) => PathMatch::Regex(p),
        });
    let headers = matched.headers.iter().map(|h| HeaderMatch {
        name: h.name.clone(),
        exact: match &h.value {
            Some(Value::Exact(v)) => Some(v.clone()),
            _ => None,
        },
        regex: match &h.value {
            Some(Value::Regex(v)) => Some(v.clone()),
            _ => None,
        },
    });
    Match {
        path,
        headers: headers.collect(),
        method: matched.method.clone(),
    }
}

fn backend_to_wire(backend: Backend) -> v1::WeightedBackend {
    v1::WeightedBackend {
        service: backend.service,
        port: backend.port,
        weight: backend.weight,
    }
}

fn backend_from_wire(backend: &v1::WeightedBackend) -> Backend {
    Backend {
        service: backend.service.clone(),
        port: backend.port,
        weight: backend.weight,
    }
}

fn retry_to_wire(retry: Retry) -> v1::RetryPolicy {
    v1::RetryPolicy {
        attempts: retry.attempts,
        per_try_timeout_ms: retry.per_try_timeout_ms,
        retry_on: retry
            .retry_on
            .into_iter()
            .map(|r| RetryOn::to_wire(Some(r)))
            .collect(),
        retryable_status_codes: retry.retryable_status_codes,
        backoff_base_ms: retry.backoff_base_ms,
        backoff_max_ms: retry.backoff_max_ms,
        budget_ratio: retry.budget_ratio,
        budget_min_retries_per_second: retry.budget_min_retries_per_second,
        retry_non_idempotent: retry.retry_non_idempotent,
    }
}

fn retry_from_wire(retry: &v1::RetryPolicy) -> Retry {
    Retry {
        attempts: retry.attempts,
        per_try_timeout_ms: retry.per_try_timeout_ms,
        retry_on: retry
            .retry_on
            .iter()
            .filter_map(|&r| RetryOn::from_wire(r))
            .collect(),
        retryable_status_codes: retry.retryable_status_codes.clone(),
        backoff_base_ms: retry.backoff_base_ms,
        backoff_max_ms: retry.backoff_max_ms,
        budget_ratio: retry.budget_ratio,
        budget_min_retries_per_second: retry.budget_min_retries_per_second,
        retry_non_idempotent: retry.retry_non_idempotent,
    }
}

fn modifier_to_wire(edits: HeaderModifier) -> v1::HeaderModifier {
    let pairs = |values: Vec<HeaderValue>| {
        (values.into_iter())
            .map(|h| v1::HeaderValue {
                name: h.name,
                value: h.value,
            })
            .collect()
    };
    v1::HeaderModifier {
        set: pairs(edits.set),
        add: pairs(edits.add),
        remove: edits.remove,
    }
}

fn modifier_from_wire(edits: &v1::HeaderModifier) -> HeaderModifier {
    let pairs = |values: &[v1::HeaderValue]| {
        (values.iter())
            .map(|h| HeaderValue {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    HeaderModifier {
        set: pairs(&edits.set),
        add: pairs(&edits.add),
        remove: edits.remove.clone(),
    }
}

fn redirect_to_wire(redirect: Redirect) -> v1::RequestRedirect {
    use v1::path_modifier::Kind;
    v1::RequestRedirect {
        scheme: redirect.scheme,
        hostname: redirect.hostname,
        port: redirect.port,
        path: redirect.path.map(|path| v1::PathModifier {
            kind: Some(match path {
                PathModifier::ReplaceFullPath(p) => Kind::ReplaceFullPath(p),
                PathModifier::ReplacePrefixMatch(p) => Kind::ReplacePrefixMatch(p),
            }),
        }),
        status_code: redirect.status_code,
    }
}

fn redirect_from_wire(redirect: &v1::RequestRedirect) -> Redirect {
    use v1::path_modifier::Kind;
    Redirect {
        scheme: redirect.scheme.clone(),
        hostname: redirect.hostname.clone(),
        port: redirect.port,
        path: (redirect.path.as_ref())
            .and_then(|p| p.kind.clone())
            .map(|kind| match kind {
                Kind::ReplaceFullPath(p) => PathModifier::ReplaceFullPath(p),
                Kind::ReplacePrefixMatch(p) => PathModifier::ReplacePrefixMatch(p),
            }),
        status_code: redirect.status_code,
    }
}
