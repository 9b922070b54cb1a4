//! Backend policies from the static state file, through the explicit outbound listener: the cap on
//! requests in flight answers 503 `backend-overloaded` at once when full, the circuit breaker opens
//! on failures (503 `circuit-open` without calling the backend), probes half-open and closes when
//! the backend recovers, an operator can force it open, and round robin gives every endpoint its
//! share — a slow one too, unlike the default P2C-EWMA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, empty, request};
use shoal_tests::proxy::app_service_state;
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, eventually};

const WAIT: Duration = Duration::from_secs(10);

/// A proxy routing `app.example` to `endpoints` under `policy` (YAML of one backend policy's
/// fields, indented for the list item).
async fn proxy(endpoints: &[SocketAddr], policy: &str) -> Proxy {
    ProxyBuilder::new()
        .outbound_explicit()
        .state(&state(endpoints, policy))
        .start()
        .await
}

/// The state file of [`proxy`].
fn state(endpoints: &[SocketAddr], policy: &str) -> String {
    format!(
        "{}backend_policies:\n  - service: app\n{policy}",
        app_service_state("", endpoints)
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cap_answers_503_at_once() {
    let slow = HttpBackend::start(|_| async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        text_response(200, "slow")
    })
    .await;
    let proxy = proxy(&[slow.addr()], "    limits: {max_concurrent_requests: 2}\n").await;
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let proxy = &proxy;
            async move {
                let started = Instant::now();
                let resp = get(proxy).await;
                (resp, started.elapsed())
            }
        })
        .collect();
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    let refused: Vec<_> = results
        .iter()
        .filter(|(r, _)| reason(r).as_deref() == Some("backend-overloaded"))
        .collect();
    assert_eq!((ok, refused.len()), (2, 3), "two in flight, three refused");
    for (resp, took) in &refused {
        assert_eq!(resp.status, 503);
        assert!(
            *took < Duration::from_millis(300),
            "refused after {took:?}: a full cap must not queue"
        );
    }
    assert_eq!(
        slow.heads(),
        2,
        "the refused requests never reached the backend"
    );
    let config = proxy.config().await;
    let policy = &config["state"]["services"][0]["backend_policy"];
    assert_eq!(policy["policy"]["max_concurrent_requests"], 2, "{policy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_failures_probes_and_closes() {
    let healthy = Arc::new(AtomicBool::new(false));
    let backend = HttpBackend::respond({
        let healthy = healthy.clone();
        move |_| {
            if healthy.load(Ordering::SeqCst) {
                text_response(200, "ok")
            } else {
                text_response(500, "broken")
            }
        }
    })
    .await;
    let proxy = proxy(
        &[backend.addr()],
        "    circuit_breaker: {failure_ratio_threshold: 0.5, min_requests: 4, open_duration: 300ms}\n",
    )
    .await;
    for i in 0..4 {
        assert_eq!(
            get(&proxy).await.status,
            500,
            "request {i} reaches the backend"
        );
    }
    // Open: answered at once, the backend not called.
    let resp = get(&proxy).await;
    assert_eq!(
        (resp.status.as_u16(), reason(&resp).as_deref()),
        (503, Some("circuit-open")),
        "{}",
        resp.text()
    );
    assert_eq!(backend.count(), 4);
    let state = |config: serde_json::Value| {
        config["state"]["services"][0]["backend_policy"]["circuit_breaker_state"].clone()
    };
    assert_eq!(state(proxy.config().await), "open");
    // The backend recovers; after the open period a probe goes through and closes the breaker.
    healthy.store(true, Ordering::SeqCst);
    eventually(WAIT, "a probe after the open period succeeds", || async {
        let resp = get(&proxy).await;
        if resp.status == 200 {
            Ok(())
        } else {
            Err(reason(&resp))
        }
    })
    .await;
    assert_eq!(state(proxy.config().await), "closed");
    for _ in 0..5 {
        assert_eq!(get(&proxy).await.status, 200);
    }
}

