//! Span export over OTLP/gRPC to a real receiver (`shoal_tests::otlp`): client → proxy A
//! (outbound, a route with a retry) → proxy B (inbound) → an upstream that fails once. The spans
//! received form the trace: A's client span is the child of the caller's span, B's server spans
//! (one per attempt) are children of A's span; attributes name the route, backend, endpoint,
//! attempts and the proxy's error; unsampled requests leave no span; a collector that is down
//! costs requests nothing and its losses are counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, H2Client, empty, request};
use shoal_tests::otlp::{OtlpReceiver, ReceivedSpan};
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, closed_port_addr, eventually};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// A proxy builder exporting spans to `collector` with `ratio` for requests without a decision.
fn traced(
    builder: ProxyBuilder,
    service: &str,
    collector: SocketAddr,
    ratio: &str,
) -> ProxyBuilder {
    builder
        .env("SHOAL_SERVICE_NAME", service)
        .env("SHOAL_TRACING_OTLP_ENDPOINT", collector)
        .env("SHOAL_TRACING_SAMPLING_RATIO", ratio)
        .env("SHOAL_TRACING_FLUSH_INTERVAL", "50ms")
        .env(
            "SHOAL_TRACING_RESOURCE_ATTRIBUTES",
            "deployment.environment=test",
        )
}

/// An upstream failing its first request with 503, then answering 200.
async fn fails_once() -> HttpBackend {
    let seen = Arc::new(AtomicUsize::new(0));
    HttpBackend::respond(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            text_response(503, "failing")
        } else {
            text_response(200, "ok")
        }
    })
    .await
}

/// Proxy A's state: `app.example` → proxy B with a retry (2 attempts); `gone.example` → a closed
/// port.
fn client_state(server: SocketAddr) -> String {
    let gone = closed_port_addr();
    format!(
        "services:\n\
         \x20 - name: app\n    port: 80\n    hosts: [app.example]\n    endpoints:\n      - address: \"{server}\"\n\
         \x20 - name: gone\n    port: 80\n    hosts: [gone.example]\n    endpoints:\n      - address: \"{gone}\"\n\
         routes:\n  - name: app\n    service: app\n    rules:\n      - name: items\n        backends: [{{service: app}}]\n\
         \x20       retry: {{attempts: 2, backoff_base: 1ms, backoff_max: 1ms}}\n"
    )
}

struct Chain {
    upstream: HttpBackend,
    a: Proxy,
    b: Proxy,
}

async fn chain(collector: SocketAddr, ratio: &str) -> Chain {
    let upstream = fails_once().await;
    let b = traced(
        ProxyBuilder::new().inbound_explicit(upstream.addr()),
        "server",
        collector,
        ratio,
    )
    .start()
    .await;
    let a = traced(
        ProxyBuilder::new()
            .outbound_explicit()
            .state(&client_state(b.inbound())),
        "client",
        collector,
        ratio,
    )
    .start()
    .await;
    Chain { upstream, a, b }
}

async fn get(proxy: &Proxy, host: &str, headers: &[(&str, &str)]) -> u16 {
    let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
    let mut req = request("GET", "/item", Some(host));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    c.send(req.body(empty()).unwrap())
        .await
        .unwrap()
        .status
        .as_u16()
}

fn one<'a>(spans: &'a [ReceivedSpan], service: &str, kind: i32) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.kind == kind)
        .collect()
}

