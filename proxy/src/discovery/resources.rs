//! The resources a proxy holds from discovery, and their translation into the state builder's
//! description (the same one the static file produces), so both sources share one validation.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use shoal_proto::v1::{self, ResourceType, discovery_resource::Payload};

use crate::inbound::authz::{self, Action, IdentityMatchSpec, PolicySpec};
use crate::state::Protocol;
use crate::state::spec::{
    BackendSpec, EndpointSpec, FileSpec, MatchSpec, RouteSpec, RuleSpec, ServiceSpec,
};
use crate::tls::TlsMode;

/// A resource key: type and name.
pub type Key = (i32, String);

/// Every resource held, with its version.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    map: HashMap<Key, (String, Payload)>,
}

fn key_of(k: &v1::ResourceKey) -> Key {
    (k.r#type, k.name.clone())
}

impl Resources {
    /// A copy with `response` applied (resources replaced, removals dropped); the keys it
    /// answered are returned too.
    pub fn apply(&self, response: &v1::DiscoveryResponse) -> Result<(Resources, Vec<Key>), String> {
        let mut next = self.clone();
        let mut answered = Vec::new();
        for r in &response.resources {
            let k = r.key.as_ref().ok_or("a resource without a key")?;
            let payload = r
                .payload
                .clone()
                .ok_or_else(|| format!("resource {} has no payload", k.name))?;
            next.map.insert(key_of(k), (r.version.clone(), payload));
            answered.push(key_of(k));
        }
        for k in &response.removed {
            next.map.remove(&key_of(k));
            answered.push(key_of(k));
        }
        Ok((next, answered))
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
    pub fn to_spec(&self) -> Result<(FileSpec, Vec<String>), String> {
        let mut services = Vec::new();
        let mut known = HashSet::new();
        for ((ty, name), (_, payload)) in &self.map {
            if let (true, Payload::Service(s)) = (*ty == ResourceType::Service as i32, payload) {
                known.insert(name.clone());
                services.extend(self.service_specs(name, s)?);
            }
        }
        let mut routes = Vec::new();
        let mut missing = Vec::new();
        for ((ty, name), (_, payload)) in &self.map {
            let (true, Payload::Route(r)) = (*ty == ResourceType::Route as i32, payload) else {
                continue;
            };
            let wanted: Vec<&str> = r
                .rules
                .iter()
                .flat_map(|rule| rule.backends.iter().map(|b| b.service.as_str()))
                .collect();
            let absent: Vec<String> = wanted
                .iter()
                .filter(|s| !known.contains(**s))
                .map(|s| s.to_string())
                .collect();
            if !known.contains(name) || !absent.is_empty() {
                missing.extend(absent);
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
        Ok((
            FileSpec {
                services,
                routes,
                authorization,
            },
            missing,
        ))
    }

    fn service_specs(&self, qualified: &str, s: &v1::Service) -> Result<Vec<ServiceSpec>, String> {
        let at = format!("service {qualified}");
        if s.ports.is_empty() {
            return Err(format!("{at}: no ports"));
        }
        let addresses = s
            .virtual_addresses
            .iter()
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| format!("{at}: virtual address `{a}` is not an IP address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let endpoints = match self
            .map
            .get(&(ResourceType::Endpoints as i32, qualified.to_string()))
        {
            Some((_, Payload::Endpoints(e))) => e.endpoints.clone(),
            _ => Vec::new(),
        };
        let mut specs = Vec::new();
        for p in &s.ports {
            let port = u16::try_from(p.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{at}: port {} out of range", p.port))?;
            let mut eps = Vec::new();
            for e in endpoints
                .iter()
                .filter(|e| e.service_port == 0 || e.service_port == p.port)
            {
                let ip: IpAddr = e
                    .address
                    .parse()
                    .map_err(|_| format!("{at}: endpoint `{}` is not an IP address", e.address))?;
                let ep_port = u16::try_from(e.port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        format!("{at}: endpoint {} port {} out of range", e.address, e.port)
                    })?;
                eps.push(EndpointSpec {
                    address: SocketAddr::new(ip, ep_port),
                    weight: e.weight.max(1),
                    ready: e.ready,
                    identity: (!e.identity.is_empty()).then(|| e.identity.clone()),
                });
            }
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

fn route_spec(parent: &str, r: &v1::Route) -> Result<RouteSpec, String> {
    let mut rules = Vec::new();
    for rule in &r.rules {
        let matches = rule
            .matches
            .iter()
            .map(|m| {
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
            })
            .collect();
        let backends = if rule.backends.is_empty() {
            vec![BackendSpec {
                service: parent.to_string(),
                weight: 1,
            }]
        } else {
            rule.backends
                .iter()
                .map(|b| BackendSpec {
                    service: b.service.clone(),
                    weight: b.weight,
                })
                .collect()
        };
        rules.push(RuleSpec {
            name: (!rule.name.is_empty()).then(|| rule.name.clone()),
            matches,
            backends,
            timeout: (rule.timeout_ms > 0).then(|| Duration::from_millis(rule.timeout_ms)),
        });
    }
    Ok(RouteSpec {
        name: parent.to_string(),
        service: parent.to_string(),
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::spec::build;

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

    #[test]
    fn routes_wait_for_their_backends_then_apply() {
        let r = Resources::default();
        let (r, answered) = r
            .apply(&response(
                vec![
                    res(ResourceType::Service, "web.default", service("web", 80)),
                    res(
                        ResourceType::Endpoints,
                        "web.default",
                        endpoints("web.default", "10.0.0.1", 8080),
                    ),
                    res(ResourceType::Route, "web.default", split_route()),
                ],
                vec![],
            ))
            .unwrap();
        assert_eq!(answered.len(), 3);
        let (spec, missing) = r.to_spec().unwrap();
        assert_eq!(missing, vec!["web-v2.default".to_string()]);
        assert!(spec.routes.is_empty(), "route waits for its backend");
        let state = build(spec).unwrap();
        assert_eq!(
            state.by_authority("web:80").unwrap().balancer.ready_len(),
            1
        );

        let (r, _) = r
            .apply(&response(
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
                vec![],
            ))
            .unwrap();
        let (spec, missing) = r.to_spec().unwrap();
        assert!(missing.is_empty());
        let state = build(spec).unwrap();
        let web = state.by_authority("web:80").unwrap();
        let rule = state
            .route(web, &http::Method::GET, "/", &http::HeaderMap::new())
            .unwrap();
        assert_eq!(rule.route, "canary");
        assert_eq!(rule.pick_backend().name, "web-v2", "weight 0 never picked");
        assert_eq!(r.held().len(), 5);
    }

    #[test]
    fn removals_drop_resources_and_bad_payloads_are_errors() {
        let (r, _) = Resources::default()
            .apply(&response(
                vec![res(
                    ResourceType::Service,
                    "web.default",
                    service("web", 80),
                )],
                vec![],
            ))
            .unwrap();
        let (r, _) = r
            .apply(&response(
                vec![],
                vec![v1::ResourceKey {
                    r#type: ResourceType::Service as i32,
                    name: "web.default".into(),
                }],
            ))
            .unwrap();
        assert!(r.to_spec().unwrap().0.services.is_empty());

        let (bad, _) = Resources::default()
            .apply(&response(
                vec![
                    res(ResourceType::Service, "web.default", service("web", 80)),
                    res(
                        ResourceType::Endpoints,
                        "web.default",
                        endpoints("web.default", "not-an-ip", 8080),
                    ),
                ],
                vec![],
            ))
            .unwrap();
        let err = bad.to_spec().unwrap_err();
        assert!(
            err.contains("service web.default: endpoint `not-an-ip` is not an IP address"),
            "{err}"
        );
    }
}
