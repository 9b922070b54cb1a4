//! Inbound rate limits from the static state file: a burst passes, the rest get 429
//! `rate-limited` with `Retry-After` and never reach the app; per-client buckets are separate; a
//! gRPC call over the limit gets RESOURCE_EXHAUSTED in a trailers-only response.

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, H2Client, empty, request};
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder};

async fn limited(app: &HttpBackend, limit: &str) -> Proxy {
    ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .env("SHOAL_SERVICE_NAME", "app")
        .state(&format!(
            "services:\n  - name: app\n    port: 80\n    endpoints:\n      - address: \"{}\"\nrate_limits:\n  - service: app\n{limit}",
            app.addr()
        ))
        .start()
        .await
}

#[tokio::test]
async fn a_burst_passes_and_the_rest_get_429_with_retry_after() {
    let app = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let proxy = limited(&app, "    requests_per_unit: 5\n    unit: minute\n").await;
    let mut client = H1Client::connect(proxy.inbound()).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let resp = client
            .send(request("GET", "/", Some("app")).body(empty()).unwrap())
            .await
            .unwrap();
        if resp.status == 429 {
            assert_eq!(resp.header("shoal-proxy-error"), Some("rate-limited"));
            let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
            assert!(
                (1..=12).contains(&retry),
                "Retry-After {retry}: a token every 12 s"
            );
        }
        statuses.push(resp.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(app.count(), 5, "limited requests never reach the app");
    let config = proxy.config().await;
    assert_eq!(
        config["state"]["rate_limits"]["app.default"]["burst"], 5,
        "{config}"
    );
}

#[tokio::test]
async fn a_grpc_call_over_the_limit_gets_resource_exhausted() {
    let app = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let proxy = limited(&app, "    requests_per_unit: 1\n    unit: hour\n").await;
    let client = H2Client::connect(proxy.inbound()).await.unwrap();
    let call = || {
        request(
            "POST",
            &format!("http://{}/echo.Echo/Say", proxy.inbound()),
            None,
        )
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(empty())
        .unwrap()
    };
    assert_eq!(client.send(call()).await.unwrap().status, 200);
    let resp = client.send(call()).await.unwrap();
    assert_eq!(resp.status, 200, "gRPC errors ride a 200");
    assert_eq!(resp.header("grpc-status"), Some("8"), "RESOURCE_EXHAUSTED");
    assert_eq!(resp.header("shoal-proxy-error"), Some("rate-limited"));
    assert_eq!(app.count(), 1);
}
