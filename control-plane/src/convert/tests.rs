//! Round trips for every kind, the admin API's conveniences, and errors naming the wire field.

use shoal_proto::v1;

use crate::model::fixtures::{self, svc};
use crate::model::validate::{FieldError, Invalid};
use crate::model::*;

/// A wire resource of `kind` named `backend` in `namespace`, with `spec`.
fn wire(kind: v1::ResourceKind, namespace: &str, spec: v1::resource::Spec) -> v1::Resource {
    v1::Resource {
        kind: kind.into(),
        metadata: Some(v1::Metadata {
            name: "backend".to_owned(),
            namespace: namespace.to_owned(),
            ..v1::Metadata::default()
        }),
        spec: Some(spec),
    }
}

#[track_caller]
fn assert_field(invalid: &Invalid, field: &str, reason: &str) {
    assert!(
        invalid
            .errors
            .iter()
            .any(|e| e.field == field && e.reason.contains(reason)),
        "expected `{field}: …{reason}…`, got: {invalid}"
    );
}

#[test]
fn every_kind_round_trips_through_the_wire() {
    for mut resource in fixtures::every_kind() {
        resource.metadata.resource_version = 42;
        resource
            .metadata
            .labels
            .insert("team".into(), "shop".into());
        let wire = v1::Resource::from(&resource);
        assert_eq!(
            Resource::try_from(wire),
            Ok(resource.clone()),
            "{}",
            resource.key()
        );
    }
}

#[test]
fn a_redirect_rule_round_trips_through_the_wire() {
    let mut route = fixtures::route();
    route.rules[0].backends.clear();
    route.rules[0].request_headers = None;
    route.rules[0].redirect = Some(crate::model::RequestRedirect {
        scheme: Some("https".into()),
        hostname: Some("example.com".into()),
        port: Some(8443),
        path: Some(crate::model::PathModifier::ReplacePrefixMatch("/v3".into())),
        status_code: Some(308),
    });
    assert_eq!(Route::try_from(v1::Route::from(&route)), Ok(route));
}

#[test]
fn discovery_payloads_round_trip() {
    let route = fixtures::route_full();
    assert_eq!(Route::try_from(v1::Route::from(&route)), Ok(route));
    let service = fixtures::service("backend");
    assert_eq!(
        Service::try_from(v1::Service::from(service.clone())),
        Ok(service)
    );
    let registration = match &fixtures::every_kind()[4].spec {
        Spec::EndpointRegistration(r) => r.clone(),
        other => panic!("fixture order changed: {other:?}"),
    };
    let endpoints = Endpoints {
        service: svc("backend-v1"),
        endpoints: vec![registration.endpoint()],
    };
    assert_eq!(
        Endpoints::try_from(v1::Endpoints::from(&endpoints)),
        Ok(endpoints)
    );
}

