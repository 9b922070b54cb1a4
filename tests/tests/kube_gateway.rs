//! Gateway API routes attached to a Service (GAMMA): the real control plane in Kubernetes mode against the fake
//! API server, a real proxy and real backends. An `HTTPRoute` with a header match and weights steers the
//! proxy's traffic and gets `Accepted=True` in `status.parents`; an unsupported filter (`URLRewrite`) is named in
//! the status and the last accepted version keeps serving; a Shoal `Route` for the same Service takes
//! precedence. The header modifier and redirect filters are enforced by the proxy, for a `GRPCRoute` too (on a
//! real gRPC upstream); an `HTTPRoute`'s and a `GRPCRoute`'s `RequestMirror` copy the requests to the shadow
//! Service while the client's answers come from the primary; Gateway API routes whose CRDs are installed only after the control
//! plane started are picked up then.

use prost::Message as _;
use serde_json::{Value, json};
use shoal_tests::client::{H1Client, H2Client, empty, full, request};
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::grpc::pb::EchoRequest;
use shoal_tests::grpc::{GrpcBackend, client_with_origin};
use shoal_tests::kube_mesh::{self, DEADLINE, KubeMesh, TOKEN, backend_service, shoal};
use shoal_tests::wait::{eventually, eventually_true};

fn http_route(name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
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
    let query = http_route(
        "query",
        json!([{"matches": [{"queryParams": [{"name": "v", "value": "1"}]}],
                "backendRefs": [{"name": "web-v1", "port": 80}]}]),
    );
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
    let route = http_route(
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

/// A Service `name` whose one port (80) speaks gRPC, served by the endpoint 127.0.0.1:`port`.
fn grpc_service(kube: &FakeKube, name: &str, ip: &str, port: u16) {
    kube.apply(json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [
            {"name": "grpc", "port": 80, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
        ]}
    }));
    kube.apply(json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true, "serving": true}}]
    }));
}

