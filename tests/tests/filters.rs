//! A route rule's filters and a scoped fault, on the calling side, through real proxies and
//! upstreams: header edits seen by the upstream (request) and by the client (response); a
//! redirect answered by the proxy with its status and `Location`, the upstream never called; a
//! fault scoped by a header hits only the requests carrying it. From the static state file, and
//! through `shoalctl apply` to a real control plane, which refuses a bad filter naming the field.

use http::Response;
use shoal_tests::backend::text_response;
use shoal_tests::client::{Body, H1Client, Resp, empty, request};
use shoal_tests::control_plane::{ControlPlaneBuilder, service_yaml};
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder};

/// An upstream answering 200 with two headers the client should not all see.
async fn upstream() -> HttpBackend {
    HttpBackend::respond(|_| {
        let mut resp: Response<Body> = text_response(200, "ok");
        let headers = resp.headers_mut();
        headers.insert("x-internal", "secret".parse().unwrap());
        headers.insert("x-resp-set", "upstream".parse().unwrap());
        resp
    })
    .await
}

async fn proxy(backend: &HttpBackend, extra: &str) -> Proxy {
    ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            "services:\n  - name: app\n    port: 80\n    hosts: [app.example]\n    endpoints:\n      - address: \"{}\"\n{extra}",
            backend.addr()
        ))
        .start()
        .await
}

