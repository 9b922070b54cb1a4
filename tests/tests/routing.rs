//! Routing from a static state file through the explicit outbound listener: Host → service
//! endpoints, weighted splits, header and path rules, and reloads (file change, SIGHUP, invalid
//! files).

use std::net::SocketAddr;
use std::time::Duration;

use shoal_tests::backend::text_response;
use shoal_tests::client::H1Client;
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, eventually};

const RELOAD: Duration = Duration::from_secs(10);

type Headers<'a> = &'a [(&'a str, &'a str)];

/// A backend answering with its own name.
async fn named(name: &'static str) -> HttpBackend {
    HttpBackend::respond(move |_| text_response(200, name)).await
}

/// `GET path` with `Host: host` (and extra headers) through the outbound listener; returns the
/// body (the name of the backend that answered).
async fn who(proxy: &Proxy, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
    let mut req = shoal_tests::client::request("GET", path, Some(host));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .send(req.body(shoal_tests::client::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "Host {host} {path}: {resp:?}");
    resp.text()
}

fn two_services(web: SocketAddr, web_v2: SocketAddr) -> String {
    format!(
        r#"services:
  - name: web
    port: 80
    hosts: [web.example]
    endpoints:
      - address: "{web}"
  - name: web-v2
    port: 80
    endpoints:
      - address: "{web_v2}"
"#
    )
}

#[tokio::test]
async fn host_selects_the_service_endpoints() {
    let web = named("web").await;
    let api = named("api").await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            r#"services:
  - name: web
    port: 80
    hosts: [web.example]
    endpoints: [{{ address: "{}" }}]
  - name: api
    namespace: shop
    port: 8080
    hosts: [api.example]
    endpoints: [{{ address: "{}" }}]
"#,
            web.addr(),
            api.addr()
        ))
        .start()
        .await;
    for host in [
        "web",
        "web:80",
        "web.example",
        "WEB.Example",
        "web.default",
        "web.default.svc.cluster.local",
    ] {
        assert_eq!(who(&proxy, host, "/", &[]).await, "web", "Host {host}");
    }
    for host in [
        "api.example:8080",
        "api:8080",
        "api.shop:8080",
        "api.shop.svc.cluster.local:8080",
    ] {
        assert_eq!(who(&proxy, host, "/", &[]).await, "api", "Host {host}");
    }
    let seen = web.last();
    assert_eq!(seen.header("host"), Some("web.default.svc.cluster.local"));
    let metrics = proxy.metrics().await;
    assert_eq!(
        shoal_tests::metric_value(
            &metrics,
            "shoal_requests_total",
            &[
                ("direction", "outbound"),
                ("service", "web.default"),
                ("status_code", "200")
            ]
        ),
        6.0,
        "{metrics}"
    );
    assert_eq!(
        shoal_tests::metric_value(
            &metrics,
            "shoal_requests_total",
            &[("service", "api.shop"), ("status_code", "200")]
        ),
        4.0
    );
}

#[tokio::test]
async fn weighted_split_90_10_lands_within_tolerance() {
    let a = named("a").await;
    let b = named("b").await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            r#"services:
  - name: shop
    port: 80
    endpoints: [{{ address: "{}" }}]
  - name: shop-canary
    port: 80
    endpoints: [{{ address: "{}" }}]
routes:
  - name: shop-split
    service: shop
    rules:
      - backends:
          - {{ service: shop, weight: 90 }}
          - {{ service: shop-canary, weight: 10 }}
"#,
            a.addr(),
            b.addr()
        ))
        .start()
        .await;
    const N: usize = 500;
    let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
    for i in 0..N {
        let resp = c.get("shop", &format!("/item/{i}")).await.unwrap();
        assert_eq!(resp.status, 200);
    }
    let (na, nb) = (a.count(), b.count());
    assert_eq!(na + nb, N);
    // Binomial(500, 0.1): mean 50, standard deviation 6.7; ±4 σ.
    assert!(
        (23..=77).contains(&nb),
        "canary got {nb} of {N} (expected about 50); main got {na}"
    );
    proxy
        .wait_metric(
            "shoal_requests_total",
            &[("route", "shop-split"), ("status_code", "200")],
            N as f64,
        )
        .await;
    // The caller's own metrics show the split: each backend's count is exactly what reached it.
    let text = proxy.metrics().await;
    for (backend, reached) in [("shop.default", na), ("shop-canary.default", nb)] {
        let labels = [
            ("direction", "outbound"),
            ("service", "shop.default"),
            ("route", "shop-split"),
            ("backend", backend),
            ("status_code", "200"),
        ];
        let counted = shoal_tests::metric_value(&text, "shoal_requests_total", &labels);
        assert_eq!(counted, reached as f64, "{backend}\n{text}");
        let timed = shoal_tests::metric_value(
            &text,
            "shoal_request_duration_seconds_count",
            &[("route", "shop-split"), ("backend", backend)],
        );
        assert_eq!(timed, reached as f64, "{backend}\n{text}");
    }
}

