//! The cases of `testdata/pushed-resource-checks.txt`, built into wire resources, for the proxy's and the
//! control plane's tests: both run every case, so what a proxy would reject when a resource is pushed is
//! refused by the control plane at `apply` (see that file for the format and the verdicts).

use crate::v1::{self, discovery_resource::Payload, header_match, path_match, path_modifier};

const CASES: &str = include_str!("../testdata/pushed-resource-checks.txt");

/// What each side answers for a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Both accept it.
    Accept,
    /// Both refuse it.
    Refuse,
    /// The control plane refuses it; a proxy could run it (stricter hygiene at `apply`).
    ControlPlaneRefuses,
}

/// One case: a valid resource with one field set to a value.
#[derive(Debug, Clone)]
pub struct Case {
    /// `route | path.regex | /api/(.* | refuse`, for messages.
    pub line: &'static str,
    /// The resource's key: its type, named `web.default`.
    pub key: v1::ResourceKey,
    /// The resource.
    pub payload: Payload,
    pub verdict: Verdict,
}

/// Every case of the file.
pub fn cases() -> Vec<Case> {
    CASES
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let [kind, field, value, verdict] = cells[..] else {
                panic!("{line}: expected `kind | field | value | verdict`")
            };
            let verdict = match verdict {
                "accept" => Verdict::Accept,
                "refuse" => Verdict::Refuse,
                "cp-refuses" => Verdict::ControlPlaneRefuses,
                _ => panic!("{line}: unknown verdict {verdict}"),
            };
            let (ty, payload) = match kind {
                "route" => (v1::ResourceType::Route, route(field, value, line)),
                "service" => (v1::ResourceType::Service, service(field, value, line)),
                "endpoints" => (v1::ResourceType::Endpoints, endpoints(field, value, line)),
                "authz" => (
                    v1::ResourceType::AuthorizationPolicy,
                    authorization(field, value, line),
                ),
                _ => panic!("{line}: unknown kind {kind}"),
            };
            Case {
                line,
                key: v1::ResourceKey {
                    r#type: ty as i32,
                    name: "web.default".to_owned(),
                },
                payload,
                verdict,
            }
        })
        .collect()
}

fn number(value: &str, line: &str) -> u64 {
    value
        .parse()
        .unwrap_or_else(|_| panic!("{line}: not a number"))
}

/// A Route of `web.default`, one rule sending everything to `web.default`, with `field` set to `value`.
fn route(field: &str, value: &str, line: &str) -> Payload {
    let mut rule = v1::RouteRule {
        backends: vec![v1::WeightedBackend {
            service: "web.default".to_owned(),
            port: 0,
            weight: 1,
        }],
        ..Default::default()
    };
    let path = |kind| v1::RouteMatch {
        path: Some(v1::PathMatch { kind: Some(kind) }),
        ..Default::default()
    };
    let header = |name: &str, value| v1::RouteMatch {
        headers: vec![v1::HeaderMatch {
            name: name.to_owned(),
            value: Some(value),
        }],
        ..Default::default()
    };
    let mut rules = None;
    let matched = match field {
        "path.prefix" => path(path_match::Kind::Prefix(value.to_owned())),
        "path.exact" => path(path_match::Kind::Exact(value.to_owned())),
        "path.regex" => path(path_match::Kind::Regex(value.to_owned())),
        "method" => v1::RouteMatch {
            method: value.to_owned(),
            ..Default::default()
        },
        "header.name" => header(value, header_match::Value::Exact("1".to_owned())),
        "header.regex" => header("x-user", header_match::Value::Regex(value.to_owned())),
        "match" => v1::RouteMatch::default(),
        "timeout_ms" => {
            rule.timeout_ms = number(value, line);
            path(path_match::Kind::Prefix("/".to_owned()))
        }
        "backend.weight" => {
            rule.backends[0].weight = number(value, line) as u32;
            path(path_match::Kind::Prefix("/".to_owned()))
        }
        "backend.port" => {
            rule.backends[0].port = number(value, line) as u32;
            path(path_match::Kind::Prefix("/".to_owned()))
        }
        "rules" => {
            rules = Some(Vec::new());
            v1::RouteMatch::default()
        }
        "request_header.set" => {
            rule.request_header_modifier = Some(v1::HeaderModifier {
                set: vec![v1::HeaderValue {
                    name: value.to_owned(),
                    value: "1".to_owned(),
                }],
                ..Default::default()
            });
            path(path_match::Kind::Prefix("/".to_owned()))
        }
        "response_header.remove" => {
            rule.response_header_modifier = Some(v1::HeaderModifier {
                remove: vec![value.to_owned()],
                ..Default::default()
            });
            path(path_match::Kind::Prefix("/".to_owned()))
        }
        redirect if redirect.starts_with("redirect.") => {
            let mut to = v1::RequestRedirect::default();
            let modifier = |kind| Some(v1::PathModifier { kind: Some(kind) });
            match redirect {
                "redirect.status" => to.status_code = number(value, line) as u32,
                "redirect.scheme" => to.scheme = value.to_owned(),
                "redirect.hostname" => to.hostname = value.to_owned(),
                "redirect.full_path" => {
                    to.path = modifier(path_modifier::Kind::ReplaceFullPath(value.to_owned()))
                }
                "redirect.prefix" => {
                    to.path = modifier(path_modifier::Kind::ReplacePrefixMatch(value.to_owned()))
                }
                // A redirect beside a backend (`value` names it).
                "redirect.backend" => rule.backends[0].service = value.to_owned(),
                _ => panic!("{line}: unknown route field {field}"),
            }
            if redirect != "redirect.backend" {
                rule.backends.clear();
            }
            rule.request_redirect = Some(to);
            path(path_match::Kind::Prefix("/".to_owned()))
        }
        _ => panic!("{line}: unknown route field {field}"),
    };
    rule.matches = vec![matched];
    Payload::Route(v1::Route {
        parent_service: "web.default".to_owned(),
        rules: rules.unwrap_or_else(|| vec![rule]),
    })
}