async fn send(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();
    let mut req = request("GET", path, Some("app.example"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    client.send(req.body(empty()).unwrap()).await.unwrap()
}

const EDITS: &str = "        request_header_modifier:
          set: [{name: x-set, value: mesh}]
          add: [{name: x-add, value: two}]
          remove: [x-secret]
        response_header_modifier:
          set: [{name: x-resp-set, value: mesh}]
          add: [{name: x-resp-add, value: added}]
          remove: [x-internal]
";

#[tokio::test]
async fn header_edits_reach_the_upstream_and_the_client() {
    let backend = upstream().await;
    let proxy = proxy(
        &backend,
        &format!(
            "routes:\n  - name: app\n    service: app\n    rules:\n      - backends: [{{service: app}}]\n{EDITS}"
        ),
    )
    .await;
    let resp = send(
        &proxy,
        "/",
        &[("x-set", "client"), ("x-add", "one"), ("x-secret", "s")],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = backend.last();
    assert_eq!(seen.header_all("x-set"), ["mesh"], "set replaces");
    assert_eq!(seen.header_all("x-add"), ["one", "two"], "add appends");
    assert_eq!(seen.header("x-secret"), None, "remove removes");
    assert_eq!(resp.header("x-resp-set"), Some("mesh"));
    assert_eq!(resp.header("x-resp-add"), Some("added"));
    assert_eq!(resp.header("x-internal"), None);
    let config = proxy.config().await;
    let rule = &config["state"]["routes"][0][0];
    assert_eq!(
        rule["request_header_modifier"]["remove"],
        serde_json::json!(["x-secret"]),
        "{config}"
    );
}

#[tokio::test]
async fn a_redirect_is_answered_by_the_proxy_and_never_sent() {
    let backend = upstream().await;
    let proxy = proxy(
        &backend,
        "routes:\n  - name: app\n    service: app\n    rules:\n\
         \x20     - matches: [{path_prefix: /old}]\n\
         \x20       request_redirect: {path: {replace_prefix_match: /new}, status_code: 301}\n\
         \x20       response_header_modifier: {set: [{name: x-moved, value: \"yes\"}]}\n\
         \x20     - matches: [{path_exact: /elsewhere}]\n\
         \x20       request_redirect: {scheme: https, hostname: example.com, path: {replace_full_path: /x}}\n\
         \x20     - backends: [{service: app}]\n",
    )
    .await;
    let resp = send(&proxy, "/old/page?q=1", &[]).await;
    assert_eq!(resp.status, 301, "{}", resp.text());
    assert_eq!(
        resp.header("location"),
        Some("http://app.example/new/page?q=1")
    );
    assert_eq!(resp.header("x-moved"), Some("yes"), "response edits apply");
    assert_eq!(
        resp.header("shoal-proxy-error"),
        None,
        "an answer, not an error"
    );
    let resp = send(&proxy, "/elsewhere", &[]).await;
    assert_eq!(resp.status, 302);
    assert_eq!(resp.header("location"), Some("https://example.com/x"));
    assert_eq!(backend.count(), 0, "a redirect is never sent upstream");
    let resp = send(&proxy, "/other", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn a_header_scoped_fault_hits_only_matching_requests() {
    let backend = upstream().await;
    let proxy = proxy(
        &backend,
        "faults:\n  - service: app\n    abort: {percent: 100, http_status: 503}\n    matches: [{headers: {x-chaos: \"on\"}}]\n",
    )
    .await;
    for i in 0..20 {
        let resp = send(&proxy, "/", &[("x-chaos", "on")]).await;
        assert_eq!(
            (resp.status.as_u16(), resp.header("shoal-proxy-error")),
            (503, Some("fault-injected")),
            "request {i} with x-chaos: on"
        );
        let resp = send(&proxy, "/", &[("x-chaos", "off")]).await;
        assert_eq!(resp.status, 200, "request {i} with x-chaos: off");
    }
    assert_eq!(backend.count(), 20, "only the unscoped requests were sent");
}

fn route(rules: &str) -> String {
    format!("kind: Route\nmetadata: {{name: app}}\nspec:\n  parent_service: app\n  rules:\n{rules}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_applied_with_shoalctl_are_enforced_and_bad_ones_refused() {
    let backend = upstream().await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&service_yaml("app", 80, &[backend.addr()]))
        .await
        .success();
    cp.apply(&route(
        "  - matches: [{path: {prefix: /old}}]\n    request_redirect: {path: {replace_prefix_match: /new}, status_code: 308}\n\
         \x20 - request_header_modifier: {set: [{name: x-set, value: mesh}], remove: [x-secret]}\n\
         \x20   response_header_modifier: {remove: [x-internal]}\n",
    ))
    .await
    .success();
    cp.apply(
        "kind: FaultInjection\nmetadata: {name: app}\nspec:\n  target_service: app\n  abort: {percent: 100, grpc_status: 14}\n  matches: [{headers: [{name: x-chaos, exact: \"on\"}]}]\n",
    )
    .await
    .success();
    let proxy = cp.proxy_builder("filters-proxy").start().await;
    let addr = proxy.outbound();
    let get = |path: &'static str, headers: &'static [(&'static str, &'static str)]| async move {
        let mut client = H1Client::connect(addr).await.unwrap();
        let mut req = request("GET", path, Some("app"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        client.send(req.body(empty()).unwrap()).await.unwrap()
    };
    let resp = get("/old/a", &[]).await;
    assert_eq!(resp.status, 308, "{}", resp.text());
    assert_eq!(resp.header("location"), Some("http://app/new/a"));
    assert_eq!(backend.count(), 0);
    let resp = get("/", &[("x-set", "client"), ("x-secret", "s")]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-internal"), None);
    let seen = backend.last();
    assert_eq!(seen.header_all("x-set"), ["mesh"]);
    assert_eq!(seen.header("x-secret"), None);
    // Only `grpc_status` applied: plain HTTP gets the default 503, a gRPC call its code.
    let resp = get("/", &[("x-chaos", "on")]).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.header("shoal-proxy-error"), Some("fault-injected"));
    let resp = get(
        "/echo.Echo/Unary",
        &[("x-chaos", "on"), ("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("grpc-status"), Some("14"));
    assert_eq!(resp.header("shoal-proxy-error"), Some("fault-injected"));
    assert_eq!(
        backend.count(),
        1,
        "the scoped fault's requests were not sent"
    );

    // Refused at apply, naming the field.
    for (rules, field) in [
        (
            "  - backends: [{service: app}]\n    request_redirect: {status_code: 302}\n",
            "spec.rules[0].backends",
        ),
        (
            "  - request_redirect: {status_code: 200}\n",
            "spec.rules[0].request_redirect.status_code",
        ),
        (
            "  - request_header_modifier: {set: [{name: shoal-orig-proto, value: x}]}\n",
            "spec.rules[0].request_header_modifier.set[0].name",
        ),
        (
            "  - response_header_modifier: {remove: [Connection]}\n",
            "spec.rules[0].response_header_modifier.remove[0]",
        ),
    ] {
        let refused = cp.ctl(&["apply", "-f", "-"], Some(&route(rules))).await;
        assert_eq!(refused.code(), Some(1), "{refused:?}");
        assert!(
            refused.stderr.contains(field),
            "{field}: {}",
            refused.stderr
        );
    }
}
