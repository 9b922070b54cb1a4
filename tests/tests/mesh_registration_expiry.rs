//! An endpoint registration with a ttl and no heartbeat expires: the control plane deletes it and
//! the proxy stops sending traffic to it (503 `no-endpoints`, zero endpoints in `/config`).

use std::time::{Duration, Instant};

use shoal_tests::HttpBackend;
use shoal_tests::backend::text_response;
use shoal_tests::control_plane::{ControlPlaneBuilder, MeshClient, registration_yaml};
use shoal_tests::wait::POLL_INTERVAL;

const TTL: Duration = Duration::from_secs(2);
/// The control plane checks ttls every second; the push to the proxy takes milliseconds.
const SLACK: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_without_heartbeat_expires_and_leaves_the_proxy() {
    let backend = HttpBackend::respond(|_| text_response(200, "vm")).await;
    let steady = HttpBackend::respond(|_| text_response(200, "steady")).await;
    let cp = ControlPlaneBuilder::new().start().await;
    // `steady` never expires; `vm` has a ttl and nobody heartbeats it.
    cp.apply(&format!(
        "kind: Service\nmetadata: {{name: steady}}\nspec:\n  ports: [{{port: 80}}]\n{}---\nkind: Service\nmetadata: {{name: vm}}\nspec:\n  ports: [{{port: 80}}]\n",
        registration_yaml("steady-0", "steady", steady.addr(), None),
    ))
    .await;
    let proxy = cp.proxy_builder("expiry-proxy").start().await;
    let mut client = MeshClient::new(proxy.outbound());
    assert_eq!(client.body("steady").await.unwrap(), "steady");

    let applied = cp
        .apply(&registration_yaml("vm-0", "vm", backend.addr(), Some(2)))
        .await;
    let registered_at = applied.exited_at;
    assert_eq!(client.body("vm").await.unwrap(), "vm");
    let listed = cp.ctl(&["get", "registrations"], None).await.success();
    assert!(listed.stdout.contains("vm-0"), "{}", listed.stdout);

    // Keep calling until the proxy answers for itself: 503 no-endpoints.
    let deadline = registered_at + TTL + SLACK;
    let (expired_after, resp) = loop {
        let resp = client.get("vm", "/").await.unwrap();
        if resp.status != 200 {
            break (registered_at.elapsed(), resp);
        }
        assert_eq!(resp.text(), "vm");
        assert!(
            Instant::now() < deadline,
            "the endpoint still gets traffic {:?} after its registration (ttl {TTL:?}); proxy /config: {}",
            registered_at.elapsed(),
            proxy.config().await
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    eprintln!("the endpoint left the proxy {expired_after:?} after registration");
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(
        resp.header("shoal-proxy-error"),
        Some("no-endpoints"),
        "{resp:?}"
    );
    // Not before its ttl ran out (a write counts as a heartbeat).
    assert!(
        expired_after >= TTL - Duration::from_millis(500),
        "expired after only {expired_after:?} (ttl {TTL:?})"
    );

    // The control plane deleted it; the proxy's state has the service without endpoints.
    let listed = cp.ctl(&["get", "registrations"], None).await.success();
    assert!(!listed.stdout.contains("vm-0"), "{}", listed.stdout);
    assert!(listed.stdout.contains("steady-0"), "{}", listed.stdout);
    let config = proxy.config().await;
    let services = config["state"]["services"].as_array().expect("services");
    let vm = services
        .iter()
        .find(|s| s["name"] == "vm")
        .unwrap_or_else(|| panic!("service vm is still known: {config}"));
    assert_eq!(
        vm["endpoints"].as_array().map(Vec::len),
        Some(0),
        "{config}"
    );
    assert!(
        cp.metric("shoal_cp_registrations_expired_total", &[]).await >= 1.0,
        "the expiry is counted"
    );
    // The registration without a ttl is untouched.
    let start = Instant::now();
    assert_eq!(client.body("steady").await.unwrap(), "steady");
    assert!(start.elapsed() < Duration::from_secs(1));
}
