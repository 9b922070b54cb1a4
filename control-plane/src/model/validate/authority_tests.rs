//! A service claiming another service's host or name on the same port is refused, naming the field and the
//! other service; an update of the service itself, another port or another host is not a conflict.

use shoal_proto::checks::conflict_cases;

use super::{FieldError, validate};
use crate::model::fixtures::resource;
use crate::model::{Protocol, Service, ServicePort, Spec};

/// Service `name` in `namespace` on `ports`, with `hosts`.
fn service(name: &str, namespace: &str, ports: &[u16], hosts: &[&str]) -> Service {
    let port = |&port: &u16| ServicePort {
        name: String::new(),
        port,
        target_port: None,
        protocol: Protocol::Http1,
        tls_mode: None,
    };
    Service {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        ports: ports.iter().map(port).collect(),
        virtual_addresses: Vec::new(),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        tls_mode: None,
    }
}

/// The errors of applying `service` to a store holding `existing`.
fn errors(existing: Vec<Service>, service: Service) -> Vec<FieldError> {
    let (name, namespace) = (service.name.clone(), service.namespace.clone());
    let applied = resource(&name, &namespace, Spec::Service(service));
    validate(&applied, &existing)
        .err()
        .map_or_else(Vec::new, |invalid| invalid.errors)
}

fn alpha() -> Service {
    service("alpha", "default", &[80], &["alpha.example"])
}

#[test]
fn a_host_another_service_has_is_refused_naming_the_host_and_the_service() {
    let beta = service("beta", "default", &[80], &["beta.example", "alpha.example"]);
    assert_eq!(
        errors(vec![alpha()], beta),
        [FieldError::new(
            "spec.hosts[1]",
            "host \"alpha.example\" is already used by service \"alpha\" (namespace default) on port 80; \
             a proxy routes each host and port to one service",
        )]
    );
}

#[test]
fn a_host_equal_to_another_services_name_forms_is_refused() {
    for host in [
        "alpha",
        "alpha.default",
        "alpha.default.svc",
        "alpha.default.svc.cluster.local",
    ] {
        let beta = service("beta", "default", &[80], &[host]);
        let found = errors(vec![alpha()], beta);
        assert_eq!(found.len(), 1, "{host}: {found:?}");
        assert_eq!(found[0].field, "spec.hosts[0]", "{host}");
        assert!(
            found[0].reason.starts_with(&format!(
                "host {host:?} is already used by service \"alpha\""
            )),
            "{host}: {found:?}"
        );
    }
}

#[test]
fn a_name_another_service_lists_as_host_is_refused_at_metadata_name() {
    // `beta` answers to `alpha.default.svc`; creating `alpha` would claim it too.
    let beta = service("beta", "default", &[80], &["alpha.default.svc"]);
    let found = errors(vec![beta], alpha());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "metadata.name");
    assert!(
        found[0].reason.starts_with(
            "host \"alpha.default.svc\" is already used by service \"beta\" (namespace default) on port 80"
        ),
        "{found:?}"
    );
}

#[test]
fn the_same_name_in_two_namespaces_on_one_port_is_refused() {
    // The bare name `web` is an authority of both: a proxy holding both could not route `web:8080`.
    let found = errors(
        vec![service("web", "shop", &[8080], &[])],
        service("web", "default", &[8080], &[]),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "metadata.name");
    assert!(
        found[0].reason.starts_with(
            "host \"web\" is already used by service \"web\" (namespace shop) on port 8080"
        ),
        "{found:?}"
    );
    // On different ports the authorities differ: accepted.
    let found = errors(
        vec![service("web", "shop", &[8080], &[])],
        service("web", "default", &[9090], &[]),
    );
    assert_eq!(found, []);
}

#[test]
fn a_shared_host_on_different_ports_is_accepted() {
    let beta = service("beta", "default", &[8080], &["alpha.example"]);
    assert_eq!(errors(vec![alpha()], beta), []);
    // A shared port among several is enough.
    let beta = service("beta", "default", &[8080, 80], &["alpha.example"]);
    let found = errors(vec![alpha()], beta);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]
            .reason
            .ends_with("on port 80; a proxy routes each host and port to one service")
    );
}

#[test]
fn an_update_of_the_same_service_is_not_a_conflict() {
    let mut changed = alpha();
    changed.hosts.push("alpha.test".to_owned());
    assert_eq!(errors(vec![alpha()], changed), []);
    assert_eq!(errors(vec![alpha()], alpha()), []);
}

#[test]
fn every_conflicting_field_is_named_once() {
    let gamma = service("gamma", "default", &[80], &["gamma.example"]);
    let beta = service(
        "beta",
        "default",
        &[80],
        &["alpha.example", "gamma.example", "beta.example"],
    );
    let found = errors(vec![alpha(), gamma], beta);
    let fields: Vec<(&str, bool)> = (found.iter())
        .map(|e| (e.field.as_str(), e.reason.contains("service \"gamma\"")))
        .collect();
    assert_eq!(fields, [("spec.hosts[0]", false), ("spec.hosts[1]", true)]);
}

/// proto/testdata/authority-conflicts.txt: what a proxy NACKs as a conflict is refused at `apply`, and nothing
/// else is.
#[test]
fn the_shared_conflict_cases_get_the_answers_a_proxy_gives() {
    for case in conflict_cases() {
        let held = Service::try_from(case.held.clone()).expect(case.line);
        let next = Service::try_from(case.next.clone()).expect(case.line);
        let found = errors(vec![held], next);
        let refused = (found.iter()).any(|e| e.reason.contains("is already used by service"));
        assert_eq!(refused, case.conflict, "{}: {found:?}", case.line);
        if !case.conflict {
            assert_eq!(found, [], "{}", case.line);
        }
    }
}

#[test]
fn a_virtual_address_another_service_has_on_the_same_port_is_refused() {
    let vip: std::net::IpAddr = "10.96.0.10".parse().unwrap();
    let mut alpha = alpha();
    alpha.virtual_addresses = vec![vip];
    let mut beta = service("beta", "default", &[80], &["beta.example"]);
    beta.virtual_addresses = vec![vip];
    assert_eq!(
        errors(vec![alpha.clone()], beta),
        [FieldError::new(
            "spec.virtual_addresses[0]",
            "address 10.96.0.10 is already used by service \"alpha\" (namespace default) on port 80; \
             a transparent proxy routes each address and port to one service",
        )]
    );
    // Another port of the same address is another destination; the service itself is no conflict.
    let mut gamma = service("gamma", "default", &[8080], &["gamma.example"]);
    gamma.virtual_addresses = vec![vip];
    assert_eq!(errors(vec![alpha.clone()], gamma), []);
    assert_eq!(errors(vec![alpha.clone()], alpha), []);
}
