//! Fault injection from the static state file, on the calling side: aborts answer with the
//! configured status and never reach the backend, at the configured share; delays hold requests
//! for their duration, inside the route's timeout; a gRPC call aborted with a `grpc_status` gets it
//! in a trailers-only answer.

use std::time::{Duration, Instant};

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, H2Client, empty, request};
use shoal_tests::grpc::{self, GrpcBackend, msg};
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder};

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

#[tokio::test]
async fn aborts_answer_the_configured_status_at_the_configured_share() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let proxy = proxy(
        &backend,
        "faults:\n  - service: app\n    abort: {percent: 30, http_status: 503}\n",
    )
    .await;
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();
    let n = 1000;
    let mut aborted = 0;
    for _ in 0..n {
        let resp = client
            .send(
                request("GET", "/", Some("app.example"))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        match resp.status.as_u16() {
            200 => {}
            503 => {
                assert_eq!(resp.header("shoal-proxy-error"), Some("fault-injected"));
                aborted += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // 30 % of 1,000: the binomial's standard deviation is 14.5; ±60 is beyond 4 of them.
    assert!(
        (240..=360).contains(&aborted),
        "{aborted} of {n} aborted, 30 % configured"
    );
    assert_eq!(
        backend.count(),
        n - aborted,
        "aborted requests are never sent"
    );
    let config = proxy.config().await;
    assert_eq!(
        config["state"]["services"][0]["fault_injection"]["abort"],
        serde_json::json!({"percent": 30.0, "http_status": 503}),
        "{config}"
    );
}

#[tokio::test]
async fn delays_hold_requests_within_the_route_timeout() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let proxy = proxy(
        &backend,
        "routes:\n  - name: app\n    service: app\n    rules:\n      - backends: [{service: app}]\n        timeout: 1s\n\
         faults:\n  - service: app\n    delay: {percent: 100, duration: 300ms}\n",
    )
    .await;
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();
    let started = Instant::now();
    let resp = client
        .send(
            request("GET", "/", Some("app.example"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status, 200);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(900),
        "answered after {took:?}, a 300 ms delay configured"
    );

    // A delay longer than the route's timeout ends in the timeout.
    drop(client);
    drop(proxy);
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let proxy = self::proxy(
        &backend,
        "routes:\n  - name: app\n    service: app\n    rules:\n      - backends: [{service: app}]\n        timeout: 200ms\n\
         faults:\n  - service: app\n    delay: {percent: 100, duration: 2s}\n",
    )
    .await;
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();
    let resp = client
        .send(
            request("GET", "/", Some("app.example"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 504);
    assert_eq!(resp.header("shoal-proxy-error"), Some("response-timeout"));
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn grpc_aborts_answer_the_grpc_status_and_http_requests_the_http_status() {
    // `app` sets both statuses; `bare` only the gRPC one, so its HTTP requests get 503.
    let backend = GrpcBackend::start().await;
    let addr = backend.addr();
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            "services:\n  - name: app\n    port: 80\n    hosts: [app.example]\n    endpoints:\n      - address: \"{addr}\"\n\
             \x20 - name: bare\n    port: 80\n    hosts: [bare.example]\n    endpoints:\n      - address: \"{addr}\"\n\
             \x20 - name: http-only\n    port: 80\n    hosts: [http-only.example]\n    endpoints:\n      - address: \"{addr}\"\n\
             faults:\n  - service: app\n    abort: {{percent: 100, http_status: 429, grpc_status: 14}}\n\
             \x20 - service: bare\n    abort: {{percent: 100, grpc_status: 14}}\n\
             \x20 - service: http-only\n    abort: {{percent: 100, http_status: 403}}\n"
        ))
        .start()
        .await;

    // A real gRPC client sees UNAVAILABLE, with the proxy's reason.
    let mut client = grpc::client_with_origin(proxy.outbound(), "http://app.example").await;
    let status = client.unary(msg("hello")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("fault-injected: ")
            && status.message().contains("gRPC status 14"),
        "the reason, then what happened: {status:?}"
    );
    // A fault with only an HTTP status: what the gRPC spec makes of it (403: PERMISSION_DENIED).
    let mut http_only =
        grpc::client_with_origin(proxy.outbound(), "http://http-only.example").await;
    let status = http_only.unary(msg("hello")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().starts_with("fault-injected: "),
        "{status:?}"
    );

    // On the wire: HTTP 200, trailers-only (the status in the head, no body).
    let h2 = H2Client::connect(proxy.outbound()).await.unwrap();
    for host in ["app.example", "bare.example"] {
        let resp = h2
            .send(
                request("POST", &format!("http://{host}/echo.Echo/Unary"), None)
                    .header("content-type", "application/grpc+proto")
                    .header("te", "trailers")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{host}: gRPC errors ride a 200");
        assert_eq!(resp.header("grpc-status"), Some("14"), "{host}");
        assert!(
            resp.header("grpc-message")
                .is_some_and(|m| m.starts_with("fault-injected: ")),
            "{host}: {:?}",
            resp.header("grpc-message")
        );
        assert_eq!(resp.header("shoal-proxy-error"), Some("fault-injected"));
        assert!(resp.body.is_empty(), "{host}: trailers-only");
    }

    // Plain HTTP requests get the HTTP status; 503 where only the gRPC one is set.
    let mut h1 = H1Client::connect(proxy.outbound()).await.unwrap();
    for (host, status) in [("app.example", 429), ("bare.example", 503)] {
        let resp = h1
            .send(request("GET", "/", Some(host)).body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status, status, "{host}");
        assert_eq!(resp.header("shoal-proxy-error"), Some("fault-injected"));
        assert_eq!(resp.header("grpc-status"), None, "{host}");
    }

    assert!(
        backend.recorder().calls().is_empty(),
        "aborted calls are never sent"
    );
    let config = proxy.config().await;
    let services = config["state"]["services"].as_array().unwrap();
    let abort_of = |name: &str| {
        services
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["fault_injection"]["abort"].clone())
    };
    assert_eq!(
        abort_of("app"),
        Some(serde_json::json!({"percent": 100.0, "http_status": 429, "grpc_status": 14})),
        "{config}"
    );
    assert_eq!(
        abort_of("bare"),
        Some(serde_json::json!({"percent": 100.0, "http_status": 503, "grpc_status": 14})),
        "{config}"
    );
}
