//! Validation errors of services, registrations and policies name their field.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::tests::{assert_rejects, check, fault, registration};
use crate::model::fixtures::{self, svc};
use crate::model::*;

#[test]
fn service_errors_name_their_field() {
    let with = |change: fn(&mut Service)| {
        let mut service = fixtures::service("backend");
        change(&mut service);
        Spec::Service(service)
    };
    assert_rejects(with(|s| s.ports.clear()), "spec.ports", "at least one port");
    assert_rejects(
        with(|s| s.ports[0].port = 0),
        "spec.ports[0].port",
        "port 0",
    );
    let twice = with(|s| s.ports.push(s.ports[0].clone()));
    assert_rejects(twice, "spec.ports[1].port", "listed twice");
    assert_rejects(
        with(|s| s.name = "other".into()),
        "spec.name",
        "differs from metadata.name",
    );
    let vip = with(|s| s.virtual_addresses[0] = IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_rejects(vip, "spec.virtual_addresses[0]", "not a unicast address");
    assert_rejects(
        with(|s| s.hosts[0] = "Bad_Host".into()),
        "spec.hosts[0]",
        "lowercase",
    );
}

#[test]
fn registration_errors_name_their_field() {
    let with = |change: fn(&mut EndpointRegistration)| {
        let mut registration = registration();
        change(&mut registration);
        Spec::EndpointRegistration(registration)
    };
    assert_eq!(check(with(|_| {})), Ok(()));
    assert_rejects(
        with(|r| r.service = svc("ghost")),
        "spec.service",
        "unknown service",
    );
    assert_rejects(with(|r| r.port = 0), "spec.port", "port 0");
    assert_rejects(
        with(|r| r.service_port = Some(9)),
        "spec.service_port",
        "has no port 9",
    );
    assert_rejects(with(|r| r.weight = 0), "spec.weight", "1–1000000");
    let identity = with(|r| r.identity = Some("backend".into()));
    assert_rejects(identity, "spec.identity", "spiffe://");
    assert_rejects(with(|r| r.zone = "a zone".into()), "spec.zone", "zone name");
}

#[test]
fn backend_policy_errors_name_their_field() {
    let ring_without_key = BackendPolicy {
        service: svc("backend"),
        load_balancer: Some(LoadBalancer {
            algorithm: Some(LoadBalancingAlgorithm::RingHash),
            hash_key: None,
            slow_start: Some(Duration::from_secs(100_000)),
        }),
        limits: Some(ConnectionLimits {
            max_connections: Some(0),
            max_concurrent_retries: Some(0),
            ..ConnectionLimits::default()
        }),
        outlier_detection: Some(OutlierDetection {
            max_ejection_percent: Some(150.0),
            ..OutlierDetection::default()
        }),
        circuit_breaker: Some(CircuitBreaker {
            failure_ratio_threshold: Some(0.0),
            open_duration: Some(Duration::from_secs(100_000)),
            ..CircuitBreaker::default()
        }),
        health_check: None,
    };
    let spec = || Spec::BackendPolicy(ring_without_key.clone());
    assert_rejects(
        spec(),
        "spec.load_balancer.hash_key",
        "required with algorithm RING_HASH",
    );
    assert_rejects(spec(), "spec.limits.max_connections", "must be positive");
    assert_rejects(
        spec(),
        "spec.load_balancer.slow_start_ms",
        "longer than the maximum",
    );
    assert_rejects(
        spec(),
        "spec.limits.max_concurrent_retries",
        "must be positive",
    );
    assert_rejects(
        spec(),
        "spec.outlier_detection.max_ejection_percent",
        "percentage",
    );
    assert_rejects(
        spec(),
        "spec.circuit_breaker.failure_ratio_threshold",
        "ratio",
    );
    assert_rejects(
        spec(),
        "spec.circuit_breaker.open_duration_ms",
        "longer than the maximum",
    );
    let mut key_without_ring = ring_without_key.clone();
    key_without_ring.load_balancer = Some(LoadBalancer {
        algorithm: None,
        hash_key: Some(HashKey::SourceIp),
        slow_start: None,
    });
    let spec = Spec::BackendPolicy(key_without_ring);
    assert_rejects(
        spec,
        "spec.load_balancer.hash_key",
        "only used with algorithm RING_HASH",
    );
}

#[test]
fn outlier_detection_errors_name_their_field() {
    let with = |outlier: OutlierDetection| {
        Spec::BackendPolicy(BackendPolicy {
            service: svc("backend"),
            load_balancer: None,
            limits: None,
            outlier_detection: Some(outlier),
            circuit_breaker: None,
            health_check: None,
        })
    };
    let rate = |stdev_factor: Option<f64>| SuccessRateEjection {
        minimum_hosts: Some(0),
        request_volume: Some(10),
        stdev_factor,
    };
    assert_rejects(
        with(OutlierDetection::default()),
        "spec.outlier_detection",
        "ejects nothing",
    );
    let interval = OutlierDetection {
        consecutive_5xx: Some(5),
        interval: Some(Duration::from_secs(1)),
        ..OutlierDetection::default()
    };
    assert_rejects(
        with(interval),
        "spec.outlier_detection.interval_ms",
        "only used with success_rate",
    );
    let hosts = OutlierDetection {
        success_rate: Some(rate(None)),
        ..OutlierDetection::default()
    };
    assert_rejects(
        with(hosts),
        "spec.outlier_detection.success_rate.minimum_hosts",
        "must be positive",
    );
    let factor = OutlierDetection {
        success_rate: Some(rate(Some(11.0))),
        ..OutlierDetection::default()
    };
    assert_rejects(
        with(factor),
        "spec.outlier_detection.success_rate.stdev_factor",
        "not in (0, 10]",
    );
}

#[test]
fn inbound_policy_errors_name_their_field() {
    let policy = AuthorizationPolicy {
        target: svc("backend"),
        default_action: AuthorizationAction::Deny,
        rules: vec![AuthorizationRule {
            name: String::new(),
            action: AuthorizationAction::Allow,
            from: vec![IdentityMatch::Exact("frontend".into())],
            to_ports: vec![0],
            path_prefixes: vec!["api".into()],
            methods: vec!["G T".into()],
        }],
    };
    let spec = || Spec::AuthorizationPolicy(policy.clone());
    assert_rejects(spec(), "spec.rules[0].from[0].exact", "spiffe://");
    assert_rejects(spec(), "spec.rules[0].to_ports[0]", "port 0");
    assert_rejects(spec(), "spec.rules[0].path_prefixes[0]", "start with `/`");
    assert_rejects(spec(), "spec.rules[0].methods[0]", "HTTP token");
    let limit = RateLimit {
        target: svc("backend"),
        requests_per_unit: 10,
        unit: RateLimitUnit::Second,
        burst: Some(0),
        scope: RateLimitScope::Global,
        matches: Vec::new(),
        overrides: Vec::new(),
        side: RateLimitSide::Inbound,
    };
    assert_rejects(
        Spec::RateLimit(limit.clone()),
        "spec.burst",
        "must be positive",
    );
    let scoped = RateLimit {
        matches: vec![RouteMatch::default()],
        overrides: vec![
            RateLimitOverride {
                identity: "spiffe://cluster.local/ns/shop/sa/batch".into(),
                requests_per_unit: 5,
                burst: Some(0),
            },
            RateLimitOverride {
                identity: "batch".into(),
                requests_per_unit: 5,
                burst: None,
            },
        ],
        ..limit.clone()
    };
    let spec = Spec::RateLimit(scoped.clone());
    assert_rejects(spec.clone(), "spec.matches[0]", "empty match");
    assert_rejects(spec.clone(), "spec.overrides[0].burst", "must be positive");
    assert_rejects(spec, "spec.overrides[1].identity", "spiffe://");
    let outbound = RateLimit {
        side: RateLimitSide::Outbound,
        scope: RateLimitScope::PerClient,
        ..scoped
    };
    let spec = Spec::RateLimit(outbound);
    assert_rejects(spec.clone(), "spec.scope", "calling proxy");
    assert_rejects(spec, "spec.overrides", "inbound limits only");
}

#[test]
fn chaos_policy_errors_name_their_field() {
    let nothing = FaultInjection {
        delay: None,
        ..fault()
    };
    assert_rejects(Spec::FaultInjection(nothing), "spec", "injects nothing");
    let abort = FaultInjection {
        abort: Some(FaultAbort {
            percent: 101.0,
            http_status: Some(600),
            grpc_status: Some(17),
        }),
        ..fault()
    };
    assert_rejects(
        Spec::FaultInjection(abort.clone()),
        "spec.abort.percent",
        "101",
    );
    assert_rejects(
        Spec::FaultInjection(abort.clone()),
        "spec.abort.http_status",
        "200–599",
    );
    assert_rejects(
        Spec::FaultInjection(abort),
        "spec.abort.grpc_status",
        "1–16",
    );
    let no_status = FaultInjection {
        abort: Some(FaultAbort {
            percent: 1.0,
            http_status: None,
            grpc_status: None,
        }),
        ..fault()
    };
    assert_rejects(
        Spec::FaultInjection(no_status),
        "spec.abort",
        "`http_status`, `grpc_status` or both",
    );

    let mirror = Mirror {
        target: svc("backend"),
        mirror: svc("backend"),
        port: None,
        percent: f64::NAN,
        compare_headers: vec!["content-type".into(), "X-Version".into(), "a b".into()],
    };
    assert_rejects(
        Spec::Mirror(mirror.clone()),
        "spec.mirror_service",
        "mirrors to itself",
    );
    assert_rejects(Spec::Mirror(mirror.clone()), "spec.percent", "NaN");
    assert_rejects(
        Spec::Mirror(mirror.clone()),
        "spec.compare_headers[1]",
        "must be lower-case",
    );
    assert_rejects(
        Spec::Mirror(mirror.clone()),
        "spec.compare_headers[2]",
        "header name \"a b\"",
    );
    let twice = Mirror {
        compare_headers: vec!["etag".into(), "etag".into()],
        ..mirror.clone()
    };
    assert_rejects(
        Spec::Mirror(twice),
        "spec.compare_headers[1]",
        "listed twice",
    );
    let unknown = Mirror {
        mirror: svc("shadow"),
        ..mirror
    };
    assert_rejects(
        Spec::Mirror(unknown),
        "spec.mirror_service",
        "unknown service shadow.default",
    );
}

#[test]
fn health_check_errors_name_their_field() {
    let with = |probe: HealthProbe, unhealthy_threshold: Option<u32>| {
        Spec::BackendPolicy(BackendPolicy {
            service: svc("backend"),
            load_balancer: None,
            limits: None,
            outlier_detection: None,
            circuit_breaker: None,
            health_check: Some(Box::new(HealthCheck {
                probe,
                interval: Some(Duration::from_secs(100_000)),
                timeout: None,
                healthy_threshold: None,
                unhealthy_threshold,
            })),
        })
    };
    let http = |path: &str, expected_statuses| HealthProbe::Http {
        path: path.to_owned(),
        expected_statuses,
    };
    assert_rejects(
        with(http("healthz", None), None),
        "spec.health_check.http.path",
        "not a request path",
    );
    assert_rejects(
        with(http("/healthz", Some((300, 200))), None),
        "spec.health_check.http.expected_statuses",
        "300-200",
    );
    let grpc = HealthProbe::Grpc {
        service: String::new(),
    };
    assert_rejects(
        with(grpc.clone(), Some(0)),
        "spec.health_check.unhealthy_threshold",
        "must be positive",
    );
    assert_rejects(
        with(grpc, None),
        "spec.health_check.interval_ms",
        "longer than the maximum",
    );
}
