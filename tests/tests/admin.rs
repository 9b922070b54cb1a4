//! The admin listener: probes, `/config`, `/log-level`, unknown paths, and the metrics the data
//! path produces.

use shoal_tests::client::{H1Client, H2Client, request};
use shoal_tests::prom::{self, metric_value};
use shoal_tests::{HttpBackend, ProxyBuilder};

#[tokio::test]
async fn probes_and_unknown_paths() {
    let proxy = ProxyBuilder::new().start().await;
    let live = proxy.admin_get("/live").await.unwrap();
    assert_eq!((live.status.as_u16(), live.body.trim()), (200, "live"));
    let ready = proxy.admin_get("/ready").await.unwrap();
    assert_eq!((ready.status.as_u16(), ready.body.trim()), (200, "ready"));
    let missing = proxy.admin_get("/no-such-endpoint").await.unwrap();
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("/no-such-endpoint"),
        "{}",
        missing.body
    );
    let wrong_method = proxy
        .admin_request("DELETE", "/metrics", None)
        .await
        .unwrap();
    assert_eq!(wrong_method.status, 405);
    let get_shutdown = proxy.admin_get("/shutdown").await.unwrap();
    assert_eq!(get_shutdown.status, 405, "GET must not shut the proxy down");
    assert_eq!(proxy.admin_get("/ready").await.unwrap().status, 200);
}

#[tokio::test]
async fn config_shows_settings_and_state() {
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_MAX_HEADERS", 57)
        .env("SHOAL_RESPONSE_TIMEOUT", "750ms")
        .env("SHOAL_SERVICE_NAME", "checkout")
        .state(&format!(
            "services:\n  - name: web\n    port: 80\n    hosts: [web.example]\n    endpoints:\n      - {{ address: \"{}\", weight: 3 }}\n",
            backend.addr()
        ))
        .start()
        .await;
    let resp = proxy.admin_get("/config").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let config = resp.json().unwrap();
    assert_eq!(config["config"]["http"]["max_headers"], 57, "{config:#}");
    assert_eq!(
        config["config"]["http"]["max_header_bytes"], 61440,
        "default: {config:#}"
    );
    assert_eq!(config["config"]["service_name"], "checkout");
    assert_eq!(config["config"]["inbound"]["mode"], "explicit");
    assert_eq!(
        config["config"]["inbound"]["app_addr"],
        backend.addr().to_string().as_str()
    );
    let timeout = config["config"]["http"]["response_timeout"].to_string();
    assert!(timeout.contains("750"), "response_timeout: {timeout}");
    let services = config["state"]["services"]
        .as_array()
        .expect("state.services");
    assert_eq!(services.len(), 1, "{config:#}");
    assert_eq!(services[0]["name"], "web");
    assert_eq!(services[0]["namespace"], "default");
    assert_eq!(services[0]["endpoints"][0]["weight"], 3);
    // The endpoint's address (`/config` calls the state file's `address` field `addr`).
    let endpoint = &services[0]["endpoints"][0];
    let address = endpoint
        .get("address")
        .or_else(|| endpoint.get("addr"))
        .and_then(|a| a.as_str());
    assert_eq!(
        address,
        Some(backend.addr().to_string().as_str()),
        "{endpoint}"
    );
    assert_eq!(config["sync"]["version"], 1, "{config:#}");
    assert!(config["sync"]["last_error"].is_null());
    assert_eq!(config["draining"], false);
}

#[tokio::test]
async fn log_level_get_and_put() {
    let proxy = ProxyBuilder::new().env("SHOAL_LOG", "info").start().await;
    let get = proxy.admin_get("/log-level").await.unwrap();
    assert_eq!((get.status.as_u16(), get.body.trim()), (200, "info"));

    let put = proxy
        .admin_request("PUT", "/log-level", Some("warn,shoal_proxy=debug"))
        .await
        .unwrap();
    assert_eq!(put.status, 200, "{}", put.body);
    let get = proxy.admin_get("/log-level").await.unwrap();
    assert_eq!(get.body.trim(), "warn,shoal_proxy=debug");
    assert_eq!(proxy.config().await["log_level"], "warn,shoal_proxy=debug");

    for bad in ["shoal_proxy=loud", "", "[{"] {
        let put = proxy
            .admin_request("PUT", "/log-level", Some(bad))
            .await
            .unwrap();
        assert_eq!(put.status, 400, "filter {bad:?}: {}", put.body);
        assert!(
            put.body.contains("log filter"),
            "the error should name the problem: {}",
            put.body
        );
        if !bad.is_empty() {
            assert!(
                put.body.contains(bad),
                "the error should quote {bad:?}: {}",
                put.body
            );
        }
    }
    let get = proxy.admin_get("/log-level").await.unwrap();
    assert_eq!(
        get.body.trim(),
        "warn,shoal_proxy=debug",
        "a rejected filter changes nothing"
    );
}

