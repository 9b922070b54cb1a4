//! Resilience policies through real processes: `shoalctl apply` of a route with `retry` reaches a
//! discovery-fed proxy, which retries a backend's transient failures to success and shows the
//! policy in `/config`; changing the policy under traffic fails no request. A `BackendPolicy`
//! (algorithm, cap, breaker override) is enforced and changes live. What the proxy could not
//! enforce as written is refused at `apply`, naming the field.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shoal_tests::HttpBackend;
use shoal_tests::backend::text_response;
use shoal_tests::control_plane::{ControlPlaneBuilder, MeshClient, service_yaml};

fn route(retry: &str) -> String {
    format!(
        "kind: Route\nmetadata: {{name: app}}\nspec:\n  parent_service: app\n  rules:\n  - backends: [{{service: app}}]\n    timeout_ms: 2000\n    retry: {retry}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_policy_applied_with_shoalctl_recovers_failures() {
    // Every third request fails with 503 (as an overloaded instance might).
    let seen = Arc::new(AtomicUsize::new(0));
    let backend = HttpBackend::respond(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst).is_multiple_of(3) {
            text_response(503, "busy")
        } else {
            text_response(200, "ok")
        }
    })
    .await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&service_yaml("app", 80, &[backend.addr()]))
        .await
        .success();
    let applied = cp
        .apply(&route(
            "{attempts: 3, backoff_base_ms: 1, backoff_max_ms: 5}",
        ))
        .await
        .success();
    assert!(
        applied.stdout.contains("route/app.default created"),
        "{applied:?}"
    );

    let proxy = cp.proxy_builder("retry-proxy").start().await;
    let mut client = MeshClient::new(proxy.outbound());
    // The first request subscribes to the service and its route, and already has the policy.
    for i in 0..60 {
        let resp = client.get("app", "/").await.unwrap();
        assert_eq!(
            (resp.status.as_u16(), resp.text()),
            (200, "ok".to_string()),
            "request {i}"
        );
    }
    let retries = proxy
        .metric(
            "shoal_retries_total",
            &[("service", "app.default"), ("route", "app.default")],
        )
        .await;
    assert!(
        retries >= 19.0,
        "{retries} retries for 60 requests failing every third attempt"
    );

    // Changing the policy under traffic: no failed request.
    let load = {
        let addr = proxy.outbound();
        tokio::spawn(async move {
            let mut client = MeshClient::new(addr);
            let mut failed = 0;
            for _ in 0..200 {
                let resp = client.get("app", "/").await.unwrap();
                failed += usize::from(resp.status != 200);
            }
            failed
        })
    };
    cp.apply(&route(
        "{attempts: 4, backoff_base_ms: 1, backoff_max_ms: 5, retry_on: [service_unavailable, connect_failure]}",
    ))
    .await
    .success();
    assert_eq!(
        load.await.unwrap(),
        0,
        "failed requests while the policy changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_policy_the_proxy_cannot_enforce_is_refused_naming_the_field() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&service_yaml("app", 80, &[backend.addr()]))
        .await
        .success();
    let refused = cp
        .ctl(
            &["apply", "-f", "-"],
            Some(&route("{attempts: 3, per_try_timeout_ms: 5000}")),
        )
        .await;
    assert_eq!(refused.code(), Some(1), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("spec.rules[0].retry.per_try_timeout_ms"),
        "{}",
        refused.stderr
    );
}

