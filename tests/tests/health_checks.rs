//! Active health checks from the static state file, through the explicit outbound listener: an
//! endpoint whose health path answers 503 (or whose gRPC health service answers NOT_SERVING) gets
//! no traffic once it failed `unhealthy_threshold` probes, and gets it back after
//! `healthy_threshold` passing ones; when every endpoint fails, traffic still flows (panic mode).
//! `/config` shows each endpoint's health and the policy; the metrics count the probes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::Response;
use shoal_tests::backend::{Recorded, text_response};
use shoal_tests::client::{H1Client, empty, full, request};
use shoal_tests::proxy::app_service_state;
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, eventually};

const WAIT: Duration = Duration::from_secs(15);
const GRPC_CHECK: &str = "/grpc.health.v1.Health/Check";

/// A proxy routing `app.example` to `endpoints` under `policy` (YAML of one backend policy's
/// fields, indented for the list item).
async fn proxy(endpoints: &[SocketAddr], policy: &str) -> Proxy {
    ProxyBuilder::new()
        .outbound_explicit()
        .state(&state(endpoints, policy))
        .start()
        .await
}

fn state(endpoints: &[SocketAddr], policy: &str) -> String {
    format!(
        "{}backend_policies:\n  - service: app\n{policy}",
        app_service_state("", endpoints)
    )
}

async fn get(proxy: &Proxy) -> u16 {
    let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
    c.send(
        request("GET", "/", Some("app.example"))
            .body(empty())
            .unwrap(),
    )
    .await
    .unwrap()
    .status
    .as_u16()
}

/// Each endpoint's `health` in `/config`.
async fn health(proxy: &Proxy) -> Vec<String> {
    let config = proxy.config().await;
    config["state"]["services"][0]["load_balancer"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["health"].as_str().unwrap_or("absent").to_string())
        .collect()
}

/// The `health` of the endpoint at `addr` in `/config`.
async fn health_of(proxy: &Proxy, addr: SocketAddr) -> String {
    let config = proxy.config().await;
    let endpoints = config["state"]["services"][0]["load_balancer"]["endpoints"].clone();
    (endpoints.as_array().into_iter().flatten())
        .find(|e| e["address"] == addr.to_string())
        .map_or("absent".into(), |e| {
            e["health"].as_str().unwrap_or("absent").to_string()
        })
}

async fn wait_health(proxy: &Proxy, want: &[&str]) {
    eventually(WAIT, &format!("health {want:?}"), || async {
        let h = health(proxy).await;
        if h == want { Ok(()) } else { Err(h) }
    })
    .await;
}

/// Requests that were not probes.
fn traffic(b: &HttpBackend) -> usize {
    b.requests()
        .iter()
        .filter(|r| r.header("shoal-health-check").is_none())
        .count()
}

