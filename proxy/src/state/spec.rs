//! The one builder of [`State`]: a plain description of services and routes (what the static
//! file says, or what discovery delivered) validated and indexed into the proxy's routing model.
//! Errors name the offending field.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::backend_policy::BackendPolicySpec;
use super::fault::{Fault, FaultSpec};
use super::filter::{HeaderEdits, HeaderModifierSpec, Redirect, RedirectSpec};
use super::mirror::{Mirror, MirrorSpec};
use super::model::{
    Backend, Endpoint, HeaderMatch, Match, PathMatch, Protocol, RouteRule, Service, State,
    ValueMatch,
};
use crate::backend::{BackendPolicy, BackendRuntime};
use crate::balance::{Balancer, OutlierConfig};
use crate::inbound::rate_limit::{Limiter, RateLimitSpec, Side};
use crate::metrics::{MirrorMetrics, RequestMetrics};
use crate::retry::{self, Retry, RetryOn, RetryPolicy};
use crate::tls::{SpiffeId, TlsMode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSpec {
    #[serde(default)]
    pub(crate) services: Vec<ServiceSpec>,
    #[serde(default)]
    pub(crate) routes: Vec<RouteSpec>,
    /// Inbound authorization policies, one per protected service.
    #[serde(default)]
    pub(crate) authorization: Vec<crate::inbound::authz::PolicySpec>,
    /// Backend policies (load balancing, caps, circuit breaker), one per service.
    #[serde(default)]
    pub(crate) backend_policies: Vec<BackendPolicySpec>,
    /// Injected faults (delays, aborts), one entry per service.
    #[serde(default)]
    pub(crate) faults: Vec<FaultSpec>,
    /// Inbound rate limits, one per protected service.
    #[serde(default)]
    pub(crate) rate_limits: Vec<RateLimitSpec>,
    /// Request mirroring to a shadow service, one entry per service.
    #[serde(default)]
    pub(crate) mirrors: Vec<MirrorSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceSpec {
    pub(crate) name: String,
    #[serde(default = "default_namespace")]
    pub(crate) namespace: String,
    pub(crate) port: u16,
    #[serde(default)]
    pub(crate) hosts: Vec<String>,
    #[serde(default)]
    pub(crate) addresses: Vec<IpAddr>,
    #[serde(default)]
    pub(crate) protocol: Protocol,
    /// The port the endpoints listen on; defaults to `port`.
    #[serde(default)]
    pub(crate) target_port: Option<u16>,
    /// Mutual TLS for the port (`strict`, `permissive`, `disabled`).
    #[serde(default)]
    pub(crate) tls_mode: Option<TlsMode>,
    #[serde(default)]
    pub(crate) endpoints: Vec<EndpointSpec>,
}

pub(crate) fn default_namespace() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointSpec {
    pub(crate) address: SocketAddr,
    #[serde(default = "one")]
    pub(crate) weight: u32,
    #[serde(default = "yes")]
    pub(crate) ready: bool,
    /// SPIFFE id the endpoint's proxy presents (`spiffe://<td>/ns/<ns>/sa/<sa>`); absent for
    /// endpoints outside the mesh.
    #[serde(default)]
    pub(crate) identity: Option<String>,
    /// Its zone (failure domain), for zone-aware balancing (`SHOAL_ZONE`).
    #[serde(default)]
    pub(crate) zone: String,
}

pub(crate) fn one() -> u32 {
    1
}
pub(crate) fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSpec {
    pub(crate) name: String,
    pub(crate) service: String,
    #[serde(default)]
    pub(crate) rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    /// The rule's name in metrics (the `route` label); defaults to the route's name.
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) matches: Vec<MatchSpec>,
    /// Required unless the rule has a `request_redirect` (then absent).
    #[serde(default)]
    pub(crate) backends: Vec<BackendSpec>,
    #[serde(default, with = "humantime_opt")]
    pub(crate) timeout: Option<Duration>,
    /// Retries of the rule's failed requests (docs/resilience.md); none when absent.
    #[serde(default)]
    pub(crate) retry: Option<RetrySpec>,
    /// Header edits made to the rule's requests before they are sent.
    #[serde(default)]
    pub(crate) request_header_modifier: Option<HeaderModifierSpec>,
    /// Header edits made to the responses on their way back.
    #[serde(default)]
    pub(crate) response_header_modifier: Option<HeaderModifierSpec>,
    /// Answer the rule's requests with this redirect instead of sending them.
    #[serde(default)]
    pub(crate) request_redirect: Option<RedirectSpec>,
}

/// A rule's filters, checked.
pub(crate) struct Filters {
    request_headers: Option<HeaderEdits>,
    response_headers: Option<Arc<HeaderEdits>>,
    redirect: Option<Redirect>,
}

impl RuleSpec {
    /// Checks the rule's filters against its compiled `matches`; errors name the field under `at`.
    fn filters(&self, at: &str, matches: &[Match]) -> Result<Filters, String> {
        let edits = |spec: &Option<HeaderModifierSpec>, field: &str| {
            spec.as_ref()
                .map(|m| m.resolve(&format!("{at}.{field}")))
                .transpose()
        };
        let redirect = match &self.request_redirect {
            None => None,
            Some(r) => {
                let answered = "the proxy answers the redirect itself, so nothing is sent";
                if !self.backends.is_empty() {
                    return Err(format!(
                        "{at}.backends: a rule with a request_redirect has no backends: {answered}"
                    ));
                }
                if self.retry.is_some() {
                    return Err(format!(
                        "{at}.retry: a rule with a request_redirect has no retry: {answered}"
                    ));
                }
                if self.request_header_modifier.is_some() {
                    return Err(format!(
                        "{at}.request_header_modifier: a rule with a request_redirect has no request header edits: {answered}"
                    ));
                }
                Some(r.resolve(&format!("{at}.request_redirect"), matches)?)
            }
        };
        Ok(Filters {
            request_headers: edits(&self.request_header_modifier, "request_header_modifier")?,
            response_headers: edits(&self.response_header_modifier, "response_header_modifier")?
                .map(Arc::new),
            redirect,
        })
    }
}

/// A rule's retry policy as written: unset fields take the defaults of `crate::retry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetrySpec {
    #[serde(default)]
    pub(crate) attempts: Option<u32>,
    #[serde(default, with = "humantime_opt")]
    pub(crate) per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub(crate) retry_on: Vec<RetryOn>,
    #[serde(default)]
    pub(crate) retryable_status_codes: Vec<u32>,
    #[serde(default, with = "humantime_opt")]
    pub(crate) backoff_base: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    pub(crate) backoff_max: Option<Duration>,
    #[serde(default)]
    pub(crate) budget_ratio: Option<f64>,
    #[serde(default)]
    pub(crate) budget_min_retries_per_second: Option<u32>,
    #[serde(default)]
    pub(crate) retry_non_idempotent: bool,
}

