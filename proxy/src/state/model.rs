//! The proxy's routing model: what a destination is and how requests to it are steered.
//!
//! Built once per update, read by every request; lookups are hash-map hits on the snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::Serialize;

use crate::balance::Balancer;
use crate::metrics::RequestMetrics;
use crate::tls::{SpiffeId, TlsMode};

/// How the proxy speaks HTTP to a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Keep the client's HTTP version.
    #[default]
    Auto,
    /// HTTP/1.1 to the endpoints.
    Http1,
    /// HTTP/2 (h2c prior knowledge) to the endpoints.
    Http2,
    /// Opaque TCP: no HTTP handling.
    Tcp,
}

/// One instance of a service.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative share of traffic.
    pub weight: u32,
    /// Not-ready endpoints get no traffic.
    pub ready: bool,
    /// The SPIFFE id the endpoint's proxy presents; `None` for an endpoint outside the mesh
    /// (plain text).
    #[serde(serialize_with = "serialize_identity")]
    pub identity: Option<SpiffeId>,
    /// Its zone (failure domain); empty when unknown.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub zone: String,
}

fn serialize_mirror<S: serde::Serializer>(
    m: &std::sync::OnceLock<super::mirror::Mirror>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    m.get().serialize(ser)
}

fn serialize_identity<S: serde::Serializer>(
    id: &Option<SpiffeId>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => ser.serialize_str(id.as_str()),
        None => ser.serialize_none(),
    }
}

/// A logical destination with its endpoints.
#[derive(Debug, Serialize)]
pub struct Service {
    /// Index in [`State::services`]; keys the service's route rules.
    #[serde(skip)]
    pub id: usize,
    /// Name (a DNS label).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The port apps call.
    pub port: u16,
    /// The port the endpoints listen on (the inbound side's view of this service port).
    pub target_port: u16,
    /// Mutual TLS for this port; `None` leaves it to the proxy's default
    /// (`SHOAL_INBOUND_TLS_MODE` inbound; mTLS to meshed endpoints outbound).
    pub tls_mode: Option<TlsMode>,
    /// Upstream protocol.
    pub protocol: Protocol,
    /// Every `host:port` authority that names this service.
    pub authorities: Vec<String>,
    /// Virtual IPs (transparent-mode original destinations).
    pub addresses: Vec<std::net::IpAddr>,
    /// All endpoints (ready or not), for `/config`.
    pub endpoints: Vec<Endpoint>,
    /// Chooses among the ready endpoints; `/config` shows its algorithm and what it learnt.
    #[serde(rename = "load_balancer")]
    pub(crate) balancer: Balancer,
    /// The backend policy's cap and circuit breaker, with their runtime state.
    #[serde(rename = "backend_policy")]
    pub(crate) backend: crate::backend::BackendRuntime,
    /// Faults injected into requests to this service (chaos experiments).
    #[serde(rename = "fault_injection")]
    pub(crate) fault: Option<super::fault::Fault>,
    /// The share of its requests copied to a shadow service and compared (parallel run); set
    /// once, while the state is built (after every service exists).
    #[serde(serialize_with = "serialize_mirror")]
    pub(crate) mirror: std::sync::OnceLock<super::mirror::Mirror>,
    /// Request metrics for traffic that matched no route rule (route `default`, the service its
    /// own backend).
    #[serde(skip)]
    pub metrics: Arc<RequestMetrics>,
}

impl Service {
    /// `name.namespace`, the service's identity in logs and labels.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

/// A weighted backend of a route rule.
#[derive(Debug)]
pub struct Backend {
    /// The service port traffic goes to (the route's backend `port`, else the request's port when
    /// the service has it, else its first).
    pub service: Arc<Service>,
    /// Relative share.
    pub weight: u32,
    /// Request metrics of the rule's requests sent to this backend.
    pub metrics: Arc<RequestMetrics>,
}

/// `/config`: the service's name, the port called and the weight.
impl Serialize for Backend {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = ser.serialize_struct("Backend", 3)?;
        s.serialize_field("service", &self.service.qualified_name())?;
        s.serialize_field("port", &self.service.port)?;
        s.serialize_field("weight", &self.weight)?;
        s.end()
    }
}

/// Conditions on a request; all given fields must hold.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Match {
    /// Condition on the path.
    pub path: Option<PathMatch>,
    /// Exact method.
    #[serde(serialize_with = "serialize_method")]
    pub method: Option<Method>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
}

fn serialize_method<S: serde::Serializer>(m: &Option<Method>, ser: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => ser.serialize_str(m.as_str()),
        None => ser.serialize_none(),
    }
}

/// A condition on the request path (without the query).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    /// The path equals this.
    Exact(String),
    /// The path starts with this, on a segment boundary (stored without a trailing '/').
    Prefix(String),
    /// The whole path matches this (anchored) expression.
    Regex(#[serde(serialize_with = "serialize_regex")] regex::Regex),
}