/// Shoal's `Accepted` condition of the `GRPCRoute` `default/name`, once it is `status` at `generation`.
async fn wait_grpc_parent(kube: &FakeKube, name: &str, status: &str, generation: u64) -> Value {
    let parent =
        kube_mesh::wait_route_parent(kube, "GRPCRoute", "default", name, status, generation).await;
    kube_mesh::accepted(&parent["conditions"]).expect("the Accepted condition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_route_header_filters_reach_the_grpc_upstream_and_its_trailers_only_answers() {
    let kube = FakeKube::start(TOKEN).await;
    let greeter = GrpcBackend::start().await;
    grpc_service(&kube, "greeter", "10.96.0.20", greeter.addr().port());
    kube.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "greeter", "namespace": "default"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "greeter"}],
            "rules": [{"matches": [{"method": {"service": "shoal.test.v1.Echo"}}],
                       "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "x-tenant", "value": "blue"}], "remove": ["x-debug"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                    "add": [{"name": "x-route", "value": "gateway"}]}}
            ]}]
        }
    }));
    let mesh = KubeMesh::start(kube).await;
    let condition = wait_grpc_parent(&mesh.kube, "greeter", "True", 1).await;
    assert_eq!(condition["reason"], "Accepted", "{condition}");
    let mut client = client_with_origin(mesh.proxy.outbound(), "http://greeter").await;
    let call = |message: &str, fail_code: i32| {
        let mut req = tonic::Request::new(EchoRequest {
            message: message.to_owned(),
            fail_code,
            ..EchoRequest::default()
        });
        req.metadata_mut().insert("x-debug", "yes".parse().unwrap());
        req
    };

    // Once the proxy has the route: the upstream sees the request edits, the client the response's.
    let answer = eventually(DEADLINE, "the GRPCRoute's edits", || {
        let mut client = client.clone();
        let req = call("hello", 0);
        async move {
            let answer = client.unary(req).await.map_err(|e| e.to_string())?;
            match answer.metadata().get("x-route") {
                Some(_) => Ok(answer),
                None => Err(format!("no x-route yet: {:?}", answer.metadata())),
            }
        }
    })
    .await;
    assert_eq!(answer.metadata().get("x-route").unwrap(), "gateway");
    assert_eq!(answer.get_ref().message, "hello");
    let seen = greeter.calls_of("Unary").pop().unwrap();
    assert_eq!(seen.metadata.get("x-tenant").unwrap(), "blue");
    assert_eq!(seen.metadata.get("x-debug"), None);

    // A failed call's answer is trailers-only (one header block with grpc-status): the added header is in it
    // and the status reaches the client intact.
    let status = client.unary(call("fail", 5)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(
        status.metadata().get("x-route").unwrap(),
        "gateway",
        "{status:?}"
    );
    let seen = greeter.calls_of("Unary").pop().unwrap();
    assert_eq!(seen.metadata.get("x-tenant").unwrap(), "blue");

    // On the wire: HTTP 200, trailers-only (grpc-status and the added header in the one head, no body, no
    // trailers).
    let message = EchoRequest {
        fail_code: 5,
        ..EchoRequest::default()
    }
    .encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend(u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend(message);
    let h2 = H2Client::connect(mesh.proxy.outbound()).await.unwrap();
    let resp = h2
        .send(
            request("POST", "http://greeter/shoal.test.v1.Echo/Unary", None)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(full(framed))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), Some("5"), "{:?}", resp.headers);
    assert_eq!(
        resp.header("x-route"),
        Some("gateway"),
        "{:?}",
        resp.headers
    );
    assert!(resp.body.is_empty() && resp.trailers.is_none(), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_route_request_mirror_copies_the_calls_to_the_shadow() {
    let kube = FakeKube::start(TOKEN).await;
    let greeter = GrpcBackend::start().await;
    let shadow = GrpcBackend::start().await;
    grpc_service(&kube, "greeter", "10.96.0.20", greeter.addr().port());
    grpc_service(&kube, "greeter-shadow", "10.96.0.21", shadow.addr().port());
    kube.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "greeter", "namespace": "default"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "greeter"}],
            "rules": [{"filters": [{"type": "RequestMirror", "requestMirror": {
                "backendRef": {"name": "greeter-shadow", "port": 80}, "percent": 100}}]}]
        }
    }));
    let mesh = KubeMesh::start(kube).await;
    let condition = wait_grpc_parent(&mesh.kube, "greeter", "True", 1).await;
    assert_eq!(condition["reason"], "Accepted", "{condition}");
    let mut client = client_with_origin(mesh.proxy.outbound(), "http://greeter").await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while shadow.calls_of("Unary").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no copy reached the shadow"
        );
        client.unary(EchoRequest::default()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Each call is answered by the primary and copied once to the shadow, marked as a copy.
    let counted = |backend: &GrpcBackend| {
        (backend.calls_of("Unary").iter())
            .filter(|c| c.metadata.get("x-batch").is_some_and(|v| v == "counted"))
            .count()
    };
    for i in 0..5 {
        let mut req = tonic::Request::new(EchoRequest {
            message: format!("m{i}"),
            ..EchoRequest::default()
        });
        req.metadata_mut()
            .insert("x-batch", "counted".parse().unwrap());
        let answer = client.unary(req).await.unwrap();
        assert_eq!(answer.get_ref().message, format!("m{i}"));
    }
    assert_eq!(counted(&greeter), 5);
    eventually_true(DEADLINE, "5 copies on the shadow", || {
        let copies = counted(&shadow);
        async move { copies == 5 }
    })
    .await;
    let copy = shadow.calls_of("Unary").pop().unwrap();
    assert_eq!(copy.metadata.get("shoal-mirror").unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_route_request_mirror_copies_to_the_shadow_while_the_primary_answers() {
    let kube = FakeKube::start(TOKEN).await;
    let _web = backend_service(&kube, "web", "10.96.0.10").await;
    let v1 = backend_service(&kube, "web-v1", "10.96.0.11").await;
    let shadow = backend_service(&kube, "web-shadow", "10.96.0.12").await;
    let mut route = http_route(
        "web",
        json!([{"backendRefs": [{"name": "web-v1", "port": 80}],
                "filters": [{"type": "RequestMirror", "requestMirror": {
                    "backendRef": {"name": "web-shadow", "port": 80}}}]}]),
    );
    kube.apply(route.clone());
    let mut mesh = KubeMesh::start(kube).await;
    let condition = wait_parent(&mesh.kube, "web", "True", 1).await;
    assert_eq!(condition["reason"], "Accepted", "{condition}");
    mesh.wait_all("web", "web-v1").await;
    // The mirror arrives with the route (one catalog source): copies start.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while shadow.count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no copy reached the shadow"
        );
        let _ = mesh.client.body("web").await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Every request is copied (no share set: 100 %); every answer is the primary's.
    let counted = |backend: &shoal_tests::HttpBackend| {
        (backend.requests().iter())
            .filter(|r| r.uri.path().starts_with("/counted/"))
            .count()
    };
    for i in 0..20 {
        let resp = mesh
            .client
            .get("web", &format!("/counted/{i}"))
            .await
            .unwrap();
        assert_eq!(resp.text(), "web-v1");
    }
    assert_eq!(counted(&v1), 20);
    eventually_true(DEADLINE, "20 copies on the shadow", || {
        let copies = counted(&shadow);
        async move { copies == 20 }
    })
    .await;
    let copy = shadow
        .requests()
        .into_iter()
        .find(|r| r.uri.path() == "/counted/0")
        .unwrap();
    assert_eq!(copy.header("shoal-mirror"), Some("1"));
    let config = mesh.proxy.config().await;
    assert!(
        config["state"].to_string().contains("web-shadow"),
        "{config}"
    );

    // A second rule without the mirror: a Shoal mirror is per service, so the route is refused naming the
    // filter, and neither it nor the mirror is served.
    route["spec"]["rules"] = json!([
        {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
         "backendRefs": [{"name": "web-v1", "port": 80}]},
        route["spec"]["rules"][0].clone()
    ]);
    mesh.kube.apply(route);
    let refused = wait_parent(&mesh.kube, "web", "False", 2).await;
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("spec.rules[1].filters[0].requestMirror")
            && message.contains("spec.rules[0] has no RequestMirror"),
        "{message}"
    );
    mesh.wait_all("web", "web").await;
    let before = shadow.count();
    for _ in 0..5 {
        assert_eq!(mesh.client.body("web").await.unwrap(), "web");
    }
    assert_eq!(
        shadow.count(),
        before,
        "no copies once the mirror is withdrawn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_routes_are_picked_up_once_their_crds_are_installed() {
    let kube = FakeKube::start(TOKEN).await;
    kube.uninstall("HTTPRoute");
    kube.uninstall("GRPCRoute");
    let _web = backend_service(&kube, "web", "10.96.0.10").await;
    let _v1 = backend_service(&kube, "web-v1", "10.96.0.11").await;
    // The policies sync without the Gateway API: the other kinds are served meanwhile.
    let mut mesh = KubeMesh::start(kube).await;
    let synced = mesh
        .cp
        .wait_for_log(DEADLINE, "the policies' sync", |l| {
            l.contains("kubernetes policies synced")
        })
        .await;
    assert!(
        synced.contains("httproutes.gateway.networking.k8s.io"),
        "{synced}"
    );
    mesh.wait_all("web", "web").await;
    let missing = "shoal_cp_kubernetes_crd_missing";
    let kind = ("kind", "httproutes.gateway.networking.k8s.io");
    assert_eq!(mesh.cp.metric(missing, &[kind]).await, 1.0);
    // Listed again with backoff; said once.
    eventually_true(DEADLINE, "a second list of httproutes", || {
        let lists = mesh.kube.requests("HTTPRoute").lists;
        async move { lists >= 2 }
    })
    .await;
    let said = |text: &str| {
        (mesh.cp.log_lines().iter())
            .filter(|l| l.contains(text) && l.contains("httproutes.gateway.networking.k8s.io"))
            .count()
    };
    assert_eq!(said("is not installed"), 1, "{}", mesh.cp.logs());

    // The CRD is installed and a route created: it is served.
    mesh.kube.install("HTTPRoute");
    let route = http_route(
        "web",
        json!([{"backendRefs": [{"name": "web-v1", "port": 80}]}]),
    );
    mesh.kube.apply(route);
    let condition = wait_parent(&mesh.kube, "web", "True", 1).await;
    assert_eq!(condition["reason"], "Accepted", "{condition}");
    mesh.wait_all("web", "web-v1").await;
    mesh.cp
        .wait_for_log(DEADLINE, "the CRD's arrival", |l| {
            l.contains("serves httproutes.gateway.networking.k8s.io now")
        })
        .await;
    assert_eq!(mesh.cp.metric(missing, &[kind]).await, 0.0);
    assert_eq!(
        mesh.cp
            .metric(missing, &[("kind", "grpcroutes.gateway.networking.k8s.io")])
            .await,
        1.0
    );
}