impl RetrySpec {
    /// Checks the policy (the control plane's checks, `validate/route.rs`) and fills in the
    /// defaults; errors name the field under `at`.
    pub(crate) fn resolve(
        &self,
        at: &str,
        timeout: Option<Duration>,
    ) -> Result<RetryPolicy, String> {
        let attempts = self.attempts.unwrap_or(retry::DEFAULT_ATTEMPTS);
        if !(1..=retry::MAX_ATTEMPTS).contains(&attempts) {
            return Err(format!(
                "{at}.attempts: {attempts} is not a number of attempts in 1–{}",
                retry::MAX_ATTEMPTS
            ));
        }
        let in_range = |field: &str, d: Option<Duration>| match d {
            Some(d) if d.is_zero() || d > Duration::from_secs(24 * 3600) => {
                Err(format!("{at}.{field}: must be between 1ms and 24h"))
            }
            _ => Ok(()),
        };
        in_range("per_try_timeout", self.per_try_timeout)?;
        in_range("backoff_base", self.backoff_base)?;
        in_range("backoff_max", self.backoff_max)?;
        if let (Some(per_try), Some(timeout)) = (self.per_try_timeout, timeout)
            && per_try > timeout
        {
            return Err(format!(
                "{at}.per_try_timeout: {} ms is longer than the rule's timeout, {} ms",
                per_try.as_millis(),
                timeout.as_millis()
            ));
        }
        let mut codes = Vec::with_capacity(self.retryable_status_codes.len());
        for (i, code) in self.retryable_status_codes.iter().enumerate() {
            match u16::try_from(*code) {
                Ok(c) if (100..=599).contains(&c) => codes.push(c),
                _ => {
                    return Err(format!(
                        "{at}.retryable_status_codes[{i}]: {code} is not an HTTP status code (100–599)"
                    ));
                }
            }
        }
        let backoff_base = self.backoff_base.unwrap_or(retry::DEFAULT_BACKOFF_BASE);
        let backoff_max = self.backoff_max.unwrap_or(retry::DEFAULT_BACKOFF_MAX);
        if backoff_base > backoff_max {
            return Err(format!(
                "{at}.backoff_base: {} ms is more than the backoff maximum, {} ms",
                backoff_base.as_millis(),
                backoff_max.as_millis()
            ));
        }
        let budget_ratio = self.budget_ratio.unwrap_or(retry::DEFAULT_BUDGET_RATIO);
        if !(budget_ratio > 0.0 && budget_ratio <= 1.0) {
            return Err(format!(
                "{at}.budget_ratio: {budget_ratio} is not a ratio in (0, 1]"
            ));
        }
        if self.budget_min_retries_per_second == Some(0) {
            return Err(format!(
                "{at}.budget_min_retries_per_second: must be positive when set"
            ));
        }
        let mut retry_on = if self.retry_on.is_empty() {
            retry::DEFAULT_RETRY_ON.to_vec()
        } else {
            self.retry_on.clone()
        };
        retry_on.dedup();
        Ok(RetryPolicy {
            attempts,
            per_try_timeout: self.per_try_timeout,
            retry_on,
            retryable_status_codes: codes,
            backoff_base,
            backoff_max,
            budget_ratio,
            budget_min_retries_per_second: self
                .budget_min_retries_per_second
                .unwrap_or(retry::DEFAULT_BUDGET_MIN_PER_SECOND),
            retry_non_idempotent: self.retry_non_idempotent,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MatchSpec {
    /// Path prefix on segment boundaries (`/api` matches `/api/x`, not `/apiary`).
    pub(crate) path_prefix: Option<String>,
    /// Exact path.
    pub(crate) path_exact: Option<String>,
    /// Regular expression the whole path must match.
    pub(crate) path_regex: Option<String>,
    pub(crate) method: Option<String>,
    /// Header name → exact value.
    #[serde(default)]
    pub(crate) headers: HashMap<String, String>,
    /// Header name → regular expression the whole value must match.
    #[serde(default)]
    pub(crate) header_regex: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendSpec {
    pub(crate) service: String,
    #[serde(default = "one")]
    pub(crate) weight: u32,
    /// The backend service's port to call; `None`: the port the request came in on (when the backend
    /// has it, else its first port).
    #[serde(default)]
    pub(crate) port: Option<u16>,
}

pub(crate) mod humantime_opt {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s).map_err(|_| {
                serde::de::Error::custom(format!("`{s}` is not a duration such as 500ms or 10s"))
            })
        })
        .transpose()
    }
}

fn regex(pattern: &str, field: &str) -> Result<regex::Regex, String> {
    // Anchored: the whole path or value must match, as the wire contract says.
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("{field}: invalid regular expression `{pattern}`: {e}"))
}

