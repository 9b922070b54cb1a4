//! Fault injection from the static state file, on the calling side: aborts answer with the
//! configured status and never reach the backend, at the configured share; delays hold requests
//! for their duration, inside the route's timeout.

use std::time::{Duration, Instant};

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, empty, request};
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
        serde_json::json!([30.0, 503]),
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
