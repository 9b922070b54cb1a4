//! Every answer the proxy makes itself to a gRPC call is a gRPC status (docs/errors.md, "gRPC
//! calls"): a real tonic client through real proxies against misbehaving upstreams — an upstream
//! that is down (UNAVAILABLE), one that stalls past the route's timeout (DEADLINE_EXCEEDED), an
//! inbound authorization denial across the mesh (PERMISSION_DENIED), a backend's connection caps
//! (UNAVAILABLE), a strict port reached in plain text (UNAUTHENTICATED) — each naming its reason in
//! the status message; the calling proxy reading the endpoint's proxy's gRPC answer as the error it
//! stands for (metrics, retries, the circuit breaker, the `mtls-required` explanation); and plain
//! HTTP requests answered as before.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, H2Client, empty, request};
use shoal_tests::grpc::{self, GrpcBackend, msg};
use shoal_tests::pki::TestCa;
use shoal_tests::process::TempDir;
use shoal_tests::proxy::app_service_state;
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, closed_port_addr, eventually};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

/// A proxy routing `app.example` (service `app`) to `endpoints`, with more state YAML after the
/// service (`extra`: routes, backend policies) and the service's extra fields (`fields`).
async fn outbound(endpoints: &[SocketAddr], fields: &str, extra: &str) -> Proxy {
    ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!("{}{extra}", app_service_state(fields, endpoints)))
        .start()
        .await
}

/// A gRPC request head as a gRPC client sends it, for looking at the answer on the wire.
fn grpc_call(uri: &str) -> http::Request<shoal_tests::client::Body> {
    request("POST", uri, None)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(empty())
        .unwrap()
}