pub(crate) fn build_match(m: MatchSpec, at: &str) -> Result<Match, String> {
    let paths = [&m.path_prefix, &m.path_exact, &m.path_regex]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if paths == 0 && m.method.is_none() && m.headers.is_empty() && m.header_regex.is_empty() {
        return Err(format!(
            "{at}: an empty match; omit `matches` to match everything"
        ));
    }
    if paths > 1 {
        return Err(format!(
            "{at}: give at most one of path_prefix, path_exact, path_regex"
        ));
    }
    let path = if let Some(p) = m.path_prefix {
        if !p.starts_with('/') {
            return Err(format!("{at}.path_prefix: `{p}` must start with '/'"));
        }
        Some(PathMatch::Prefix(p.trim_end_matches('/').to_string()))
    } else if let Some(p) = m.path_exact {
        if !p.starts_with('/') {
            return Err(format!("{at}.path_exact: `{p}` must start with '/'"));
        }
        Some(PathMatch::Exact(p))
    } else if let Some(p) = m.path_regex {
        Some(PathMatch::Regex(regex(&p, &format!("{at}.path_regex"))?))
    } else {
        None
    };
    let method = m
        .method
        .map(|s| {
            http::Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("{at}.method: `{s}` is not an HTTP method"))
        })
        .transpose()?;
    let header_name = |name: &str, field: &str| {
        http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{at}.{field}: `{name}` is not a header name"))
    };
    let mut headers = Vec::new();
    for (name, value) in m.headers {
        headers.push(HeaderMatch {
            name: header_name(&name, "headers")?,
            value: ValueMatch::Exact(value),
        });
    }
    for (name, pattern) in m.header_regex {
        let value = ValueMatch::Regex(regex(&pattern, &format!("{at}.header_regex.{name}"))?);
        headers.push(HeaderMatch {
            name: header_name(&name, "header_regex")?,
            value,
        });
    }
    // Deterministic order for /config and for cheap checks first.
    headers.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    Ok(Match {
        path,
        method,
        headers,
    })
}