#[tokio::test]
async fn a_breaker_forced_open_refuses_every_request() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let proxy = proxy(
        &[backend.addr()],
        "    circuit_breaker: {override: force_open}\n",
    )
    .await;
    for _ in 0..3 {
        let resp = get(&proxy).await;
        assert_eq!(
            (resp.status.as_u16(), reason(&resp).as_deref()),
            (503, Some("circuit-open"))
        );
    }
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_gives_a_slow_endpoint_its_share() {
    let slow = HttpBackend::start(|_| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        text_response(200, "slow")
    })
    .await;
    let mut fast = Vec::new();
    for _ in 0..3 {
        fast.push(HttpBackend::respond(|_| text_response(200, "fast")).await);
    }
    let mut endpoints = vec![slow.addr()];
    endpoints.extend(fast.iter().map(HttpBackend::addr));
    let proxy = proxy(&endpoints, "    load_balancer: {algorithm: round_robin}\n").await;
    for _ in 0..80 {
        assert_eq!(get(&proxy).await.status, 200);
    }
    assert_eq!(slow.count(), 20, "one request in four, slow or not");
    for f in &fast {
        assert_eq!(f.count(), 20);
    }
    let config = proxy.config().await;
    assert_eq!(
        config["state"]["services"][0]["load_balancer"]["algorithm"],
        "round_robin"
    );
}

#[tokio::test]
async fn an_invalid_policy_is_refused_naming_the_field() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let exited = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            "services:\n  - name: app\n    port: 80\n    endpoints:\n      - address: \"{}\"\n\
             backend_policies:\n  - service: app\n    circuit_breaker: {{failure_ratio_threshold: 1.5}}\n",
            backend.addr()
        ))
        .run_to_exit(Duration::from_secs(10))
        .unwrap();
    let text = format!("{}{}", exited.stdout, exited.stderr);
    assert!(
        text.contains("backend_policies[0].circuit_breaker.failure_ratio_threshold"),
        "{text}"
    );
}

/// An endpoint failing with 500 until `healthy` is set.
async fn flaky(healthy: &Arc<AtomicBool>) -> HttpBackend {
    let healthy = healthy.clone();
    HttpBackend::respond(move |_| {
        if healthy.load(Ordering::SeqCst) {
            text_response(200, "ok")
        } else {
            text_response(500, "broken")
        }
    })
    .await
}

