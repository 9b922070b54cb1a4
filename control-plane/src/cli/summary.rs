//! One-line summaries of resources for `get`'s table columns.

use shoal_proto::v1;
use v1::resource::Spec;

/// The header of the fourth column: the service a resource is about, or a service's ports.
pub(super) fn target_header(resource: &v1::Resource) -> &'static str {
    match resource.spec {
        Some(Spec::Service(_)) => "PORTS",
        _ => "SERVICE",
    }
}

/// The fourth column: a service's ports (`http:8080/http1`), or the service a resource applies to.
pub(super) fn target(resource: &v1::Resource) -> String {
    match &resource.spec {
        Some(Spec::Service(service)) => {
            let ports = service.ports.iter().map(|p| {
                let protocol = v1::Protocol::try_from(p.protocol)
                    .map_or("?", |p| p.as_str_name().trim_start_matches("PROTOCOL_"));
                let name = if p.name.is_empty() {
                    String::new()
                } else {
                    format!("{}:", p.name)
                };
                match protocol {
                    "UNSPECIFIED" => format!("{name}{}", p.port),
                    protocol => format!("{name}{}/{}", p.port, protocol.to_ascii_lowercase()),
                }
            });
            ports.collect::<Vec<_>>().join(",")
        }
        Some(Spec::EndpointRegistration(r)) => r.service.clone(),
        Some(Spec::Route(r)) => r.parent_service.clone(),
        Some(Spec::BackendPolicy(p)) => p.service.clone(),
        Some(Spec::AuthorizationPolicy(p)) => p.target_service.clone(),
        Some(Spec::RateLimit(l)) => l.target_service.clone(),
        Some(Spec::FaultInjection(f)) => f.target_service.clone(),
        Some(Spec::Mirror(m)) => m.target_service.clone(),
        None => String::new(),
    }
}

/// The `wide` details column: the gist of the spec.
pub(super) fn details(resource: &v1::Resource) -> String {
    match &resource.spec {
        Some(Spec::Service(s)) => {
            let mut parts = Vec::new();
            if !s.hosts.is_empty() {
                parts.push(format!("hosts={}", s.hosts.join(",")));
            }
            if !s.virtual_addresses.is_empty() {
                parts.push(format!("vips={}", s.virtual_addresses.join(",")));
            }
            parts.join(" ")
        }
        Some(Spec::EndpointRegistration(r)) => {
            let ttl = match r.ttl_seconds {
                0 => "never expires".to_owned(),
                ttl => format!("ttl={ttl}s"),
            };
            format!("{}:{} weight={} {ttl}", r.address, r.port, r.weight.max(1))
        }
        Some(Spec::Route(route)) => {
            let backends = route.rules.iter().flat_map(|rule| &rule.backends);
            let backends: Vec<String> = backends
                .map(|b| format!("{}={}", b.service, b.weight))
                .collect();
            format!(
                "rules={} backends={}",
                route.rules.len(),
                backends.join(",")
            )
        }
        Some(Spec::BackendPolicy(p)) => {
            let mut parts = Vec::new();
            if let Some(lb) = &p.load_balancer {
                let algorithm =
                    v1::LoadBalancingAlgorithm::try_from(lb.algorithm).map_or("?", |a| {
                        a.as_str_name()
                            .trim_start_matches("LOAD_BALANCING_ALGORITHM_")
                    });
                parts.push(format!("lb={}", algorithm.to_ascii_lowercase()));
            }
            let set = [
                (p.limits.is_some(), "limits"),
                (p.outlier_detection.is_some(), "outlier-detection"),
                (p.circuit_breaker.is_some(), "circuit-breaker"),
            ];
            parts.extend(
                set.iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, name)| (*name).to_owned()),
            );
            parts.join(" ")
        }
        Some(Spec::AuthorizationPolicy(p)) => {
            let action = v1::AuthorizationAction::try_from(p.default_action).map_or("?", |a| {
                a.as_str_name().trim_start_matches("AUTHORIZATION_ACTION_")
            });
            format!(
                "default={} rules={}",
                action.to_ascii_lowercase(),
                p.rules.len()
            )
        }
        Some(Spec::RateLimit(l)) => {
            let unit = v1::RateLimitUnit::try_from(l.unit).map_or("?", |u| {
                u.as_str_name().trim_start_matches("RATE_LIMIT_UNIT_")
            });
            let unit = if unit == "UNSPECIFIED" {
                "second"
            } else {
                unit
            };
            let rate = format!("{}/{}", l.requests_per_unit, unit.to_ascii_lowercase());
            match l.burst {
                0 => rate,
                burst => format!("{rate} burst={burst}"),
            }
        }
        Some(Spec::FaultInjection(f)) => {
            let mut parts = Vec::new();
            if let Some(d) = &f.delay {
                parts.push(format!("delay {}% {}ms", d.percent, d.duration_ms));
            }
            if let Some(a) = &f.abort {
                let mut statuses = Vec::new();
                if a.http_status != 0 {
                    statuses.push(a.http_status.to_string());
                }
                if a.grpc_status != 0 {
                    statuses.push(format!("grpc {}", a.grpc_status));
                }
                parts.push(format!("abort {}% {}", a.percent, statuses.join(" ")));
            }
            parts.join(", ")
        }
        Some(Spec::Mirror(m)) => format!("to {} {}%", m.mirror_service, m.percent),
        None => String::new(),
    }
}
