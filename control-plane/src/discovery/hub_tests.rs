//! A store survives a restart: every stored kind is pushed again with every field; services claiming one
//! host (stored before `apply` refused them) are warned about.

use shoal_proto::v1::{ResourceType as T, discovery_resource::Payload};

use super::catalog::key;
use super::hub::{Hub, warn_conflicting_hosts};
use crate::model::Spec;
use crate::model::fixtures::{self, resource, route_full};
use crate::store::Store;

#[test]
fn every_stored_kind_is_pushed_after_a_restart_with_every_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.redb");
    {
        let store = Store::open(&path).expect("open");
        for stored in fixtures::every_kind() {
            store.create(stored).expect("stored");
        }
    }

    let store = Store::open(&path).expect("reopen");
    let hub = Hub::new();
    hub.reload(&store);
    let name = "backend.default";
    let Payload::BackendPolicy(policy) = hub
        .entry(&key(T::BackendPolicy, name))
        .expect("the backend policy is pushed")
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
    );
    assert!(lb.hash_key.is_some(), "{policy:?}");
    assert!(hub.entry(&key(T::AuthorizationPolicy, name)).is_some());
    let Payload::Route(pushed) = hub
        .entry(&key(T::Route, name))
        .expect("the route is pushed")
        .payload()
        .unwrap()
    else {
        panic!("a route payload")
    };
    assert_eq!(
        pushed,
        shoal_proto::v1::Route::from(&route_full()),
        "pushed with its backend ports and its retry policy"
    );
    assert!(
        (pushed.rules.iter())
            .flat_map(|r| &r.backends)
            .all(|b| b.port == 8080)
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