/// `grpc-message` percent-decoded (the gRPC spec's encoding).
fn decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&value[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn an_upstream_that_is_down_is_unavailable_naming_the_reason() {
    let dead = closed_port_addr();
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .inbound_explicit(dead)
        .state(&format!(
            "services:\n  - name: app\n    port: 80\n    hosts: [app.example]\n    endpoints:\n      - address: \"{dead}\"\n"
        ))
        .start()
        .await;

    // A real gRPC client, on either side of the proxy: UNAVAILABLE, and the reason in the message.
    for (entry, origin) in [
        (proxy.outbound(), "http://app.example".to_string()),
        (proxy.inbound(), format!("http://{}", proxy.inbound())),
    ] {
        let mut client = grpc::client_with_origin(entry, &origin).await;
        let status = client.unary(msg("hello")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().starts_with("upstream-connect-refused: ")
                && status.message().contains(&dead.to_string()),
            "the reason and the endpoint: {status:?}"
        );
        assert_eq!(
            status
                .metadata()
                .get("shoal-proxy-error")
                .map(|v| v.to_str().unwrap()),
            Some("upstream-connect-refused")
        );
    }

    // On the wire: trailers-only, with the headers every proxy answer carries.
    let h2 = H2Client::connect(proxy.outbound()).await.unwrap();
    let resp = h2
        .send(grpc_call("http://app.example/shoal.test.v1.Echo/Unary"))
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "gRPC errors ride a 200");
    assert_eq!(resp.header("content-type"), Some("application/grpc"));
    assert_eq!(resp.header("grpc-status"), Some("14"));
    let message = decoded(resp.header("grpc-message").unwrap());
    assert!(
        message.starts_with("upstream-connect-refused: "),
        "{message}"
    );
    assert_eq!(
        resp.header("shoal-proxy-error"),
        Some("upstream-connect-refused")
    );
    assert!(resp.header("x-request-id").is_some());
    assert!(resp.body.is_empty(), "trailers-only: no body");

    // Plain HTTP, HTTP/2 or HTTP/1.1, is answered as before.
    let resp = h2
        .send(
            request("POST", "http://app.example/api", None)
                .header("content-type", "application/json")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(resp.header("grpc-status"), None);
    let mut h1 = H1Client::connect(proxy.outbound()).await.unwrap();
    let resp = h1.get("app.example", "/").await.unwrap();
    assert_eq!(resp.status, 502);
    assert!(resp.text().contains("upstream-connect-refused"));

    // Counted as the 502 it stands for, gRPC or not: error-rate queries see the gRPC calls.
    proxy
        .wait_metric(
            "shoal_requests_total",
            &[
                ("direction", "outbound"),
                ("service", "app.default"),
                ("status_code", "502"),
                ("reason", "upstream-connect-refused"),
            ],
            4.0,
        )
        .await;
    let inbound = proxy
        .metric(
            "shoal_requests_total",
            &[("direction", "inbound"), ("status_code", "502")],
        )
        .await;
    assert_eq!(inbound, 1.0, "{}", proxy.metrics().await);
}

#[tokio::test]
async fn an_upstream_stalling_past_the_route_timeout_is_deadline_exceeded() {
    let backend = GrpcBackend::start().await;
    let proxy = outbound(
        &[backend.addr()],
        "",
        "routes:\n  - name: app\n    service: app\n    rules:\n      - backends: [{service: app}]\n        timeout: 300ms\n",
    )
    .await;
    let mut client = grpc::client_with_origin(proxy.outbound(), "http://app.example").await;
    let started = Instant::now();
    let status = client.hang(msg("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().starts_with("response-timeout: "),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the route's timeout ended it"
    );
    assert_eq!(backend.calls_of("Hang").len(), 1, "it was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_backends_connection_caps_a_call_is_unavailable() {
    // An HTTP/1.1 upstream (one request per connection) that holds every request.
    const DELAY: Duration = Duration::from_secs(3);
    let slow = HttpBackend::start(|_| async {
        tokio::time::sleep(DELAY).await;
        text_response(200, "slow")
    })
    .await;
    let proxy = outbound(
        &[slow.addr()],
        "    protocol: http1\n",
        "backend_policies:\n  - service: app\n    limits: {max_connections: 1, max_pending_requests: 1, connect_timeout: 10s}\n",
    )
    .await;
    let client = grpc::client_with_origin(proxy.outbound(), "http://app.example").await;
    // One call takes the connection, one waits for it.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.unary(msg("held")).await })
        })
        .collect();
    eventually(WAIT, "one call upstream, one pending", || async {
        let usage =
            proxy.config().await["state"]["services"][0]["backend_policy"]["connections"].clone();
        if slow.heads() == 1 && usage["requests_pending"] == 1 {
            Ok(())
        } else {
            Err(format!("heads {}, {usage}", slow.heads()))
        }
    })
    .await;
    let started = Instant::now();
    let status = client.clone().unary(msg("third")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("backend-overloaded: ")
            && status.message().contains("max_pending_requests"),
        "{status:?}"
    );
    assert!(started.elapsed() < DELAY / 2, "refused at once");
    for h in held {
        h.abort();
    }
}

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const STRANGER: &str = "spiffe://cluster.local/ns/shop/sa/stranger";
const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

#[tokio::test]
async fn an_inbound_authorization_denial_is_permission_denied_across_the_mesh() {
    let dir = TempDir::new("grpc-authz").unwrap();
    let ca = TestCa::new("mesh");
    let app = GrpcBackend::start().await;
    let server = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .env("SHOAL_SERVICE_NAME", "web")
        .state(&format!(
            "services:\n  - name: web\n    port: 80\n    target_port: {}\n\
             authorization:\n  - service: web\n    default_action: deny\n    rules:\n      - name: frontend\n        action: allow\n        from: [{{exact: \"{FRONTEND}\"}}]\n",
            app.addr().port()
        ))
        .identity(&ca.workload(WEB).write(dir.path(), "web", &[ca.root_pem()]))
        .start()
        .await;
    let mut callers = Vec::new();
    for (id, name) in [(FRONTEND, "frontend"), (STRANGER, "stranger")] {
        let caller = ProxyBuilder::new()
            .outbound_explicit()
            .state(&format!(
                "services:\n  - name: web\n    port: 80\n    endpoints:\n      - address: \"{}\"\n        identity: {WEB}\n",
                server.inbound()
            ))
            .identity(&ca.workload(id).write(dir.path(), name, &[ca.root_pem()]))
            .start()
            .await;
        callers.push(caller);
    }
    let (frontend, stranger) = (&callers[0], &callers[1]);

    let mut allowed = grpc::client_with_origin(frontend.outbound(), "http://web").await;
    let reply = allowed.unary(msg("hello")).await;
    assert!(reply.is_ok(), "{reply:?}\n{}", server.logs());

    // The server's proxy answers the stranger's call itself, and the stranger's proxy passes
    // its gRPC answer on: PERMISSION_DENIED naming the policy and the deciding rule.
    let mut denied = grpc::client_with_origin(stranger.outbound(), "http://web").await;
    let status = denied.unary(msg("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().starts_with("unauthorized: ")
            && status.message().contains("web.default")
            && status.message().contains("default"),
        "{status:?}"
    );
    // A plain-text caller straight to the server's inbound listener, the same.
    let mut plain =
        grpc::client_with_origin(server.inbound(), &format!("http://{}", server.inbound())).await;
    let status = plain.unary(msg("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        app.calls_of("Unary").len(),
        1,
        "denied calls never reach the app"
    );

    // Both proxies count the denial as the 403 it stands for, not the 200 on the wire.
    server
        .wait_metric(
            "shoal_requests_total",
            &[
                ("direction", "inbound"),
                ("status_code", "403"),
                ("reason", "unauthorized"),
            ],
            2.0,
        )
        .await;
    stranger
        .wait_metric(
            "shoal_requests_total",
            &[
                ("direction", "outbound"),
                ("service", "web.default"),
                ("status_code", "403"),
                ("reason", ""),
            ],
            1.0,
        )
        .await;
}

/// Calls `app.example` through `proxy` `n` times; every call must succeed.
async fn all_succeed(proxy: &Proxy, n: usize) {
    let mut client = grpc::client_with_origin(proxy.outbound(), "http://app.example").await;
    for i in 0..n {
        let reply = client.unary(msg(&format!("call {i}"))).await;
        assert!(reply.is_ok(), "call {i}: {reply:?}\n{}", proxy.logs());
    }
}

#[tokio::test]
async fn a_retry_over_a_proxy_made_grpc_error_recovers() {
    let backend = GrpcBackend::start().await;
    // An endpoint whose own proxy is up but its app down: that proxy answers every call
    // UNAVAILABLE (`upstream-connect-refused`, HTTP 502 before).
    let broken = ProxyBuilder::new()
        .inbound_explicit(closed_port_addr())
        .start()
        .await;
    let round_robin =
        "backend_policies:\n  - service: app\n    load_balancer: {algorithm: round_robin}\n";
    let rule = |retry: &str| {
        format!(
            "{round_robin}routes:\n  - name: app\n    service: app\n    rules:\n      - backends: [{{service: app}}]\n        retry: {{attempts: 2, {retry}, backoff_base: 5ms, backoff_max: 10ms}}\n"
        )
    };
    // The gRPC condition, and the HTTP one that retried the proxy's 502 before (a gRPC call is a
    // POST: retried on an HTTP condition only when the rule opts in).
    for retry_on in [
        "retry_on: [grpc_unavailable]",
        "retry_on: [gateway_error], retry_non_idempotent: true",
    ] {
        let proxy = outbound(&[broken.inbound(), backend.addr()], "", &rule(retry_on)).await;
        all_succeed(&proxy, 4).await;
        let labels = [("service", "app.default"), ("route", "app")];
        let retries = proxy.metric("shoal_retries_total", &labels).await;
        assert!(
            retries >= 1.0,
            "{retry_on}: round robin sent a call to the broken endpoint"
        );
        assert_eq!(
            proxy.metric("shoal_retries_recovered_total", &labels).await,
            retries,
            "{retry_on}"
        );
    }
    // This proxy's own connect failure, under the gRPC condition alone: a gRPC call gets it as
    // UNAVAILABLE, so `grpc_unavailable` retries it.
    let proxy = outbound(
        &[closed_port_addr(), backend.addr()],
        "",
        &rule("retry_on: [grpc_unavailable]"),
    )
    .await;
    all_succeed(&proxy, 4).await;
    let retries = proxy
        .metric("shoal_retries_total", &[("service", "app.default")])
        .await;
    assert!(retries >= 1.0, "{}", proxy.metrics().await);
}

#[tokio::test]
async fn a_strict_endpoint_refusing_plain_text_is_unauthenticated_and_explained_by_the_caller() {
    let dir = TempDir::new("grpc-strict").unwrap();
    let ca = TestCa::new("mesh");
    let app = GrpcBackend::start().await;
    let server = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .identity(&ca.workload(WEB).write(dir.path(), "web", &[ca.root_pem()]))
        .env("SHOAL_INBOUND_TLS_MODE", "strict")
        .start()
        .await;
    // A caller's proxy without an identity sends plain text: the strict proxy answers the call
    // `mtls-required` (a gRPC status now), which the caller's proxy explains as its own.
    let caller = ProxyBuilder::new()
        .outbound_explicit()
        .state(&shoal_tests::proxy::mesh_web_state(server.inbound(), WEB))
        .start()
        .await;
    let mut client = grpc::client_with_origin(caller.outbound(), "http://web").await;
    let status = client.unary(msg("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().starts_with("upstream-requires-mtls: ")
            && status.message().contains("no identity configured"),
        "the caller's proxy says why it sent plain text: {status:?}"
    );
    // Straight to the strict port in plain text: the strict proxy's own answer.
    let mut plain =
        grpc::client_with_origin(server.inbound(), &format!("http://{}", server.inbound())).await;
    let status = plain.unary(msg("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().starts_with("mtls-required: "),
        "{status:?}"
    );
    assert!(
        app.recorder().calls().is_empty(),
        "plain text reached the app"
    );
}

#[tokio::test]
async fn the_endpoint_proxys_grpc_errors_open_the_callers_circuit_breaker() {
    // The endpoint's proxy is up, its app down: every call is its gRPC answer (HTTP 200 on the
    // wire), which the caller's breaker must count as the failure (502) it stands for.
    let broken = ProxyBuilder::new()
        .inbound_explicit(closed_port_addr())
        .start()
        .await;
    let proxy = outbound(
        &[broken.inbound()],
        "",
        "backend_policies:\n  - service: app\n    circuit_breaker: {failure_ratio_threshold: 0.5, min_requests: 4, open_duration: 30s}\n",
    )
    .await;
    let mut client = grpc::client_with_origin(proxy.outbound(), "http://app.example").await;
    for i in 0..4 {
        let status = client.unary(msg("hello")).await.unwrap_err();
        assert!(
            status.message().starts_with("upstream-connect-refused: "),
            "call {i} reaches the endpoint's proxy: {status:?}"
        );
    }
    let status = client.unary(msg("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().starts_with("circuit-open: "), "{status:?}");
    // And the caller's metrics count the relayed answers as 502s.
    let relayed = proxy
        .metric(
            "shoal_requests_total",
            &[
                ("direction", "outbound"),
                ("status_code", "502"),
                ("reason", ""),
            ],
        )
        .await;
    assert_eq!(relayed, 4.0, "{}", proxy.metrics().await);
}