#[tokio::test]
async fn spans_through_two_sidecars_and_a_retry_link_up() {
    let collector = OtlpReceiver::start().await;
    let chain = chain(collector.addr(), "1").await;
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    assert_eq!(
        get(&chain.a, "app.example", &[("traceparent", &traceparent)]).await,
        200
    );
    assert_eq!(
        chain.upstream.count(),
        2,
        "the first attempt failed, the retry succeeded"
    );
    // A's outbound span and B's two inbound spans (one per attempt).
    let spans = collector.wait_for_trace(TRACE_ID, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");

    let outbound = one(&spans, "client", CLIENT);
    assert_eq!(outbound.len(), 1, "{spans:#?}");
    let out = outbound[0];
    assert_eq!(out.parent, CALLER_SPAN, "A's span is the caller's child");
    assert_eq!(out.name, "outbound GET");
    assert_eq!(out.attr("shoal.route"), Some("items"));
    assert_eq!(out.attr("shoal.service"), Some("app.default"));
    assert_eq!(out.attr("shoal.backend"), Some("app.default"));
    assert_eq!(
        out.attr("shoal.endpoint"),
        Some(&*chain.b.inbound().to_string())
    );
    assert_eq!(out.attr("shoal.retries"), Some("2"), "attempts");
    assert_eq!(out.attr("shoal.proxy_error"), None);
    assert_eq!(out.attr("http.request.method"), Some("GET"));
    assert_eq!(out.attr("http.response.status_code"), Some("200"));
    assert_eq!(out.attr("url.path"), Some("/item"));
    assert_eq!(out.attr("server.address"), Some("app.example"));
    assert_eq!(out.attr("network.peer.address"), Some("127.0.0.1"));
    assert_eq!(out.status.0, 0, "unset: the request succeeded");
    assert_eq!(
        out.resource
            .get("deployment.environment")
            .map(String::as_str),
        Some("test")
    );
    assert!(
        out.times.0 > 0 && out.times.1 >= out.times.0,
        "{:?}",
        out.times
    );
    // The retry is an event naming the failed attempt.
    assert_eq!(out.events.len(), 1, "{:?}", out.events);
    let (name, attrs) = &out.events[0];
    assert_eq!(name, "retry");
    assert_eq!(attrs.get("shoal.attempt").map(String::as_str), Some("1"));
    assert_eq!(
        attrs.get("http.response.status_code").map(String::as_str),
        Some("503")
    );

    let inbound = one(&spans, "server", SERVER);
    assert_eq!(inbound.len(), 2, "{spans:#?}");
    for s in &inbound {
        assert_eq!(s.parent, out.span_id, "B's spans are children of A's span");
        assert_ne!(s.span_id, out.span_id);
        assert_eq!(s.attr("shoal.service"), Some("server"));
        assert_eq!(
            s.attr("shoal.endpoint"),
            Some(&*chain.upstream.addr().to_string())
        );
        assert_eq!(s.attr("shoal.retries"), Some("1"));
    }
    let mut statuses: Vec<(&str, i32)> = inbound
        .iter()
        .map(|s| (s.attr("http.response.status_code").unwrap(), s.status.0))
        .collect();
    statuses.sort();
    assert_eq!(statuses, [("200", 0), ("503", 2)], "a 5xx span is an error");
    // The upstream saw B's span as its parent.
    let seen: Vec<String> = chain
        .upstream
        .requests()
        .iter()
        .map(|r| {
            r.header("traceparent")
                .unwrap()
                .split('-')
                .nth(2)
                .unwrap()
                .to_string()
        })
        .collect();
    let mut ids: Vec<String> = inbound.iter().map(|s| s.span_id.clone()).collect();
    let mut seen_sorted = seen.clone();
    seen_sorted.sort();
    ids.sort();
    assert_eq!(
        seen_sorted, ids,
        "each attempt's upstream request carries B's span id"
    );

    // A proxy error: the span says which, and is an error.
    let status = get(
        &chain.a,
        "gone.example",
        &[(
            "traceparent",
            &format!("00-{}-{CALLER_SPAN}-01", "1".repeat(32)),
        )],
    )
    .await;
    assert_eq!(status, 502);
    let spans = collector.wait_for_trace(&"1".repeat(32), 1).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let failed = &spans[0];
    assert_eq!(
        failed.attr("shoal.proxy_error"),
        Some("upstream-connect-refused")
    );
    assert_eq!(failed.status, (2, "upstream-connect-refused".to_string()));
    assert_eq!(failed.attr("shoal.backend"), Some("gone.default"));
    assert_eq!(failed.attr("rpc.grpc.status_code"), None, "not a gRPC call");

    // The same for a gRPC call: answered UNAVAILABLE (trailers-only 200), spanned as the 502 it
    // stands for, with its gRPC status.
    let h2 = H2Client::connect(chain.a.outbound()).await.unwrap();
    let resp = h2
        .send(
            request("POST", "http://gone.example/shoal.test.v1.Echo/Unary", None)
                .header("content-type", "application/grpc")
                .header(
                    "traceparent",
                    format!("00-{}-{CALLER_SPAN}-01", "2".repeat(32)),
                )
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.header("grpc-status"), Some("14"));
    let spans = collector.wait_for_trace(&"2".repeat(32), 1).await;
    let failed = &spans[0];
    assert_eq!(failed.attr("rpc.grpc.status_code"), Some("14"));
    assert_eq!(failed.attr("http.response.status_code"), Some("502"));
    assert_eq!(failed.status, (2, "upstream-connect-refused".to_string()));

    // No trace context: the ratio (1 here) samples it, and B follows A's decision.
    assert_eq!(get(&chain.a, "app.example", &[]).await, 200);
    let tp = chain
        .upstream
        .last()
        .header("traceparent")
        .unwrap()
        .to_string();
    assert!(
        tp.ends_with("-01"),
        "a sampled new trace says so downstream: {tp}"
    );
    let trace = tp.split('-').nth(1).unwrap();
    let spans = collector.wait_for_trace(trace, 2).await;
    let root = one(&spans, "client", CLIENT);
    assert_eq!(root.len(), 1, "{spans:#?}");
    assert_eq!(root[0].parent, "", "A's span is the trace's root");
    assert_eq!(one(&spans, "server", SERVER)[0].parent, root[0].span_id);
    assert_eq!(
        chain
            .a
            .metric("shoal_tracing_spans_exported_total", &[])
            .await,
        4.0
    );
    assert_eq!(
        chain
            .b
            .metric("shoal_tracing_spans_exported_total", &[])
            .await,
        3.0
    );
}

#[tokio::test]
async fn unsampled_requests_leave_no_spans() {
    let collector = OtlpReceiver::start().await;
    // Ratio 0: only a caller's sampled flag makes spans.
    let chain = chain(collector.addr(), "0").await;
    let unsampled = "2".repeat(32);
    assert_eq!(
        get(
            &chain.a,
            "app.example",
            &[("traceparent", &format!("00-{unsampled}-{CALLER_SPAN}-00"))]
        )
        .await,
        200
    );
    assert_eq!(get(&chain.a, "app.example", &[]).await, 200);
    let tp = chain
        .upstream
        .last()
        .header("traceparent")
        .unwrap()
        .to_string();
    assert!(
        tp.ends_with("-00"),
        "ratio 0: the new trace is not sampled: {tp}"
    );
    let no_parent = tp.split('-').nth(1).unwrap().to_string();
    // A sampled request after them: once its spans arrived, theirs would have (each proxy
    // exports in order).
    assert_eq!(
        get(
            &chain.a,
            "app.example",
            &[("traceparent", &format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))]
        )
        .await,
        200
    );
    collector.wait_for_trace(TRACE_ID, 2).await;
    let traces: Vec<String> = collector.spans().into_iter().map(|s| s.trace_id).collect();
    assert!(!traces.contains(&unsampled), "{traces:?}");
    assert!(!traces.contains(&no_parent), "{traces:?}");
    assert_eq!(traces.len(), 2, "{traces:?}");
}