/// Checks what a route says on its own (everything but the services it names): rules, timeouts,
/// matches and backend weights, errors under `at`. Returns each rule's compiled matches. The
/// discovery client checks a pushed route with it before accepting it, so a bad route is
/// rejected alone, naming its field.
pub(crate) fn check_route(r: &RouteSpec, at: &str) -> Result<Vec<Vec<Match>>, String> {
    if r.rules.is_empty() {
        return Err(format!("{at}.rules: a route needs at least one rule"));
    }
    let mut compiled = Vec::with_capacity(r.rules.len());
    for (j, rule) in r.rules.iter().enumerate() {
        let at = format!("{at}.rules[{j}]");
        if let Some(t) = rule.timeout
            && (t.is_zero() || t > Duration::from_secs(24 * 3600))
        {
            return Err(format!("{at}.timeout: must be between 1ms and 24h"));
        }
        if let Some(retry) = &rule.retry {
            retry.resolve(&format!("{at}.retry"), rule.timeout)?;
        }
        let matches = rule
            .matches
            .iter()
            .enumerate()
            .map(|(k, m)| build_match(m.clone(), &format!("{at}.matches[{k}]")))
            .collect::<Result<Vec<_>, _>>()?;
        for (k, b) in rule.backends.iter().enumerate() {
            if b.weight > 1_000_000 {
                return Err(format!("{at}.backends[{k}].weight: at most 1000000"));
            }
        }
        rule.filters(&at, &matches)?;
        if rule.request_redirect.is_none()
            && rule.backends.iter().map(|b| b.weight).sum::<u32>() == 0
        {
            return Err(format!(
                "{at}.backends: weights sum to 0 (or no backends): nothing could be served"
            ));
        }
        compiled.push(matches);
    }
    Ok(compiled)
}

