//! Retry policies from the static state file, through the explicit outbound listener, against
//! backends that fail on demand: transient failures recovered, a retry sent to another endpoint,
//! non-idempotent requests left alone unless the rule opts in (then the body is sent again
//! intact), a full outage held within the budget, the deadline kept, a body too large to keep
//! sent once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, empty, full, request};
use shoal_tests::proxy::app_service_state;
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder};

/// A backend that fails its first `failures` requests with `status`, then answers 200 "ok".
async fn failing_first(failures: usize, status: u16) -> HttpBackend {
    let seen = Arc::new(AtomicUsize::new(0));
    HttpBackend::respond(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) < failures {
            text_response(status, "failing")
        } else {
            text_response(200, "ok")
        }
    })
    .await
}

/// A proxy routing `app.example` to `endpoints` with the rule's extra YAML (`retry:` etc.).
async fn proxy(endpoints: &[SocketAddr], rule: &str) -> Proxy {
    ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            "{}routes:\n  - name: app\n    service: app\n    rules:\n      - backends: [{{service: app}}]\n{rule}",
            app_service_state("", endpoints)
        ))
        .start()
        .await
}

async fn call(proxy: &Proxy, method: &str, body: &str) -> shoal_tests::Resp {
    let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
    let req = request(method, "/item", Some("app.example"));
    let req = if body.is_empty() {
        req.body(empty())
    } else {
        req.body(full(body.to_string()))
    };
    c.send(req.unwrap()).await.unwrap()
}

async fn counter(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    proxy.metric(name, labels).await
}

#[tokio::test]
async fn transient_failures_are_retried_to_success() {
    let backend = failing_first(2, 503).await;
    let proxy = proxy(
        &[backend.addr()],
        "        retry: {attempts: 3, backoff_base: 5ms, backoff_max: 20ms}\n",
    )
    .await;
    let resp = call(&proxy, "GET", "").await;
    assert_eq!((resp.status.as_u16(), resp.text()), (200, "ok".to_string()));
    let attempts: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.header("shoal-attempt").unwrap_or("-").to_string())
        .collect();
    assert_eq!(
        attempts,
        ["-", "2", "3"],
        "each retry is numbered upstream, the first attempt is not"
    );
    let labels = [("service", "app.default"), ("route", "app")];
    assert_eq!(counter(&proxy, "shoal_retries_total", &labels).await, 2.0);
    assert_eq!(
        counter(&proxy, "shoal_retries_recovered_total", &labels).await,
        1.0
    );
    // `/config` shows the effective policy, defaults filled in.
    let config = proxy.config().await;
    let retry = &config["state"]["routes"][0][0]["retry"];
    assert_eq!(retry["attempts"], 3, "{config}");
    assert_eq!(retry["retry_on"][0], "connect_failure", "{retry}");
    assert_eq!(retry["budget_ratio"], 0.2, "{retry}");
    assert_eq!(retry["backoff_base"], "5ms", "{retry}");
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint() {
    let down = HttpBackend::respond(|_| text_response(503, "down")).await;
    let up = HttpBackend::respond(|_| text_response(200, "up")).await;
    let proxy = proxy(
        &[down.addr(), up.addr()],
        "        retry: {attempts: 2, backoff_base: 1ms, backoff_max: 1ms}\n",
    )
    .await;
    for i in 0..40 {
        let resp = call(&proxy, "GET", "").await;
        assert_eq!(
            (resp.status.as_u16(), resp.text()),
            (200, "up".to_string()),
            "request {i}"
        );
    }
    // Never twice to the endpoint that failed: every attempt on `down` is followed by one on `up`.
    assert_eq!(up.count(), 40);
}

#[tokio::test]
async fn non_idempotent_requests_are_retried_only_when_the_rule_opts_in() {
    let backend = failing_first(1, 503).await;
    let plain = proxy(
        &[backend.addr()],
        "        retry: {attempts: 3, backoff_base: 1ms, backoff_max: 1ms}\n",
    )
    .await;
    let resp = call(&plain, "POST", "payload").await;
    assert_eq!(
        resp.status.as_u16(),
        503,
        "a POST is not retried by default"
    );
    assert_eq!(backend.count(), 1);

    let backend = failing_first(1, 503).await;
    let opted = proxy(
        &[backend.addr()],
        "        retry: {attempts: 3, backoff_base: 1ms, backoff_max: 1ms, retry_non_idempotent: true}\n",
    )
    .await;
    let resp = call(&opted, "POST", "payload").await;
    assert_eq!((resp.status.as_u16(), resp.text()), (200, "ok".to_string()));
    let bodies: Vec<_> = backend.requests().iter().map(|r| r.body.clone()).collect();
    assert_eq!(
        bodies,
        ["payload", "payload"],
        "the body is sent again intact"
    );
}

