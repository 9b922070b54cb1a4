use serde_json::json;

use super::*;

fn kube<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

fn web_service() -> KubeService {
    kube(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "grpc-api", "port": 9000, "targetPort": 9090},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "admin", "port": 8081, "targetPort": 8081, "appProtocol": "kubernetes.io/h2c"}
            ]
        }
    }))
}

#[test]
fn a_service_keeps_its_tcp_ports_virtual_addresses_and_protocols() {
    let s = service(&web_service()).unwrap().unwrap();
    assert_eq!((s.name.as_str(), s.namespace.as_str()), ("web", "shop"));
    let ports: Vec<_> = (s.ports.iter())
        .map(|p| (p.name.as_str(), p.port, p.target_port, p.protocol))
        .collect();
    assert_eq!(
        ports,
        [
            ("http", 80, None, Protocol::Http1),
            ("grpc-api", 9000, Some(9090), Protocol::Grpc),
            ("admin", 8081, None, Protocol::Http2),
        ]
    );
    let vips: Vec<String> = s.virtual_addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(vips, ["10.96.0.10", "fd00::10"]);
}

#[test]
fn services_proxies_cannot_call_are_left_out() {
    let external: KubeService = kube(json!({
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com"}
    }));
    assert_eq!(service(&external), Ok(None));
    let udp_only: KubeService = kube(json!({
        "metadata": {"name": "dns", "namespace": "shop"},
        "spec": {"ports": [{"port": 53, "protocol": "UDP"}]}
    }));
    assert_eq!(service(&udp_only), Ok(None));
    let headless: KubeService = kube(json!({
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
    }));
    let headless = service(&headless).unwrap().unwrap();
    assert!(headless.virtual_addresses.is_empty());
    let bad: KubeService = kube(json!({
        "metadata": {"name": "x", "namespace": "shop"},
        "spec": {"ports": [{"port": 70000}]}
    }));
    assert!(service(&bad).unwrap_err().contains("spec.ports[0].port"));
    // What a stored Service may not be, a Kubernetes one may not be either (a proxy would refuse it).
    let invalid: KubeService = kube(json!({
        "metadata": {"name": "x", "namespace": "shop"},
        "spec": {"ports": [{"name": "Web_Port", "port": 80}]}
    }));
    let error = service(&invalid).unwrap_err();
    assert!(error.contains("spec.ports[0].name"), "{error}");
}

fn web_slice(name: &str, port: i32, endpoints: serde_json::Value) -> EndpointSlice {
    kube(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        "endpoints": endpoints
    }))
}

#[test]
fn slices_keep_conditions_zones_and_pods() {
    let s = slice(&web_slice(
        "web-abc",
        8080,
        json!([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "zone": "a",
             "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.0.0.3"]}
        ]),
    ))
    .unwrap();
    assert_eq!(s.service, "web");
    assert_eq!(s.ports, [("http".to_owned(), 8080)]);
    let e = &s.endpoints;
    assert_eq!(e[0].pod.as_deref(), Some("web-1"));
    assert_eq!(e[0].zone, "a");
    assert!(e[0].ready && e[0].serving && !e[0].terminating);
    assert!(!e[1].ready && e[1].serving && e[1].terminating);
    // Unset conditions: ready, as Kubernetes documents.
    assert!(e[2].ready && e[2].serving && !e[2].terminating);

    let mut fqdn = web_slice("web-fqdn", 80, json!([]));
    fqdn.address_type = "FQDN".to_owned();
    assert_eq!(slice(&fqdn), None);
    let mut unlabelled = web_slice("manual", 80, json!([]));
    unlabelled.metadata.labels = None;
    assert_eq!(slice(&unlabelled), None);
}

#[test]
fn a_pod_with_the_sidecar_gets_its_service_accounts_identity() {
    let td = TrustDomain::parse("mesh.example").unwrap();
    let pod = |init: serde_json::Value, sa: Option<&str>| -> Pod {
        kube(json!({
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"serviceAccountName": sa, "initContainers": init, "containers": [{"name": "app"}]}
        }))
    };
    let meshed = json!([{"name": "shoal-init"}, {"name": PROXY_CONTAINER}]);
    assert_eq!(
        pod_identity(&pod(meshed.clone(), Some("web")), &td).as_deref(),
        Some("spiffe://mesh.example/ns/shop/sa/web")
    );
    assert_eq!(
        pod_identity(&pod(meshed.clone(), None), &td).as_deref(),
        Some("spiffe://mesh.example/ns/shop/sa/default")
    );
    // Outside the mesh: called in plain text, so no identity.
    assert_eq!(pod_identity(&pod(json!([]), Some("web")), &td), None);
    // No certificate can name a service account that is not a DNS label.
    assert_eq!(pod_identity(&pod(meshed, Some("web.v2")), &td), None);
}

#[test]
fn endpoints_follow_named_ports_readiness_and_identity() {
    let svc = service(&web_service()).unwrap().unwrap();
    let a = slice(&web_slice(
        "web-a",
        8080,
        json!([
            {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "web-1"}, "zone": "a"},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false}}
        ]),
    ))
    .unwrap();
    // Another slice of the same service whose pods resolve the named port to another number.
    let b = slice(&web_slice(
        "web-b",
        8181,
        json!([{"addresses": ["10.0.0.3"]}]),
    ))
    .unwrap();
    let identity = |pod: &str| (pod == "web-1").then(|| "spiffe://td/ns/shop/sa/web".to_owned());
    let eps = endpoints(&svc, [&a, &b].into_iter(), identity);
    let seen: Vec<_> = (eps.iter())
        .map(|e| {
            (
                e.address.to_string(),
                e.port,
                e.service_port,
                e.ready,
                e.identity.is_some(),
                e.zone.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("10.0.0.1".into(), 8080, Some(80), true, true, "a"),
            ("10.0.0.2".into(), 8080, Some(80), false, false, ""),
            ("10.0.0.3".into(), 8181, Some(80), true, false, ""),
        ]
    );
}

#[test]
fn terminating_serving_endpoints_stand_in_only_when_none_is_ready() {
    let svc = service(&web_service()).unwrap().unwrap();
    let draining = json!({"addresses": ["10.0.0.9"], "conditions": {"ready": false, "serving": true, "terminating": true}});
    let gone = json!({"addresses": ["10.0.0.8"], "conditions": {"ready": false, "serving": false, "terminating": true}});
    let ready = json!({"addresses": ["10.0.0.1"]});
    let only_draining = slice(&web_slice("w", 8080, json!([draining, gone]))).unwrap();
    let eps = endpoints(&svc, [&only_draining].into_iter(), |_| None);
    let ready_of = |eps: &[Endpoint], ip: &str| {
        eps.iter()
            .find(|e| e.address.to_string() == ip)
            .unwrap()
            .ready
    };
    assert!(ready_of(&eps, "10.0.0.9"), "{eps:?}");
    assert!(!ready_of(&eps, "10.0.0.8"), "{eps:?}");
    let with_ready = slice(&web_slice("w", 8080, json!([draining, ready]))).unwrap();
    let eps = endpoints(&svc, [&with_ready].into_iter(), |_| None);
    assert!(!ready_of(&eps, "10.0.0.9"), "{eps:?}");
    assert!(ready_of(&eps, "10.0.0.1"), "{eps:?}");
}