fn ejected(config: &serde_json::Value) -> Vec<bool> {
    config["state"]["services"][0]["load_balancer"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["ejected"] == true)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_probed_and_readmitted() {
    let healthy = Arc::new(AtomicBool::new(false));
    let bad = flaky(&healthy).await;
    let mut good = Vec::new();
    for _ in 0..3 {
        good.push(HttpBackend::respond(|_| text_response(200, "ok")).await);
    }
    let mut endpoints = vec![bad.addr()];
    endpoints.extend(good.iter().map(HttpBackend::addr));
    let proxy = proxy(
        &endpoints,
        "    load_balancer: {algorithm: round_robin}\n    outlier_detection: {consecutive_5xx: 2, base_ejection_time: 2s, max_ejection_percent: 50}\n",
    )
    .await;
    // Round robin: the bad endpoint gets every fourth request; its second failure ejects it.
    for _ in 0..8 {
        get(&proxy).await;
    }
    assert_eq!(bad.count(), 2);
    assert_eq!(ejected(&proxy.config().await), [true, false, false, false]);
    // Ejected: no request reaches it, every request succeeds.
    for i in 0..30 {
        assert_eq!(get(&proxy).await.status, 200, "request {i} while ejected");
    }
    assert_eq!(bad.count(), 2, "an ejected endpoint gets no traffic");
    // It recovers; after the ejection time one probe reaches it and readmits it.
    healthy.store(true, Ordering::SeqCst);
    eventually(WAIT, "the recovered endpoint readmitted", || async {
        get(&proxy).await;
        let e = ejected(&proxy.config().await);
        if e == [false, false, false, false] && bad.count() > 2 {
            Ok(())
        } else {
            Err(format!("{e:?}, {} requests", bad.count()))
        }
    })
    .await;
    let before = bad.count();
    for _ in 0..8 {
        assert_eq!(get(&proxy).await.status, 200);
    }
    assert_eq!(bad.count(), before + 2, "back to its round-robin share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_ejection_percent_of_endpoints_are_ejected() {
    let broken = Arc::new(AtomicBool::new(false));
    let mut bad = Vec::new();
    for _ in 0..3 {
        bad.push(flaky(&broken).await);
    }
    let good = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let mut endpoints: Vec<_> = bad.iter().map(HttpBackend::addr).collect();
    endpoints.push(good.addr());
    let proxy = proxy(
        &endpoints,
        "    load_balancer: {algorithm: round_robin}\n    outlier_detection: {consecutive_5xx: 1, base_ejection_time: 30s, max_ejection_percent: 25}\n",
    )
    .await;
    for _ in 0..40 {
        get(&proxy).await;
    }
    let e = ejected(&proxy.config().await);
    assert_eq!(
        e.iter().filter(|x| **x).count(),
        1,
        "25 % of four endpoints: one ejected at most, though three fail: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_connect_timeout_bounds_connecting() {
    // A listener whose accept queue is full and never drained: the kernel drops further SYNs, so
    // connecting to it hangs until the connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let proxy = proxy(&[addr], "    limits: {connect_timeout: 300ms}\n").await;
    let started = Instant::now();
    let resp = get(&proxy).await;
    let took = started.elapsed();
    assert_eq!(
        (resp.status.as_u16(), reason(&resp).as_deref()),
        (504, Some("upstream-connect-timeout")),
        "{}",
        resp.text()
    );
    assert!(
        resp.text().contains("limits.connect_timeout_ms"),
        "{}",
        resp.text()
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(900),
        "answered after {took:?}; the policy's connect timeout is 300 ms (SHOAL_CONNECT_TIMEOUT is 1 s)"
    );
    drop(full);
}

/// An endpoint answering every other request with 500 until `healthy` is set.
async fn half_failing(healthy: &Arc<AtomicBool>) -> HttpBackend {
    let healthy = healthy.clone();
    let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    HttpBackend::respond(move |_| {
        let odd = turn.fetch_add(1, Ordering::SeqCst) % 2 == 1;
        if healthy.load(Ordering::SeqCst) || !odd {
            text_response(200, "ok")
        } else {
            text_response(500, "broken")
        }
    })
    .await
}

fn success_rates(config: &serde_json::Value) -> Vec<Option<f64>> {
    config["state"]["services"][0]["load_balancer"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["success_rate"].as_f64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_far_below_its_peers_success_rate_is_ejected_and_readmitted() {
    let healthy = Arc::new(AtomicBool::new(false));
    let bad = half_failing(&healthy).await;
    let mut good = Vec::new();
    for _ in 0..3 {
        good.push(HttpBackend::respond(|_| text_response(200, "ok")).await);
    }
    let mut endpoints = vec![bad.addr()];
    endpoints.extend(good.iter().map(HttpBackend::addr));
    // No consecutive_5xx: it never fails twice in a row, only its success rate can eject it.
    // Rates 1, 1, 1, 0.5: mean 0.875, deviation ≈ 0.22, threshold at factor 1 ≈ 0.66.
    let proxy = proxy(
        &endpoints,
        "    load_balancer: {algorithm: round_robin}\n    outlier_detection:\n      \
         interval: 300ms\n      base_ejection_time: 5s\n      max_ejection_percent: 50\n      \
         success_rate: {minimum_hosts: 4, request_volume: 10, stdev_factor: 1.0}\n",
    )
    .await;
    let config = proxy.config().await;
    let outlier = &config["state"]["services"][0]["load_balancer"]["outlier_detection"];
    assert_eq!(outlier["consecutive_failures"], serde_json::Value::Null);
    assert_eq!(outlier["success_rate"]["request_volume"], 10, "{outlier}");
    // Traffic until an evaluation ejects it; the healthy peers stay.
    eventually(
        WAIT,
        "the half-failing endpoint ejected by success rate",
        || async {
            for _ in 0..8 {
                get(&proxy).await;
            }
            let e = ejected(&proxy.config().await);
            if e == [true, false, false, false] {
                Ok(())
            } else {
                Err(format!("{e:?}"))
            }
        },
    )
    .await;
    let metrics = proxy.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("shoal_outlier_ejections_total")
                && l.contains("reason=\"success_rate\"")
                && l.contains("service=\"app.default\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    // Ejected: no request reaches it, every request succeeds.
    let before = bad.count();
    for i in 0..30 {
        assert_eq!(get(&proxy).await.status, 200, "request {i} while ejected");
    }
    assert_eq!(bad.count(), before, "an ejected endpoint gets no traffic");
    // The peers' rates are shown: 1 each over an interval with enough requests.
    eventually(WAIT, "the peers' success rates shown", || async {
        for _ in 0..15 {
            get(&proxy).await;
        }
        let rates = success_rates(&proxy.config().await);
        if rates[1..].iter().all(|r| *r == Some(1.0)) {
            Ok(())
        } else {
            Err(format!("{rates:?}"))
        }
    })
    .await;
    // It recovers; after the ejection time its probe readmits it, and it gets its share again.
    healthy.store(true, Ordering::SeqCst);
    eventually(WAIT, "the recovered endpoint readmitted", || async {
        get(&proxy).await;
        let e = ejected(&proxy.config().await);
        if e == [false, false, false, false] && bad.count() > before {
            Ok(())
        } else {
            Err(format!("{e:?}, {} requests", bad.count()))
        }
    })
    .await;
    let before = bad.count();
    for _ in 0..8 {
        assert_eq!(get(&proxy).await.status, 200);
    }
    assert_eq!(bad.count(), before + 2, "back to its round-robin share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outlier_detection_that_ejects_nothing_is_refused() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    for (policy, field) in [
        (
            "{max_ejection_percent: 50}",
            "backend_policies[0].outlier_detection: ejects nothing",
        ),
        (
            "{consecutive_5xx: 3, interval: 1s}",
            "backend_policies[0].outlier_detection.interval: only used with success_rate",
        ),
        (
            "{success_rate: {stdev_factor: 11}}",
            "backend_policies[0].outlier_detection.success_rate.stdev_factor",
        ),
    ] {
        let exited = ProxyBuilder::new()
            .outbound_explicit()
            .state(&format!(
                "services:\n  - name: app\n    port: 80\n    endpoints:\n      - address: \"{}\"\n\
                 backend_policies:\n  - service: app\n    outlier_detection: {policy}\n",
                backend.addr()
            ))
            .run_to_exit(Duration::from_secs(10))
            .unwrap();
        let text = format!("{}{}", exited.stdout, exited.stderr);
        assert!(text.contains(field), "{policy}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_endpoint_ramps_up_over_slow_start() {
    let a = HttpBackend::respond(|_| text_response(200, "a")).await;
    let b = HttpBackend::respond(|_| text_response(200, "b")).await;
    let policy = "    load_balancer: {algorithm: round_robin, slow_start: 6s}\n";
    let proxy = proxy(&[a.addr(), b.addr()], policy).await;
    // The first state's endpoints are warm: round robin's exact shares.
    for _ in 0..20 {
        assert_eq!(get(&proxy).await.status, 200);
    }
    assert_eq!((a.count(), b.count()), (10, 10));
    // An update adds an endpoint: it starts at a tenth of its share, growing over 6 s.
    let c = HttpBackend::respond(|_| text_response(200, "c")).await;
    let version = proxy.config().await["sync"]["version"].as_u64().unwrap();
    std::fs::write(
        proxy.state_path(),
        state(&[a.addr(), b.addr(), c.addr()], policy),
    )
    .unwrap();
    eventually(WAIT, "the update served", || async {
        let v = proxy.config().await["sync"]["version"].as_u64().unwrap();
        if v > version { Ok(()) } else { Err(v) }
    })
    .await;
    for _ in 0..60 {
        assert_eq!(get(&proxy).await.status, 200);
    }
    let early = c.count();
    // A full share would be 20 of 60; in the first second or so it is at most a quarter of that.
    assert!(early < 12, "the new endpoint got {early} of 60 at once");
    let config = proxy.config().await;
    let lb = &config["state"]["services"][0]["load_balancer"];
    assert_eq!(lb["slow_start"], "6s", "{lb}");
    let shares: Vec<f64> = lb["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["slow_start_share"].as_f64().unwrap())
        .collect();
    assert!(shares[..2] == [1.0, 1.0] && shares[2] < 1.0, "{shares:?}");
    // Once warm it takes its full share.
    eventually(WAIT, "the new endpoint warm", || async {
        let config = proxy.config().await;
        let share =
            &config["state"]["services"][0]["load_balancer"]["endpoints"][2]["slow_start_share"];
        if share == 1.0 {
            Ok(())
        } else {
            Err(share.to_string())
        }
    })
    .await;
    let before = c.count();
    for _ in 0..60 {
        assert_eq!(get(&proxy).await.status, 200);
    }
    assert_eq!(c.count() - before, 20, "a third of the requests once warm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_zone_is_preferred_and_fails_over_when_its_endpoints_are_ejected() {
    let healthy = Arc::new(AtomicBool::new(true));
    let near = flaky(&healthy).await;
    let far: Vec<_> = [(), ()]
        .iter()
        .map(|_| HttpBackend::respond(|_| text_response(200, "far")))
        .collect();
    let far = futures_util::future::join_all(far).await;
    let state = format!(
        "services:\n  - name: app\n    port: 80\n    hosts: [app.example]\n    endpoints:\n      \
         - {{address: \"{}\", zone: zone-a}}\n      - {{address: \"{}\", zone: zone-b}}\n      \
         - {{address: \"{}\", zone: zone-b}}\n\
         backend_policies:\n  - service: app\n    load_balancer: {{algorithm: round_robin}}\n    \
         outlier_detection: {{consecutive_5xx: 1, base_ejection_time: 1s, max_ejection_percent: 50}}\n",
        near.addr(),
        far[0].addr(),
        far[1].addr()
    );
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .env("SHOAL_ZONE", "zone-a")
        .state(&state)
        .start()
        .await;
    let far_count = || far.iter().map(HttpBackend::count).sum::<usize>();
    // Its zone's endpoint takes everything while it is in balancing.
    for _ in 0..20 {
        assert_eq!(get(&proxy).await.status, 200);
    }
    assert_eq!((near.count(), far_count()), (20, 0));
    let config = proxy.config().await;
    let lb = &config["state"]["services"][0]["load_balancer"];
    assert_eq!(
        lb["local_zone"],
        serde_json::json!({"zone": "zone-a", "endpoints": 1, "preferred": true}),
        "{lb}"
    );
    assert_eq!(lb["endpoints"][1]["zone"], "zone-b", "{lb}");
    // It fails and is ejected: the other zone takes over.
    healthy.store(false, Ordering::SeqCst);
    assert_eq!(get(&proxy).await.status, 500);
    for i in 0..10 {
        assert_eq!(
            get(&proxy).await.status,
            200,
            "request {i} after failing over"
        );
    }
    assert_eq!((near.count(), far_count()), (21, 10));
    assert_eq!(
        proxy
            .metric(
                "shoal_zone_failovers_total",
                &[("service", "app.default"), ("zone", "zone-a")]
            )
            .await,
        10.0
    );
    let config = proxy.config().await;
    assert_eq!(
        config["state"]["services"][0]["load_balancer"]["local_zone"]["preferred"],
        false
    );
    // Recovered, its probe readmits it, and its zone is preferred again.
    healthy.store(true, Ordering::SeqCst);
    eventually(WAIT, "the zone's endpoint readmitted", || async {
        get(&proxy).await;
        let e = ejected(&proxy.config().await);
        if e == [false, false, false] {
            Ok(())
        } else {
            Err(format!("{e:?}"))
        }
    })
    .await;
    let (near_before, far_before) = (near.count(), far_count());
    for _ in 0..10 {
        assert_eq!(get(&proxy).await.status, 200);
    }
    assert_eq!(
        (near.count() - near_before, far_count() - far_before),
        (10, 0)
    );
}