fn backend_policy(spec: &str) -> String {
    format!("kind: BackendPolicy\nmetadata: {{name: app}}\nspec:\n  service: app\n{spec}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_policy_applied_with_shoalctl_is_enforced_and_changes_live() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&service_yaml("app", 80, &[backend.addr()]))
        .await
        .success();
    cp.apply(&backend_policy(
        "  load_balancer: {algorithm: round_robin, slow_start_ms: 5000}\n  limits: {max_concurrent_requests: 50, max_connections: 4, max_pending_requests: 8, max_requests_per_connection: 100, max_concurrent_retries: 2}\n  circuit_breaker: {override: force_open}\n  \
         outlier_detection: {interval_ms: 2000, success_rate: {minimum_hosts: 3, stdev_factor: 1.5}}\n",
    ))
    .await
    .success();
    let proxy = cp.proxy_builder("policy-proxy").start().await;
    let mut client = MeshClient::new(proxy.outbound());
    let resp = client.get("app", "/").await.unwrap();
    assert_eq!(
        (resp.status.as_u16(), resp.header("shoal-proxy-error")),
        (503, Some("circuit-open")),
        "{}",
        resp.text()
    );
    assert_eq!(backend.count(), 0);
    let config = proxy.config().await;
    let app = config["state"]["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "app")
        .cloned()
        .unwrap_or_else(|| panic!("no service app in /config: {config}"));
    assert_eq!(app["load_balancer"]["algorithm"], "round_robin", "{app}");
    assert_eq!(app["load_balancer"]["slow_start"], "5s", "{app}");
    let rate = &app["load_balancer"]["outlier_detection"]["success_rate"];
    assert_eq!(
        (
            &rate["interval"],
            &rate["minimum_hosts"],
            &rate["request_volume"],
            &rate["stdev_factor"]
        ),
        (&"2s".into(), &3.into(), &100.into(), &1.5.into()),
        "pushed through discovery, defaults filled in: {app}"
    );
    assert_eq!(
        app["backend_policy"]["circuit_breaker_state"], "forced_open",
        "{app}"
    );
    // The connection limits and the retry cap reach the proxy through discovery.
    let policy = &app["backend_policy"]["policy"];
    assert_eq!(policy["max_connections"], 4, "{app}");
    assert_eq!(policy["max_pending_requests"], 8, "{app}");
    assert_eq!(policy["max_requests_per_connection"], 100, "{app}");
    assert_eq!(policy["max_concurrent_retries"], 2, "{app}");
    assert_eq!(
        app["backend_policy"]["connections"]["max_connections"], 4,
        "{app}"
    );

    // The operator closes it again: traffic flows within a moment of `apply`.
    cp.apply(&backend_policy(
        "  load_balancer: {algorithm: round_robin}\n  limits: {max_concurrent_requests: 50}\n",
    ))
    .await
    .success();
    shoal_tests::eventually(
        std::time::Duration::from_secs(10),
        "traffic after the override is removed",
        || {
            let addr = proxy.outbound();
            async move {
                let resp = MeshClient::new(addr)
                    .get("app", "/")
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status == 200 {
                    Ok(())
                } else {
                    Err(resp.text())
                }
            }
        },
    )
    .await;

    // A setting that would do nothing is refused at apply, naming the field.
    let refused = cp
        .ctl(
            &["apply", "-f", "-"],
            Some(&backend_policy(
                "  outlier_detection: {consecutive_5xx: 5, interval_ms: 10000}\n",
            )),
        )
        .await;
    assert_eq!(refused.code(), Some(1), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("spec.outlier_detection.interval_ms: only used with success_rate"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_injection_applied_with_shoalctl_aborts_requests() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&service_yaml("app", 80, &[backend.addr()]))
        .await
        .success();
    cp.apply("kind: FaultInjection\nmetadata: {name: app}\nspec:\n  target_service: app\n  abort: {percent: 100, http_status: 500}\n")
        .await
        .success();
    let proxy = cp.proxy_builder("fault-proxy").start().await;
    let mut client = MeshClient::new(proxy.outbound());
    let resp = client.get("app", "/").await.unwrap();
    assert_eq!(
        (resp.status.as_u16(), resp.header("shoal-proxy-error")),
        (500, Some("fault-injected")),
        "{}",
        resp.text()
    );
    assert_eq!(backend.count(), 0);
}
