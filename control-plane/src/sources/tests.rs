use std::collections::BTreeMap;

use shoal_proto::v1::{self, ResourceType as T, discovery_resource::Payload};

use super::*;
use crate::discovery::catalog::key;

pub(crate) fn endpoint(address: &str, port: u16) -> Endpoint {
    Endpoint {
        address: address.parse().unwrap(),
        port,
        weight: 1,
        zone: String::new(),
        identity: None,
        ready: true,
        service_port: None,
    }
}

/// The addresses (`ip:port`) of `service`'s `ENDPOINTS` in the hub; `None` when it has no entry.
pub(crate) fn endpoints(hub: &Hub, service: &str) -> Option<Vec<String>> {
    let entry = hub.entry(&key(T::Endpoints, service))?;
    let Payload::Endpoints(eps) = entry.payload().unwrap() else {
        panic!("not endpoints: {entry:?}")
    };
    Some(
        eps.endpoints
            .iter()
            .map(|e| format!("{}:{}", e.address, e.port))
            .collect(),
    )
}

fn binding(hub: &Hub, address: &str) -> Option<v1::AddressBinding> {
    match hub.entry(&key(T::Address, address))?.payload().unwrap() {
        Payload::Address(b) => Some(b),
        other => panic!("not an address binding: {other:?}"),
    }
}

#[test]
fn a_removed_service_drops_its_endpoints_and_bindings() {
    let hub = Hub::new();
    let mut publisher = Publisher::new(hub.clone(), "file");
    let mut services = BTreeMap::from([
        ("web.default".to_string(), vec![endpoint("10.0.0.1", 8080)]),
        ("db.default".to_string(), vec![endpoint("10.0.0.9", 5432)]),
    ]);
    publisher.replace_all(&services);
    assert_eq!(endpoints(&hub, "web.default").unwrap(), ["10.0.0.1:8080"]);
    let b = binding(&hub, "10.0.0.9:5432").unwrap();
    assert_eq!((b.service.as_str(), b.service_port), ("db.default", 5432));

    services.remove("db.default");
    publisher.replace_all(&services);
    assert_eq!(endpoints(&hub, "db.default"), None);
    assert!(binding(&hub, "10.0.0.9:5432").is_none());
    assert_eq!(endpoints(&hub, "web.default").unwrap(), ["10.0.0.1:8080"]);
    assert_eq!(publisher.published().len(), 1);
}

#[test]
fn a_list_of_many_endpoints_is_published_whole_and_updated_in_place() {
    let hub = Hub::new();
    let mut publisher = Publisher::new(hub.clone(), "file");
    let list = |addresses: &[&str]| addresses.iter().map(|a| endpoint(a, 80)).collect();
    publisher.set("web.default", list(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
    assert_eq!(
        endpoints(&hub, "web.default").unwrap(),
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    );
    publisher.set("web.default", list(&["10.0.0.3", "10.0.0.4"]));
    assert_eq!(
        endpoints(&hub, "web.default").unwrap(),
        ["10.0.0.3:80", "10.0.0.4:80"]
    );
    assert!(binding(&hub, "10.0.0.1:80").is_none());
    // A changed attribute (weight) is a changed endpoint.
    let mut heavier = list(&["10.0.0.3", "10.0.0.4"]);
    heavier[0].weight = 7;
    publisher.set("web.default", heavier);
    let entry = hub.entry(&key(T::Endpoints, "web.default")).unwrap();
    let Payload::Endpoints(eps) = entry.payload().unwrap() else {
        panic!()
    };
    assert_eq!(eps.endpoints[0].weight, 7);
    publisher.remove("web.default");
    assert_eq!(endpoints(&hub, "web.default"), None);
}

#[test]
fn sources_merge_with_each_other_and_unchanged_lists_are_not_republished() {
    let hub = Hub::new();
    let mut changes = hub.changes();
    let mut file = Publisher::new(hub.clone(), "file");
    let mut dns = Publisher::new(hub.clone(), "dns");
    file.set("web.default", vec![endpoint("10.0.0.1", 80)]);
    dns.set("web.default", vec![endpoint("10.0.0.2", 80)]);
    assert_eq!(
        endpoints(&hub, "web.default").unwrap(),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );
    while changes.try_recv().is_ok() {}
    file.set("web.default", vec![endpoint("10.0.0.1", 80)]);
    assert!(
        changes.try_recv().is_err(),
        "the same list is not pushed again"
    );

    // An empty list withdraws only this source's endpoints.
    dns.set("web.default", Vec::new());
    assert_eq!(endpoints(&hub, "web.default").unwrap(), ["10.0.0.1:80"]);
}

#[test]
fn contributions_bind_each_address_to_its_service_port() {
    let mut e = endpoint("10.0.0.1", 8080);
    e.service_port = Some(80);
    let c = contributions("web.default", &[e]);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].0, key(T::Endpoints, "web.default"));
    let Contribution::Whole(Payload::Address(b)) = &c[1].1 else {
        panic!("{c:?}")
    };
    assert_eq!((b.address.as_str(), b.service_port), ("10.0.0.1:8080", 80));
}