impl PathMatch {
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                p.is_empty()
                    || (path.starts_with(p.as_str())
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// How a header value is compared.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueMatch {
    /// Byte-for-byte equal.
    Exact(String),
    /// The whole value matches this (anchored) expression.
    Regex(#[serde(serialize_with = "serialize_regex")] regex::Regex),
}

fn serialize_regex<S: serde::Serializer>(r: &regex::Regex, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(r.as_str())
}

/// A condition on one header.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    /// Header name (lower-case).
    #[serde(serialize_with = "serialize_header_name")]
    pub name: http::HeaderName,
    /// Required value.
    pub value: ValueMatch,
}

fn serialize_header_name<S: serde::Serializer>(
    n: &http::HeaderName,
    ser: S,
) -> Result<S::Ok, S::Error> {
    ser.serialize_str(n.as_str())
}

impl HeaderMatch {
    fn matches(&self, headers: &http::HeaderMap) -> bool {
        headers
            .get_all(&self.name)
            .iter()
            .any(|v| match &self.value {
                ValueMatch::Exact(s) => v.as_bytes() == s.as_bytes(),
                ValueMatch::Regex(r) => v.to_str().is_ok_and(|v| r.is_match(v)),
            })
    }
}

impl Match {
    /// Whether the request satisfies every condition.
    pub fn matches(&self, method: &Method, path: &str, headers: &http::HeaderMap) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self.path.as_ref().is_none_or(|p| p.matches(path))
            && self.headers.iter().all(|h| h.matches(headers))
    }
}

/// One rule of a route: matches → weighted backends.
#[derive(Debug, Serialize)]
pub struct RouteRule {
    /// The route's name (a metric label).
    pub route: String,
    /// Any match selects the rule; empty matches everything.
    pub matches: Vec<Match>,
    /// Weighted split.
    pub backends: Vec<Backend>,
    /// Overrides the response timeout.
    #[serde(serialize_with = "serialize_duration_opt")]
    pub timeout: Option<Duration>,
    /// Retries of failed requests, with its budget (`None`: no retries).
    pub(crate) retry: Option<Arc<crate::retry::Retry>>,
    /// Header edits made to the rule's requests before they are sent.
    #[serde(
        rename = "request_header_modifier",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) request_headers: Option<super::filter::HeaderEdits>,
    /// Header edits made to the responses on their way back (shared with the requests in flight).
    #[serde(
        rename = "response_header_modifier",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) response_headers: Option<Arc<super::filter::HeaderEdits>>,
    /// The redirect the proxy answers the rule's requests with, instead of sending them.
    #[serde(rename = "request_redirect", skip_serializing_if = "Option::is_none")]
    pub(crate) redirect: Option<super::filter::Redirect>,
}

impl RouteRule {
    /// Picks a backend by weight: its index in `backends`.
    pub fn pick_backend(&self) -> usize {
        let total: u32 = self.backends.iter().map(|b| b.weight).sum();
        let mut n = fastrand::u32(0..total.max(1));
        for (i, b) in self.backends.iter().enumerate() {
            if n < b.weight {
                return i;
            }
            n -= b.weight;
        }
        0
    }
}

/// A map looked up on every request: foldhash rather than the default SipHash, whose DoS
/// resistance buys nothing for keys that come from configuration and discovery, not from clients.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Everything the proxy routes by; immutable once built.
#[derive(Debug, Default, Serialize)]
pub struct State {
    /// Services by qualified name (sorted for `/config`).
    pub services: Vec<Arc<Service>>,
    /// Route rules per service (indexed by [`Service::id`]), in match order.
    pub routes: Vec<Vec<RouteRule>>,
    /// Inbound authorization policies by protected service (`name.namespace`).
    pub authorization: FastMap<String, Arc<crate::inbound::authz::Policy>>,
    /// Inbound rate limits by protected service (`name.namespace`), with their buckets.
    pub(crate) rate_limits: FastMap<String, Arc<crate::inbound::rate_limit::Limiter>>,
    /// Outbound rate limits by called service (`name.namespace`): this proxy's own buckets for
    /// its requests to each.
    pub(crate) outbound_rate_limits: FastMap<String, Arc<crate::inbound::rate_limit::Limiter>>,
    #[serde(skip)]
    by_authority: FastMap<String, Arc<Service>>,
    #[serde(skip)]
    by_addr: FastMap<SocketAddr, Arc<Service>>,
}

impl State {
    /// Builds the lookup indexes over `services` and `routes`.
    pub fn new(services: Vec<Arc<Service>>, routes: Vec<Vec<RouteRule>>) -> Self {
        let mut by_authority = FastMap::default();
        let mut by_addr = FastMap::default();
        for s in &services {
            for a in &s.authorities {
                by_authority.insert(a.clone(), s.clone());
            }
            for ip in &s.addresses {
                by_addr.insert(SocketAddr::new(*ip, s.port), s.clone());
            }
        }
        Self {
            services,
            routes,
            authorization: FastMap::default(),
            rate_limits: FastMap::default(),
            outbound_rate_limits: FastMap::default(),
            by_authority,
            by_addr,
        }
    }