#[tokio::test]
async fn header_and_path_prefix_rules() {
    let web = named("web").await;
    let v2 = named("web-v2").await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            "{}routes:
  - name: web-rules
    service: web
    rules:
      - matches:
          - headers: {{ x-canary: \"1\" }}
        backends: [{{ service: web-v2 }}]
      - matches:
          - path_prefix: /v2
            method: GET
        backends: [{{ service: web-v2 }}]
",
            two_services(web.addr(), v2.addr())
        ))
        .start()
        .await;
    // (path, request headers, the backend that must answer)
    let cases: &[(&str, Headers, &str)] = &[
        ("/", &[], "web"),
        ("/", &[("x-canary", "1")], "web-v2"),
        ("/", &[("x-canary", "0")], "web"),
        ("/other", &[("x-canary", "1")], "web-v2"),
        // Prefixes match whole path segments.
        ("/v2", &[], "web-v2"),
        ("/v2/items", &[], "web-v2"),
        ("/v2x/items", &[], "web"),
        ("/api/v2/", &[], "web"),
    ];
    for (path, headers, want) in cases {
        assert_eq!(
            who(&proxy, "web.example", path, headers).await,
            *want,
            "{path} {headers:?}"
        );
    }
    // The method is part of the path rule's match.
    let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
    let resp = c
        .send(
            shoal_tests::client::request("POST", "/v2/items", Some("web.example"))
                .body(shoal_tests::client::full("x"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.text(), "web", "POST does not match the GET-only rule");
}

#[tokio::test]
async fn edited_state_file_is_applied_and_invalid_edits_are_rejected() {
    let web = named("web").await;
    let v2 = named("web-v2").await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&two_services(web.addr(), v2.addr()))
        .start()
        .await;
    assert_eq!(who(&proxy, "web.example", "/", &[]).await, "web");
    let version = proxy.config().await["sync"]["version"].as_u64().unwrap();

    // Point `web` at the v2 backend.
    std::fs::write(
        proxy.state_path(),
        two_services(v2.addr(), v2.addr()) + "# edited\n",
    )
    .unwrap();
    eventually(RELOAD, "the edited state file to be served", || async {
        match who(&proxy, "web.example", "/", &[]).await.as_str() {
            "web-v2" => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    let config = proxy.config().await;
    assert!(
        config["sync"]["version"].as_u64().unwrap() > version,
        "{config}"
    );
    assert!(config["sync"]["last_error"].is_null(), "{config}");

    // An invalid file: rejected, named in /config, and the last good state keeps serving.
    std::fs::write(
        proxy.state_path(),
        "services:\n  - name: Not_A_Label\n    port: 80\n",
    )
    .unwrap();
    let error = eventually(RELOAD, "sync.last_error in /config", || async {
        let config = proxy.config().await;
        match config["sync"]["last_error"].as_str() {
            Some(e) => Ok(e.to_string()),
            None => Err(config["sync"].clone()),
        }
    })
    .await;
    assert!(
        error.contains("services[0].name") && error.contains("Not_A_Label"),
        "the error should name the field and value: {error}"
    );
    for _ in 0..5 {
        assert_eq!(
            who(&proxy, "web.example", "/", &[]).await,
            "web-v2",
            "the last good state must keep serving"
        );
    }
    assert!(
        proxy
            .metric("shoal_state_updates_total", &[("result", "rejected")])
            .await
            >= 1.0
    );
    let services = proxy.config().await["state"]["services"].clone();
    assert_eq!(services.as_array().map(Vec::len), Some(2), "{services}");
}

#[tokio::test]
async fn sighup_reloads_the_state_file() {
    let web = named("web").await;
    let v2 = named("web-v2").await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&two_services(web.addr(), v2.addr()))
        .start()
        .await;
    assert_eq!(who(&proxy, "web.example", "/", &[]).await, "web");

    // Swap the two addresses: same length, and the old modification time restored, so the
    // file watcher's poll (mtime and size) cannot see the change; only SIGHUP can.
    let path = proxy.state_path();
    let before = std::fs::metadata(path).unwrap();
    let swapped = two_services(v2.addr(), web.addr());
    assert_eq!(swapped.len() as u64, before.len());
    std::fs::write(path, &swapped).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    assert_eq!(
        std::fs::metadata(path).unwrap().modified().unwrap(),
        before.modified().unwrap()
    );

    proxy.signal("HUP").unwrap();
    eventually(
        RELOAD,
        "the state file to be reloaded on SIGHUP",
        || async {
            match who(&proxy, "web.example", "/", &[]).await.as_str() {
                "web-v2" => Ok(()),
                other => Err(other.to_string()),
            }
        },
    )
    .await;
    // SIGHUP reloads; it does not stop the proxy.
    assert_eq!(proxy.admin_get("/ready").await.unwrap().status, 200);
}

/// A request that times out counts under the backend the split chose, which its error names: the
/// split runs above the timeout.
#[tokio::test]
async fn a_timed_out_request_counts_under_its_backend() {
    let slow = HttpBackend::start(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        text_response(200, "late")
    })
    .await;
    let fast = named("fast").await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            r#"services:
  - name: shop
    port: 80
    endpoints: [{{ address: "{}" }}]
  - name: shop-slow
    port: 80
    endpoints: [{{ address: "{}" }}]
routes:
  - name: shop
    service: shop
    rules:
      - backends: [{{ service: shop-slow }}]
        timeout: 200ms
"#,
            fast.addr(),
            slow.addr()
        ))
        .start()
        .await;
    let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
    let resp = c.get("shop", "/").await.unwrap();
    assert_eq!(resp.status, 504, "{resp:?}");
    assert_eq!(resp.header("shoal-proxy-error"), Some("response-timeout"));
    assert!(
        resp.text().contains("shop-slow.default"),
        "the error names the backend waited for: {}",
        resp.text()
    );
    let labels = [
        ("direction", "outbound"),
        ("service", "shop.default"),
        ("route", "shop"),
        ("backend", "shop-slow.default"),
        ("status_code", "504"),
        ("reason", "response-timeout"),
    ];
    proxy
        .wait_metric("shoal_requests_total", &labels, 1.0)
        .await;
}