#[test]
fn admin_resources_get_defaults_and_qualified_names() {
    let route = v1::Route {
        parent_service: "backend".into(),
        rules: vec![v1::RouteRule {
            backends: vec![v1::WeightedBackend {
                service: "backend-v2".into(),
                weight: 1,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let converted = Resource::try_from(wire(
        v1::ResourceKind::Route,
        "",
        v1::resource::Spec::Route(route),
    ))
    .expect("converts");
    assert_eq!(converted.metadata.namespace, "default");
    let Spec::Route(route) = converted.spec else {
        panic!("a route")
    };
    assert_eq!(route.parent, svc("backend"));
    assert_eq!(route.rules[0].backends[0].service, svc("backend-v2"));

    let service = v1::Service {
        ports: vec![v1::ServicePort {
            port: 80,
            ..Default::default()
        }],
        ..Default::default()
    };
    let spec = v1::resource::Spec::Service(service);
    let converted =
        Resource::try_from(wire(v1::ResourceKind::Service, "shop", spec)).expect("converts");
    let Spec::Service(service) = converted.spec else {
        panic!("a service")
    };
    assert_eq!(
        (service.name.as_str(), service.namespace.as_str()),
        ("backend", "shop")
    );
    assert_eq!(service.ports[0].protocol, Protocol::Detect);
}

#[test]
fn discovery_payloads_require_qualified_names() {
    let route = v1::Route {
        parent_service: "backend".into(),
        rules: Vec::new(),
    };
    let error = Route::try_from(route).expect_err("bare name");
    assert_eq!(error.field, "parent_service");
}

#[test]
fn resource_errors_name_the_wire_field() {
    let missing = v1::Resource {
        spec: None,
        ..wire(
            v1::ResourceKind::Route,
            "",
            v1::resource::Spec::Route(Default::default()),
        )
    };
    let invalid = Resource::try_from(missing).expect_err("no spec");
    assert_field(&invalid, "spec", "required");
    assert_eq!(invalid.subject, "route backend.default");

    let mirror = v1::resource::Spec::Mirror(v1::Mirror {
        target_service: "backend".into(),
        mirror_service: "shadow".into(),
        ..Default::default()
    });
    let mismatch = wire(v1::ResourceKind::Route, "", mirror.clone());
    assert_field(
        &Resource::try_from(mismatch).expect_err("kind"),
        "kind",
        "is route but the spec is a mirror",
    );
    let unspecified = wire(v1::ResourceKind::Unspecified, "", mirror.clone());
    assert_field(
        &Resource::try_from(unspecified).expect_err("kind"),
        "kind",
        "required",
    );
    let mut unknown = wire(v1::ResourceKind::Mirror, "", mirror);
    unknown.kind = 99;
    assert_field(
        &Resource::try_from(unknown).expect_err("kind"),
        "kind",
        "unknown value 99",
    );
}

#[test]
fn spec_errors_name_the_wire_field() {
    let service = v1::Service {
        ports: vec![v1::ServicePort {
            port: 70_000,
            ..Default::default()
        }],
        virtual_addresses: vec!["10.0.0.1:80".into()],
        ..Default::default()
    };
    let spec = v1::resource::Spec::Service(service.clone());
    let invalid = Resource::try_from(wire(v1::ResourceKind::Service, "", spec)).expect_err("port");
    assert_field(&invalid, "spec.ports[0].port", "70000 is not a port");
    let addresses = v1::Service {
        ports: Vec::new(),
        ..service
    };
    let error = Service::try_from(addresses).expect_err("address");
    assert_eq!(
        error,
        FieldError::new(
            "virtual_addresses[0]",
            "\"10.0.0.1:80\" is not an IP address (without port)"
        )
    );

    let retry = v1::RetryPolicy {
        retry_on: vec![1, 0],
        ..Default::default()
    };
    let rule = v1::RouteRule {
        retry: Some(retry),
        ..Default::default()
    };
    let route = v1::Route {
        parent_service: "backend.default".into(),
        rules: vec![rule],
    };
    assert_eq!(
        Route::try_from(route).expect_err("retry_on").field,
        "rules[0].retry.retry_on[1]"
    );

    let path = v1::RouteMatch {
        path: Some(v1::PathMatch { kind: None }),
        ..Default::default()
    };
    let rule = v1::RouteRule {
        matches: vec![Default::default(), path],
        ..Default::default()
    };
    let route = v1::Route {
        parent_service: "backend.default".into(),
        rules: vec![rule],
    };
    assert_eq!(
        Route::try_from(route).expect_err("path").field,
        "rules[0].matches[1].path"
    );

    let key = v1::HashKey {
        source: Some(v1::hash_key::Source::SourceIp(false)),
    };
    let lb = v1::LoadBalancer {
        hash_key: Some(key),
        ..Default::default()
    };
    let policy = v1::BackendPolicy {
        service: "backend.default".into(),
        load_balancer: Some(lb),
        ..Default::default()
    };
    let error = BackendPolicy::try_from(policy).expect_err("source_ip");
    assert_eq!(error.field, "load_balancer.hash_key.source_ip");

    let rule = v1::AuthorizationRule {
        to_ports: vec![80],
        ..Default::default()
    };
    let policy = v1::AuthorizationPolicy {
        target_service: "backend.default".into(),
        rules: vec![rule],
        ..Default::default()
    };
    let error = AuthorizationPolicy::try_from(policy).expect_err("action");
    assert_eq!(error.field, "rules[0].action");
}

#[test]
fn wire_zero_means_not_set() {
    let policy = v1::AuthorizationPolicy {
        target_service: "backend.default".into(),
        ..Default::default()
    };
    let policy = AuthorizationPolicy::try_from(policy).expect("converts");
    assert_eq!(
        policy.default_action,
        AuthorizationAction::Deny,
        "fails closed"
    );

    let endpoint = v1::Endpoint {
        address: "::1".into(),
        port: 80,
        ..Default::default()
    };
    let endpoint = Endpoint::try_from(endpoint).expect("converts");
    assert_eq!(
        (endpoint.weight, endpoint.identity, endpoint.service_port),
        (1, None, None)
    );

    let limit = v1::RateLimit {
        target_service: "backend.default".into(),
        ..Default::default()
    };
    let limit = RateLimit::try_from(limit).expect("converts");
    assert_eq!(
        (limit.unit, limit.scope, limit.burst),
        (RateLimitUnit::Second, RateLimitScope::Global, None)
    );
}

#[test]
fn kinds_map_to_discovery_types() {
    for kind in ResourceKind::ALL {
        let wire = v1::ResourceKind::from(kind);
        assert_eq!(ResourceKind::try_from(wire), Ok(kind));
        assert_eq!(ResourceKind::from_name(kind.as_str()), Some(kind));
    }
    let endpoints = v1::ResourceType::from(ResourceKind::EndpointRegistration);
    assert_eq!(endpoints, v1::ResourceType::Endpoints);
    assert_eq!(
        v1::ResourceType::from(ResourceKind::Mirror),
        v1::ResourceType::Mirror
    );
}