/// Validates `spec` and builds the routing state. A service may appear once per port; routes
/// apply to every port of their service, and a backend resolves to the entry with the parent's
/// port when it has one (else its first).
pub(crate) fn build(spec: FileSpec) -> Result<State, String> {
    let mut services: Vec<Arc<Service>> = Vec::with_capacity(spec.services.len());
    let mut by_name: HashMap<String, Vec<Arc<Service>>> = HashMap::new();
    let mut claimed: HashMap<String, String> = HashMap::new();
    let mut policies: HashMap<String, (usize, BackendPolicy)> = HashMap::new();
    for (i, p) in spec.backend_policies.iter().enumerate() {
        let at = format!("backend_policies[{i}]");
        let name = qualify(&p.service);
        let policy = p.resolve(&at)?;
        if policies.insert(name.clone(), (i, policy)).is_some() {
            return Err(format!(
                "{at}.service: {name} already has a backend policy (one per service)"
            ));
        }
    }
    let mut faults: HashMap<String, (usize, Fault)> = HashMap::new();
    for (i, f) in spec.faults.iter().enumerate() {
        let at = format!("faults[{i}]");
        let fault = f.resolve(&at)?;
        if faults.insert(qualify(&f.service), (i, fault)).is_some() {
            return Err(format!(
                "{at}.service: {} already has faults (one entry per service)",
                qualify(&f.service)
            ));
        }
    }
    for (i, s) in spec.services.into_iter().enumerate() {
        let qualified = format!("{}.{}", s.name, s.namespace);
        let policy = policies.get(&qualified).map(|(_, p)| p.clone());
        let fault = faults.get(&qualified).map(|(_, f)| f.clone());
        let service = Arc::new(build_service(i, s, &mut claimed, &by_name, policy, fault)?);
        by_name
            .entry(service.qualified_name())
            .or_default()
            .push(service.clone());
        services.push(service);
    }
    if let Some(i) = (policies.iter())
        .filter(|(name, _)| !by_name.contains_key(*name))
        .map(|(_, (i, _))| *i)
        .min()
    {
        let name = &spec.backend_policies[i].service;
        return Err(format!(
            "backend_policies[{i}].service: unknown service `{name}`"
        ));
    }
    if let Some(i) = (faults.iter())
        .filter(|(name, _)| !by_name.contains_key(*name))
        .map(|(_, (i, _))| *i)
        .min()
    {
        let name = &spec.faults[i].service;
        return Err(format!("faults[{i}].service: unknown service `{name}`"));
    }
    let lookup = |name: &str| -> Option<&Vec<Arc<Service>>> {
        by_name
            .get(name)
            .or_else(|| by_name.get(&format!("{name}.default")))
    };
    let mut authorization = super::model::FastMap::default();
    for (i, p) in spec.authorization.into_iter().enumerate() {
        let at = format!("authorization[{i}]");
        let policy = crate::inbound::authz::build(p, &at, "default")?;
        if authorization.contains_key(&policy.service) {
            return Err(format!(
                "{at}.service: {} already has a policy (one per service)",
                policy.service
            ));
        }
        authorization.insert(policy.service.clone(), Arc::new(policy));
    }
    let mut routes: Vec<Vec<RouteRule>> = services.iter().map(|_| Vec::new()).collect();
    let mut route_names = HashSet::new();
    for (i, r) in spec.routes.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        if r.name.is_empty() || !route_names.insert(r.name.clone()) {
            return Err(format!("{at}.name: `{}` is empty or not unique", r.name));
        }
        let parents = lookup(&r.service)
            .ok_or_else(|| format!("{at}.service: unknown service `{}`", r.service))?;
        let checked = check_route(&r, &at)?;
        for ((j, rule), matches) in r.rules.iter().enumerate().zip(checked) {
            let at = format!("{at}.rules[{j}]");
            let label = rule.name.as_deref().unwrap_or(&r.name);
            for parent in parents {
                let mut backends = Vec::new();
                let filters = rule.filters(&at, &matches)?;
                // A redirect rule sends nothing; its answers count under the parent service.
                let parent_only = [BackendSpec {
                    service: parent.qualified_name(),
                    weight: 1,
                    port: None,
                }];
                let targets = if filters.redirect.is_some() {
                    &parent_only[..]
                } else {
                    &rule.backends[..]
                };
                for (k, b) in targets.iter().enumerate() {
                    let entries = lookup(&b.service).ok_or_else(|| {
                        format!(
                            "{at}.backends[{k}].service: unknown service `{}`",
                            b.service
                        )
                    })?;
                    let service = match b.port {
                        Some(port) => entries.iter().find(|e| e.port == port).ok_or_else(|| {
                            format!(
                                "{at}.backends[{k}].port: service {} has no port {port}",
                                b.service
                            )
                        })?,
                        // The request's port when the backend has it (a canary with the same ports).
                        None => entries
                            .iter()
                            .find(|e| e.port == parent.port)
                            .unwrap_or(&entries[0]),
                    }
                    .clone();
                    backends.push(Backend {
                        metrics: RequestMetrics::outbound(
                            &parent.qualified_name(),
                            label,
                            &service.qualified_name(),
                        ),
                        service,
                        weight: b.weight,
                    });
                }
                routes[parent.id].push(RouteRule {
                    route: label.to_string(),
                    matches: matches.clone(),
                    backends,
                    timeout: rule.timeout,
                    retry: match &rule.retry {
                        Some(r) => Some(Arc::new(Retry::new(
                            r.resolve(&format!("{at}.retry"), rule.timeout)?,
                            &parent.qualified_name(),
                            label,
                        ))),
                        None => None,
                    },
                    request_headers: filters.request_headers,
                    response_headers: filters.response_headers,
                    redirect: filters.redirect,
                });
            }
        }
    }
    resolve_mirrors(&spec.mirrors, &by_name, &routes)?;
    let mut state = State::new(services, routes);
    state.authorization = authorization;
    for (i, r) in spec.rate_limits.iter().enumerate() {
        let at = format!("rate_limits[{i}]");
        let matches = r.matches(&at)?;
        let Some(limit) = r.resolve(&at)? else {
            continue;
        };
        let service = limit.service.clone();
        let side = limit.side;
        let limits = match side {
            Side::Inbound => &mut state.rate_limits,
            Side::Outbound => &mut state.outbound_rate_limits,
        };
        if limits
            .insert(service.clone(), Arc::new(Limiter::new(limit, matches)))
            .is_some()
        {
            return Err(format!(
                "{at}.service: {service} already has a rate limit on the {side:?} side (one per service and side)"
            ));
        }
    }
    Ok(state)
}

