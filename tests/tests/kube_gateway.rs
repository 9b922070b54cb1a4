//! Gateway API routes attached to a Service (GAMMA): the real control plane in Kubernetes mode against the fake
//! API server, a real proxy and real backends. An `HTTPRoute` with a header match and weights steers the
//! proxy's traffic and gets `Accepted=True` in `status.parents`; an unsupported filter (`URLRewrite`) is named in
//! the status and the last accepted version keeps serving; a Shoal `Route` for the same Service takes
//! precedence. The header modifier and redirect filters are enforced by the proxy.

use serde_json::{Value, json};
use shoal_tests::client::{H1Client, empty, request};
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::kube_mesh::{self, KubeMesh, TOKEN, backend_service, shoal};

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

/// Shoal's `Accepted` condition in the `HTTPRoute` `default/name`'s `status.parents`.
async fn wait_parent(kube: &FakeKube, name: &str, status: &str, generation: u64) -> Value {
    kube_mesh::wait_parent(kube, "default", name, status, generation).await
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
    route["spec"]["rules"][1]["filters"] =
        json!([{"type": "URLRewrite", "urlRewrite": {"hostname": "elsewhere"}}]);
    mesh.kube.apply(route.clone());
    let refused = wait_parent(&mesh.kube, "web", "False", 3).await;
    assert_eq!(refused["reason"], "UnsupportedValue", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("spec.rules[1].filters[0].type: URLRewrite"),
        "{message}"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_filters_edit_headers_and_answer_redirects() {
    let kube = FakeKube::start(TOKEN).await;
    let _web = backend_service(&kube, "web", "10.96.0.10").await;
    let v1 = backend_service(&kube, "web-v1", "10.96.0.11").await;
    let mut route = http_route(
        "web",
        json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {
                 "scheme": "https", "hostname": "new.example", "statusCode": 301,
                 "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
            {"backendRefs": [{"name": "web-v1", "port": 80}],
             "filters": [
                 {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                     "set": [{"name": "x-env", "value": "prod"}], "remove": ["x-debug"]}},
                 {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                     "add": [{"name": "x-route", "value": "gateway"}]}}
             ]}
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
    mesh.wait_all("web", "web-v1").await;

    // The request header edits reach the upstream; the response's come back to the client.
    let mut client = H1Client::connect(mesh.proxy.outbound()).await.unwrap();
    let req = request("GET", "/", Some("web"))
        .header("x-debug", "yes")
        .header("x-env", "dev")
        .body(empty())
        .unwrap();
    let resp = client.send(req).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-route"), Some("gateway"));
    assert_eq!(resp.text(), "web-v1");
    let seen = v1.last();
    assert_eq!(seen.header_all("x-env"), ["prod"]);
    assert_eq!(seen.header("x-debug"), None);

    // The redirect is answered by the proxy: nothing is sent upstream.
    let before = v1.count();
    let resp = mesh.client.get("web", "/old/page?q=1").await.unwrap();
    assert_eq!(resp.status, 301, "{:?}", resp.headers);
    assert_eq!(
        resp.header("location"),
        Some("https://new.example/new/page?q=1")
    );
    assert_eq!(v1.count(), before);
    let config = mesh.proxy.config().await;
    assert!(
        config["state"]["routes"]
            .to_string()
            .contains("new.example"),
        "{config}"
    );
}
