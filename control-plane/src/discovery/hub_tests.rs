//! A store written before `validate::unenforced` refused what shoal-proxy does not enforce survives a
//! restart: the control plane warns about each such resource and pushes only what the proxy enforces.

use shoal_proto::v1::{ResourceType as T, discovery_resource::Payload};

use super::catalog::key;
use super::hub::{Hub, warn_conflicting_hosts, warn_unenforced};
use crate::model::fixtures::{self, resource, route, route_with_unenforced};
use crate::model::{ResourceKind, Spec};
use crate::store::Store;

#[test]
fn stored_resources_no_longer_accepted_are_warned_about_and_not_pushed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.redb");
    {
        // What an older control plane accepted and stored.
        let store = Store::open(&path).expect("open");
        for service in fixtures::catalog() {
            let name = service.name.clone();
            let stored = resource(&name, "default", Spec::Service(service));
            store.create_unenforced(stored).expect("service");
        }
        let policies = (fixtures::every_kind().into_iter()).filter(|r| {
            matches!(
                r.kind(),
                ResourceKind::BackendPolicy | ResourceKind::AuthorizationPolicy
            )
        });
        for policy in policies {
            store.create_unenforced(policy).expect("policy");
        }
        let full = resource("backend", "default", Spec::Route(route_with_unenforced()));
        store.create_unenforced(full).expect("route");
    }

    // A restart: the store opens with all of it, and `apply` would refuse one of them today.
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.list(None, None).resources.len(), 7);
    let refused: Vec<String> = (warn_unenforced(&store).iter())
        .map(ToString::to_string)
        .collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(
        refused[0]
            .starts_with("route backend.default: spec.rules[0].backends[0].port: not enforced"),
        "{refused:#?}"
    );
    for port in [
        "rules[0].backends[0]",
        "rules[0].backends[1]",
        "rules[1].backends[0]",
    ] {
        assert!(
            refused[0].contains(&format!("spec.{port}.port: not enforced")),
            "{port}"
        );
    }

    let hub = Hub::new();
    hub.reload(&store);
    let name = "backend.default";
    let Payload::BackendPolicy(policy) = hub
        .entry(&key(T::BackendPolicy, name))
        .expect("the enforced part is pushed")
        .payload()
        .unwrap()
    else {
        panic!("a backend policy payload")
    };
    let outlier = policy
        .outlier_detection
        .as_ref()
        .expect("outlier detection pushed");
    assert_eq!(outlier.interval_ms, 10_000, "{policy:?}");
    assert!(outlier.success_rate.is_some(), "{policy:?}");
    let lb = policy.load_balancer.as_ref().expect("load balancer pushed");
    assert_eq!(
        lb.algorithm,
        shoal_proto::v1::LoadBalancingAlgorithm::RingHash as i32,
        "ring hashing is enforced now: pushed with its key"
    );
    assert!(lb.hash_key.is_some(), "{policy:?}");
    assert!(hub.entry(&key(T::AuthorizationPolicy, name)).is_some());
    let pushed = hub
        .entry(&key(T::Route, name))
        .expect("the route is pushed");
    let Payload::Route(pushed) = pushed.payload().unwrap() else {
        panic!("a route payload")
    };
    let mut kept = route();
    kept.rules[0].retry = Some(crate::model::fixtures::retry_policy());
    assert_eq!(
        pushed,
        shoal_proto::v1::Route::from(&kept),
        "pushed without its backend ports, with its retry policy"
    );
    assert!(
        pushed
            .rules
            .iter()
            .all(|r| r.backends.iter().all(|b| b.port == 0))
    );
}

/// A store written before `apply` refused services claiming one host keeps them: the control plane warns
/// about the later one, naming the host and the other service, and keeps serving.
#[test]
fn stored_services_claiming_one_host_are_warned_about() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("store.redb")).expect("open");
    for name in ["alpha", "beta", "gamma"] {
        let mut service = fixtures::service(name);
        if name != "gamma" {
            service.hosts.push("shop.example".to_owned());
        }
        let stored = resource(name, "default", Spec::Service(service));
        store.create_unchecked(stored).expect("service");
    }
    assert_eq!(
        warn_conflicting_hosts(&store),
        [
            "service beta.default answers to shop.example:8080, which service alpha.default already answers to: \
             a proxy holding both NACKs one; apply beta.default without that host (or name) or delete one of them"
        ]
    );
}
