//! Test fixtures: small valid resources of every kind, for the model, convert and store tests.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::*;

/// A resource named `name` in `namespace`.
pub fn resource(name: &str, namespace: &str, spec: Spec) -> Resource {
    let metadata = Metadata {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        ..Metadata::default()
    };
    Resource { metadata, spec }
}

/// A service `name.default` with one HTTP port, 8080, and a virtual address of its own (derived from
/// the name: two services may not share an address and port).
pub fn service(name: &str) -> Service {
    let octet = name
        .bytes()
        .fold(17u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 250
        + 1;
    Service {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        ports: vec![ServicePort {
            name: "http".to_owned(),
            port: 8080,
            target_port: None,
            protocol: Protocol::Http1,
            tls_mode: None,
        }],
        virtual_addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, octet as u8))],
        hosts: vec![format!("{name}.default.svc.cluster.local")],
        tls_mode: None,
    }
}

/// [`service`] as a resource.
pub fn service_resource(name: &str) -> Resource {
    resource(name, "default", Spec::Service(service(name)))
}

/// `name.default`.
pub fn svc(name: &str) -> ServiceRef {
    ServiceRef::new(name, "default")
}

/// A route for `backend.default`: `/v2` (with header `x-canary: yes`) split 90/10 between `backend-v1` and
/// `backend-v2`, with a timeout; everything else to `backend-v1` (no retries, no backend ports: see
/// [`route_full`]).
pub fn route() -> Route {
    let canary = RouteRule {
        name: "canary".to_owned(),
        matches: vec![RouteMatch {
            path: Some(PathMatch::Prefix("/v2".to_owned())),
            headers: vec![HeaderMatch {
                name: "x-canary".to_owned(),
                value: ValueMatch::Regex("^(yes|true)$".to_owned()),
            }],
            method: Some("GET".to_owned()),
        }],
        backends: vec![backend("backend-v1", 90), backend("backend-v2", 10)],
        timeout: Some(Duration::from_secs(2)),
        retry: None,
        request_headers: Some(HeaderModifier {
            set: vec![("x-route".to_owned(), "canary".to_owned())],
            add: vec![("x-trace-tag".to_owned(), "v2".to_owned())],
            remove: vec!["x-debug".to_owned()],
        }),
        response_headers: Some(HeaderModifier {
            remove: vec!["x-internal".to_owned()],
            ..HeaderModifier::default()
        }),
        redirect: None,
    };
    let default = RouteRule {
        name: String::new(),
        matches: Vec::new(),
        backends: vec![backend("backend-v1", 1)],
        timeout: None,
        retry: None,
        request_headers: None,
        response_headers: None,
        redirect: None,
    };
    Route {
        parent: svc("backend"),
        rules: vec![canary, default],
    }
}

/// A valid retry policy for a rule with a timeout of 2 s or more.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: Some(3),
        per_try_timeout: Some(Duration::from_millis(500)),
        retry_on: vec![RetryOn::ConnectFailure, RetryOn::GatewayError],
        retryable_status_codes: vec![409],
        budget_ratio: Some(0.2),
        ..RetryPolicy::default()
    }
}

/// [`route`] with every field the model has: retries on the canary rule, and every backend on port 8080.
pub fn route_full() -> Route {
    let mut route = route();
    route.rules[0].retry = Some(retry_policy());
    for backend in route.rules.iter_mut().flat_map(|r| &mut r.backends) {
        backend.port = Some(8080);
    }
    route
}

/// A backend `name.default` (on the request's port).
pub fn backend(name: &str, weight: u32) -> WeightedBackend {
    WeightedBackend {
        service: svc(name),
        port: None,
        weight,
    }
}

/// The services [`route`] refers to.
pub fn catalog() -> Vec<Service> {
    ["backend", "backend-v1", "backend-v2", "mirror"]
        .map(service)
        .into()
}

