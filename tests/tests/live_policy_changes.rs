//! Every policy kind a calling proxy enforces, changed with `shoalctl apply` under steady traffic
//! through a real control plane and a discovery-fed proxy: a Route (its retry policy, then its
//! split), a BackendPolicy (algorithm, cap, slow start, outlier detection kept), a FaultInjection
//! scoped by a header, an outbound RateLimit and a Mirror. Each change shows in the proxy's
//! `/config`; no request fails; and what the proxy learnt at runtime survives the changes: an
//! endpoint's ejection count and latency estimate, and the route's retry budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use shoal_tests::backend::text_response;
use shoal_tests::control_plane::{ControlPlane, ControlPlaneBuilder, MeshClient, service_yaml};
use shoal_tests::{HttpBackend, Proxy, eventually};
use tokio::sync::RwLock;

/// How long a change may take to reach the proxy's `/config` (generous: a loaded machine).
const PROPAGATION: Duration = Duration::from_secs(20);

/// The route's retry policy: `budget_min_retries_per_second: 1` makes a fresh budget allow
/// exactly 10 retries (1 × the 10 s window) while nothing is sent, which tells it apart from one
/// that kept the window's requests.
const RETRY: &str = "{attempts: 3, backoff_base_ms: 1, backoff_max_ms: 5, budget_ratio: 0.5, budget_min_retries_per_second: 1}";
const FRESH_BUDGET: u64 = 10;

fn route(retry: &str, backends: &str) -> String {
    format!(
        "kind: Route\nmetadata: {{name: app}}\nspec:\n  parent_service: app\n  rules:\n  - backends: [{backends}]\n    timeout_ms: 5000\n    retry: {retry}\n"
    )
}

/// A BackendPolicy of `app` with `load_balancer` (its fields), `extra` (YAML lines under `spec`) and the outlier detection
/// every version keeps (so `/config` shows the ejection counts).
fn backend_policy(load_balancer: &str, extra: &str) -> String {
    format!(
        "kind: BackendPolicy\nmetadata: {{name: app}}\nspec:\n  service: app\n  load_balancer: {{{load_balancer}}}\n  \
         outlier_detection: {{consecutive_5xx: 3, base_ejection_time_ms: 500, max_ejection_percent: 50}}\n{extra}"
    )
}

