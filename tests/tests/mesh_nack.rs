//! The NACK path through real processes: an update the control plane accepts but the proxy's
//! state builder rejects (two services claiming the same host: only a proxy holding both can tell)
//! is NACKed, stays visible in `shoalctl status` and the proxy's `/config`, and does not disturb
//! traffic; fixing it brings the proxy back to SYNCED. The rejection is per resource: an endpoint
//! update in the same push applies.

use std::time::Duration;

use shoal_tests::backend::text_response;
use shoal_tests::control_plane::{
    ControlPlane, ControlPlaneBuilder, MeshClient, registration_yaml,
};
use shoal_tests::{HttpBackend, Proxy};

async fn named(name: &'static str) -> HttpBackend {
    HttpBackend::respond(move |_| text_response(200, name)).await
}

fn service(name: &str, host: &str) -> String {
    format!(
        "kind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80}}]\n  hosts: [{host}]\n"
    )
}

const REJECTION: &str = "is already used by service";
const WAIT: Duration = Duration::from_secs(10);

/// Services `alpha` (host `alpha.example`, endpoint `a`) and `beta` (`beta.example`, `b`), and a
/// proxy `proxy_id` that has called both (so it subscribes to both) and is SYNCED.
async fn alpha_and_beta(
    cp: &ControlPlane,
    proxy_id: &str,
    a: &HttpBackend,
    b: &HttpBackend,
) -> (Proxy, MeshClient) {
    cp.apply(&format!(
        "{}{}---\n{}{}",
        service("alpha", "alpha.example"),
        registration_yaml("alpha-0", "alpha", a.addr(), None),
        service("beta", "beta.example"),
        registration_yaml("beta-0", "beta", b.addr(), None),
    ))
    .await;
    let proxy = cp.proxy_builder(proxy_id).start().await;
    let mut client = MeshClient::new(proxy.outbound());
    assert_eq!(client.body("alpha").await.unwrap(), "alpha");
    assert_eq!(client.body("beta").await.unwrap(), "beta");
    assert_eq!(client.body("alpha.example").await.unwrap(), "alpha");
    assert_eq!(client.body("beta.example").await.unwrap(), "beta");
    cp.wait_proxy_state(proxy_id, "SYNCED", WAIT).await;
    (proxy, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_update_is_nacked_visible_and_harmless() {
    let (a, b) = (named("alpha").await, named("beta").await);
    let cp = ControlPlaneBuilder::new().start().await;
    let (proxy, mut client) = alpha_and_beta(&cp, "nack-proxy", &a, &b).await;

    // `beta` now claims alpha's host: valid on its own (the control plane accepts it), but the
    // proxy cannot build a state where one authority names two services.
    let applied = cp.apply(&service("beta", "alpha.example")).await;
    assert!(
        applied.stdout.contains("service/beta.default configured"),
        "{applied:?}"
    );

    let row = cp
        .wait_proxy_state("nack-proxy", "NACKED", Duration::from_secs(5))
        .await;
    assert!(row.last_nack.contains(REJECTION), "{row:?}");
    assert!(row.last_nack.contains("alpha.example"), "{row:?}");
    // `-o wide` names the rejected resource and both versions.
    let wide = cp.ctl(&["status", "-o", "wide"], None).await.success();
    let line = wide
        .stdout
        .lines()
        .find(|l| l.starts_with("nack-proxy") && l.contains("service/beta.default"))
        .unwrap_or_else(|| panic!("no service/beta.default row:\n{}", wide.stdout));
    assert!(
        line.contains("NACKED") && line.contains(REJECTION),
        "{line}"
    );

    let config = proxy.config().await;
    let last_error = config["sync"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains(REJECTION), "{config}");
    assert!(
        config["discovery"]["nacked"].as_u64() >= Some(1),
        "{config}"
    );
    assert_eq!(config["discovery"]["connected"], true, "{config}");
    // The proxy's metrics count the rejection too.
    assert!(
        proxy
            .metric("shoal_discovery_updates_total", &[("result", "nacked")])
            .await
            >= 1.0
    );

    // Traffic runs on the last good state: every name still goes where it went.
    for _ in 0..20 {
        assert_eq!(client.body("alpha").await.unwrap(), "alpha");
        assert_eq!(client.body("beta").await.unwrap(), "beta");
        assert_eq!(client.body("alpha.example").await.unwrap(), "alpha");
        assert_eq!(client.body("beta.example").await.unwrap(), "beta");
    }

    // Fixing the service: the proxy accepts the next update and is SYNCED again.
    cp.apply(&service("beta", "beta2.example")).await;
    let row = cp
        .wait_proxy_state("nack-proxy", "SYNCED", Duration::from_secs(5))
        .await;
    assert_eq!(row.last_nack, "", "{row:?}");
    assert_eq!(client.body("beta2.example").await.unwrap(), "beta");
    let config = proxy.config().await;
    assert!(config["sync"]["last_error"].is_null(), "{config}");
}

/// Pushes are batched so both changes of the test's one apply travel in one response.
const PUSH_INTERVAL: &str = "2s";

/// `shoalctl status -o wide`'s row of `proxy`'s `resource` (`service/beta.default`).
async fn wide_row(cp: &ControlPlane, proxy: &str, resource: &str) -> String {
    let wide = cp.ctl(&["status", "-o", "wide"], None).await.success();
    wide.stdout
        .lines()
        .find(|l| l.starts_with(proxy) && l.split_whitespace().nth(1) == Some(resource))
        .unwrap_or_else(|| panic!("no {resource} row:\n{}", wide.stdout))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_resource_does_not_hold_back_an_endpoint_update_in_the_same_push() {
    let (a, b) = (named("alpha").await, named("beta").await);
    let a2 = named("alpha-2").await;
    let cp = ControlPlaneBuilder::new()
        .env("SHOAL_CP_PUSH_INTERVAL", PUSH_INTERVAL)
        .start()
        .await;
    let (proxy, mut client) = alpha_and_beta(&cp, "partial-proxy", &a, &b).await;

    // A change to a subscribed key opens the push interval at once; what follows within it goes
    // out together, in one response.
    cp.apply(
        "kind: Service\nmetadata: {name: alpha}\nspec:\n  ports: [{port: 80}]\n  hosts: [alpha.example, alpha.test]\n",
    )
    .await;
    // One apply, one push: beta claims alpha's host (the proxy cannot hold both), alpha gets a
    // second endpoint.
    let applied = cp
        .apply(&format!(
            "{}{}",
            service("beta", "alpha.example"),
            registration_yaml("alpha-1", "alpha", a2.addr(), None)
        ))
        .await;
    assert!(
        applied.stdout.contains("service/beta.default configured")
            && applied
                .stdout
                .contains("endpoint-registration/alpha-1.default created"),
        "{applied:?}"
    );

    // The endpoint update applied: the new endpoint gets traffic.
    let outbound = proxy.outbound();
    shoal_tests::eventually(WAIT, "traffic on alpha's new endpoint", || async move {
        match MeshClient::new(outbound).body("alpha.example").await {
            Ok(body) if body == "alpha-2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Only beta's service was rejected, and status says so.
    let row = cp.wait_proxy_state("partial-proxy", "NACKED", WAIT).await;
    assert_eq!(
        row.last_nack,
        "service beta.default: authority alpha.example:80 is already used by service alpha.default"
    );
    let beta = wide_row(&cp, "partial-proxy", "service/beta.default").await;
    assert!(
        beta.contains("NACKED") && beta.contains(REJECTION),
        "{beta}"
    );
    for synced in [
        "service/alpha.default",
        "endpoints/alpha.default",
        "endpoints/beta.default",
    ] {
        let line = wide_row(&cp, "partial-proxy", synced).await;
        assert!(line.contains("SYNCED"), "{line}");
    }
    // Beta keeps its last good version: its own host still reaches it, alpha's stays alpha's.
    assert_eq!(client.body("beta.example").await.unwrap(), "beta");
    let config = proxy.config().await;
    let last_error = config["sync"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("service beta.default: "), "{config}");

    // Re-applying what is stored answers `unchanged` and pushes nothing: the next real change is
    // the only push the proxy receives.
    let pushes = cp.metric("shoal_cp_pushes_total", &[]).await;
    let version = config["sync"]["version"].as_u64().expect("sync.version");
    let again = cp.apply(&service("beta", "alpha.example")).await;
    assert!(
        again.stdout.contains("service/beta.default unchanged"),
        "{again:?}"
    );
    cp.apply(&service("beta", "beta2.example")).await;
    let row = cp.wait_proxy_state("partial-proxy", "SYNCED", WAIT).await;
    assert_eq!(row.last_nack, "", "{row:?}");
    assert_eq!(client.body("beta2.example").await.unwrap(), "beta");
    assert_eq!(cp.metric("shoal_cp_pushes_total", &[]).await, pushes + 1.0);
    let config = proxy.config().await;
    assert_eq!(
        config["sync"]["version"].as_u64(),
        Some(version + 1),
        "{config}"
    );
}