#[tokio::test]
async fn a_collector_that_is_down_costs_requests_nothing_and_drops_are_counted() {
    let upstream = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let proxy = traced(
        ProxyBuilder::new().both_explicit(upstream.addr()),
        "client",
        closed_port_addr(),
        "1",
    )
    .env("SHOAL_TRACING_BATCH_SIZE", "1")
    .env("SHOAL_TRACING_MAX_QUEUE", "1")
    .start()
    .await;
    let host = upstream.addr().to_string();
    for i in 0..50 {
        assert_eq!(get(&proxy, &host, &[]).await, 200, "request {i}");
    }
    let (failed, full) = eventually(
        Duration::from_secs(10),
        "failed exports counted",
        || async {
            let failed = proxy
                .metric(
                    "shoal_tracing_spans_dropped_total",
                    &[("reason", "export_failed")],
                )
                .await;
            let full = proxy
                .metric(
                    "shoal_tracing_spans_dropped_total",
                    &[("reason", "queue_full")],
                )
                .await;
            if failed >= 1.0 && full >= 1.0 {
                Ok((failed, full))
            } else {
                Err((failed, full))
            }
        },
    )
    .await;
    assert!(failed + full <= 50.0, "{failed} + {full}");
    assert_eq!(
        proxy
            .metric("shoal_tracing_spans_exported_total", &[])
            .await,
        0.0
    );
    // `/config` shows the exporter's settings.
    let config = proxy.config().await;
    let tracing = &config["config"]["tracing"];
    assert_eq!(tracing["max_queue"], 1, "{config}");
    assert_eq!(tracing["sampling_ratio"], 1.0, "{config}");
}

#[tokio::test]
async fn spans_still_queued_are_exported_at_shutdown() {
    let collector = OtlpReceiver::start().await;
    let upstream = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let mut proxy = traced(
        ProxyBuilder::new().both_explicit(upstream.addr()),
        "client",
        collector.addr(),
        "1",
    )
    // Nothing would be exported for a minute but for the shutdown.
    .env("SHOAL_TRACING_FLUSH_INTERVAL", "1m")
    .start()
    .await;
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    assert_eq!(
        get(
            &proxy,
            &upstream.addr().to_string(),
            &[("traceparent", &traceparent)]
        )
        .await,
        200
    );
    assert!(collector.spans().is_empty());
    proxy.signal("TERM").unwrap();
    let status = proxy.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let spans = collector.wait_for_trace(TRACE_ID, 1).await;
    assert_eq!(spans[0].parent, CALLER_SPAN);
}
