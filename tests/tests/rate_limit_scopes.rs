//! Rate limits beyond one bucket per service, through real proxies: a limit scoped to a route
//! counts only its requests; a caller with an override (its mTLS identity) gets its own rate; an
//! outbound limit is enforced by the calling proxy (429 there, the upstream's count proves it),
//! from the static state file and through `shoalctl apply` to a real control plane.

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, empty, request};
use shoal_tests::control_plane::{ControlPlaneBuilder, service_yaml};
use shoal_tests::pki::TestCa;
use shoal_tests::process::TempDir;
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder};

const BATCH: &str = "spiffe://cluster.local/ns/shop/sa/batch";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const APP: &str = "spiffe://cluster.local/ns/default/sa/app";

/// The statuses of `n` GETs of `path` to `app` through `addr`, one connection.
async fn statuses(addr: std::net::SocketAddr, path: &str, n: usize) -> Vec<u16> {
    let mut client = H1Client::connect(addr).await.unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let req = request("GET", path, Some("app")).body(empty()).unwrap();
        let resp = client.send(req).await.unwrap();
        if resp.status == 429 {
            assert_eq!(resp.header("shoal-proxy-error"), Some("rate-limited"));
            assert!(resp.header("retry-after").is_some());
        }
        out.push(resp.status.as_u16());
    }
    out
}

#[tokio::test]
async fn a_route_scoped_limit_counts_only_its_route() {
    let app = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .env("SHOAL_SERVICE_NAME", "app")
        .state(&format!(
            "services:\n  - name: app\n    port: 80\n    endpoints:\n      - address: \"{}\"\n\
             rate_limits:\n  - service: app\n    requests_per_unit: 2\n    unit: hour\n    matches: [{{path_prefix: /search}}]\n",
            app.addr()
        ))
        .start()
        .await;
    assert_eq!(
        statuses(proxy.inbound(), "/search/q", 4).await,
        [200, 200, 429, 429]
    );
    assert_eq!(statuses(proxy.inbound(), "/items", 6).await, [200; 6]);
    assert_eq!(app.count(), 8, "limited requests never reach the app");
}

#[tokio::test]
async fn an_identity_override_gets_its_own_rate() {
    let dir = TempDir::new("rate-override").unwrap();
    let ca = TestCa::new("mesh");
    let app = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let server = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .env("SHOAL_SERVICE_NAME", "app")
        .state(&format!(
            "services:\n  - name: app\n    port: 80\n    target_port: {}\n\
             rate_limits:\n  - service: app\n    requests_per_unit: 1\n    unit: hour\n    scope: per_client\n\
             \x20   overrides: [{{identity: \"{BATCH}\", requests_per_unit: 5, burst: 5}}]\n",
            app.addr().port()
        ))
        .identity(&ca.workload(APP).write(dir.path(), "app", &[ca.root_pem()]))
        .start()
        .await;
    let caller = |id: &'static str, name: &'static str| {
        let state = format!(
            "services:\n  - name: app\n    port: 80\n    endpoints:\n      - address: \"{}\"\n        identity: {APP}\n",
            server.inbound()
        );
        ProxyBuilder::new()
            .outbound_explicit()
            .state(&state)
            .identity(&ca.workload(id).write(dir.path(), name, &[ca.root_pem()]))
            .start()
    };
    let batch: Proxy = caller(BATCH, "batch").await;
    let web: Proxy = caller(WEB, "web").await;
    let ok = |s: &[u16]| s.iter().filter(|&&s| s == 200).count();
    let batch_seen = statuses(batch.outbound(), "/", 8).await;
    assert_eq!(ok(&batch_seen), 5, "{batch_seen:?}\n{}", server.logs());
    let web_seen = statuses(web.outbound(), "/", 3).await;
    assert_eq!(ok(&web_seen), 1, "{web_seen:?}");
    assert_eq!(app.count(), 6);
}

#[tokio::test]
async fn an_outbound_limit_is_enforced_by_the_caller() {
    let app = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            "services:\n  - name: app\n    port: 80\n    endpoints:\n      - address: \"{}\"\n\
             rate_limits:\n  - service: app\n    side: outbound\n    requests_per_unit: 3\n    unit: hour\n",
            app.addr()
        ))
        .start()
        .await;
    assert_eq!(
        statuses(proxy.outbound(), "/", 5).await,
        [200, 200, 200, 429, 429]
    );
    assert_eq!(app.count(), 3, "refused requests are never sent");
    let config = proxy.config().await;
    assert_eq!(
        config["state"]["outbound_rate_limits"]["app.default"]["burst"], 3,
        "{config}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_limit_applied_with_shoalctl_is_enforced_by_the_caller() {
    let app = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&service_yaml("app", 80, &[app.addr()]))
        .await
        .success();
    cp.apply(
        "kind: RateLimit\nmetadata: {name: app}\nspec:\n  target_service: app\n  side: outbound\n  requests_per_unit: 2\n  unit: hour\n  matches: [{path: {prefix: /search}}]\n",
    )
    .await
    .success();
    let proxy = cp.proxy_builder("caller").start().await;
    assert_eq!(
        statuses(proxy.outbound(), "/search", 4).await,
        [200, 200, 429, 429]
    );
    assert_eq!(statuses(proxy.outbound(), "/", 3).await, [200; 3]);
    assert_eq!(app.count(), 5);

    let refused = cp
        .ctl(
            &["apply", "-f", "-"],
            Some(
                "kind: RateLimit\nmetadata: {name: app}\nspec:\n  target_service: app\n  side: outbound\n  scope: per_client\n  requests_per_unit: 2\n",
            ),
        )
        .await;
    assert_eq!(refused.code(), Some(1), "{refused:?}");
    assert!(refused.stderr.contains("spec.scope"), "{}", refused.stderr);
}
