//! Gateway API routes attached to a Service (GAMMA): the real control plane in Kubernetes mode against the fake
//! API server, a real proxy and real backends. An `HTTPRoute` with a header match and weights steers the
//! proxy's traffic and gets `Accepted=True` in `status.parents`; an unsupported filter is named in the status and
//! nothing of that route is served; a Shoal `Route` for the same Service takes precedence.

use serde_json::{Value, json};
use shoal_tests::client::{H1Client, empty, request};
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::kube_mesh::{DEADLINE, KubeMesh, TOKEN, accepted, backend_service, shoal};
use shoal_tests::wait::eventually;

fn http_route(name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": null}],
            "rules": rules
        }
    })
}

/// The `Accepted` condition of Shoal's entry in the route's `status.parents`, once it has `status` at
/// `generation`.
async fn wait_parent(kube: &FakeKube, name: &str, status: &str, generation: u64) -> Value {
    eventually(
        DEADLINE,
        &format!("HTTPRoute {name}: Accepted={status} at generation {generation}"),
        || async {
            let object = kube.get("HTTPRoute", "default", name).unwrap();
            let parents = object["status"]["parents"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ours = parents
                .iter()
                .find(|p| p["controllerName"] == "shoal.io/mesh");
            let condition = ours.and_then(|p| accepted(&p["conditions"]));
            match condition {
                Some(c) if c["status"] == status && c["observedGeneration"] == generation => {
                    assert_eq!(ours.unwrap()["parentRef"]["name"], "web");
                    Ok(c)
                }
                _ => Err(object["status"].clone()),
            }
        },
    )
    .await
}

/// `GET /` to `web` with `x-canary: yes`: the answer's body.
async fn canary(mesh: &KubeMesh) -> String {
    let mut client = H1Client::connect(mesh.proxy.outbound()).await.unwrap();
    let req = request("GET", "/", Some("web"))
        .header("x-canary", "yes")
        .body(empty())
        .unwrap();
    client.send(req).await.unwrap().text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_route_matches_headers_splits_by_weight_and_reports_its_status() {
    let kube = FakeKube::start(TOKEN).await;
    let _web = backend_service(&kube, "web", "10.96.0.10").await;
    let _v1 = backend_service(&kube, "web-v1", "10.96.0.11").await;
    let _v2 = backend_service(&kube, "web-v2", "10.96.0.12").await;
    let _canary = backend_service(&kube, "web-canary", "10.96.0.13").await;
    let mut route = http_route(
        "web",
        json!([
            {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
             "backendRefs": [{"name": "web-canary", "port": 80}]},
            {"backendRefs": [{"name": "web-v1", "port": 80, "weight": 50},
                             {"name": "web-v2", "port": 80, "weight": 50}],
             "timeouts": {"request": "10s"}}
        ]),
    );
    route["spec"]["parentRefs"][0]
        .as_object_mut()
        .unwrap()
        .remove("port");
    kube.apply(route.clone());
    let mut mesh = KubeMesh::start(kube).await;
    let condition = wait_parent(&mesh.kube, "web", "True", 1).await;
    assert_eq!(condition["reason"], "Accepted", "{condition}");

    let spread = mesh
        .wait_spread("web", 40, |s| {
            s.len() == 2 && s.contains_key("web-v1") && s.contains_key("web-v2")
        })
        .await;
    assert!(spread.values().all(|n| *n >= 5), "{spread:?}");
    for _ in 0..5 {
        assert_eq!(canary(&mesh).await, "web-canary");
    }
    let config = mesh.proxy.config().await;
    assert!(
        config["state"]["routes"].to_string().contains("x-canary"),
        "{config}"
    );

    // Weights moved: all to v2.
    route["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(0);
    mesh.kube.apply(route.clone());
    wait_parent(&mesh.kube, "web", "True", 2).await;
    mesh.wait_all("web", "web-v2").await;

    // An unsupported filter: the route is refused naming the field; its last accepted version stays.
    route["spec"]["rules"][1]["filters"] = json!([{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "a", "value": "b"}]}}]);
    mesh.kube.apply(route.clone());
    let refused = wait_parent(&mesh.kube, "web", "False", 3).await;
    assert_eq!(refused["reason"], "UnsupportedValue", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("spec.rules[1].filters"), "{message}");
    mesh.wait_all("web", "web-v2").await;

    // A new route with a query parameter match: refused, and nothing of it is served.
    let mut query = http_route(
        "query",
        json!([{"matches": [{"queryParams": [{"name": "v", "value": "1"}]}],
                "backendRefs": [{"name": "web-v1", "port": 80}]}]),
    );
    query["spec"]["parentRefs"][0]
        .as_object_mut()
        .unwrap()
        .remove("port");
    mesh.kube.apply(query);
    let refused = wait_parent(&mesh.kube, "query", "False", 1).await;
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("spec.rules[0].matches[0].queryParams"),
        "{refused}"
    );
    mesh.wait_all("web", "web-v2").await;

    // A Shoal Route for the same Service takes precedence.
    mesh.kube.apply(shoal(
        "Route",
        "web",
        json!({"parent_service": "web", "rules": [{"backends": [{"service": "web-v1", "weight": 1}]}]}),
    ));
    mesh.wait_all("web", "web-v1").await;
    route["spec"]["rules"][1]
        .as_object_mut()
        .unwrap()
        .remove("filters");
    mesh.kube.apply(route);
    let conflicted = wait_parent(&mesh.kube, "web", "False", 4).await;
    assert_eq!(conflicted["reason"], "Conflicted", "{conflicted}");
    mesh.wait_all("web", "web-v1").await;
}
