//! A mesh of real processes: `shoal-control-plane`, a discovery-fed `shoal-proxy` and two HTTP
//! backends. `shoalctl apply` of a route moves traffic from v1 to v2 within a second, a 50/50
//! split lands near 50/50, the caller's own `/metrics` counts every request under the backend that
//! answered it, and `shoalctl status` shows the proxy SYNCED.

use std::time::{Duration, Instant};

use shoal_tests::HttpBackend;
use shoal_tests::backend::text_response;
use shoal_tests::control_plane::{ControlPlaneBuilder, MeshClient, route_yaml, service_yaml};

/// The target: a route change is observed by traffic within 1 s of `shoalctl apply`.
const SHIFT_LIMIT: Duration = Duration::from_secs(1);

async fn named(name: &'static str) -> HttpBackend {
    HttpBackend::respond(move |_| text_response(200, name)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_applied_with_shoalctl_shifts_traffic_within_a_second() {
    let v1 = named("v1").await;
    let v2 = named("v2").await;
    let cp = ControlPlaneBuilder::new().start().await;
    let applied = cp
        .apply(&format!(
            "{}---\n{}",
            service_yaml("web", 80, &[v1.addr()]),
            service_yaml("web-v2", 80, &[v2.addr()])
        ))
        .await;
    assert!(
        applied.stdout.contains("service/web.default created")
            && applied.stdout.contains("service/web-v2.default created"),
        "{applied:?}"
    );
    let proxy = cp.proxy_builder("shift-proxy").start().await;
    let mut client = MeshClient::new(proxy.outbound());

    // No route yet: `web` is its own endpoints (the first request subscribes and waits for the
    // control plane's answer; it must not pass through).
    for _ in 0..20 {
        assert_eq!(client.body("web").await.unwrap(), "v1");
    }
    assert_eq!(v2.count(), 0, "nothing reaches v2 without a route");
    // The other spellings of the service name resolve to the same service.
    assert_eq!(client.body("web.default").await.unwrap(), "v1");
    assert_eq!(
        client
            .body("web.default.svc.cluster.local:80")
            .await
            .unwrap(),
        "v1"
    );

    let row = cp
        .wait_proxy_state("shift-proxy", "SYNCED", Duration::from_secs(5))
        .await;
    let (synced, total) = row
        .resources
        .trim_end_matches(" synced")
        .split_once('/')
        .expect("RESOURCES is n/m synced");
    assert_eq!(synced, total, "{row:?}");
    assert!(total.parse::<u32>().unwrap() >= 3, "{row:?}");
    assert_eq!(row.last_nack, "", "{row:?}");

    // 100 % to web-v2: the first v2 answer within a second of shoalctl's exit.
    let shift = cp.apply(&route_yaml("web", &[("web-v2", 100)])).await;
    assert!(
        shift.stdout.contains("route/web.default created"),
        "{shift:?}"
    );
    let mut before_v2 = 0;
    let shifted_after = loop {
        let body = client.body("web").await.unwrap();
        let elapsed = shift.exited_at.elapsed();
        if body == "v2" {
            break elapsed;
        }
        assert_eq!(body, "v1");
        before_v2 += 1;
        assert!(
            elapsed < SHIFT_LIMIT,
            "still answered by v1 {elapsed:?} after `shoalctl apply` exited ({before_v2} requests)\nproxy /config: {}",
            proxy.config().await
        );
    };
    eprintln!(
        "route observed {shifted_after:?} after shoalctl exited ({before_v2} v1 answers before)"
    );
    assert!(shifted_after < SHIFT_LIMIT, "{shifted_after:?}");
    // From then on, everything goes to v2 (the update applied atomically, never half).
    // Every answer from here on is under the route (the first v2 answer already was).
    let mut routed_v2 = 1;
    let v1_before = v1.count();
    for i in 0..50 {
        assert_eq!(client.body("web").await.unwrap(), "v2", "request {i}");
    }
    assert_eq!(v1.count(), v1_before);
    routed_v2 += 50;

    // A 50/50 split.
    let split = cp
        .apply(&route_yaml("web", &[("web", 50), ("web-v2", 50)]))
        .await;
    assert!(
        split.stdout.contains("route/web.default configured"),
        "{split:?}"
    );
    let deadline = split.exited_at + SHIFT_LIMIT;
    // Until the split applies every answer is v2; the first v1 answer says it has.
    loop {
        if client.body("web").await.unwrap() == "v1" {
            break;
        }
        routed_v2 += 1;
        assert!(
            Instant::now() < deadline,
            "no v1 answer within {SHIFT_LIMIT:?} of applying the 50/50 split"
        );
    }
    let (mut n1, mut n2) = (0, 0);
    for _ in 0..200 {
        match client.body("web").await.unwrap().as_str() {
            "v1" => n1 += 1,
            "v2" => n2 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // Binomial(200, 0.5): standard deviation ~7; 100 ± 30 is more than 4 of them.
    assert!((70..=130).contains(&n1), "v1 {n1}, v2 {n2} of 200");
    assert_eq!(n1 + n2, 200);

    // The caller's metrics show the shift per backend, request for request: before the route
    // every request was `web`'s own (route `default`); under it, each counts under the backend
    // that answered (the route is named after its parent service).
    let text = proxy.metrics().await;
    let count = |route: &str, backend: &str| {
        shoal_tests::metric_value(
            &text,
            "shoal_requests_total",
            &[
                ("direction", "outbound"),
                ("service", "web.default"),
                ("route", route),
                ("backend", backend),
                ("status_code", "200"),
            ],
        )
    };
    let unrouted = 22 + before_v2;
    assert_eq!(count("default", "web.default"), unrouted as f64, "{text}");
    assert_eq!(
        count("web.default", "web.default"),
        (1 + n1) as f64,
        "{text}"
    );
    assert_eq!(
        count("web.default", "web-v2.default"),
        (routed_v2 + n2) as f64,
        "{text}"
    );
    assert_eq!(
        shoal_tests::metric_value(&text, "shoal_requests_total", &[("direction", "outbound")]),
        (unrouted + 1 + n1 + routed_v2 + n2) as f64,
        "every request counted once: {text}"
    );

    // The proxy acknowledged everything it was sent.
    let row = cp
        .wait_proxy_state("shift-proxy", "SYNCED", Duration::from_secs(5))
        .await;
    let (synced, total) = row
        .resources
        .trim_end_matches(" synced")
        .split_once('/')
        .unwrap();
    assert_eq!(synced, total, "{row:?}");
    let config = proxy.config().await;
    assert_eq!(config["discovery"]["connected"], true, "{config}");
    assert_eq!(config["discovery"]["nacked"], 0, "{config}");
    assert!(config["sync"]["last_error"].is_null(), "{config}");
}
