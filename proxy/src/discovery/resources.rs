//! The resources a proxy holds from discovery, and their translation into the state builder's
//! description (the same one the static file produces), so both sources share one validation.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use shoal_proto::v1::{self, ResourceType, discovery_resource::Payload};

use crate::backend::{Algorithm, BreakerOverride};
use crate::identity::parse_cert;
use crate::inbound::authz::{self, Action, IdentityMatchSpec, PolicySpec};
use crate::inbound::rate_limit::{OverrideSpec, RateLimitSpec, Scope, Side, Unit};
use crate::retry::RetryOn;
use crate::state::backend_policy::{
    BackendPolicySpec, BreakerSpec, GrpcCheckSpec, HashKeySpec, HealthCheckSpec, HttpCheckSpec,
    LimitsSpec, LoadBalancerSpec, OutlierSpec, StatusRangeSpec, SuccessRateSpec,
};
use crate::state::fault::{AbortSpec, DelaySpec, FaultSpec};
use crate::state::filter::{HeaderModifierSpec, HeaderValueSpec, PathModifierSpec, RedirectSpec};
use crate::state::mirror::MirrorSpec;
use crate::state::spec::{
    self, BackendSpec, EndpointSpec, FileSpec, MatchSpec, RetrySpec, RouteSpec, RuleSpec,
    ServiceSpec,
};
use crate::state::{Protocol, State};
use crate::tls::TlsMode;

/// A resource key: type and name.
pub type Key = (i32, String);

/// Every resource held, with its version.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    map: HashMap<Key, (String, Payload)>,
    /// Per service, the route version replaced by one that names a service not held yet: it keeps
    /// serving (with its runtime state: retry budgets) until the new version's services arrive.
    superseded: HashMap<String, v1::Route>,
}

/// One resource of a response the proxy refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) key: Key,
    /// Names the resource and the field: `route web.default: rules[0].timeout: ...`.
    pub(crate) error: String,
}

/// A response taken in resource by resource ([`Resources::update`]).
pub(crate) struct Update {
    /// The resources now held: the valid ones of the response applied, the rejected ones as they
    /// were before it.
    pub(crate) next: Resources,
    /// The state `next` builds.
    pub(crate) state: State,
    /// Services that routes name but the proxy does not hold yet (to subscribe to; their routes
    /// wait until they arrive, a replaced version serving meanwhile).
    pub(crate) missing: Vec<String>,
    /// Every key the response answered, rejected ones included: waiters must not hang on them.
    pub(crate) answered: Vec<Key>,
    pub(crate) rejected: Vec<Rejection>,
}

impl Update {
    /// Rejects `key` after the fact (a trust bundle its consumers refused): `next` goes back to
    /// what `before` held under it. Only for resources the state is not built from.
    pub(crate) fn reject(&mut self, before: &Resources, key: &Key, error: String) {
        self.next.put(key, before.map.get(key).cloned());
        self.rejected.push(Rejection {
            key: key.clone(),
            error: format!("{}: {error}", describe(key)),
        });
    }
}

