//! Policy as custom resources: the real control plane in Kubernetes mode (`SHOAL_CP_KUBERNETES=true`) against
//! the fake API server, a real proxy and real backends. A Shoal `Route` object steers the proxy's traffic and
//! gets `Accepted=True`; refused objects get `Accepted=False` naming the field and change nothing; a refused
//! update keeps the last accepted version; a deleted object stops being served.

use serde_json::json;
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::kube_mesh::{KubeMesh, TOKEN, backend_service, shoal};

/// Services `web` (answering `web`), `web-v1` and `web-v2`, each with its backend.
async fn three_services(kube: &FakeKube) -> Vec<shoal_tests::HttpBackend> {
    vec![
        backend_service(kube, "web", "10.96.0.10").await,
        backend_service(kube, "web-v1", "10.96.0.11").await,
        backend_service(kube, "web-v2", "10.96.0.12").await,
    ]
}

fn split(v1: u32, v2: u32) -> serde_json::Value {
    json!({"parent_service": "web", "rules": [{"backends": [
        {"service": "web-v1", "weight": v1}, {"service": "web-v2", "weight": v2}
    ]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_resource_is_served_accepted_and_follows_its_updates() {
    let kube = FakeKube::start(TOKEN).await;
    let _backends = three_services(&kube).await;
    let mut mesh = KubeMesh::start(kube).await;
    mesh.wait_all("web", "web").await;

    // Half and half: both versions answer.
    mesh.kube.apply(shoal("Route", "web", split(50, 50)));
    let condition = mesh.wait_condition("Route", "web", "True", 1).await;
    assert_eq!(condition["reason"], "Accepted", "{condition}");
    let spread = mesh
        .wait_spread("web", 40, |s| {
            s.len() == 2 && s.contains_key("web-v1") && s.contains_key("web-v2")
        })
        .await;
    assert!(spread.values().all(|n| *n >= 5), "{spread:?}");

    // Everything to v2.
    mesh.kube.apply(shoal("Route", "web", split(0, 100)));
    mesh.wait_condition("Route", "web", "True", 2).await;
    mesh.wait_all("web", "web-v2").await;

    // A refused update (weights summing to 0): named, and the last accepted version stays.
    mesh.kube.apply(shoal("Route", "web", split(0, 0)));
    let refused = mesh.wait_condition("Route", "web", "False", 3).await;
    assert_eq!(refused["reason"], "Invalid", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("spec.rules[0].backends"), "{message}");
    assert!(message.contains("generation 2"), "{message}");
    let spread = mesh.spread("web", 20).await;
    assert_eq!(spread.keys().collect::<Vec<_>>(), ["web-v2"], "{spread:?}");

    // Deleted: the service's own endpoints again.
    mesh.kube.delete("Route", "default", "web");
    mesh.wait_all("web", "web").await;
    let config = mesh.proxy.config().await;
    assert!(
        (config["state"]["routes"].as_array().into_iter().flatten())
            .all(|rules| rules.as_array().is_some_and(|r| r.is_empty())),
        "{config}"
    );
    // Each status change was written once (no write loop on the status's own watch events).
    let patches = mesh.kube.status_patches("Route");
    assert_eq!(patches.len(), 3, "{patches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_resources_are_named_and_serve_nothing() {
    let kube = FakeKube::start(TOKEN).await;
    let _backends = three_services(&kube).await;
    // Present before the control plane starts: judged on its first list.
    kube.apply(shoal(
        "Route",
        "web",
        json!({"parent_service": "web", "rules": [{"backends": [{"service": "nowhere", "weight": 1}]}]}),
    ));
    let mut mesh = KubeMesh::start(kube).await;
    let refused = mesh.wait_condition("Route", "web", "False", 1).await;
    let message = refused["message"].as_str().unwrap();
    assert_eq!(refused["reason"], "Invalid", "{refused}");
    assert!(
        message.contains("spec.rules[0].backends[0].service"),
        "{message}"
    );
    assert!(message.contains("nothing of it is served"), "{message}");
    mesh.wait_all("web", "web").await;

    // A typo in a field name, and a kind the proxy does not enforce yet: named too.
    mesh.kube.apply(shoal(
        "Route",
        "typo",
        json!({"parent_service": "web-v1", "rulez": []}),
    ));
    let typo = mesh.wait_condition("Route", "typo", "False", 1).await;
    assert!(
        typo["message"].as_str().unwrap().contains("rulez"),
        "{typo}"
    );
    // A backend port its service lacks is refused like at `shoalctl apply`, naming the field.
    mesh.kube.apply(shoal(
        "Route",
        "ported",
        json!({"parent_service": "web-v2", "rules": [{"backends": [{"service": "web-v1", "port": 9999}]}]}),
    ));
    let ported = mesh.wait_condition("Route", "ported", "False", 1).await;
    let message = ported["message"].as_str().unwrap();
    assert!(
        message.contains("spec.rules[0].backends[0].port") && message.contains("has no port 9999"),
        "{ported}"
    );

    // The route's backend appears: the same object is now accepted and served, without a new generation.
    let _nowhere = backend_service(&mesh.kube, "nowhere", "10.96.0.13").await;
    mesh.wait_condition("Route", "web", "True", 1).await;
    mesh.wait_all("web", "nowhere").await;

    // The Admin API does not write policies in Kubernetes mode: kubectl does.
    let refused = (mesh.cp)
        .ctl(
            &["apply", "-f", "-"],
            Some(&shoal_tests::control_plane::route_yaml(
                "web",
                &[("web-v1", 1)],
            )),
        )
        .await;
    assert!(!refused.status.success(), "{refused:?}");
    assert!(refused.stderr.contains("use kubectl"), "{}", refused.stderr);

    // A second route for the same service is refused, naming the first.
    mesh.kube.apply(shoal("Route", "web-again", split(1, 1)));
    let second = mesh.wait_condition("Route", "web-again", "False", 1).await;
    assert!(
        second["message"]
            .as_str()
            .unwrap()
            .contains("spec.parent_service"),
        "{second}"
    );
    mesh.wait_all("web", "nowhere").await;
}
