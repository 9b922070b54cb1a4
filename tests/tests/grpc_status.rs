//! An app's own gRPC status counts as the failure it is (docs/metrics.md, docs/resilience.md): a
//! gRPC call is HTTP 200 on the wire whatever its outcome, so the proxies count it by its
//! `grpc-status` as the HTTP status it stands for (UNAVAILABLE 503, INTERNAL 500, NOT_FOUND 404…).
//! A real tonic client through a real proxy to a real gRPC server: trailers-only failures and
//! statuses in the trailers of a stream, on both sides of the proxy, in metrics and the access log;
//! a stream the client abandons; a stream's span, which ends with it and its status; and an endpoint
//! answering every call UNAVAILABLE, which outlier detection ejects and a circuit breaker opens on.

use std::net::SocketAddr;

use http::Response;
use shoal_tests::backend::HttpBackend;
use shoal_tests::client::{Body, empty};
use shoal_tests::grpc::{self, GrpcBackend, msg, pb};
use shoal_tests::otlp::OtlpReceiver;
use shoal_tests::proxy::app_service_state;
use shoal_tests::{Proxy, ProxyBuilder, eventually};
use tonic::Code;

/// A proxy with an outbound listener routing `app.example` (service `app`) to `endpoints`, with
/// more state YAML after the service (`extra`), and an inbound listener in front of `inbound_app`.
async fn start(endpoints: &[SocketAddr], inbound_app: SocketAddr, extra: &str) -> Proxy {
    ProxyBuilder::new()
        .outbound_explicit()
        .inbound_explicit(inbound_app)
        .env("SHOAL_ACCESS_LOG", "true")
        .state(&format!("{}{extra}", app_service_state("", endpoints)))
        .start()
        .await
}

fn failing(code: Code, message: &str) -> pb::EchoRequest {
    pb::EchoRequest {
        fail_code: code as i32,
        fail_message: message.into(),
        ..msg("hello")
    }
}

fn outbound(status: &'static str) -> [(&'static str, &'static str); 4] {
    [
        ("direction", "outbound"),
        ("service", "app.default"),
        ("status_code", status),
        ("reason", ""),
    ]
}

fn inbound(status: &'static str) -> [(&'static str, &'static str); 3] {
    [
        ("direction", "inbound"),
        ("status_code", status),
        ("reason", ""),
    ]
}