fn key_of(k: &v1::ResourceKey) -> Key {
    (k.r#type, k.name.clone())
}

/// `route web.default`: how errors and logs name a resource.
pub(crate) fn describe(key: &Key) -> String {
    let kind = ResourceType::try_from(key.0).map_or_else(
        |_| format!("resource type {}", key.0),
        |t| {
            t.as_str_name()
                .trim_start_matches("RESOURCE_TYPE_")
                .to_ascii_lowercase()
        },
    );
    format!("{kind} {}", key.1)
}

/// A builder error without the builder's own index (`services[3]: `, `routes[0].`): that is a
/// position in the description built from every resource held, not in the resource.
fn relative(error: &str) -> &str {
    for list in ["services[", "routes[", "authorization["] {
        if let Some((_, after)) = error.strip_prefix(list).and_then(|r| r.split_once(']')) {
            return after.trim_start_matches([':', '.', ' ']);
        }
    }
    error
}

/// A change a response makes to one key: the new version and payload, or `None` (removed).
type Change = (Key, Option<(String, Payload)>);

impl Resources {
    /// Applies `response` resource by resource: every resource is checked on its own (a bad one
    /// is rejected, naming its field, and the held version stays), then the whole state is built.
    /// When that fails (a change conflicts with another resource: two services claiming one
    /// host), the changes are applied one at a time and those that break the build are rejected
    /// too. An error only if the state held before no longer builds.
    pub(crate) fn update(&self, response: &v1::DiscoveryResponse) -> Result<Update, String> {
        let mut rejected = Vec::new();
        let mut answered = Vec::new();
        let mut changes: Vec<Change> = Vec::new();
        for r in &response.resources {
            let Some(k) = r.key.as_ref() else {
                rejected.push(Rejection {
                    key: (0, String::new()),
                    error: "a resource without a key".into(),
                });
                continue;
            };
            let key = key_of(k);
            answered.push(key.clone());
            match check(&key, r.payload.as_ref()) {
                Ok(payload) => changes.push((key, Some((r.version.clone(), payload.clone())))),
                Err(e) => rejected.push(Rejection {
                    error: format!("{}: {}", describe(&key), e.trim_start_matches('.')),
                    key,
                }),
            }
        }
        for k in &response.removed {
            answered.push(key_of(k));
            changes.push((key_of(k), None));
        }
        let mut next = self.clone();
        for (k, v) in &changes {
            next.put(k, v.clone());
        }
        if let Ok((state, missing)) = next.build(None) {
            next.settle();
            return Ok(Update {
                next,
                state,
                missing,
                answered,
                rejected,
            });
        }
        let (mut next, mut built) = (self.clone(), self.build(None)?);
        // Until a pass applies nothing more: a change may only fit once another has applied
        // (a host freed by one service, claimed by another).
        loop {
            let mut failed = Vec::new();
            let before = changes.len();
            for (k, v) in changes {
                let mut trial = next.clone();
                trial.put(&k, v.clone());
                let service = [ResourceType::Service, ResourceType::Endpoints]
                    .into_iter()
                    .any(|t| t as i32 == k.0)
                    .then_some(k.1.as_str());
                match trial.build(service) {
                    Ok(b) => (next, built) = (trial, b),
                    Err(e) => failed.push(((k, v), e)),
                }
            }
            if failed.is_empty() || failed.len() == before {
                rejected.extend(failed.into_iter().map(|((key, _), e)| Rejection {
                    error: format!("{}: {}", describe(&key), relative(&e)),
                    key,
                }));
                break;
            }
            changes = failed.into_iter().map(|(c, _)| c).collect();
        }
        next.settle();
        Ok(Update {
            next,
            state: built.0,
            missing: built.1,
            answered,
            rejected,
        })
    }

    fn put(&mut self, key: &Key, value: Option<(String, Payload)>) {
        let replaced = match value {
            Some(v) => self.map.insert(key.clone(), v),
            None => {
                self.superseded.remove(&key.1);
                self.map.remove(key)
            }
        };
        // A route replaced while the previous one still serves: the first of a series of updates
        // waiting for a service is the one that keeps serving.
        if let Some((_, Payload::Route(old))) = replaced
            && key.0 == ResourceType::Route as i32
            && self.get(key).is_some()
        {
            self.superseded.entry(key.1.clone()).or_insert(old);
        }
    }

    /// Forgets the superseded routes whose successor now builds (every service it names is held).
    fn settle(&mut self) {
        let known = self.services();
        let map = &self.map;
        self.superseded.retain(|name, _| {
            match map.get(&(ResourceType::Route as i32, name.clone())) {
                Some((_, Payload::Route(r))) => !absent(r, &known).is_empty(),
                _ => false,
            }
        });
    }

    /// The names of the services held.
    fn services(&self) -> HashSet<String> {
        (self.map.keys())
            .filter(|(ty, _)| *ty == ResourceType::Service as i32)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// The state these resources build, and the services routes wait for; the service named
    /// `last` is built last (see [`Self::to_spec`]).
    fn build(&self, last: Option<&str>) -> Result<(State, Vec<String>), String> {
        let (spec, missing) = self.to_spec(last)?;
        Ok((spec::build(spec)?, missing))
    }

    /// The payload held under `key`.
    pub fn get(&self, key: &Key) -> Option<&Payload> {
        self.map.get(key).map(|(_, p)| p)
    }

    /// The services the route of `service` sends traffic to.
    pub fn route_backends(&self, service: &str) -> Vec<String> {
        match self
            .map
            .get(&(ResourceType::Route as i32, service.to_string()))
        {
            Some((_, Payload::Route(r))) => r
                .rules
                .iter()
                .flat_map(|rule| rule.backends.iter().map(|b| b.service.clone()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// What to tell the control plane after a reconnect.
    pub fn held(&self) -> Vec<v1::HeldResource> {
        self.map
            .iter()
            .map(|(k, (v, _))| v1::HeldResource {
                key: Some(v1::ResourceKey {
                    r#type: k.0,
                    name: k.1.clone(),
                }),
                version: v.clone(),
            })
            .collect()
    }

    /// The state description, plus services that routes name but the proxy does not hold yet
    /// (to subscribe to; their routes wait until they arrive).
    ///
    /// Services are in name order, but for `last`, which goes last: the builder blames a conflict
    /// on the later of two services, so a service being added is the one its error names.
    fn to_spec(&self, last: Option<&str>) -> Result<(FileSpec, Vec<String>), String> {
        let mut held: Vec<(&String, &v1::Service)> = (self.map.iter())
            .filter_map(|((ty, name), (_, payload))| match payload {
                Payload::Service(s) if *ty == ResourceType::Service as i32 => Some((name, s)),
                _ => None,
            })
            .collect();
        held.sort_unstable_by_key(|(name, _)| (Some(name.as_str()) == last, *name));
        let mut services = Vec::new();
        let mut known = HashSet::new();
        for (name, s) in held {
            known.insert(name.clone());
            let endpoints = match self.get(&(ResourceType::Endpoints as i32, name.clone())) {
                Some(Payload::Endpoints(e)) => e.endpoints.as_slice(),
                _ => &[],
            };
            let specs = service_specs(name, s, endpoints).map_err(|e| {
                format!(
                    "{}: {e}",
                    describe(&(ResourceType::Service as i32, name.clone()))
                )
            })?;
            services.extend(specs);
        }
        let mut routes = Vec::new();
        let mut missing = Vec::new();
        for ((ty, name), (_, payload)) in &self.map {
            let (true, Payload::Route(r)) = (*ty == ResourceType::Route as i32, payload) else {
                continue;
            };
            let waiting = absent(r, &known);
            if !known.contains(name) {
                missing.extend(waiting);
                continue;
            }
            if !waiting.is_empty() {
                missing.extend(waiting);
                // The version it replaces serves meanwhile, if that one builds.
                match self.superseded.get(name) {
                    Some(old) if absent(old, &known).is_empty() => {
                        routes.push(route_spec(name, old)?);
                    }
                    _ => {}
                }
                continue;
            }
            routes.push(route_spec(name, r)?);
        }
        let authorization = self
            .map
            .values()
            .filter_map(|(_, payload)| match payload {
                Payload::AuthorizationPolicy(p) => Some(authorization_spec(p)),
                _ => None,
            })
            .collect();
        let backend_policies = self
            .map
            .iter()
            .filter_map(|((_, name), (_, payload))| match payload {
                Payload::BackendPolicy(p) if known.contains(name) => Some(backend_policy_spec(p)),
                _ => None,
            })
            .collect::<Result<_, _>>()?;
        let rate_limits = self
            .map
            .values()
            .filter_map(|(_, payload)| match payload {
                Payload::RateLimit(r) => Some(rate_limit_spec(r)),
                _ => None,
            })
            .collect();
        let faults = self
            .map
            .iter()
            .filter_map(|((_, name), (_, payload))| match payload {
                Payload::FaultInjection(f) if known.contains(name) => Some(fault_spec(f)),
                _ => None,
            })
            .collect();
        // A mirror waits for its shadow service like a route for its backends: subscribed to,
        // applied once it arrives (the target's requests flow meanwhile, uncopied).
        let mut mirrors = Vec::new();
        for ((_, name), (_, payload)) in &self.map {
            let Payload::Mirror(m) = payload else {
                continue;
            };
            if !known.contains(&m.mirror_service) {
                missing.push(m.mirror_service.clone());
                continue;
            }
            if known.contains(name) {
                mirrors.push(mirror_spec(m));
            }
        }
        Ok((
            FileSpec {
                services,
                routes,
                authorization,
                backend_policies,
                faults,
                rate_limits,
                mirrors,
            },
            missing,
        ))
    }
}

/// The state description of a `Service` (one entry per port) with its endpoints. Errors name the
/// field of the resource.
fn service_specs(
    qualified: &str,
    s: &v1::Service,
    endpoints: &[v1::Endpoint],
) -> Result<Vec<ServiceSpec>, String> {
    if format!("{}.{}", s.name, s.namespace) != qualified {
        return Err(format!(
            "name, namespace: `{}.{}` is not the resource's name",
            s.name, s.namespace
        ));
    }
    if s.ports.is_empty() {
        return Err("ports: at least one port is required".into());
    }
    let addresses = s
        .virtual_addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<IpAddr>()
                .map_err(|_| format!("virtual_addresses[{i}]: `{a}` is not an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut specs = Vec::new();
    for (i, p) in s.ports.iter().enumerate() {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("ports[{i}].port: {} is not a port (1-65535)", p.port))?;
        let eps = endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.service_port == 0 || e.service_port == p.port)
            .map(|(j, e)| endpoint_spec(e, &format!("endpoints[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        specs.push(ServiceSpec {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            port,
            hosts: s.hosts.clone(),
            addresses: addresses.clone(),
            protocol: match v1::Protocol::try_from(p.protocol).unwrap_or_default() {
                v1::Protocol::Http1 => Protocol::Http1,
                v1::Protocol::Http2 | v1::Protocol::Grpc => Protocol::Http2,
                v1::Protocol::Opaque => Protocol::Tcp,
                v1::Protocol::Unspecified => Protocol::Auto,
            },
            target_port: u16::try_from(p.target_port).ok().filter(|p| *p > 0),
            tls_mode: tls_mode(p.tls_mode).or(tls_mode(s.tls_mode)),
            endpoints: eps,
        });
    }
    Ok(specs)
}

/// The state description of one endpoint; errors under `at`.
fn endpoint_spec(e: &v1::Endpoint, at: &str) -> Result<EndpointSpec, String> {
    let ip: IpAddr = e
        .address
        .parse()
        .map_err(|_| format!("{at}.address: `{}` is not an IP address", e.address))?;
    let port = u16::try_from(e.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{at}.port: {} is not a port (1-65535)", e.port))?;
    Ok(EndpointSpec {
        address: SocketAddr::new(ip, port),
        // The wire's 0 is the default weight.
        weight: e.weight.max(1),
        ready: e.ready,
        identity: (!e.identity.is_empty()).then(|| e.identity.clone()),
        zone: e.zone.clone(),
    })
}

/// The resource type a payload is (a payload must match its key's type).
fn payload_type(payload: &Payload) -> ResourceType {
    match payload {
        Payload::Service(_) => ResourceType::Service,
        Payload::Endpoints(_) => ResourceType::Endpoints,
        Payload::Route(_) => ResourceType::Route,
        Payload::BackendPolicy(_) => ResourceType::BackendPolicy,
        Payload::AuthorizationPolicy(_) => ResourceType::AuthorizationPolicy,
        Payload::RateLimit(_) => ResourceType::RateLimit,
        Payload::FaultInjection(_) => ResourceType::FaultInjection,
        Payload::Mirror(_) => ResourceType::Mirror,
        Payload::TrustBundle(_) => ResourceType::TrustBundle,
        Payload::Address(_) => ResourceType::Address,
    }
}

/// Checks one pushed resource on its own, with the state builder's own rules, so a bad one is
/// rejected alone and its error names the field (relative to the resource: `rules[0].timeout`).
/// What it may conflict with (another service's host) is found when the state is built. Kinds the
/// proxy does not use yet only need a payload of their key's type.
pub(crate) fn check<'a>(key: &Key, payload: Option<&'a Payload>) -> Result<&'a Payload, String> {
    let payload = payload.ok_or("no payload")?;
    let ty = payload_type(payload);
    if ty as i32 != key.0 {
        return Err(format!(
            "the payload is a {}, not what the key names",
            ty.as_str_name()
        ));
    }
    match payload {
        Payload::Service(s) => {
            for spec in service_specs(&key.1, s, &[])? {
                spec::check_service(&spec, "")?;
            }
        }
        Payload::Endpoints(e) => {
            for (j, endpoint) in e.endpoints.iter().enumerate() {
                let at = format!("endpoints[{j}]");
                spec::check_endpoint(&endpoint_spec(endpoint, &at)?, &at)?;
            }
        }
        Payload::Route(r) => {
            if r.parent_service != key.1 {
                return Err(format!(
                    "parent_service: `{}` is not the resource's name",
                    r.parent_service
                ));
            }
            spec::check_route(&route_spec(&key.1, r)?, "")?;
        }
        Payload::AuthorizationPolicy(p) => {
            authz::build(authorization_spec(p), "", "default")?;
        }
        Payload::TrustBundle(b) => {
            for (i, pem) in b.roots_pem.iter().enumerate() {
                parse_cert(pem.as_bytes(), &format!("roots_pem[{i}]"))?;
            }
        }
        Payload::BackendPolicy(p) => {
            if p.service != key.1 {
                return Err(format!(
                    "service: `{}` is not the resource's name",
                    p.service
                ));
            }
            backend_policy_spec(p)?.resolve("")?;
        }
        Payload::FaultInjection(f) => {
            if f.target_service != key.1 {
                return Err(format!(
                    "target_service: `{}` is not the resource's name",
                    f.target_service
                ));
            }
            fault_spec(f).resolve("")?;
        }
        Payload::RateLimit(r) => {
            if r.target_service != key.1 {
                return Err(format!(
                    "target_service: `{}` is not the resource's name",
                    r.target_service
                ));
            }
            let spec = rate_limit_spec(r);
            spec.matches("")?;
            spec.resolve("")?;
        }
        Payload::Mirror(m) => {
            if m.target_service != key.1 {
                return Err(format!(
                    "target_service: `{}` is not the resource's name",
                    m.target_service
                ));
            }
            if !m.mirror_service.contains('.') {
                return Err(format!(
                    "mirror_service: `{}` is not a qualified name (name.namespace)",
                    m.mirror_service
                ));
            }
            if m.mirror_port > u32::from(u16::MAX) {
                return Err(format!("mirror_port: {} is not a port", m.mirror_port));
            }
            mirror_spec(m).resolve("")?;
        }
        Payload::Address(_) => {}
    }
    Ok(payload)
}

/// The state description of a `BackendPolicy`. A part this proxy does not know (an algorithm
/// added by a newer control plane) is refused, naming the field.
fn backend_policy_spec(p: &v1::BackendPolicy) -> Result<BackendPolicySpec, String> {
    let not_enforced = |field: &str| Err(format!("{field}: not enforced by this proxy"));
    let load_balancer = match &p.load_balancer {
        None => None,
        Some(lb) => {
            let algorithm = match v1::LoadBalancingAlgorithm::try_from(lb.algorithm) {
                Ok(
                    v1::LoadBalancingAlgorithm::Unspecified | v1::LoadBalancingAlgorithm::P2cEwma,
                ) => Algorithm::P2cEwma,
                Ok(v1::LoadBalancingAlgorithm::RoundRobin) => Algorithm::RoundRobin,
                Ok(v1::LoadBalancingAlgorithm::LeastRequest) => Algorithm::LeastRequest,
                Ok(v1::LoadBalancingAlgorithm::RingHash) => Algorithm::RingHash,
                Err(_) => return not_enforced("load_balancer.algorithm"),
            };
            // Checked with the rest by `resolve`: required with ring_hash, and only with it.
            let hash_key = lb.hash_key.as_ref().map(|k| {
                use v1::hash_key::Source;
                let mut spec = HashKeySpec::default();
                match &k.source {
                    Some(Source::Header(h)) => spec.header = Some(h.clone()),
                    Some(Source::Cookie(c)) => spec.cookie = Some(c.clone()),
                    Some(Source::QueryParameter(q)) => spec.query_parameter = Some(q.clone()),
                    Some(Source::SourceIp(b)) => spec.source_ip = Some(*b),
                    None => {}
                }
                spec
            });
            Some(LoadBalancerSpec {
                algorithm,
                hash_key,
                slow_start: (lb.slow_start_ms > 0).then(|| Duration::from_millis(lb.slow_start_ms)),
            })
        }
    };
    let limits = match &p.limits {
        None => None,
        Some(l) => {
            let set = |v: u32| (v > 0).then_some(v);
            Some(LimitsSpec {
                max_concurrent_requests: set(l.max_concurrent_requests),
                max_connections: set(l.max_connections),
                max_pending_requests: set(l.max_pending_requests),
                max_requests_per_connection: set(l.max_requests_per_connection),
                max_concurrent_retries: set(l.max_concurrent_retries),
                connect_timeout: (l.connect_timeout_ms > 0)
                    .then(|| Duration::from_millis(l.connect_timeout_ms)),
            })
        }
    };
    let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    let outlier_detection = p.outlier_detection.as_ref().map(|o| OutlierSpec {
        consecutive_5xx: (o.consecutive_5xx > 0).then_some(o.consecutive_5xx),
        interval: ms(o.interval_ms),
        base_ejection_time: ms(o.base_ejection_time_ms),
        max_ejection_percent: (o.max_ejection_percent != 0.0).then_some(o.max_ejection_percent),
        success_rate: o.success_rate.as_ref().map(|r| SuccessRateSpec {
            minimum_hosts: (r.minimum_hosts > 0).then_some(r.minimum_hosts),
            request_volume: (r.request_volume > 0).then_some(r.request_volume),
            stdev_factor: (r.stdev_factor != 0.0).then_some(r.stdev_factor),
        }),
    });
    let circuit_breaker = p.circuit_breaker.as_ref().map(|b| BreakerSpec {
        failure_ratio_threshold: (b.failure_ratio_threshold != 0.0)
            .then_some(b.failure_ratio_threshold),
        min_requests: (b.min_requests > 0).then_some(b.min_requests),
        window: ms(b.window_ms),
        open_duration: ms(b.open_duration_ms),
        half_open_max_requests: (b.half_open_max_requests > 0).then_some(b.half_open_max_requests),
        force: match v1::CircuitBreakerOverride::try_from(b.r#override).unwrap_or_default() {
            v1::CircuitBreakerOverride::ForceOpen => BreakerOverride::ForceOpen,
            v1::CircuitBreakerOverride::ForceClosed => BreakerOverride::ForceClosed,
            v1::CircuitBreakerOverride::Unspecified => BreakerOverride::None,
        },
    });
    Ok(BackendPolicySpec {
        service: p.service.clone(),
        load_balancer,
        limits,
        circuit_breaker,
        outlier_detection,
        health_check: p.health_check.as_ref().map(|h| HealthCheckSpec {
            http: h.http.as_ref().map(|http| HttpCheckSpec {
                path: http.path.clone(),
                // Out of u16: refused by the range check, naming the field.
                expected_statuses: http.expected_statuses.as_ref().map(|r| StatusRangeSpec {
                    start: u16::try_from(r.start).unwrap_or(u16::MAX),
                    end: u16::try_from(r.end).unwrap_or(u16::MAX),
                }),
            }),
            grpc: h.grpc.as_ref().map(|g| GrpcCheckSpec {
                service: g.service.clone(),
            }),
            interval: ms(h.interval_ms),
            timeout: ms(h.timeout_ms),
            healthy_threshold: (h.healthy_threshold > 0).then_some(h.healthy_threshold),
            unhealthy_threshold: (h.unhealthy_threshold > 0).then_some(h.unhealthy_threshold),
        }),
    })
}

/// The state description of a `RateLimit` (validated by the state builder).
fn rate_limit_spec(r: &v1::RateLimit) -> RateLimitSpec {
    RateLimitSpec {
        service: r.target_service.clone(),
        requests_per_unit: r.requests_per_unit,
        unit: match v1::RateLimitUnit::try_from(r.unit).unwrap_or_default() {
            v1::RateLimitUnit::Minute => Unit::Minute,
            v1::RateLimitUnit::Hour => Unit::Hour,
            v1::RateLimitUnit::Second | v1::RateLimitUnit::Unspecified => Unit::Second,
        },
        burst: (r.burst > 0).then_some(r.burst),
        scope: match v1::RateLimitScope::try_from(r.scope).unwrap_or_default() {
            v1::RateLimitScope::PerClient => Scope::PerClient,
            v1::RateLimitScope::Global | v1::RateLimitScope::Unspecified => Scope::Global,
        },
        matches: r.matches.iter().map(match_spec).collect(),
        overrides: (r.overrides.iter())
            .map(|o| OverrideSpec {
                identity: o.identity.clone(),
                requests_per_unit: o.requests_per_unit,
                burst: (o.burst > 0).then_some(o.burst),
            })
            .collect(),
        side: match v1::RateLimitSide::try_from(r.side).unwrap_or_default() {
            v1::RateLimitSide::Outbound => Side::Outbound,
            v1::RateLimitSide::Inbound | v1::RateLimitSide::Unspecified => Side::Inbound,
        },
    }
}

/// The state description of a `Mirror` (validated by the state builder).
fn mirror_spec(m: &v1::Mirror) -> MirrorSpec {
    MirrorSpec {
        service: m.target_service.clone(),
        mirror: m.mirror_service.clone(),
        // Out of range is refused by `check`; 0 means the request's port.
        port: u16::try_from(m.mirror_port).ok().filter(|p| *p != 0),
        percent: m.percent,
        compare_headers: m.compare_headers.clone(),
    }
}

/// The state description of a `FaultInjection` (validated by the state builder).
fn fault_spec(f: &v1::FaultInjection) -> FaultSpec {
    FaultSpec {
        service: f.target_service.clone(),
        delay: f.delay.as_ref().map(|d| DelaySpec {
            percent: d.percent,
            duration: (d.duration_ms > 0).then(|| Duration::from_millis(d.duration_ms)),
        }),
        abort: f.abort.as_ref().map(|a| AbortSpec {
            percent: a.percent,
            // 0 is unset on the wire; out of range is refused by `resolve` (naming the field).
            http_status: (a.http_status != 0)
                .then(|| u16::try_from(a.http_status).unwrap_or(u16::MAX)),
            grpc_status: (a.grpc_status != 0)
                .then(|| u8::try_from(a.grpc_status).unwrap_or(u8::MAX)),
        }),
        matches: f.matches.iter().map(match_spec).collect(),
    }
}

/// The state description of an `AuthorizationPolicy` (validated by the state builder).
fn authorization_spec(p: &v1::AuthorizationPolicy) -> PolicySpec {
    let action = |wire: i32| match v1::AuthorizationAction::try_from(wire).unwrap_or_default() {
        v1::AuthorizationAction::Allow => Action::Allow,
        // Unspecified (or unknown) fails closed.
        v1::AuthorizationAction::Deny | v1::AuthorizationAction::Unspecified => Action::Deny,
    };
    let rules = p
        .rules
        .iter()
        .map(|r| authz::RuleSpec {
            name: (!r.name.is_empty()).then(|| r.name.clone()),
            action: action(r.action),
            from: r
                .from
                .iter()
                .map(|m| {
                    let mut spec = IdentityMatchSpec::default();
                    match &m.kind {
                        Some(v1::identity_match::Kind::Exact(s)) => spec.exact = Some(s.clone()),
                        Some(v1::identity_match::Kind::Namespace(s)) => {
                            spec.namespace = Some(s.clone())
                        }
                        Some(v1::identity_match::Kind::TrustDomain(s)) => {
                            spec.trust_domain = Some(s.clone())
                        }
                        None => {} // Rejected by the builder, naming the field.
                    }
                    spec
                })
                .collect(),
            // Out-of-range ports become 0, which the builder rejects with the field name.
            to_ports: r
                .to_ports
                .iter()
                .map(|p| u16::try_from(*p).unwrap_or(0))
                .collect(),
            path_prefixes: r.path_prefixes.clone(),
            methods: r.methods.clone(),
        })
        .collect();
    PolicySpec {
        service: p.target_service.clone(),
        default_action: action(p.default_action),
        rules,
    }
}

/// A wire TLS mode; unspecified (or unknown to this build) inherits.
fn tls_mode(wire: i32) -> Option<TlsMode> {
    match v1::TlsMode::try_from(wire).unwrap_or_default() {
        v1::TlsMode::Strict => Some(TlsMode::Strict),
        v1::TlsMode::Permissive => Some(TlsMode::Permissive),
        v1::TlsMode::Disabled => Some(TlsMode::Disabled),
        v1::TlsMode::Unspecified => None,
    }
}

/// A wire retry policy as the state file would say it (0 and empty: the defaults); an unknown
/// `retry_on` value is refused, naming it (an ignored condition would be a silent promise).
fn retry_spec(r: &v1::RetryPolicy, at: &str) -> Result<RetrySpec, String> {
    let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    let retry_on = r
        .retry_on
        .iter()
        .enumerate()
        .map(|(i, &wire)| match v1::RetryOn::try_from(wire) {
            Ok(v1::RetryOn::ConnectFailure) => Ok(RetryOn::ConnectFailure),
            Ok(v1::RetryOn::RefusedStream) => Ok(RetryOn::RefusedStream),
            Ok(v1::RetryOn::Reset) => Ok(RetryOn::Reset),
            Ok(v1::RetryOn::ServerError) => Ok(RetryOn::ServerError),
            Ok(v1::RetryOn::GatewayError) => Ok(RetryOn::GatewayError),
            Ok(v1::RetryOn::ServiceUnavailable) => Ok(RetryOn::ServiceUnavailable),
            Ok(v1::RetryOn::PerTryTimeout) => Ok(RetryOn::PerTryTimeout),
            Ok(v1::RetryOn::GrpcUnavailable) => Ok(RetryOn::GrpcUnavailable),
            Ok(v1::RetryOn::GrpcResourceExhausted) => Ok(RetryOn::GrpcResourceExhausted),
            Ok(v1::RetryOn::Unspecified) | Err(_) => Err(format!(
                "{at}.retry_on[{i}]: {wire} is not a retry condition this proxy knows"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RetrySpec {
        attempts: (r.attempts > 0).then_some(r.attempts),
        per_try_timeout: ms(r.per_try_timeout_ms),
        retry_on,
        retryable_status_codes: r.retryable_status_codes.clone(),
        backoff_base: ms(r.backoff_base_ms),
        backoff_max: ms(r.backoff_max_ms),
        budget_ratio: (r.budget_ratio != 0.0).then_some(r.budget_ratio),
        budget_min_retries_per_second: (r.budget_min_retries_per_second > 0)
            .then_some(r.budget_min_retries_per_second),
        retry_non_idempotent: r.retry_non_idempotent,
    })
}

/// A wire route match as the state file says it (checked by the state builder).
fn match_spec(m: &v1::RouteMatch) -> MatchSpec {
    let mut spec = MatchSpec {
        path_prefix: None,
        path_exact: None,
        path_regex: None,
        method: (!m.method.is_empty()).then(|| m.method.clone()),
        headers: HashMap::new(),
        header_regex: HashMap::new(),
    };
    match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(v1::path_match::Kind::Exact(p)) => spec.path_exact = Some(p.clone()),
        Some(v1::path_match::Kind::Prefix(p)) => spec.path_prefix = Some(p.clone()),
        Some(v1::path_match::Kind::Regex(p)) => spec.path_regex = Some(p.clone()),
        None => {}
    }
    for h in &m.headers {
        match &h.value {
            Some(v1::header_match::Value::Exact(v)) => {
                spec.headers.insert(h.name.clone(), v.clone())
            }
            Some(v1::header_match::Value::Regex(v)) => {
                spec.header_regex.insert(h.name.clone(), v.clone())
            }
            None => spec.header_regex.insert(h.name.clone(), ".*".into()),
        };
    }
    spec
}

/// A wire header modifier as the state file says it (checked by the state builder).
fn modifier_spec(m: &v1::HeaderModifier) -> HeaderModifierSpec {
    let pairs = |values: &[v1::HeaderValue]| {
        (values.iter())
            .map(|h| HeaderValueSpec {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    HeaderModifierSpec {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.clone(),
    }
}

/// A wire redirect as the state file says it (0 and empty: unset; checked by the state builder,
/// which refuses an out-of-range port or status, here made 0).
fn redirect_spec(r: &v1::RequestRedirect) -> RedirectSpec {
    RedirectSpec {
        scheme: (!r.scheme.is_empty()).then(|| r.scheme.clone()),
        hostname: (!r.hostname.is_empty()).then(|| r.hostname.clone()),
        port: (r.port != 0).then(|| u16::try_from(r.port).unwrap_or(0)),
        path: match r.path.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(v1::path_modifier::Kind::ReplaceFullPath(p)) => Some(PathModifierSpec {
                replace_full_path: Some(p.clone()),
                replace_prefix_match: None,
            }),
            Some(v1::path_modifier::Kind::ReplacePrefixMatch(p)) => Some(PathModifierSpec {
                replace_full_path: None,
                replace_prefix_match: Some(p.clone()),
            }),
            // A path with neither is refused by the state builder, naming it.
            None if r.path.is_some() => Some(PathModifierSpec::default()),
            None => None,
        },
        status_code: (r.status_code != 0).then(|| u16::try_from(r.status_code).unwrap_or(0)),
    }
}

/// A route's backend; its `port` 0 means the request's port.
fn backend_spec(b: &v1::WeightedBackend, at: &str) -> Result<BackendSpec, String> {
    let port = match b.port {
        0 => None,
        port => Some(
            u16::try_from(port)
                .map_err(|_| format!("{at}.port: {port} is not a port (1–65535)"))?,
        ),
    };
    Ok(BackendSpec {
        service: b.service.clone(),
        weight: b.weight,
        port,
    })
}

/// The services `route` sends traffic to that are not in `known`.
fn absent(route: &v1::Route, known: &HashSet<String>) -> Vec<String> {
    (route.rules.iter())
        .flat_map(|rule| rule.backends.iter().map(|b| &b.service))
        .filter(|s| !known.contains(*s))
        .cloned()
        .collect()
}

fn route_spec(parent: &str, r: &v1::Route) -> Result<RouteSpec, String> {
    let mut rules = Vec::new();
    for rule in &r.rules {
        let matches = rule.matches.iter().map(match_spec).collect();
        // Empty means the parent itself, except for a redirect, which sends nothing.
        let backends = if rule.backends.is_empty() && rule.request_redirect.is_none() {
            vec![BackendSpec {
                service: parent.to_string(),
                weight: 1,
                port: None,
            }]
        } else {
            let at = format!("rules[{}]", rules.len());
            (rule.backends.iter().enumerate())
                .map(|(k, b)| backend_spec(b, &format!("{at}.backends[{k}]")))
                .collect::<Result<_, _>>()?
        };
        let at = format!("rules[{}].retry", rules.len());
        rules.push(RuleSpec {
            name: (!rule.name.is_empty()).then(|| rule.name.clone()),
            matches,
            backends,
            timeout: (rule.timeout_ms > 0).then(|| Duration::from_millis(rule.timeout_ms)),
            retry: rule
                .retry
                .as_ref()
                .map(|r| retry_spec(r, &at))
                .transpose()?,
            request_header_modifier: rule.request_header_modifier.as_ref().map(modifier_spec),
            response_header_modifier: rule.response_header_modifier.as_ref().map(modifier_spec),
            request_redirect: rule.request_redirect.as_ref().map(redirect_spec),
        });
    }
    Ok(RouteSpec {
        name: parent.to_string(),
        service: parent.to_string(),
        rules,
    })
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn res(t: ResourceType, name: &str, p: Payload) -> v1::DiscoveryResource {
        v1::DiscoveryResource {
            key: Some(v1::ResourceKey {
                r#type: t as i32,
                name: name.into(),
            }),
            version: "v1".into(),
            payload: Some(p),
        }
    }

    fn service(name: &str, port: u32) -> Payload {
        Payload::Service(v1::Service {
            name: name.into(),
            namespace: "default".into(),
            ports: vec![v1::ServicePort {
                port,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn endpoints(service: &str, ip: &str, port: u32) -> Payload {
        Payload::Endpoints(v1::Endpoints {
            service: service.into(),
            endpoints: vec![v1::Endpoint {
                address: ip.into(),
                port,
                ready: true,
                ..Default::default()
            }],
        })
    }

    fn split_route() -> Payload {
        Payload::Route(v1::Route {
            parent_service: "web.default".into(),
            rules: vec![v1::RouteRule {
                name: "canary".into(),
                backends: vec![
                    v1::WeightedBackend {
                        service: "web.default".into(),
                        weight: 0,
                        port: 0,
                    },
                    v1::WeightedBackend {
                        service: "web-v2.default".into(),
                        weight: 100,
                        port: 0,
                    },
                ],
                ..Default::default()
            }],
        })
    }

    fn response(
        resources: Vec<v1::DiscoveryResource>,
        removed: Vec<v1::ResourceKey>,
    ) -> v1::DiscoveryResponse {
        v1::DiscoveryResponse {
            version: String::new(),
            nonce: "1".into(),
            resources,
            removed,
        }
    }

    fn key(t: ResourceType, name: &str) -> Key {
        (t as i32, name.to_string())
    }

    /// Applies `resources` on top of `held`; panics if the held state no longer builds.
    fn update(held: &Resources, resources: Vec<v1::DiscoveryResource>) -> Update {
        held.update(&response(resources, vec![])).unwrap()
    }

    /// The endpoint addresses `authority` balances over.
    fn endpoints_of(state: &State, authority: &str) -> Vec<String> {
        let service = state.by_authority(authority).unwrap();
        service
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect()
    }

    fn regex_route(pattern: &str) -> Payload {
        Payload::Route(v1::Route {
            parent_service: "web.default".into(),
            rules: vec![v1::RouteRule {
                name: "api".into(),
                matches: vec![v1::RouteMatch {
                    path: Some(v1::PathMatch {
                        kind: Some(v1::path_match::Kind::Regex(pattern.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    /// Service `web.default`, one endpoint (10.0.0.1:8080) and `route`.
    fn web_with(route: Payload) -> Vec<v1::DiscoveryResource> {
        vec![
            res(ResourceType::Service, "web.default", service("web", 80)),
            res(
                ResourceType::Endpoints,
                "web.default",
                endpoints("web.default", "10.0.0.1", 8080),
            ),
            res(ResourceType::Route, "web.default", route),
        ]
    }

    /// `web.default` with one endpoint and a valid route, as held before the tests' pushes.
    fn web_held() -> Resources {
        let u = update(&Resources::default(), web_with(regex_route("/api/.*")));
        assert_eq!(u.rejected, []);
        u.next
    }

    #[test]
    fn an_invalid_route_is_rejected_alone_and_the_endpoint_update_in_its_push_applies() {
        let held = web_held();
        let mut bad_route = res(ResourceType::Route, "web.default", regex_route("/api/(.*"));
        bad_route.version = "v2".into();
        let u = update(
            &held,
            vec![
                res(
                    ResourceType::Endpoints,
                    "web.default",
                    endpoints("web.default", "10.0.0.2", 8080),
                ),
                bad_route,
            ],
        );
        assert_eq!(u.rejected.len(), 1, "{:?}", u.rejected);
        assert_eq!(u.rejected[0].key, key(ResourceType::Route, "web.default"));
        let error = &u.rejected[0].error;
        assert!(
            error.starts_with(
                "route web.default: rules[0].matches[0].path_regex: invalid regular expression `/api/(.*`"
            ),
            "{error}"
        );
        // The endpoint update applied; the route stays at the version held before.
        assert_eq!(endpoints_of(&u.state, "web:80"), ["10.0.0.2:8080"]);
        let route = key(ResourceType::Route, "web.default");
        assert_eq!(u.next.map[&route].0, "v1");
        assert!(matches!(u.next.get(&route), Some(Payload::Route(r)) if r.rules[0].name == "api"));
        let web = u.state.by_authority("web:80").unwrap();
        let api = http::HeaderMap::new();
        let rule = u
            .state
            .route(web, &http::Method::GET, "/api/x", &api)
            .unwrap();
        assert_eq!(rule.route, "api", "the held route still routes");
        // Both keys count as answered (nobody waits on the rejected one).
        assert_eq!(u.answered.len(), 2);
    }

    #[test]
    fn a_rejected_resource_never_held_stays_absent_and_removals_still_apply() {
        let held = web_held();
        let bad = |name: &str, port| res(ResourceType::Service, name, service("api", port));
        let u = held
            .update(&response(
                vec![bad("api.default", 0)],
                vec![v1::ResourceKey {
                    r#type: ResourceType::Route as i32,
                    name: "web.default".into(),
                }],
            ))
            .unwrap();
        assert_eq!(
            u.rejected,
            [Rejection {
                key: key(ResourceType::Service, "api.default"),
                error: "service api.default: ports[0].port: 0 is not a port (1-65535)".into(),
            }]
        );
        assert!(
            u.next
                .get(&key(ResourceType::Service, "api.default"))
                .is_none()
        );
        assert!(
            u.next
                .get(&key(ResourceType::Route, "web.default"))
                .is_none()
        );
        assert!(u.state.by_authority("api:80").is_none());
    }

    #[test]
    fn each_kind_of_resource_is_checked_on_its_own_naming_the_field() {
        let web = |t, p| res(t, "web.default", p);
        let mut identity = endpoints("web.default", "10.0.0.1", 8080);
        if let Payload::Endpoints(e) = &mut identity {
            e.endpoints[0].identity = "not-spiffe".into();
        }
        let mut no_payload = web(ResourceType::Service, service("web", 80));
        no_payload.payload = None;
        let cases = [
            (
                web(
                    ResourceType::Endpoints,
                    endpoints("web.default", "10.0.0.x", 8080),
                ),
                "endpoints web.default: endpoints[0].address: `10.0.0.x` is not an IP address",
            ),
            (
                web(
                    ResourceType::Endpoints,
                    endpoints("web.default", "10.0.0.1", 70000),
                ),
                "endpoints web.default: endpoints[0].port: 70000 is not a port (1-65535)",
            ),
            (
                web(ResourceType::Endpoints, identity),
                "endpoints web.default: endpoints[0].identity:",
            ),
            (
                web(ResourceType::Route, service("web", 80)),
                "route web.default: the payload is a RESOURCE_TYPE_SERVICE, not what the key names",
            ),
            (no_payload, "service web.default: no payload"),
            (
                web(ResourceType::Service, service("other", 80)),
                "service web.default: name, namespace: `other.default` is not the resource's name",
            ),
            (
                res(ResourceType::Route, "api.default", split_route()),
                "route api.default: parent_service: `web.default` is not the resource's name",
            ),
            (
                web(
                    ResourceType::AuthorizationPolicy,
                    Payload::AuthorizationPolicy(v1::AuthorizationPolicy {
                        target_service: "web.default".into(),
                        rules: vec![v1::AuthorizationRule {
                            path_prefixes: vec!["api".into()],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                ),
                "authorization_policy web.default: rules[0].path_prefixes: `api` must start with '/'",
            ),
            (
                res(
                    ResourceType::TrustBundle,
                    "cluster.local",
                    Payload::TrustBundle(v1::TrustBundle {
                        trust_domain: "cluster.local".into(),
                        roots_pem: vec!["not a certificate".into()],
                    }),
                ),
                "trust_bundle cluster.local: roots_pem[0]: not a PEM certificate",
            ),
        ];
        for (resource, want) in cases {
            let u = update(&Resources::default(), vec![resource]);
            assert_eq!(u.rejected.len(), 1, "{want}");
            assert!(
                u.rejected[0].error.starts_with(want),
                "{} / {want}",
                u.rejected[0].error
            );
            assert!(u.next.map.is_empty(), "{want}");
        }
    }

    #[test]
    fn ring_hash_is_taken_with_a_key_and_refused_without_one_naming_the_field() {
        let policy = |hash_key: Option<v1::hash_key::Source>| {
            res(
                ResourceType::BackendPolicy,
                "web.default",
                Payload::BackendPolicy(v1::BackendPolicy {
                    service: "web.default".into(),
                    load_balancer: Some(v1::LoadBalancer {
                        algorithm: v1::LoadBalancingAlgorithm::RingHash as i32,
                        hash_key: hash_key.map(|source| v1::HashKey {
                            source: Some(source),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            )
        };
        let web = res(ResourceType::Service, "web.default", service("web", 80));
        let u = update(
            &Resources::default(),
            vec![
                web.clone(),
                policy(Some(v1::hash_key::Source::Cookie("session".into()))),
            ],
        );
        assert!(u.rejected.is_empty(), "{:?}", u.rejected);
        let svc = u.state.by_authority("web:80").unwrap();
        assert_eq!(svc.backend.policy.load_balancer, Algorithm::RingHash);
        assert_eq!(
            svc.backend.policy.hash_key,
            Some(crate::balance::HashKey::Cookie("session".into()))
        );
        for (key, want) in [
            (
                None,
                "load_balancer.hash_key: required with algorithm ring_hash",
            ),
            (
                Some(v1::hash_key::Source::Header("bad header".into())),
                "load_balancer.hash_key.header: \"bad header\" is not a header name",
            ),
            (
                Some(v1::hash_key::Source::SourceIp(false)),
                "load_balancer.hash_key.source_ip: must be true when set",
            ),
        ] {
            let u = update(&Resources::default(), vec![web.clone(), policy(key)]);
            assert_eq!(u.rejected.len(), 1, "{want}");
            let error = &u.rejected[0].error;
            assert!(error.starts_with("backend_policy web.default: "), "{error}");
            assert!(error.contains(want), "{error} / {want}");
        }
    }

    #[test]
    fn a_conflict_found_by_the_build_rejects_only_the_conflicting_resource() {
        let hosted = |name: &str, host: &str| {
            let Payload::Service(mut s) = service(name, 80) else {
                unreachable!()
            };
            s.hosts = vec![host.into()];
            Payload::Service(s)
        };
        let held = update(
            &Resources::default(),
            vec![
                res(
                    ResourceType::Service,
                    "alpha.default",
                    hosted("alpha", "a.example"),
                ),
                res(
                    ResourceType::Service,
                    "beta.default",
                    hosted("beta", "b.example"),
                ),
            ],
        )
        .next;
        // beta claims alpha's host (valid on its own); alpha's endpoints change in the same push.
        let beta_claims_a = || {
            res(
                ResourceType::Service,
                "beta.default",
                hosted("beta", "a.example"),
            )
        };
        let u = update(
            &held,
            vec![
                beta_claims_a(),
                res(
                    ResourceType::Endpoints,
                    "alpha.default",
                    endpoints("alpha.default", "10.0.0.9", 8080),
                ),
            ],
        );
        assert_eq!(u.rejected.len(), 1, "{:?}", u.rejected);
        assert_eq!(
            u.rejected[0].key,
            key(ResourceType::Service, "beta.default")
        );
        assert_eq!(
            u.rejected[0].error,
            "service beta.default: authority a.example:80 is already used by service alpha.default"
        );
        assert_eq!(endpoints_of(&u.state, "a.example"), ["10.0.0.9:8080"]);
        assert_eq!(u.state.by_authority("b.example").unwrap().name, "beta");

        // A host freed and claimed in one push applies whatever the order.
        let u = update(
            &held,
            vec![
                beta_claims_a(),
                res(
                    ResourceType::Service,
                    "alpha.default",
                    hosted("alpha", "c.example"),
                ),
            ],
        );
        assert_eq!(u.rejected, []);
        assert_eq!(u.state.by_authority("a.example").unwrap().name, "beta");
    }

    #[test]
    fn routes_wait_for_their_backends_then_apply() {
        let u = update(&Resources::default(), web_with(split_route()));
        assert_eq!(u.answered.len(), 3);
        assert_eq!(u.missing, vec!["web-v2.default".to_string()]);
        assert!(
            u.state.routes.iter().all(Vec::is_empty),
            "route waits for its backend"
        );
        assert_eq!(
            u.state.by_authority("web:80").unwrap().balancer.ready_len(),
            1
        );

        let u = update(
            &u.next,
            vec![
                res(
                    ResourceType::Service,
                    "web-v2.default",
                    service("web-v2", 80),
                ),
                res(
                    ResourceType::Endpoints,
                    "web-v2.default",
                    endpoints("web-v2.default", "10.0.0.2", 8080),
                ),
            ],
        );
        assert!(u.missing.is_empty());
        let state = u.state;
        let web = state.by_authority("web:80").unwrap();
        let rule = state
            .route(web, &http::Method::GET, "/", &http::HeaderMap::new())
            .unwrap();
        assert_eq!(rule.route, "canary");
        assert_eq!(
            rule.backends[rule.pick_backend()].service.name,
            "web-v2",
            "weight 0 never picked"
        );
        assert_eq!(u.next.held().len(), 5);
    }

    #[test]
    fn a_mirror_waits_for_its_shadow_and_a_bad_one_is_nacked_naming_the_field() {
        let mirror = |headers: &[&str]| {
            res(
                ResourceType::Mirror,
                "web.default",
                Payload::Mirror(v1::Mirror {
                    target_service: "web.default".into(),
                    mirror_service: "web-shadow.default".into(),
                    mirror_port: 0,
                    percent: 25.0,
                    compare_headers: headers.iter().map(|h| h.to_string()).collect(),
                }),
            )
        };
        let u = update(
            &Resources::default(),
            vec![
                res(ResourceType::Service, "web.default", service("web", 80)),
                mirror(&["content-type"]),
            ],
        );
        assert_eq!(u.rejected, []);
        assert_eq!(u.missing, vec!["web-shadow.default".to_string()]);
        let web = u.state.by_authority("web:80").unwrap().clone();
        assert!(
            web.mirror.get().is_none(),
            "the mirror waits for its shadow"
        );

        let u = update(
            &u.next,
            vec![res(
                ResourceType::Service,
                "web-shadow.default",
                service("web-shadow", 80),
            )],
        );
        let web = u.state.by_authority("web:80").unwrap().clone();
        let applied = web.mirror.get().expect("applied once the shadow arrived");
        assert_eq!(
            (applied.name.as_str(), applied.port),
            ("web-shadow.default", 80)
        );
        assert_eq!(applied.percent, 25.0);

        let u = update(&u.next, vec![mirror(&["Content-Type"])]);
        assert_eq!(u.rejected.len(), 1, "{:?}", u.rejected);
        assert!(
            u.rejected[0]
                .error
                .contains("compare_headers[0]: header name \"Content-Type\" must be lower-case"),
            "{}",
            u.rejected[0].error
        );
        let web = u.state.by_authority("web:80").unwrap().clone();
        assert!(web.mirror.get().is_some(), "the last good version is kept");
    }

    /// proto/testdata/authority-conflicts.txt: a service claiming an authority the held one has
    /// is rejected, and nothing else is, as the control plane refuses it at `apply`.
    #[test]
    fn the_shared_conflict_cases_get_the_answers_the_control_plane_gives() {
        use shoal_proto::checks::conflict_cases;
        let pushed = |s: &v1::Service| {
            let name = format!("{}.{}", s.name, s.namespace);
            res(ResourceType::Service, &name, Payload::Service(s.clone()))
        };
        for case in conflict_cases() {
            let held = update(&Resources::default(), vec![pushed(&case.held)]);
            assert_eq!(held.rejected, [], "{}", case.line);
            let u = update(&held.next, vec![pushed(&case.next)]);
            let nacked =
                (u.rejected.iter()).any(|r| r.error.contains("is already used by service"));
            assert_eq!(nacked, case.conflict, "{}: {:?}", case.line, u.rejected);
            if !case.conflict {
                assert_eq!(u.rejected, [], "{}", case.line);
            }
        }
    }

    #[test]
    fn health_checks_are_taken_from_the_wire_and_rechecked() {
        let with = |check: v1::HealthCheck| v1::BackendPolicy {
            service: "web.default".into(),
            health_check: Some(Box::new(check)),
            ..Default::default()
        };
        let grpc = v1::HealthCheck {
            grpc: Some(v1::GrpcHealthCheck {
                service: "web".into(),
            }),
            timeout_ms: 500,
            ..Default::default()
        };
        let resolved = backend_policy_spec(&with(grpc))
            .unwrap()
            .resolve("p")
            .unwrap();
        let check = resolved.health_check.unwrap();
        assert_eq!(
            check.kind,
            crate::balance::ProbeKind::Grpc {
                service: "web".into()
            }
        );
        assert_eq!(
            (
                check.interval,
                check.timeout,
                check.healthy_threshold,
                check.unhealthy_threshold
            ),
            (Duration::from_secs(10), Duration::from_millis(500), 2, 3)
        );
        // Statuses out of range (a u32 on the wire): refused, naming the field.
        let http = v1::HealthCheck {
            http: Some(v1::HttpHealthCheck {
                path: "/healthz".into(),
                expected_statuses: Some(v1::StatusRange {
                    start: 200,
                    end: 70_000,
                }),
            }),
            ..Default::default()
        };
        let error = (backend_policy_spec(&with(http)).unwrap().resolve("p")).unwrap_err();
        assert!(
            error.contains("p.health_check.http.expected_statuses"),
            "{error}"
        );
        let neither = backend_policy_spec(&with(v1::HealthCheck::default()));
        let error = neither.unwrap().resolve("p").unwrap_err();
        assert!(
            error.contains("p.health_check: exactly one of http or grpc"),
            "{error}"
        );
    }

    #[test]
    fn outlier_detection_slow_start_and_zones_are_taken_from_the_wire() {
        let policy = v1::BackendPolicy {
            service: "web.default".into(),
            load_balancer: Some(v1::LoadBalancer {
                slow_start_ms: 5000,
                ..Default::default()
            }),
            outlier_detection: Some(v1::OutlierDetection {
                interval_ms: 2000,
                success_rate: Some(v1::SuccessRateEjection {
                    minimum_hosts: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let resolved = backend_policy_spec(&policy).unwrap().resolve("p").unwrap();
        assert_eq!(resolved.slow_start, Some(Duration::from_secs(5)));
        let outlier = resolved.outlier_detection.unwrap();
        assert_eq!(outlier.consecutive_failures, None);
        let rate = outlier.success_rate.unwrap();
        assert_eq!(
            (rate.interval, rate.minimum_hosts, rate.request_volume),
            (Duration::from_secs(2), 3, 100)
        );
        // An interval without success_rate would do nothing: rejected, naming the field.
        let mut useless = policy.clone();
        useless.outlier_detection = Some(v1::OutlierDetection {
            consecutive_5xx: 5,
            interval_ms: 2000,
            ..Default::default()
        });
        let error = backend_policy_spec(&useless)
            .unwrap()
            .resolve("p")
            .unwrap_err();
        assert!(error.contains("p.outlier_detection.interval"), "{error}");

        let endpoint = v1::Endpoint {
            address: "10.0.0.1".into(),
            port: 80,
            zone: "zone-a".into(),
            ..Default::default()
        };
        assert_eq!(endpoint_spec(&endpoint, "e").unwrap().zone, "zone-a");
    }

    /// proto/testdata/pushed-resource-checks.txt: a proxy rejects exactly what the control plane
    /// refuses at `apply`, but for what the control plane refuses as mere hygiene.
    #[test]
    fn the_shared_cases_get_the_answers_the_control_plane_gives() {
        use shoal_proto::checks::{Verdict, cases};
        for case in cases() {
            let verdict = check(&key_of(&case.key), Some(&case.payload));
            let accepted = !matches!(case.verdict, Verdict::Refuse);
            assert_eq!(verdict.is_ok(), accepted, "{}: {verdict:?}", case.line);
        }
    }
}
