use std::net::IpAddr;

use super::*;
use crate::sources::kubernetes::translate::SliceEndpoint;

fn k(name: &str) -> ObjKey {
    ("shop".to_owned(), name.to_owned())
}

fn web() -> model::Service {
    model::Service {
        name: "web".into(),
        namespace: "shop".into(),
        ports: vec![model::ServicePort {
            name: "http".into(),
            port: 80,
            target_port: None,
            protocol: model::Protocol::Detect,
            tls_mode: None,
        }],
        virtual_addresses: Vec::new(),
        hosts: Vec::new(),
        tls_mode: None,
    }
}

fn slice(ips: &[(&str, &str)]) -> Slice {
    Slice {
        service: "web".into(),
        ports: vec![("http".into(), 8080)],
        endpoints: (ips.iter())
            .map(|(ip, pod)| SliceEndpoint {
                addresses: vec![ip.parse::<IpAddr>().unwrap()],
                ready: true,
                serving: true,
                terminating: false,
                zone: String::new(),
                pod: Some((*pod).to_owned()),
            })
            .collect(),
    }
}

fn addresses(cluster: &Cluster) -> Vec<String> {
    let (_, eps) = cluster.view(&k("web")).expect("web is served");
    eps.iter().map(|e| e.address.to_string()).collect()
}

fn synced_cluster() -> Cluster {
    let mut c = Cluster::default();
    c.service_event(Event::RelistDone);
    c.slice_event(Event::RelistDone);
    c.pod_event(Event::RelistDone);
    c
}

#[test]
fn nothing_is_synced_until_every_kind_listed_once() {
    let mut c = Cluster::default();
    c.service_event(Event::Relist);
    c.service_event(Event::Listed(k("web"), Some(web())));
    c.service_event(Event::RelistDone);
    c.slice_event(Event::RelistDone);
    assert!(!c.synced());
    c.pod_event(Event::RelistDone);
    assert!(c.synced());
}

#[test]
fn a_relist_keeps_the_old_objects_until_done_then_applies_the_difference() {
    let mut c = synced_cluster();
    c.service_event(Event::Apply(k("web"), Some(web())));
    let touched = c.slice_event(Event::Apply(
        k("web-a"),
        Some(slice(&[("10.0.0.1", "p1"), ("10.0.0.2", "p2")])),
    ));
    assert_eq!(touched, [k("web")].into());
    assert_eq!(addresses(&c), ["10.0.0.1", "10.0.0.2"]);

    // 410 Gone: a relist starts; until it is done, nothing changes.
    assert!(c.slice_event(Event::Relist).is_empty());
    let listed = Event::Listed(k("web-a"), Some(slice(&[("10.0.0.2", "p2")])));
    assert!(c.slice_event(listed).is_empty());
    assert_eq!(addresses(&c), ["10.0.0.1", "10.0.0.2"]);
    // Done: the difference applies (one endpoint left while the watch was away).
    assert_eq!(c.slice_event(Event::RelistDone), [k("web")].into());
    assert_eq!(addresses(&c), ["10.0.0.2"]);

    // A relist that finds everything unchanged touches nothing.
    c.slice_event(Event::Relist);
    c.slice_event(Event::Listed(
        k("web-a"),
        Some(slice(&[("10.0.0.2", "p2")])),
    ));
    assert!(c.slice_event(Event::RelistDone).is_empty());
    // One that does not find a slice any more removes it.
    c.slice_event(Event::Relist);
    assert_eq!(c.slice_event(Event::RelistDone), [k("web")].into());
    assert!(addresses(&c).is_empty());
}

#[test]
fn a_pod_change_touches_the_services_whose_slices_name_it() {
    let mut c = synced_cluster();
    c.service_event(Event::Apply(k("web"), Some(web())));
    c.slice_event(Event::Apply(k("web-a"), Some(slice(&[("10.0.0.1", "p1")]))));
    assert!(
        c.pod_event(Event::Apply(k("elsewhere"), Some("id".into())))
            .is_empty()
    );
    let touched = c.pod_event(Event::Apply(
        k("p1"),
        Some("spiffe://td/ns/shop/sa/web".into()),
    ));
    assert_eq!(touched, [k("web")].into());
    let (_, eps) = c.view(&k("web")).unwrap();
    assert_eq!(
        eps[0].identity.as_deref(),
        Some("spiffe://td/ns/shop/sa/web")
    );
    // The same again changes nothing.
    assert!(
        c.pod_event(Event::Apply(
            k("p1"),
            Some("spiffe://td/ns/shop/sa/web".into())
        ))
        .is_empty()
    );
    // Once no slice names the pod, its changes touch no service.
    c.slice_event(Event::Delete(k("web-a")));
    assert!(c.pod_event(Event::Delete(k("p1"))).is_empty());
}

#[test]
fn slices_wait_for_their_service_and_a_deleted_service_is_withdrawn() {
    let mut c = synced_cluster();
    let touched = c.slice_event(Event::Apply(k("web-a"), Some(slice(&[("10.0.0.1", "p1")]))));
    assert_eq!(touched, [k("web")].into());
    assert!(
        c.view(&k("web")).is_none(),
        "no Service yet: nothing to publish"
    );
    c.service_event(Event::Apply(k("web"), Some(web())));
    assert_eq!(addresses(&c), ["10.0.0.1"]);
    assert_eq!(c.service_event(Event::Delete(k("web"))), [k("web")].into());
    assert!(c.view(&k("web")).is_none());
    // A Service that turns into one Shoal does not serve (`None`) is withdrawn the same way.
    c.service_event(Event::Apply(k("web"), Some(web())));
    assert_eq!(
        c.service_event(Event::Apply(k("web"), None)),
        [k("web")].into()
    );
    assert!(c.view(&k("web")).is_none());
}

#[test]
fn a_pod_in_two_slices_and_two_services_is_counted_per_service() {
    let mut c = synced_cluster();
    c.service_event(Event::Apply(k("web"), Some(web())));
    // Two slices of `web` and one of `api` name p1.
    c.slice_event(Event::Apply(k("web-a"), Some(slice(&[("10.0.0.1", "p1")]))));
    c.slice_event(Event::Apply(k("web-b"), Some(slice(&[("10.0.0.2", "p1")]))));
    let api = Slice {
        service: "api".into(),
        ..slice(&[("10.0.0.3", "p1")])
    };
    c.slice_event(Event::Apply(k("api-a"), Some(api)));
    // Slices are joined in name order.
    assert_eq!(addresses(&c), ["10.0.0.1", "10.0.0.2"]);
    let touched = c.pod_event(Event::Apply(k("p1"), Some("id-1".into())));
    assert_eq!(touched, [k("api"), k("web")].into());
    // One of web's slices goes: p1 still backs both services.
    c.slice_event(Event::Delete(k("web-a")));
    assert_eq!(addresses(&c), ["10.0.0.2"]);
    let touched = c.pod_event(Event::Apply(k("p1"), Some("id-2".into())));
    assert_eq!(touched, [k("api"), k("web")].into());
    // The other goes: only api.
    c.slice_event(Event::Delete(k("web-b")));
    let touched = c.pod_event(Event::Apply(k("p1"), Some("id-3".into())));
    assert_eq!(touched, [k("api")].into());
}