use super::mirror::qualify;

/// Sets each mirrored service's [`Mirror`] (every port entry of it), once every service and
/// route exists: the shadow is looked up by name and port, and the counters are registered per
/// route label of the service's rules.
fn resolve_mirrors(
    mirrors: &[MirrorSpec],
    by_name: &HashMap<String, Vec<Arc<Service>>>,
    routes: &[Vec<RouteRule>],
) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (i, m) in mirrors.iter().enumerate() {
        let at = format!("mirrors[{i}]");
        let terms = m.resolve(&at)?;
        let name = qualify(&m.service);
        if !seen.insert(name.clone()) {
            return Err(format!(
                "{at}.service: {name} already has a mirror (one per service)"
            ));
        }
        let targets = by_name
            .get(&name)
            .ok_or_else(|| format!("{at}.service: unknown service `{}`", m.service))?;
        let shadow_name = qualify(&m.mirror);
        let shadows = by_name
            .get(&shadow_name)
            .ok_or_else(|| format!("{at}.mirror: unknown service `{}`", m.mirror))?;
        for target in targets {
            let shadow = match terms.port {
                Some(port) => shadows.iter().find(|s| s.port == port).ok_or_else(|| {
                    format!("{at}.port: service {shadow_name} has no port {port}")
                })?,
                // The request's port, as a route's backend: that entry when it has one.
                None => shadows
                    .iter()
                    .find(|s| s.port == target.port)
                    .unwrap_or(&shadows[0]),
            };
            let rules = routes.get(target.id).map_or(&[][..], Vec::as_slice);
            let metrics = std::iter::once("default")
                .chain(rules.iter().map(|r| r.route.as_str()))
                .map(|route| MirrorMetrics::new(&name, route, &shadow_name))
                .collect();
            let mirror = Mirror {
                name: shadow_name.clone(),
                port: shadow.port,
                shadow: shadow.id,
                percent: terms.percent,
                compare_headers: terms.compare_headers.clone(),
                metrics,
            };
            // Built once per state: the cell is empty.
            let _ = target.mirror.set(mirror);
        }
    }
    Ok(())
}