#[tokio::test]
async fn metrics_after_traffic() {
    let backend = HttpBackend::respond(|r| {
        let code = if r.uri.path() == "/missing" { 404 } else { 200 };
        shoal_tests::backend::text_response(code, "body")
    })
    .await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_SERVICE_NAME", "checkout")
        .start()
        .await;
    let resp = proxy.admin_get("/metrics").await.unwrap();
    assert_eq!(
        resp.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );

    // Two HTTP/1 connections (5 + 1 requests) and one h2 connection (2 requests).
    let mut c = H1Client::connect(proxy.inbound()).await.unwrap();
    for _ in 0..5 {
        assert_eq!(c.get("app", "/ok").await.unwrap().status, 200);
    }
    let mut c2 = H1Client::connect(proxy.inbound()).await.unwrap();
    assert_eq!(c2.get("app", "/missing").await.unwrap().status, 404);
    let h2 = H2Client::connect(proxy.inbound()).await.unwrap();
    for _ in 0..2 {
        let r = h2
            .send(
                request("GET", "http://app/ok", None)
                    .body(shoal_tests::client::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }

    let inbound_ok = [
        ("direction", "inbound"),
        ("service", "checkout"),
        ("status_code", "200"),
    ];
    proxy
        .wait_metric("shoal_requests_total", &inbound_ok, 7.0)
        .await;
    let text = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "shoal_requests_total",
            &[("direction", "inbound"), ("status_code", "404")]
        ),
        1.0,
        "{text}"
    );
    let samples = prom::parse(&text);
    let ok = prom::matching(&samples, "shoal_requests_total", &inbound_ok);
    assert_eq!(ok.len(), 1, "one series: {ok:?}");
    assert_eq!(ok[0].label("route"), Some("default"));
    assert_eq!(
        ok[0].label("reason"),
        Some(""),
        "the upstream answered: no proxy reason"
    );

    // Latency histogram: cumulative buckets, +Inf == count == requests of the class.
    let bucket = |le: &str, class: &str| {
        metric_value(
            &text,
            "shoal_request_duration_seconds_bucket",
            &[
                ("direction", "inbound"),
                ("status_class", class),
                ("le", le),
            ],
        )
    };
    assert_eq!(bucket("+Inf", "2xx"), 7.0, "{text}");
    assert_eq!(bucket("+Inf", "4xx"), 1.0);
    assert!(bucket("0.001", "2xx") <= bucket("10", "2xx"));
    assert_eq!(
        metric_value(
            &text,
            "shoal_request_duration_seconds_count",
            &[("direction", "inbound"), ("status_class", "2xx")]
        ),
        7.0
    );
    assert!(
        metric_value(
            &text,
            "shoal_request_duration_seconds_sum",
            &[("direction", "inbound"), ("status_class", "2xx")]
        ) > 0.0
    );

    assert_eq!(
        metric_value(
            &text,
            "shoal_tcp_connections_opened_total",
            &[("direction", "inbound")]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "shoal_protocol_detections_total",
            &[("direction", "inbound"), ("result", "http1")]
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &text,
            "shoal_protocol_detections_total",
            &[("direction", "inbound"), ("result", "http2")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "shoal_tcp_connections_active",
            &[("direction", "inbound")]
        ),
        3.0
    );

    // Closing connections moves them to closed, with their bytes.
    drop(c);
    drop(c2);
    drop(h2);
    proxy
        .wait_metric(
            "shoal_tcp_connections_active",
            &[("direction", "inbound")],
            0.0,
        )
        .await;
    let text = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "shoal_tcp_connections_closed_total",
            &[("direction", "inbound")]
        ),
        3.0
    );
    assert!(
        metric_value(
            &text,
            "shoal_tcp_read_bytes_total",
            &[("direction", "inbound"), ("protocol", "http1")]
        ) > 6.0 * 20.0,
        "{text}"
    );
    assert!(
        metric_value(
            &text,
            "shoal_tcp_write_bytes_total",
            &[("direction", "inbound"), ("protocol", "http1")]
        ) > 0.0
    );
}
