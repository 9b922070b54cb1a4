//! A backend policy's connection limits and retry cap, from the static state file, through the
//! explicit outbound listener against real upstreams: `max_connections` with
//! `max_pending_requests` (a request over both is answered 503 `backend-overloaded` at once, the
//! pending one completes on a freed connection), `max_requests_per_connection` (the upstream sees
//! a new connection every N requests), `max_concurrent_retries` (retries during an outage are
//! skipped beyond it) — and the resilience metrics (cap rejections, connections, pending
//! requests, breaker state and transitions, outlier ejections) with their values, and `/config`'s
//! counts against the caps.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, empty, request};
use shoal_tests::prom::metric_value;
use shoal_tests::proxy::app_service_state;
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, eventually};

const WAIT: Duration = Duration::from_secs(10);
const SERVICE: &str = "app.default";

/// A proxy routing `app.example` to `endpoints` under `policy` (YAML of one backend policy's
/// fields, indented for the list item), with `routes` (YAML, may be empty).
async fn proxy(endpoints: &[SocketAddr], policy: &str, routes: &str) -> Proxy {
    ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            "{}backend_policies:\n  - service: app\n{policy}{routes}",
            app_service_state("", endpoints)
        ))
        .start()
        .await
}

async fn get(proxy: &Proxy) -> shoal_tests::Resp {
    let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
    c.send(
        request("GET", "/", Some("app.example"))
            .body(empty())
            .unwrap(),
    )
    .await
    .unwrap()
}

fn reason(resp: &shoal_tests::Resp) -> Option<String> {
    resp.header("shoal-proxy-error").map(str::to_string)
}