/// An endpoint whose `/healthz` answers 200 while `healthy` is set, else 503; other paths 200.
async fn checked(healthy: &Arc<AtomicBool>) -> HttpBackend {
    let healthy = healthy.clone();
    HttpBackend::respond(move |r: &Recorded| {
        if r.uri.path() == "/healthz" && !healthy.load(Ordering::SeqCst) {
            text_response(503, "sick")
        } else {
            text_response(200, "ok")
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_its_health_path_leaves_the_pick_set_and_returns() {
    let healthy = Arc::new(AtomicBool::new(false));
    let bad = checked(&healthy).await;
    let good = checked(&Arc::new(AtomicBool::new(true))).await;
    let proxy = proxy(
        &[bad.addr(), good.addr()],
        "    load_balancer: {algorithm: round_robin}\n    health_check: {http: {path: /healthz}, interval: 100ms, healthy_threshold: 2, unhealthy_threshold: 2}\n",
    )
    .await;
    wait_health(&proxy, &["unhealthy", "healthy"]).await;
    // The probes are GETs of the path, marked, with the service's authority.
    let probe = bad.last();
    assert_eq!(probe.uri.path(), "/healthz");
    assert_eq!(probe.header("shoal-health-check"), Some("1"));
    assert_eq!(probe.authority().as_deref(), Some("app.default:80"));
    let before = traffic(&bad);
    for i in 0..20 {
        assert_eq!(get(&proxy).await, 200, "request {i}");
    }
    assert_eq!(
        traffic(&bad),
        before,
        "an unhealthy endpoint gets no traffic"
    );
    assert!(traffic(&good) >= 20);
    let failed = proxy
        .metric(
            "shoal_health_checks_total",
            &[("service", "app.default"), ("result", "unhealthy")],
        )
        .await;
    assert!(failed >= 2.0, "failed probes counted: {failed}");
    proxy
        .wait_metric(
            "shoal_endpoints_unhealthy",
            &[("service", "app.default")],
            1.0,
        )
        .await;
    // It recovers: back after two passing probes, to its round-robin share.
    healthy.store(true, Ordering::SeqCst);
    wait_health(&proxy, &["healthy", "healthy"]).await;
    let before = traffic(&bad);
    for _ in 0..10 {
        assert_eq!(get(&proxy).await, 200);
    }
    assert_eq!(traffic(&bad), before + 5, "back to its share");
    proxy
        .wait_metric(
            "shoal_endpoints_unhealthy",
            &[("service", "app.default")],
            0.0,
        )
        .await;
    let config = proxy.config().await;
    let policy = &config["state"]["services"][0]["load_balancer"]["health_check"];
    assert_eq!(policy["http"]["path"], "/healthz", "{policy}");
    assert_eq!(policy["timeout"], "1s", "default timeout: {policy}");
}

/// A gRPC health service answering SERVING (1) while `serving`, else NOT_SERVING (2), for the
/// service `app`; other requests 200.
async fn grpc_health(serving: &Arc<AtomicBool>) -> HttpBackend {
    let serving = serving.clone();
    HttpBackend::respond(move |r: &Recorded| {
        if r.uri.path() != GRPC_CHECK {
            return text_response(200, "ok");
        }
        // HealthCheckRequest { service: "app" }, framed.
        assert_eq!(&r.body[..], [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'p', b'p']);
        let status = if serving.load(Ordering::SeqCst) { 1 } else { 2 };
        let body = full(vec![0, 0, 0, 0, 2, 0x08, status]);
        Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .body(body)
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_endpoint_not_serving_leaves_and_returns_when_serving() {
    let serving = Arc::new(AtomicBool::new(false));
    let bad = grpc_health(&serving).await;
    let good = grpc_health(&Arc::new(AtomicBool::new(true))).await;
    let proxy = proxy(
        &[bad.addr(), good.addr()],
        "    health_check: {grpc: {service: app}, interval: 100ms, healthy_threshold: 1, unhealthy_threshold: 1}\n",
    )
    .await;
    wait_health(&proxy, &["unhealthy", "healthy"]).await;
    let probe = bad.last();
    assert_eq!(probe.method, "POST");
    assert_eq!(
        probe.version,
        http::Version::HTTP_2,
        "gRPC probes speak HTTP/2"
    );
    let before = traffic(&bad);
    for _ in 0..10 {
        assert_eq!(get(&proxy).await, 200);
    }
    assert_eq!(traffic(&bad), before, "NOT_SERVING: no traffic");
    serving.store(true, Ordering::SeqCst);
    wait_health(&proxy, &["healthy", "healthy"]).await;
    eventually(WAIT, "traffic back on the serving endpoint", || async {
        get(&proxy).await;
        if traffic(&bad) > before {
            Ok(())
        } else {
            Err("none yet")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_is_unhealthy_traffic_still_flows() {
    let sick = Arc::new(AtomicBool::new(false));
    let a = checked(&sick).await;
    let b = checked(&sick).await;
    let proxy = proxy(
        &[a.addr(), b.addr()],
        "    load_balancer: {algorithm: round_robin}\n    health_check: {http: {path: /healthz}, interval: 100ms, unhealthy_threshold: 1}\n",
    )
    .await;
    wait_health(&proxy, &["unhealthy", "unhealthy"]).await;
    let before = (traffic(&a), traffic(&b));
    for i in 0..10 {
        assert_eq!(get(&proxy).await, 200, "request {i}");
    }
    // Panic mode: balancing ignores health, both keep their share.
    assert_eq!((traffic(&a), traffic(&b)), (before.0 + 5, before.1 + 5));
}

#[tokio::test]
async fn an_invalid_health_check_is_refused_naming_the_field() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    for (policy, field) in [
        (
            "    health_check: {http: {path: healthz}}\n",
            "backend_policies[0].health_check.http.path",
        ),
        (
            "    health_check: {http: {path: /h}, grpc: {}}\n",
            "backend_policies[0].health_check: exactly one of http or grpc",
        ),
        (
            "    health_check: {grpc: {}, unhealthy_threshold: 0}\n",
            "backend_policies[0].health_check.unhealthy_threshold",
        ),
        (
            "    health_check: {http: {path: /h, expected_statuses: {start: 300, end: 200}}}\n",
            "backend_policies[0].health_check.http.expected_statuses",
        ),
    ] {
        let exited = ProxyBuilder::new()
            .outbound_explicit()
            .state(&state(&[backend.addr()], policy))
            .run_to_exit(Duration::from_secs(10))
            .unwrap();
        let text = format!("{}{}", exited.stdout, exited.stderr);
        assert!(text.contains(field), "{policy}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_applied_with_shoalctl_is_enforced_and_shown() {
    use shoal_tests::control_plane::{ControlPlaneBuilder, MeshClient, service_yaml};
    let bad = checked(&Arc::new(AtomicBool::new(false))).await;
    let good = checked(&Arc::new(AtomicBool::new(true))).await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&service_yaml("app", 80, &[bad.addr(), good.addr()]))
        .await
        .success();
    let policy = |spec: &str| {
        format!(
            "kind: BackendPolicy\nmetadata: {{name: app}}\nspec:\n  service: app\n  health_check: {spec}\n"
        )
    };
    // Exactly one of http or grpc: refused at apply, naming the field.
    let refused = cp
        .ctl(
            &["apply", "-f", "-"],
            Some(&policy("{http: {path: /healthz}, grpc: {}}")),
        )
        .await;
    assert_eq!(refused.code(), Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("health_check"),
        "{}",
        refused.stderr
    );
    cp.apply(&policy(
        "{http: {path: /healthz}, interval_ms: 100, unhealthy_threshold: 2}",
    ))
    .await
    .success();
    let proxy = cp.proxy_builder("hc-proxy").start().await;
    let mut client = MeshClient::new(proxy.outbound());
    assert_eq!(client.get("app", "/").await.unwrap().status, 200);
    // The control plane orders the endpoints its own way: by address here.
    eventually(
        WAIT,
        "the failing endpoint unhealthy, its peer healthy",
        || async {
            let h = (
                health_of(&proxy, bad.addr()).await,
                health_of(&proxy, good.addr()).await,
            );
            if h == ("unhealthy".into(), "healthy".into()) {
                Ok(())
            } else {
                Err(h)
            }
        },
    )
    .await;
    let config = proxy.config().await;
    let shown = &config["state"]["services"][0]["load_balancer"]["health_check"];
    assert_eq!(shown["unhealthy_threshold"], 2, "{shown}");
    assert_eq!(shown["interval"], "100ms", "{shown}");
    let before = traffic(&bad);
    for _ in 0..10 {
        assert_eq!(client.get("app", "/").await.unwrap().status, 200);
    }
    assert_eq!(
        traffic(&bad),
        before,
        "no traffic to the unhealthy endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshed_endpoint_is_probed_over_mtls() {
    use shoal_tests::control_plane::{ControlPlaneBuilder, MeshClient};
    const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
    let cp = ControlPlaneBuilder::new().start().await;
    let healthy = Arc::new(AtomicBool::new(true));
    let app = checked(&healthy).await;
    // Strict mTLS inbound: a plaintext probe could not reach the app.
    let server = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .env("SHOAL_DISCOVERY_ADDR", cp.discovery_url())
        .env(
            "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE",
            cp.anchors_file().display(),
        )
        .env("SHOAL_PROXY_ID", "web")
        .env("SHOAL_SERVICE_NAME", "web")
        .env("SHOAL_SERVICE_ACCOUNT", "web")
        .env("SHOAL_IDENTITY_TOKEN", cp.join_token("web", None).await)
        .env("SHOAL_INBOUND_TLS_MODE", "strict")
        .start()
        .await;
    let inbound = server.inbound();
    cp.apply(&format!(
        "kind: Service\nmetadata: {{name: web}}\nspec:\n  ports: [{{port: 80}}]\n---\nkind: EndpointRegistration\nmetadata: {{name: web-0}}\nspec: {{service: web, address: {}, port: {}, identity: \"{WEB_ID}\"}}\n---\n\
         kind: BackendPolicy\nmetadata: {{name: web}}\nspec:\n  service: web\n  health_check: {{http: {{path: /healthz}}, interval_ms: 100, healthy_threshold: 1, unhealthy_threshold: 1}}\n",
        inbound.ip(),
        inbound.port()
    ))
    .await
    .success();
    let client = cp
        .joining_proxy("frontend", "frontend", None)
        .await
        .start()
        .await;
    let mut c = MeshClient::new(client.outbound());
    assert_eq!(c.get("web", "/").await.unwrap().status, 200);
    wait_health(&client, &["healthy"]).await;
    let probes: Vec<_> = (app.requests().into_iter())
        .filter(|r| r.header("shoal-health-check").is_some())
        .collect();
    assert!(!probes.is_empty(), "a probe reached the app");
    assert!(probes.iter().all(|p| p.uri.path() == "/healthz"));
    // Through the caller's mTLS: the app learns the prober's identity. (The server's own proxy
    // holds its service too and may probe it as `web`: look for the caller's probes.)
    let ids: Vec<_> = probes.iter().map(|p| p.header("shoal-client-id")).collect();
    assert!(
        ids.contains(&Some("spiffe://cluster.local/ns/default/sa/frontend")),
        "{ids:?}"
    );
    assert!(
        ids.iter().all(Option::is_some),
        "every probe came over mTLS: {ids:?}"
    );
    healthy.store(false, Ordering::SeqCst);
    wait_health(&client, &["unhealthy"]).await;
}