/// Service `web.default` on port 80 with `field` set to `value`.
fn service(field: &str, value: &str, line: &str) -> Payload {
    let mut service = v1::Service {
        name: "web".to_owned(),
        namespace: "default".to_owned(),
        ports: vec![v1::ServicePort {
            port: 80,
            ..Default::default()
        }],
        ..Default::default()
    };
    match field {
        "ports" => service.ports.clear(),
        "port" => service.ports[0].port = number(value, line) as u32,
        "virtual_address" => service.virtual_addresses = vec![value.to_owned()],
        "host" => service.hosts = vec![value.to_owned()],
        "name" => service.name = value.to_owned(),
        _ => panic!("{line}: unknown service field {field}"),
    }
    Payload::Service(service)
}

/// Endpoints of `web.default`: one endpoint, 10.0.0.1:8080, with `field` set to `value`.
fn endpoints(field: &str, value: &str, line: &str) -> Payload {
    let mut endpoint = v1::Endpoint {
        address: "10.0.0.1".to_owned(),
        port: 8080,
        weight: 1,
        ready: true,
        ..Default::default()
    };
    match field {
        "address" => endpoint.address = value.to_owned(),
        "port" => endpoint.port = number(value, line) as u32,
        "weight" => endpoint.weight = number(value, line) as u32,
        "identity" => endpoint.identity = value.to_owned(),
        _ => panic!("{line}: unknown endpoints field {field}"),
    }
    Payload::Endpoints(v1::Endpoints {
        service: "web.default".to_owned(),
        endpoints: vec![endpoint],
    })
}

/// An AuthorizationPolicy of `web.default` with one allowing rule, `field` set to `value` in it.
fn authorization(field: &str, value: &str, line: &str) -> Payload {
    let mut rule = v1::AuthorizationRule {
        action: v1::AuthorizationAction::Allow as i32,
        ..Default::default()
    };
    match field {
        "from.exact" => {
            rule.from = vec![v1::IdentityMatch {
                kind: Some(v1::identity_match::Kind::Exact(value.to_owned())),
            }]
        }
        "path_prefix" => rule.path_prefixes = vec![value.to_owned()],
        "method" => rule.methods = vec![value.to_owned()],
        "to_port" => rule.to_ports = vec![number(value, line) as u32],
        _ => panic!("{line}: unknown authz field {field}"),
    }
    Payload::AuthorizationPolicy(v1::AuthorizationPolicy {
        target_service: "web.default".to_owned(),
        default_action: v1::AuthorizationAction::Deny as i32,
        rules: vec![rule],
    })
}

const CONFLICTS: &str = include_str!("../testdata/authority-conflicts.txt");

/// One case of `testdata/authority-conflicts.txt`: a service held, and one pushed or applied after it.
#[derive(Debug, Clone)]
pub struct ConflictCase {
    /// The line, for messages.
    pub line: &'static str,
    /// The service held (pushed or applied first).
    pub held: v1::Service,
    /// The service pushed or applied next.
    pub next: v1::Service,
    /// Whether `next` claims an authority `held` has: the proxy NACKs it, the control plane refuses it.
    pub conflict: bool,
}

/// Every case of `testdata/authority-conflicts.txt`.
pub fn conflict_cases() -> Vec<ConflictCase> {
    CONFLICTS
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let [held, next, verdict] = cells[..] else {
                panic!("{line}: expected `service | service | verdict`")
            };
            let conflict = match verdict {
                "conflict" => true,
                "accept" => false,
                _ => panic!("{line}: unknown verdict {verdict}"),
            };
            ConflictCase {
                line,
                held: described_service(held, line),
                next: described_service(next, line),
                conflict,
            }
        })
        .collect()
}

/// `name.namespace:port[,port] [host,host]` as a Service.
fn described_service(text: &str, line: &str) -> v1::Service {
    let (service, hosts) = text.split_once(' ').unwrap_or((text, ""));
    let (qualified, ports) = service
        .split_once(':')
        .unwrap_or_else(|| panic!("{line}: {service}: expected name.namespace:port"));
    let (name, namespace) = qualified
        .split_once('.')
        .unwrap_or_else(|| panic!("{line}: {qualified}: expected name.namespace"));
    let ports = ports.split(',').map(|p| v1::ServicePort {
        port: number(p, line) as u32,
        ..Default::default()
    });
    v1::Service {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        ports: ports.collect(),
        hosts: (hosts.split(',').filter(|h| !h.is_empty()))
            .map(str::to_owned)
            .collect(),
        ..Default::default()
    }
}