fn policy_state(config: &serde_json::Value) -> serde_json::Value {
    config["state"]["services"][0]["backend_policy"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_and_max_pending_a_request_is_refused_at_once() {
    const DELAY: Duration = Duration::from_millis(1500);
    let slow = HttpBackend::start(|_| async {
        tokio::time::sleep(DELAY).await;
        text_response(200, "slow")
    })
    .await;
    let proxy = proxy(
        &[slow.addr()],
        "    limits: {max_connections: 2, max_pending_requests: 1, connect_timeout: 10s}\n",
        "",
    )
    .await;
    // Two requests take the two connections, the third waits for one of them.
    let first = futures_util::future::join_all((0..3).map(|_| get(&proxy)));
    let (first, ()) = tokio::join!(first, over_the_caps(&proxy, &slow, DELAY));
    // The pending one is sent on a connection the first two free.
    for resp in first {
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(
        slow.count(),
        3,
        "the refused request never reached the upstream"
    );
    assert_eq!(slow.connections(), 2, "never more than max_connections");
    let metrics = proxy.metrics().await;
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&metrics, name, labels);
    assert_eq!(
        value(
            "shoal_backend_overloaded_total",
            &[("service", SERVICE), ("limit", "max_pending_requests")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        value("shoal_backend_requests_pending", &[("service", SERVICE)]),
        0.0
    );
}

/// With two requests in flight and one pending: the caps' use in `/config` and the metrics, and
/// a fourth request refused at once.
async fn over_the_caps(proxy: &Proxy, slow: &HttpBackend, delay: Duration) {
    eventually(
        WAIT,
        "two requests in flight upstream, one pending",
        || async {
            let usage = policy_state(&proxy.config().await)["connections"].clone();
            if slow.heads() == 2 && usage["requests_pending"] == 1 {
                Ok(())
            } else {
                Err(format!("heads {}, {usage}", slow.heads()))
            }
        },
    )
    .await;
    let usage = policy_state(&proxy.config().await)["connections"].clone();
    assert_eq!(usage["connections_open"], 2, "{usage}");
    assert_eq!(usage["max_connections"], 2, "{usage}");
    assert_eq!(usage["max_pending_requests"], 1, "{usage}");
    let metrics = proxy.metrics().await;
    let gauge = |name: &str| metric_value(&metrics, name, &[("service", SERVICE)]);
    assert_eq!(gauge("shoal_backend_connections_open"), 2.0, "{metrics}");
    assert_eq!(gauge("shoal_backend_requests_pending"), 1.0, "{metrics}");

    // The fourth: no connection, no room to wait: refused at once.
    let started = Instant::now();
    let fourth = get(proxy).await;
    let took = started.elapsed();
    assert_eq!(
        (fourth.status.as_u16(), reason(&fourth).as_deref()),
        (503, Some("backend-overloaded")),
        "{}",
        fourth.text()
    );
    assert!(
        took < delay / 2,
        "refused after {took:?}: over the caps a request must not queue"
    );
    assert!(
        fourth.text().contains("max_pending_requests"),
        "{}",
        fourth.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_rotates_the_upstream_connections() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let proxy = proxy(
        &[backend.addr()],
        "    limits: {max_requests_per_connection: 3}\n",
        "",
    )
    .await;
    for i in 0..9 {
        let resp = get(&proxy).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(backend.count(), 9);
    assert_eq!(
        backend.connections(),
        3,
        "a new upstream connection every 3 requests"
    );
    let config = proxy.config().await;
    assert_eq!(
        policy_state(&config)["policy"]["max_requests_per_connection"],
        3,
        "{config}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_rotates_http2_connections_too() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            "services:\n  - name: app\n    port: 80\n    hosts: [app.example]\n    protocol: http2\n    \
             endpoints: [{{ address: \"{}\" }}]\n\
             backend_policies:\n  - service: app\n    limits: {{max_requests_per_connection: 3, max_connections: 1}}\n",
            backend.addr()
        ))
        .start()
        .await;
    for i in 0..9 {
        let resp = get(&proxy).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(backend.count(), 9);
    assert_eq!(
        backend.connections(),
        3,
        "no new stream after 3 on an HTTP/2 connection: a new one every 3 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_retries_caps_the_retries_of_an_outage() {
    const REQUESTS: usize = 6;
    // Every attempt fails, slowly enough that the requests' first attempts overlap.
    let down = HttpBackend::start(|_| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        text_response(503, "down")
    })
    .await;
    let proxy = proxy(
        &[down.addr()],
        "    limits: {max_concurrent_retries: 1}\n",
        "routes:\n  - name: app\n    service: app\n    rules:\n      - backends: [{service: app}]\n        \
         retry: {attempts: 3, backoff_base: 1ms, backoff_max: 1ms, budget_min_retries_per_second: 1000}\n",
    )
    .await;
    let calls = futures_util::future::join_all((0..REQUESTS).map(|_| get(&proxy))).await;
    for resp in calls {
        assert_eq!(resp.status, 503, "the original failure is returned");
        assert_eq!(
            reason(&resp),
            None,
            "the upstream's own 503: {}",
            resp.text()
        );
    }
    let metrics = proxy.metrics().await;
    let retries = metric_value(&metrics, "shoal_retries_total", &[]);
    let skipped = metric_value(
        &metrics,
        "shoal_retries_skipped_total",
        &[("reason", "concurrent_retries")],
    );
    let attempts = down.count();
    assert_eq!(
        attempts as f64,
        REQUESTS as f64 + retries,
        "every attempt beyond the first is a counted retry: {metrics}"
    );
    // Uncapped, the outage would draw 3 attempts a request (18).
    assert!(
        attempts < REQUESTS * 2,
        "{attempts} attempts: the cap held retries back"
    );
    assert!(
        skipped >= (REQUESTS - 2) as f64,
        "{skipped} skipped: {metrics}"
    );
    assert_eq!(policy_state(&proxy.config().await)["retries_in_flight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_and_outlier_metrics_show_their_state() {
    // Two broken endpoints taken in turn: the third request ejects the first (two failures in a
    // row), the second may not be ejected too (never all), and the fourth opens the breaker.
    let a = HttpBackend::respond(|_| text_response(500, "broken")).await;
    let b = HttpBackend::respond(|_| text_response(500, "broken")).await;
    let proxy = proxy(
        &[a.addr(), b.addr()],
        "    load_balancer: {algorithm: round_robin}\n    \
         circuit_breaker: {failure_ratio_threshold: 0.5, min_requests: 4, open_duration: 60s}\n    \
         outlier_detection: {consecutive_5xx: 2, base_ejection_time: 60s, max_ejection_percent: 100}\n",
        "",
    )
    .await;
    for _ in 0..4 {
        assert_eq!(get(&proxy).await.status, 500);
    }
    let resp = get(&proxy).await;
    assert_eq!(
        reason(&resp).as_deref(),
        Some("circuit-open"),
        "{}",
        resp.text()
    );
    let metrics = proxy.metrics().await;
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&metrics, name, labels);
    let service = ("service", SERVICE);
    assert_eq!(
        value("shoal_backend_circuit_state", &[service]),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        value(
            "shoal_backend_circuit_transitions_total",
            &[service, ("to", "open")]
        ),
        1.0
    );
    assert_eq!(
        value("shoal_outlier_ejections_total", &[service]),
        1.0,
        "{metrics}"
    );
    assert_eq!(value("shoal_outlier_ejected_endpoints", &[service]), 1.0);
    assert_eq!(
        policy_state(&proxy.config().await)["circuit_breaker_state"],
        "open"
    );
}