/// One valid resource of every kind (the services of [`catalog`] included), with every field set, for round
/// trips.
pub fn every_kind() -> Vec<Resource> {
    let mut resources: Vec<_> = catalog()
        .into_iter()
        .map(|s| resource(&s.name.clone(), "default", Spec::Service(s)))
        .collect();
    let registration = EndpointRegistration {
        service: svc("backend-v1"),
        address: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7)),
        port: 8080,
        weight: 2,
        zone: "zone-a".to_owned(),
        ttl: Some(Duration::from_secs(30)),
        identity: Some("spiffe://cluster.local/ns/default/sa/backend".to_owned()),
        service_port: Some(8080),
    };
    let backend_policy = BackendPolicy {
        service: svc("backend"),
        load_balancer: Some(LoadBalancer {
            algorithm: Some(LoadBalancingAlgorithm::RingHash),
            hash_key: Some(HashKey::Header("x-user".to_owned())),
            slow_start: Some(Duration::from_secs(30)),
        }),
        limits: Some(ConnectionLimits {
            max_connections: Some(100),
            connect_timeout: Some(Duration::from_millis(500)),
            max_concurrent_retries: Some(3),
            ..ConnectionLimits::default()
        }),
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx: Some(5),
            interval: Some(Duration::from_secs(10)),
            max_ejection_percent: Some(50.0),
            success_rate: Some(SuccessRateEjection {
                minimum_hosts: Some(3),
                ..SuccessRateEjection::default()
            }),
            ..OutlierDetection::default()
        }),
        circuit_breaker: Some(CircuitBreaker {
            failure_ratio_threshold: Some(0.5),
            window: Some(Duration::from_secs(10)),
            manual_override: Some(BreakerOverride::ForceClosed),
            ..CircuitBreaker::default()
        }),
        health_check: Some(Box::new(HealthCheck {
            probe: HealthProbe::Http {
                path: "/healthz".to_owned(),
                expected_statuses: Some((200, 299)),
            },
            interval: Some(Duration::from_secs(5)),
            timeout: None,
            healthy_threshold: Some(2),
            unhealthy_threshold: None,
        })),
    };
    let authorization = AuthorizationPolicy {
        target: svc("backend"),
        default_action: AuthorizationAction::Deny,
        rules: vec![AuthorizationRule {
            name: "frontend".to_owned(),
            action: AuthorizationAction::Allow,
            from: vec![
                IdentityMatch::Exact("spiffe://cluster.local/ns/default/sa/frontend".to_owned()),
                IdentityMatch::Namespace("ops".to_owned()),
                IdentityMatch::TrustDomain("partner.example".to_owned()),
            ],
            to_ports: vec![8080],
            path_prefixes: vec!["/api".to_owned()],
            methods: vec!["GET".to_owned(), "POST".to_owned()],
        }],
    };
    let rate_limit = RateLimit {
        target: svc("backend"),
        requests_per_unit: 100,
        unit: RateLimitUnit::Minute,
        burst: Some(20),
        scope: RateLimitScope::PerClient,
        matches: vec![RouteMatch {
            path: Some(PathMatch::Prefix("/api".to_owned())),
            ..RouteMatch::default()
        }],
        overrides: vec![RateLimitOverride {
            identity: "spiffe://cluster.local/ns/shop/sa/batch".to_owned(),
            requests_per_unit: 1000,
            burst: None,
        }],
        side: RateLimitSide::Inbound,
    };
    let fault = FaultInjection {
        target: svc("backend"),
        delay: Some(FaultDelay {
            percent: 5.0,
            duration: Duration::from_millis(300),
        }),
        abort: Some(FaultAbort {
            percent: 1.5,
            http_status: Some(503),
            grpc_status: Some(14),
        }),
        matches: vec![RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-chaos".to_owned(),
                value: ValueMatch::Exact("on".to_owned()),
            }],
            ..RouteMatch::default()
        }],
    };
    let mirror = Mirror {
        target: svc("backend"),
        mirror: svc("mirror"),
        port: Some(8080),
        percent: 10.0,
        compare_headers: vec!["content-type".into()],
    };
    resources.extend([
        resource(
            "backend-v1-a",
            "default",
            Spec::EndpointRegistration(registration),
        ),
        resource("backend", "default", Spec::Route(route_full())),
        resource("backend", "default", Spec::BackendPolicy(backend_policy)),
        resource(
            "backend",
            "default",
            Spec::AuthorizationPolicy(authorization),
        ),
        resource("backend", "default", Spec::RateLimit(rate_limit)),
        resource("backend", "default", Spec::FaultInjection(fault)),
        resource("backend", "default", Spec::Mirror(mirror)),
    ]);
    resources
}
