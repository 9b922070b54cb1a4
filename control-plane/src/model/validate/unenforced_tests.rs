//! What shoal-proxy does not enforce yet is refused, one error per kind or field, naming it; what it
//! enforces is accepted; discovery is given only the enforced part of what an older store holds.

use std::borrow::Cow;
use std::time::Duration;

use super::tests::check;
use super::unenforced::{FIELDS, KINDS, enforced, refusals};
use super::validate;
use crate::model::fixtures::{self, catalog, resource, retry_policy, route, route_with_unenforced};
use crate::model::*;

/// The resource of `kind` in [`fixtures::every_kind`].
fn fixture(kind: ResourceKind) -> Resource {
    (fixtures::every_kind().into_iter())
        .find(|r| r.kind() == kind)
        .expect("every kind has a fixture")
}

#[test]
fn every_unenforced_kind_is_refused_naming_the_kind() {
    for refused in KINDS {
        let resource = fixture(refused.kind);
        let invalid = validate(&resource, &catalog()).expect_err(refused.yaml);
        assert_eq!(invalid.errors.len(), 1, "{invalid}");
        assert_eq!(invalid.errors[0].field, "kind", "{invalid}");
        let expected = format!(
            "{}: kind: {} is not enforced by shoal-proxy yet; remove this resource (",
            resource.key(),
            refused.yaml
        );
        assert!(invalid.to_string().starts_with(&expected), "{invalid}");
        assert!(
            invalid
                .to_string()
                .ends_with("; see docs/shoalctl.md#refused-until-enforced)"),
            "{invalid}"
        );
    }
    // Every kind is enforced now (the last, Mirror, since the mirror stage).
    assert!(KINDS.is_empty());
}

#[test]
fn a_mirror_is_accepted_now_the_proxy_enforces_it() {
    let mirror = fixture(ResourceKind::Mirror);
    assert_eq!(validate(&mirror, &catalog()), Ok(()));
}

#[test]
fn a_retry_policy_is_accepted_now_the_proxy_enforces_it() {
    let mut route = route();
    route.rules[0].retry = Some(retry_policy());
    route.rules[1].retry = Some(RetryPolicy::default());
    assert_eq!(check(Spec::Route(route)), Ok(()));
}

#[test]
fn a_backend_port_is_refused_naming_the_backend() {
    let mut route = route();
    route.rules[1].backends[0].port = Some(8080);
    let invalid = check(Spec::Route(route)).expect_err("port refused");
    assert_eq!(invalid.errors.len(), 1, "{invalid}");
    assert_eq!(invalid.errors[0].field, "spec.rules[1].backends[0].port");
    let reason = &invalid.errors[0].reason;
    assert!(
        reason.starts_with(
            "not enforced by shoal-proxy yet; remove it (the proxy calls a backend on"
        ),
        "{reason}"
    );
}

#[test]
fn a_route_without_backend_ports_is_accepted() {
    assert_eq!(check(Spec::Route(route())), Ok(()));
    let mut timeout_only = route();
    timeout_only.rules[1].timeout = Some(Duration::from_millis(1500));
    assert_eq!(check(Spec::Route(timeout_only)), Ok(()));
}

#[test]
fn structural_errors_inside_a_refused_field_are_left_out_the_others_kept() {
    let mut route = route();
    route.rules[0].backends[0].port = Some(0);
    route.rules[1].backends[0].weight = 0;
    let invalid = check(Spec::Route(route)).expect_err("refused and invalid");
    let fields: Vec<_> = invalid.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.rules[0].backends[0].port", "spec.rules[1].backends"]
    );
}

#[test]
fn every_unenforced_field_is_set_by_the_full_fixture_and_refused() {
    for field in FIELDS {
        let spec = match field.kind {
            ResourceKind::Route => Spec::Route(route_with_unenforced()),
            kind => fixture(kind).spec,
        };
        let refused = refusals(&spec);
        let found = (field.find)(&spec);
        assert!(!found.is_empty(), "{} not in the fixture", field.field);
        for path in found {
            assert!(
                refused.iter().any(|e| e.field == path),
                "{path}: {refused:?}"
            );
        }
    }
    let fields: Vec<_> = FIELDS.iter().map(|f| f.field).collect();
    assert_eq!(fields.len(), 1, "{fields:?}");
}

#[test]
fn what_the_proxy_enforces_of_every_kind_is_accepted() {
    for resource in fixtures::every_kind() {
        match enforced(&resource) {
            None => assert!(KINDS.iter().any(|k| k.kind == resource.kind())),
            Some(part) => assert_eq!(validate(&part, &catalog()), Ok(()), "{}", resource.key()),
        }
    }
}

#[test]
fn discovery_gets_only_the_enforced_part() {
    let mirror = fixture(ResourceKind::Mirror);
    assert!(matches!(enforced(&mirror), Some(Cow::Borrowed(_))));
    let policy = fixture(ResourceKind::BackendPolicy);
    let Spec::BackendPolicy(part) = &enforced(&policy).expect("enforced").spec else {
        panic!("a backend policy")
    };
    let outlier = part
        .outlier_detection
        .as_ref()
        .expect("outlier detection kept");
    assert!(outlier.interval.is_some() && outlier.success_rate.is_some());
    assert!(part.circuit_breaker.is_some());
    let limits = part.limits.as_ref().expect("limits kept");
    assert!(limits.max_connections.is_some() && limits.connect_timeout.is_some());
    let lb = part.load_balancer.as_ref().expect("load balancer kept");
    assert!(
        lb.algorithm == Some(LoadBalancingAlgorithm::RingHash) && lb.hash_key.is_some(),
        "ring hash kept: the proxy enforces it"
    );

    let full = resource("backend", "default", Spec::Route(route_with_unenforced()));
    let part = enforced(&full).expect("routes are enforced");
    assert!(matches!(part, Cow::Owned(_)));
    let mut kept = route();
    kept.rules[0].retry = Some(retry_policy());
    let expected = resource("backend", "default", Spec::Route(kept));
    assert_eq!(
        *part, expected,
        "backend ports stripped, the rest (retry too) kept"
    );

    let plain = resource("backend", "default", Spec::Route(route()));
    assert!(matches!(enforced(&plain), Some(Cow::Borrowed(_))));
    let authz = fixture(ResourceKind::AuthorizationPolicy);
    assert!(matches!(enforced(&authz), Some(Cow::Borrowed(_))));
}