    /// Starts what runs beside the requests for each service (success-rate evaluations, the
    /// preference for endpoints in `zone`), once the state is about to serve: after
    /// [`Self::inherit_runtime`].
    /// `prober`: how health checks reach the endpoints (`None`: nothing is probed).
    pub fn start_runtime(
        &self,
        zone: Option<&Arc<str>>,
        prober: Option<&Arc<crate::balance::Prober>>,
    ) {
        for s in &self.services {
            let qualified = format!("{}.{}", s.name, s.namespace);
            let target = |prober: &crate::balance::Prober| {
                // As `outbound::mesh_identity` decides for requests.
                let server_first = prober.server_first_ports.binary_search(&s.port).is_ok();
                let mtls = s.tls_mode != Some(TlsMode::Disabled)
                    && (!server_first || s.tls_mode == Some(TlsMode::Strict));
                crate::balance::Target {
                    service: qualified.as_str().into(),
                    authority: format!("{qualified}:{}", s.port),
                    version: match s.protocol {
                        Protocol::Http2 => crate::endpoint::Version::Http2,
                        _ => crate::endpoint::Version::Http1,
                    },
                    mtls,
                    connect_timeout: s.backend.policy.connect_timeout,
                    metrics: s.metrics.clone(),
                }
            };
            let probes = prober.map(|p| (target(p), Some(p)));
            s.balancer.start(zone, &qualified, probes);
        }
    }

    /// Carries runtime state over from `previous`: each service's balancer load (same name,
    /// namespace and port), and each route rule's retry budget (same service, route and rule
    /// position). An update that does not touch a service or rule leaves what was learnt alone.
    pub fn inherit_runtime(&mut self, previous: &State) {
        let sides = [
            (&mut self.rate_limits, &previous.rate_limits),
            (
                &mut self.outbound_rate_limits,
                &previous.outbound_rate_limits,
            ),
        ];
        for (limits, before) in sides {
            for (service, limiter) in limits.iter_mut() {
                // A limiter just built holds the only reference to itself.
                if let (Some(new), Some(old)) = (Arc::get_mut(limiter), before.get(service)) {
                    new.inherit(old);
                }
            }
        }
        if previous.services.is_empty() {
            return;
        }
        let old: FastMap<(&str, &str, u16), &Service> = previous
            .services
            .iter()
            .map(|s| ((s.name.as_str(), s.namespace.as_str(), s.port), &**s))
            .collect();
        for s in &self.services {
            let Some(o) = old.get(&(s.name.as_str(), s.namespace.as_str(), s.port)) else {
                continue;
            };
            s.balancer.inherit(&o.balancer);
            s.backend.inherit(&o.backend);
            let (Some(rules), Some(old_rules)) =
                (self.routes.get_mut(s.id), previous.routes.get(o.id))
            else {
                continue;
            };
            // The same rule: same position, same route.
            for (rule, old_rule) in rules.iter_mut().zip(old_rules) {
                // A rule just built holds the only reference to its policy.
                if let (Some(retry), Some(old_retry)) =
                    (rule.retry.as_mut().and_then(Arc::get_mut), &old_rule.retry)
                    && rule.route == old_rule.route
                {
                    retry.inherit(old_retry);
                }
            }
        }
    }

    /// The service an authority (`host:port`, lower-case) names.
    pub fn by_authority(&self, authority: &str) -> Option<&Arc<Service>> {
        self.by_authority.get(authority)
    }

    /// The service whose virtual IP is `addr`.
    pub fn by_addr(&self, addr: &SocketAddr) -> Option<&Arc<Service>> {
        self.by_addr.get(addr)
    }

    /// The first route rule of `service` that `req` matches.
    pub fn route(
        &self,
        service: &Service,
        method: &Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<&RouteRule> {
        let i = self.route_index(service, method, path, headers)?;
        self.routes.get(service.id)?.get(i)
    }

    /// The index of the first route rule of `service` that `req` matches.
    pub fn route_index(
        &self,
        service: &Service,
        method: &Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<usize> {
        self.routes.get(service.id)?.iter().position(|r| {
            r.matches.is_empty() || r.matches.iter().any(|m| m.matches(method, path, headers))
        })
    }

    /// Metrics handles for a service with no route (built here so passthrough and services share
    /// one constructor).
    pub fn service_metrics(service: &str) -> Arc<RequestMetrics> {
        RequestMetrics::outbound(service, "default", service)
    }
}

/// A duration for `/config`, as people write it (`250ms`, `2s`).
pub(crate) fn serialize_duration<S: serde::Serializer>(
    d: &Duration,
    ser: S,
) -> Result<S::Ok, S::Error> {
    ser.collect_str(&humantime::format_duration(*d))
}

/// An optional duration for `/config`.
pub(crate) fn serialize_duration_opt<S: serde::Serializer>(
    d: &Option<Duration>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serialize_duration(d, ser),
        None => ser.serialize_none(),
    }
}