#[tokio::test]
async fn an_apps_grpc_status_counts_as_the_http_status_it_stands_for() {
    let app = GrpcBackend::start().await;
    let proxy = start(&[app.addr()], app.addr(), "").await;
    let mut client = grpc::client_with_origin(proxy.outbound(), "http://app.example").await;

    // Trailers-only failures: the client gets the app's status untouched.
    for _ in 0..3 {
        let status = client
            .unary(failing(Code::Unavailable, "app is draining"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "app is draining");
    }
    for _ in 0..2 {
        let status = client
            .unary(failing(Code::NotFound, "no such user"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    client.unary(msg("fine")).await.unwrap();

    // A stream that fails after its messages: the status arrives in trailers, after a 200 head.
    let req = pb::EchoRequest {
        count: 2,
        ..failing(Code::Internal, "lost the cursor")
    };
    let mut stream = client.server_stream(req).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "hello-0");
    assert_eq!(stream.message().await.unwrap().unwrap().message, "hello-1");
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(status.message(), "lost the cursor");
    // And one that succeeds.
    let ok = pb::EchoRequest {
        count: 3,
        ..msg("ok")
    };
    let mut stream = client.server_stream(ok).await.unwrap().into_inner();
    let mut received = 0;
    while stream.message().await.unwrap().is_some() {
        received += 1;
    }
    assert_eq!(received, 3);

    proxy
        .wait_metric("shoal_requests_total", &outbound("503"), 3.0)
        .await;
    proxy
        .wait_metric("shoal_requests_total", &outbound("500"), 1.0)
        .await;
    assert_eq!(
        proxy.metric("shoal_requests_total", &outbound("404")).await,
        2.0
    );
    assert_eq!(
        proxy.metric("shoal_requests_total", &outbound("200")).await,
        2.0,
        "the successful unary call and stream\n{}",
        proxy.metrics().await
    );
    // The latency histogram counts every call once, in its class.
    assert_eq!(
        proxy
            .metric(
                "shoal_request_duration_seconds_count",
                &[("direction", "outbound"), ("service", "app.default")]
            )
            .await,
        8.0
    );
    // The access log line of the failed stream says 500.
    let logs = proxy.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("ServerStream") && l.contains("status=500")),
        "{logs}"
    );

    // The inbound side counts the app's statuses the same way.
    let mut direct =
        grpc::client_with_origin(proxy.inbound(), &format!("http://{}", proxy.inbound())).await;
    for _ in 0..2 {
        let status = direct
            .unary(failing(Code::Unavailable, "draining"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    let req = pb::EchoRequest {
        count: 1,
        ..failing(Code::DataLoss, "torn page")
    };
    let mut stream = direct.server_stream(req).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    assert_eq!(stream.message().await.unwrap_err().code(), Code::DataLoss);
    proxy
        .wait_metric("shoal_requests_total", &inbound("503"), 2.0)
        .await;
    proxy
        .wait_metric("shoal_requests_total", &inbound("500"), 1.0)
        .await;
}

#[tokio::test]
async fn a_stream_the_client_abandons_counts_as_cancelled() {
    let app = GrpcBackend::start().await;
    let proxy = start(&[app.addr()], app.addr(), "").await;
    let mut client = grpc::client_with_origin(proxy.outbound(), "http://app.example").await;
    let mut stream = client.hang_stream(msg("first")).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "first");
    // Not counted while it streams.
    assert_eq!(
        proxy
            .metric("shoal_requests_total", &[("direction", "outbound")])
            .await,
        0.0
    );
    drop(stream);
    proxy
        .wait_metric("shoal_requests_total", &outbound("499"), 1.0)
        .await;
    eventually(
        std::time::Duration::from_secs(10),
        "the app sees the cancellation",
        || async {
            let cancelled = app.recorder().cancelled();
            if cancelled.contains(&"HangStream") {
                Ok(())
            } else {
                Err(cancelled)
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_streams_span_ends_with_the_stream_and_its_status() {
    let app = GrpcBackend::start().await;
    let collector = OtlpReceiver::start().await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .env("SHOAL_TRACING_OTLP_ENDPOINT", collector.addr())
        .env("SHOAL_TRACING_SAMPLING_RATIO", "1")
        .env("SHOAL_TRACING_FLUSH_INTERVAL", "50ms")
        .state(&app_service_state("", &[app.addr()]))
        .start()
        .await;
    let mut client = grpc::client_with_origin(proxy.outbound(), "http://app.example").await;
    let traced = |req: pb::EchoRequest, trace: &str| {
        let mut call = tonic::Request::new(req);
        call.metadata_mut().insert(
            "traceparent",
            format!("00-{trace}-{}-01", "4".repeat(16)).parse().unwrap(),
        );
        call
    };

    // A stream failing after its messages: its span has the status of its trailers.
    let failed = "3".repeat(32);
    let req = pb::EchoRequest {
        count: 2,
        ..failing(Code::Internal, "lost the cursor")
    };
    let mut stream = client
        .server_stream(traced(req, &failed))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    stream.message().await.unwrap().unwrap();
    assert_eq!(stream.message().await.unwrap_err().code(), Code::Internal);
    let spans = collector.wait_for_trace(&failed, 1).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span.attr("rpc.grpc.status_code"), Some("13"), "{span:#?}");
    assert_eq!(span.attr("http.response.status_code"), Some("500"));
    assert_eq!(span.status.0, 2, "an error span: {span:#?}");

    // A stream that stays open: no span while it does; the client's cancellation ends it.
    let open = "5".repeat(32);
    let mut stream = client
        .hang_stream(traced(msg("first"), &open))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let early: Vec<_> = (collector.spans().into_iter())
        .filter(|s| s.trace_id == open)
        .collect();
    assert!(
        early.is_empty(),
        "exported while the stream is open: {early:#?}"
    );
    drop(stream);
    let spans = collector.wait_for_trace(&open, 1).await;
    let span = &spans[0];
    assert_eq!(span.attr("rpc.grpc.status_code"), Some("1"), "{span:#?}");
    assert_eq!(span.attr("http.response.status_code"), Some("499"));
    assert!(
        span.times.1 - span.times.0 >= 300_000_000,
        "the span lasts as long as the stream: {span:#?}"
    );
}

/// An h2c endpoint that answers every gRPC call UNAVAILABLE, trailers-only, as a gRPC server
/// whose dependency is down does.
async fn unavailable_endpoint() -> HttpBackend {
    HttpBackend::respond(|_| -> Response<Body> {
        Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .header("grpc-message", "database unreachable")
            .body(empty())
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn an_endpoint_failing_its_calls_is_ejected_and_opens_the_breaker() {
    let good = GrpcBackend::start().await;
    let bad = unavailable_endpoint().await;

    // Outlier detection: the endpoint answering UNAVAILABLE (503) is ejected after two in a row;
    // every call after that goes to the good one.
    let proxy = start(
        &[good.addr(), bad.addr()],
        good.addr(),
        "backend_policies:\n  - service: app\n    load_balancer: {algorithm: round_robin}\n    outlier_detection: {consecutive_5xx: 2, base_ejection_time: 60s, max_ejection_percent: 50}\n",
    )
    .await;
    let mut client = grpc::client_with_origin(proxy.outbound(), "http://app.example").await;
    let mut failures = 0;
    for _ in 0..4 {
        if let Err(status) = client.unary(msg("hello")).await {
            assert_eq!(status.code(), Code::Unavailable);
            assert_eq!(status.message(), "database unreachable");
            failures += 1;
        }
    }
    assert_eq!(
        failures, 2,
        "round robin: every other call to the bad endpoint"
    );
    for i in 0..10 {
        let reply = client.unary(msg("hello")).await;
        assert!(reply.is_ok(), "call {i} after the ejection: {reply:?}");
    }
    let endpoints =
        proxy.config().await["state"]["services"][0]["load_balancer"]["endpoints"].clone();
    let ejected: Vec<&serde_json::Value> = endpoints
        .as_array()
        .unwrap_or_else(|| panic!("endpoints in /config: {endpoints}"))
        .iter()
        .filter(|e| e["ejected"] == true)
        .collect();
    assert_eq!(ejected.len(), 1, "{endpoints}");
    assert_eq!(ejected[0]["address"], bad.addr().to_string());

    // A circuit breaker over the bad endpoint alone opens on its failure ratio.
    let proxy = start(
        &[bad.addr()],
        good.addr(),
        "backend_policies:\n  - service: app\n    circuit_breaker: {failure_ratio_threshold: 0.5, min_requests: 4, open_duration: 30s}\n",
    )
    .await;
    let mut client = grpc::client_with_origin(proxy.outbound(), "http://app.example").await;
    for i in 0..4 {
        let status = client.unary(msg("hello")).await.unwrap_err();
        assert_eq!(status.message(), "database unreachable", "call {i}");
    }
    let status = client.unary(msg("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().starts_with("circuit-open: "), "{status:?}");
}
