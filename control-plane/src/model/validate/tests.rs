//! Every validation error names its field; valid resources of every kind pass. Routes and durations here, the
//! other kinds in `policy_tests`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::{Invalid, validate};
use crate::model::fixtures::{self, backend, catalog, resource, retry_policy, route, svc};
use crate::model::*;

/// Validates `spec` as resource `backend` in `default` against [`catalog`].
pub(super) fn check(spec: Spec) -> Result<(), Invalid> {
    validate(&resource("backend", "default", spec), &catalog())
}

/// Asserts that `spec` is rejected with an error at `field` whose reason contains `reason`.
#[track_caller]
pub(super) fn assert_rejects(spec: Spec, field: &str, reason: &str) {
    assert_error(check(spec), field, reason);
}

#[track_caller]
fn assert_error(result: Result<(), Invalid>, field: &str, reason: &str) {
    let invalid = result.expect_err("should be rejected");
    assert!(
        invalid
            .errors
            .iter()
            .any(|e| e.field == field && e.reason.contains(reason)),
        "expected `{field}: …{reason}…`, got: {invalid}"
    );
}

fn route_with(change: impl FnOnce(&mut Route)) -> Spec {
    let mut route = route();
    change(&mut route);
    Spec::Route(route)
}

#[test]
fn every_kind_of_valid_resource_with_every_field_passes() {
    for resource in fixtures::every_kind() {
        let result = validate(&resource, &catalog());
        assert_eq!(result, Ok(()), "{}", resource.key());
    }
}

#[test]
fn error_message_names_resource_and_field_path() {
    let spec = route_with(|r| r.rules[1].backends[0].weight = 0);
    let invalid = check(spec).expect_err("weights sum to 0");
    assert_eq!(
        invalid.to_string(),
        "route backend.default: spec.rules[1].backends: weights sum to 0"
    );
}

#[test]
fn reports_every_error_at_once() {
    let spec = route_with(|r| {
        r.rules[0].matches[0] = RouteMatch::default();
        r.rules[0].timeout = Some(Duration::from_secs(25 * 3600));
    });
    let invalid = check(spec).expect_err("two errors");
    let fields: Vec<_> = invalid.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.rules[0].matches[0]", "spec.rules[0].timeout_ms"]
    );
}

#[test]
fn metadata_names_must_be_dns_labels() {
    let mut bad = fixtures::service_resource("backend");
    bad.metadata.name = "Backend_1".to_owned();
    bad.metadata.namespace = String::new();
    let invalid = validate(&bad, &catalog()).expect_err("bad names");
    let fields: Vec<_> = invalid.errors.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"metadata.name"), "{invalid}");
    assert!(fields.contains(&"metadata.namespace"), "{invalid}");
}

#[test]
fn a_route_of_a_missing_parent_service_is_refused_naming_the_field() {
    let spec = route_with(|r| r.parent = svc("nope"));
    assert_rejects(
        spec,
        "spec.parent_service",
        "unknown service nope.default; create it first",
    );
}

#[test]
fn route_errors_name_their_field() {
    let empty_match = route_with(|r| r.rules[0].matches[0] = RouteMatch::default());
    assert_rejects(empty_match, "spec.rules[0].matches[0]", "empty match");
    assert_rejects(
        route_with(|r| r.rules.clear()),
        "spec.rules",
        "at least one rule",
    );
    let unknown = route_with(|r| r.rules[0].backends[1] = backend("nope", 10));
    assert_rejects(
        unknown,
        "spec.rules[0].backends[1].service",
        "unknown service nope.default",
    );
    // A backend's port must be one of the backend service's.
    let no_port = route_with(|r| r.rules[0].backends[0].port = Some(9090));
    assert_rejects(
        no_port,
        "spec.rules[0].backends[0].port",
        "has no port 9090",
    );
    let zero_port = route_with(|r| r.rules[0].backends[0].port = Some(0));
    assert_rejects(zero_port, "spec.rules[0].backends[0].port", "port 0");
    let ported = route_with(|r| r.rules[0].backends[0].port = Some(8080));
    assert_eq!(check(ported), Ok(()), "a port of the backend service");
    let heavy = route_with(|r| r.rules[0].backends[0].weight = 2_000_000);
    assert_rejects(heavy, "spec.rules[0].backends[0].weight", "maximum");
    let regex = route_with(|r| r.rules[0].matches[0].path = Some(PathMatch::Regex("(/a".into())));
    assert_rejects(
        regex,
        "spec.rules[0].matches[0].path.regex",
        "invalid regex \"(/a\"",
    );
    let header =
        route_with(|r| r.rules[0].matches[0].headers[0].value = ValueMatch::Regex("[".into()));
    assert_rejects(
        header,
        "spec.rules[0].matches[0].headers[0].regex",
        "invalid regex",
    );
    let header_name = route_with(|r| r.rules[0].matches[0].headers[0].name = "x y".into());
    assert_rejects(
        header_name,
        "spec.rules[0].matches[0].headers[0].name",
        "HTTP token",
    );
    let prefix = route_with(|r| r.rules[0].matches[0].path = Some(PathMatch::Prefix("api".into())));
    assert_rejects(
        prefix,
        "spec.rules[0].matches[0].path.prefix",
        "must start with `/`",
    );
    let method = route_with(|r| r.rules[0].matches[0].method = Some("GE T".into()));
    assert_rejects(method, "spec.rules[0].matches[0].method", "HTTP token");
    let twice = route_with(|r| r.rules[1].name = "canary".into());
    assert_rejects(twice, "spec.rules[1].name", "used by two rules");
}