/// `/config`'s service `name` and its route rules.
async fn service(proxy: &Proxy, name: &str) -> (Value, Vec<Value>) {
    let config = proxy.config().await;
    let services = config["state"]["services"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(i) = services.iter().position(|s| s["name"] == name) else {
        return (Value::Null, Vec::new());
    };
    let rules = config["state"]["routes"][i]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (services[i].clone(), rules)
}

/// The `/config` entry of `app`'s endpoint `addr` in its balancer.
fn endpoint(app: &Value, addr: std::net::SocketAddr) -> Value {
    app["load_balancer"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint {addr} in {app}"))
}

/// Applies `yaml` and waits until `shown` holds for `app`'s `/config` (the service, its rules and
/// the whole document).
async fn change(
    cp: &ControlPlane,
    proxy: &Proxy,
    what: &str,
    yaml: &str,
    shown: impl Fn(&Value, &[Value], &Value) -> bool,
) {
    cp.apply(yaml).await.success();
    eventually(PROPAGATION, what, || async {
        let config = proxy.config().await;
        let (app, rules) = service(proxy, "app").await;
        if shown(&app, &rules, &config) {
            Ok(())
        } else {
            Err(format!("app: {app}\nrules: {rules:?}\nconfig: {config}"))
        }
    })
    .await;
}

/// Requests sent by the background client, and those that failed (with the first failures).
#[derive(Default)]
struct Counts {
    sent: AtomicUsize,
    failed: AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_changes_under_traffic_without_a_failed_request_and_keeps_runtime_state() {
    // `app` has two endpoints, the second of which fails while `broken` is set (to be ejected
    // once, before the changes); `app-v2` takes a split share; `app-shadow` gets the mirror.
    let broken = Arc::new(AtomicBool::new(false));
    let a0 = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let a1 = {
        let broken = broken.clone();
        HttpBackend::respond(move |_| {
            if broken.load(Ordering::SeqCst) {
                text_response(503, "busy")
            } else {
                text_response(200, "ok")
            }
        })
        .await
    };
    let v2 = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let shadow = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&format!(
        "{}---\n{}---\n{}",
        service_yaml("app", 80, &[a0.addr(), a1.addr()]),
        service_yaml("app-v2", 80, &[v2.addr()]),
        service_yaml("app-shadow", 80, &[shadow.addr()])
    ))
    .await
    .success();
    cp.apply(&route(RETRY, "{service: app}")).await.success();
    cp.apply(&backend_policy("algorithm: round_robin", ""))
        .await
        .success();
    let proxy = cp.proxy_builder("live-proxy").start().await;

    // The first request subscribes to `app`, its route and its policy.
    eventually(PROPAGATION, "app's policies in /config", || async {
        let resp = MeshClient::new(proxy.outbound())
            .get("app", "/")
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let (app, rules) = service(&proxy, "app").await;
        if app["load_balancer"]["algorithm"] == "round_robin"
            && rules.first().is_some_and(|r| r["retry"]["attempts"] == 3)
        {
            Ok(())
        } else {
            Err(format!("{app}\n{rules:?}"))
        }
    })
    .await;

    // The second endpoint fails until ejected; retries hide it from the client.
    broken.store(true, Ordering::SeqCst);
    let ejections = eventually(PROPAGATION, "the failing endpoint ejected", || async {
        let resp = MeshClient::new(proxy.outbound())
            .get("app", "/")
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(resp.status, 200, "retried to success: {}", resp.text());
        let (app, _) = service(&proxy, "app").await;
        match endpoint(&app, a1.addr())["ejections"].as_u64() {
            Some(n) if n > 0 => Ok(n),
            _ => Err(app.to_string()),
        }
    })
    .await;
    broken.store(false, Ordering::SeqCst);

    // Steady traffic from here on; `pause` (taken for writing) stops it between two requests.
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(RwLock::new(()));
    let load = {
        let (addr, counts, stop, pause) = (
            proxy.outbound(),
            counts.clone(),
            stop.clone(),
            pause.clone(),
        );
        tokio::spawn(async move {
            let mut client = MeshClient::new(addr);
            while !stop.load(Ordering::SeqCst) {
                let _running = pause.read().await;
                let failure = match client.get("app", "/").await {
                    Ok(resp) if resp.status == 200 && resp.text() == "ok" => None,
                    Ok(resp) => Some(format!(
                        "{} ({:?}): {}",
                        resp.status,
                        resp.header("shoal-proxy-error"),
                        resp.text()
                    )),
                    Err(e) => Some(e.to_string()),
                };
                counts.sent.fetch_add(1, Ordering::SeqCst);
                if let Some(f) = failure {
                    counts.failed.fetch_add(1, Ordering::SeqCst);
                    let mut failures = counts.failures.lock().unwrap();
                    if failures.len() < 10 {
                        failures.push(f);
                    }
                }
            }
        })
    };
    // Some traffic before the first change, and between changes.
    let traffic = |n: usize| {
        let counts = counts.clone();
        async move {
            let from = counts.sent.load(Ordering::SeqCst);
            eventually(PROPAGATION, "background requests", || async {
                let sent = counts.sent.load(Ordering::SeqCst);
                if sent >= from + n {
                    Ok(())
                } else {
                    Err(format!("{sent} sent"))
                }
            })
            .await;
        }
    };
    traffic(50).await;

    // Route: a new retry policy (the same budget terms).
    let retry4 = "{attempts: 4, backoff_base_ms: 1, backoff_max_ms: 5, budget_ratio: 0.5, budget_min_retries_per_second: 1, retry_on: [service_unavailable, connect_failure, gateway_error]}";
    change(
        &cp,
        &proxy,
        "the new retry policy",
        &route(retry4, "{service: app}"),
        |_, rules, _| rules.first().is_some_and(|r| r["retry"]["attempts"] == 4),
    )
    .await;
    traffic(50).await;

    // The proxy holds `app-v2` before the split names it: a route naming a service the proxy
    // does not hold yet is left out of its state until that service arrives (losing the rule's
    // retry budget), which this test does not cover.
    eventually(PROPAGATION, "app-v2 held", || async {
        let resp = MeshClient::new(proxy.outbound())
            .get("app-v2", "/")
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let (v2, _) = service(&proxy, "app-v2").await;
        if v2.is_null() {
            Err("not yet".to_string())
        } else {
            Ok(())
        }
    })
    .await;

    // Route: a split change, with the traffic paused around it, so the retry budget and the
    // latency estimates seen after it can only be the ones kept.
    let quiet = pause.write().await;
    let (before, rules) = service(&proxy, "app").await;
    let budget_before = rules[0]["retry"]["budget_available"].as_u64().unwrap();
    assert!(budget_before > FRESH_BUDGET, "{rules:?}");
    change(
        &cp,
        &proxy,
        "the new split",
        &route(
            retry4,
            "{service: app, weight: 90}, {service: app-v2, weight: 10}",
        ),
        |_, rules, _| {
            rules
                .first()
                .is_some_and(|r| r["backends"].as_array().is_some_and(|b| b.len() == 2))
        },
    )
    .await;
    let (after, rules) = service(&proxy, "app").await;
    let budget_after = rules[0]["retry"]["budget_available"].as_u64().unwrap();
    assert!(
        budget_after > FRESH_BUDGET,
        "the retry budget was reset by a split change: {budget_before} before, {budget_after} after"
    );
    for addr in [a0.addr(), a1.addr()] {
        let (was, is) = (endpoint(&before, addr), endpoint(&after, addr));
        assert!(
            is["rtt_estimate_ms"].is_f64(),
            "{addr}'s latency estimate was lost by a split change: {was} → {is}"
        );
        assert_eq!(was["ejections"], is["ejections"], "{addr}: {was} → {is}");
    }
    drop(quiet);
    traffic(50).await;

    // BackendPolicy: another algorithm, a cap, slow start (outlier detection kept throughout).
    change(
        &cp,
        &proxy,
        "least_request",
        &backend_policy("algorithm: least_request", ""),
        |app, _, _| app["load_balancer"]["algorithm"] == "least_request",
    )
    .await;
    traffic(50).await;
    let capped = backend_policy(
        "algorithm: least_request",
        "  limits: {max_concurrent_requests: 1000}\n",
    );
    change(&cp, &proxy, "the cap", &capped, |app, _, _| {
        app["backend_policy"]["policy"]["max_concurrent_requests"] == 1000
    })
    .await;
    traffic(50).await;
    let slow = backend_policy(
        "algorithm: least_request, slow_start_ms: 2000",
        "  limits: {max_concurrent_requests: 1000}\n",
    );
    change(&cp, &proxy, "slow start", &slow, |app, _, _| {
        app["load_balancer"]["slow_start"] == "2s"
    })
    .await;
    traffic(50).await;

    // FaultInjection: aborts, 0 % of them, and only of requests with a header no one sends.
    change(
        &cp,
        &proxy,
        "the fault injection",
        "kind: FaultInjection\nmetadata: {name: app}\nspec:\n  target_service: app\n  abort: {percent: 0, http_status: 500}\n  matches:\n  - headers: [{name: x-chaos, exact: \"on\"}]\n",
        |app, _, _| app["fault_injection"]["abort"]["http_status"] == 500,
    )
    .await;
    traffic(50).await;

    // RateLimit on the calling side, far above the traffic.
    change(
        &cp,
        &proxy,
        "the outbound rate limit",
        "kind: RateLimit\nmetadata: {name: app}\nspec:\n  target_service: app\n  side: outbound\n  requests_per_unit: 100000\n",
        |_, _, config| {
            config["state"]["outbound_rate_limits"]["app.default"]["requests_per_unit"] == 100000
        },
    )
    .await;
    traffic(50).await;

    // Mirror: every request copied to the shadow.
    change(
        &cp,
        &proxy,
        "the mirror",
        "kind: Mirror\nmetadata: {name: app}\nspec:\n  target_service: app\n  mirror_service: app-shadow\n  percent: 100\n",
        |app, _, _| app["mirror"]["percent"] == 100.0,
    )
    .await;
    eventually(PROPAGATION, "copies reaching the shadow", || async {
        if shadow.count() > 0 {
            Ok(())
        } else {
            Err("none yet")
        }
    })
    .await;
    traffic(50).await;

    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let (sent, failed) = (
        counts.sent.load(Ordering::SeqCst),
        counts.failed.load(Ordering::SeqCst),
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} requests failed while the policies changed: {:?}",
        counts.failures.lock().unwrap()
    );
    assert!(v2.count() > 0, "the split sent nothing to app-v2");

    // Learnt before the changes, kept through all of them: the ejection count of the endpoint
    // that failed (healthy since, so never ejected again).
    let (app, _) = service(&proxy, "app").await;
    assert_eq!(
        endpoint(&app, a1.addr())["ejections"].as_u64(),
        Some(ejections),
        "the ejection count did not survive the changes: {app}"
    );
}

/// A split naming a service the proxy does not hold yet: the proxy subscribes to it and, until it
/// arrives, keeps serving the route's previous version (`discovery/resources.rs`, `superseded`),
/// so the rule's retries, timeout and retry budget carry on. (Before, the whole route left the
/// state meanwhile and the budget started again at its fresh value.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_to_a_service_not_yet_held_keeps_the_retry_budget() {
    let app = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let v2 = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&format!(
        "{}---\n{}",
        service_yaml("app", 80, &[app.addr()]),
        service_yaml("app-v2", 80, &[v2.addr()])
    ))
    .await
    .success();
    cp.apply(&route(RETRY, "{service: app}")).await.success();
    let proxy = cp.proxy_builder("split-proxy").start().await;
    let mut client = MeshClient::new(proxy.outbound());
    for i in 0..100 {
        let resp = client.get("app", "/").await.unwrap();
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    let (_, rules) = service(&proxy, "app").await;
    let before = rules[0]["retry"]["budget_available"].as_u64().unwrap();
    assert!(before > FRESH_BUDGET, "{rules:?}");
    change(
        &cp,
        &proxy,
        "the new split",
        &route(
            RETRY,
            "{service: app, weight: 90}, {service: app-v2, weight: 10}",
        ),
        |_, rules, _| {
            rules
                .first()
                .is_some_and(|r| r["backends"].as_array().is_some_and(|b| b.len() == 2))
        },
    )
    .await;
    let (_, rules) = service(&proxy, "app").await;
    let after = rules[0]["retry"]["budget_available"].as_u64().unwrap();
    assert!(
        after > FRESH_BUDGET,
        "the retry budget was reset by a split to a new service: {before} before, {after} after"
    );
}