fn build_service(
    id: usize,
    s: ServiceSpec,
    claimed: &mut HashMap<String, String>,
    by_name: &HashMap<String, Vec<Arc<Service>>>,
    policy: Option<BackendPolicy>,
    fault: Option<Fault>,
) -> Result<Service, String> {
    let at = format!("services[{id}]");
    let identities = check_service(&s, &at)?;
    let qualified = format!("{}.{}", s.name, s.namespace);
    if by_name
        .get(&qualified)
        .is_some_and(|v| v.iter().any(|e| e.port == s.port))
    {
        return Err(format!(
            "{at}: service {qualified} port {} is defined twice",
            s.port
        ));
    }
    // The same list the control plane keeps unique across services at `apply`.
    let authorities = shoal_proto::authority::authorities(&s.name, &s.namespace, s.port, &s.hosts);
    for a in &authorities {
        if let Some(owner) = claimed.insert(a.clone(), qualified.clone())
            && owner != qualified
        {
            return Err(format!(
                "{at}: authority {a} is already used by service {owner}"
            ));
        }
    }
    // A transparent proxy maps each original destination to one service.
    for ip in &s.addresses {
        let key = format!("address {}", SocketAddr::new(*ip, s.port));
        if let Some(owner) = claimed.insert(key.clone(), qualified.clone())
            && owner != qualified
        {
            return Err(format!("{at}: {key} is already used by service {owner}"));
        }
    }
    let endpoints: Vec<Endpoint> = s
        .endpoints
        .iter()
        .zip(identities)
        .map(|(e, identity)| Endpoint {
            addr: e.address,
            weight: e.weight,
            ready: e.ready,
            identity,
            zone: e.zone.clone(),
        })
        .collect();
    let policy = policy.unwrap_or_else(BackendPolicy::none);
    Ok(Service {
        id,
        balancer: Balancer::new(
            &endpoints,
            policy.load_balancer,
            policy.outlier_detection.clone().map(|o| OutlierConfig {
                service: qualified.as_str().into(),
                ..o
            }),
        )
        .with_slow_start(policy.slow_start)
        .with_health_check(policy.health_check.clone()),
        backend: BackendRuntime::new(policy, &qualified),
        fault,
        mirror: std::sync::OnceLock::new(),
        metrics: RequestMetrics::outbound(&qualified, "default", &qualified),
        name: s.name,
        namespace: s.namespace,
        port: s.port,
        target_port: s.target_port.unwrap_or(s.port),
        tls_mode: s.tls_mode,
        protocol: s.protocol,
        authorities,
        addresses: s.addresses,
        endpoints,
    })
}

/// Checks one service port's description on its own (names, ports, endpoint weights and
/// identities), errors under `at`; returns each endpoint's parsed identity. Conflicts with other
/// services (authorities, a port defined twice) are the builder's.
pub(crate) fn check_service(s: &ServiceSpec, at: &str) -> Result<Vec<Option<SpiffeId>>, String> {
    if !crate::tls::spiffe::is_label(&s.name) {
        return Err(format!(
            "{at}.name: `{}` is not a DNS label (a-z, 0-9, '-', at most 63)",
            s.name
        ));
    }
    if !crate::tls::spiffe::is_label(&s.namespace) {
        return Err(format!(
            "{at}.namespace: `{}` is not a DNS label",
            s.namespace
        ));
    }
    if s.port == 0 {
        return Err(format!("{at}.port: must be 1-65535"));
    }
    let identities = (s.endpoints.iter().enumerate())
        .map(|(j, e)| check_endpoint(e, &format!("{at}.endpoints[{j}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if s.target_port == Some(0) {
        return Err(format!("{at}.target_port: must be 1-65535"));
    }
    Ok(identities)
}

/// Checks one endpoint (weight, identity), errors under `at`; returns its parsed identity.
pub(crate) fn check_endpoint(e: &EndpointSpec, at: &str) -> Result<Option<SpiffeId>, String> {
    if e.weight == 0 || e.weight > 1_000_000 {
        return Err(format!("{at}.weight: must be 1-1000000, got {}", e.weight));
    }
    e.identity
        .as_deref()
        .map(SpiffeId::parse)
        .transpose()
        .map_err(|err| format!("{at}.identity: {err}"))
}