#[tokio::test]
async fn a_body_too_large_to_keep_is_sent_once() {
    let backend = failing_first(1, 503).await;
    let proxy = proxy(
        &[backend.addr()],
        "        retry: {attempts: 3, backoff_base: 1ms, backoff_max: 1ms, retry_non_idempotent: true}\n",
    )
    .await;
    let big = "x".repeat(100 * 1024);
    let resp = call(&proxy, "PUT", &big).await;
    assert_eq!(resp.status.as_u16(), 503);
    assert_eq!(backend.count(), 1);
    assert_eq!(backend.requests()[0].body.len(), big.len());
    let labels = [
        ("service", "app.default"),
        ("route", "app"),
        ("reason", "body_too_large"),
    ];
    assert_eq!(
        counter(&proxy, "shoal_retries_skipped_total", &labels).await,
        1.0
    );
}

#[tokio::test]
async fn a_full_outage_stays_within_the_budget() {
    // Every attempt fails. Three attempts per request would triple the load; the budget (20 % of
    // requests, plus 1 retry a second over the 10 s window) holds it near 1.2×.
    let backend = HttpBackend::respond(|_| text_response(503, "down")).await;
    let proxy = proxy(
        &[backend.addr()],
        "        retry: {attempts: 3, backoff_base: 1ms, backoff_max: 1ms, budget_ratio: 0.2, budget_min_retries_per_second: 1}\n",
    )
    .await;
    let requests = 300;
    for _ in 0..requests {
        assert_eq!(call(&proxy, "GET", "").await.status.as_u16(), 503);
    }
    let attempts = backend.count();
    let allowed = requests + requests / 5 + 10;
    assert!(
        attempts > requests && attempts <= allowed,
        "{attempts} upstream attempts for {requests} requests; the budget allows at most {allowed}"
    );
    let labels = [
        ("service", "app.default"),
        ("route", "app"),
        ("reason", "budget_exhausted"),
    ];
    assert!(counter(&proxy, "shoal_retries_skipped_total", &labels).await > 0.0);
}

#[tokio::test]
async fn retries_never_outlast_the_deadline() {
    // Each attempt takes 200 ms and the per-try timeout cuts it at 100 ms; the route's 350 ms
    // deadline leaves room for three attempts at most, and the answer comes by the deadline.
    let slow = HttpBackend::start(|_| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        text_response(200, "late")
    })
    .await;
    let proxy = proxy(
        &[slow.addr()],
        "        timeout: 350ms\n        retry: {attempts: 10, per_try_timeout: 100ms, retry_on: [per_try_timeout], backoff_base: 1ms, backoff_max: 1ms}\n",
    )
    .await;
    let started = Instant::now();
    let resp = call(&proxy, "GET", "").await;
    let took = started.elapsed();
    assert_eq!(resp.status.as_u16(), 504, "{}", resp.text());
    assert_eq!(resp.header("shoal-proxy-error"), Some("response-timeout"));
    assert!(
        took < Duration::from_millis(600),
        "answered after {took:?}, the deadline was 350 ms"
    );
    let attempts = slow.heads();
    assert!(
        (3..=4).contains(&attempts),
        "{attempts} attempts fit a 350 ms deadline at 100 ms each"
    );
}

#[tokio::test]
async fn an_invalid_policy_is_refused_naming_the_field() {
    let backend = failing_first(0, 200).await;
    let builder = ProxyBuilder::new().outbound_explicit().state(&format!(
        "services:\n  - name: app\n    port: 80\n    hosts: [app.example]\n    endpoints:\n      - address: \"{}\"\n\
         routes:\n  - name: app\n    service: app\n    rules:\n      - backends: [{{service: app}}]\n        timeout: 1s\n        retry: {{per_try_timeout: 2s}}\n",
        backend.addr()
    ));
    let exited = builder.run_to_exit(Duration::from_secs(10)).unwrap();
    assert!(!exited.status.success());
    let text = format!("{}{}", exited.stdout, exited.stderr);
    assert!(
        text.contains("routes[0].rules[0].retry.per_try_timeout"),
        "the error names the field: {text}"
    );
}