#[test]
fn durations_must_be_positive_and_sane() {
    let long = route_with(|r| r.rules[0].timeout = Some(Duration::from_secs(86_401)));
    assert_rejects(
        long,
        "spec.rules[0].timeout_ms",
        "86401000 ms is longer than the maximum",
    );
    let zero = route_with(|r| r.rules[0].timeout = Some(Duration::ZERO));
    assert_rejects(zero, "spec.rules[0].timeout_ms", "must be positive");
    let mut fault = fault();
    fault.delay.as_mut().expect("delay").duration = Duration::ZERO;
    assert_rejects(
        Spec::FaultInjection(fault),
        "spec.delay.duration_ms",
        "must be positive",
    );
    let mut registration = registration();
    registration.ttl = Some(Duration::from_secs(90_000));
    let spec = Spec::EndpointRegistration(registration);
    assert_rejects(spec, "spec.ttl_seconds", "90000 s is longer");
}

#[test]
fn retry_errors_name_their_field() {
    // Retries are refused until the proxy enforces them; their structural checks stay.
    let retry = |change: fn(&mut RetryPolicy)| {
        route_with(|r| {
            let mut policy = retry_policy();
            change(&mut policy);
            r.rules[0].retry = Some(policy);
        })
    };
    assert_eq!(check(retry(|_| {})), Ok(()));
    assert_rejects(
        retry(|p| p.attempts = Some(0)),
        "spec.rules[0].retry.attempts",
        "1–10",
    );
    assert_rejects(
        retry(|p| p.attempts = Some(11)),
        "spec.rules[0].retry.attempts",
        "1–10",
    );
    let per_try = retry(|p| p.per_try_timeout = Some(Duration::from_secs(3)));
    let field = "spec.rules[0].retry.per_try_timeout_ms";
    assert_rejects(per_try, field, "longer than the rule's timeout_ms, 2000 ms");
    let backoff = retry(|p| p.backoff_base = Some(Duration::from_secs(1)));
    assert_rejects(
        backoff,
        "spec.rules[0].retry.backoff_base_ms",
        "more than the backoff maximum",
    );
    let ratio = retry(|p| p.budget_ratio = Some(1.5));
    assert_rejects(ratio, "spec.rules[0].retry.budget_ratio", "not a ratio");
    let status = retry(|p| p.retryable_status_codes = vec![503, 600]);
    assert_rejects(
        status,
        "spec.rules[0].retry.retryable_status_codes[1]",
        "600",
    );
}

pub(super) fn registration() -> EndpointRegistration {
    EndpointRegistration {
        service: svc("backend"),
        address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        port: 8080,
        weight: 1,
        zone: String::new(),
        ttl: Some(Duration::from_secs(30)),
        identity: None,
        service_port: None,
    }
}

pub(super) fn fault() -> FaultInjection {
    FaultInjection {
        target: svc("backend"),
        delay: Some(FaultDelay {
            percent: 10.0,
            duration: Duration::from_millis(100),
        }),
        abort: None,
        matches: Vec::new(),
    }
}

#[test]
fn case_insensitive_regexes_are_accepted() {
    let spec = route_with(|r| {
        let value = ValueMatch::Regex("(?i)^bearer \\w+$".into());
        r.rules[0].matches[0].headers[0].value = value;
    });
    assert_eq!(check(spec), Ok(()));
}
