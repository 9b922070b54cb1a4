//! With discovery on, a destination the control plane does not know is forwarded unchanged to
//! where the app was going (passthrough), and the first request to it waits at most
//! `SHOAL_DISCOVERY_TIMEOUT` for the control plane's answer.

use std::time::{Duration, Instant};

use shoal_tests::control_plane::{ControlPlaneBuilder, MeshClient, service_yaml};
use shoal_tests::{HttpBackend, ProxyBuilder, closed_port_addr};

/// Scheduling slack on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destinations_pass_through_without_waiting_for_the_timeout() {
    let backend = HttpBackend::echo().await;
    let meshed = HttpBackend::echo().await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&service_yaml("meshed", 80, &[meshed.addr()]))
        .await;
    // A long lookup timeout: a prompt answer proves the control plane said "unknown" rather than
    // the proxy giving up waiting.
    let proxy = cp
        .proxy_builder("passthrough-proxy")
        .env("SHOAL_DISCOVERY_TIMEOUT", "5s")
        .start()
        .await;
    let mut client = MeshClient::new(proxy.outbound());

    // Host = the backend's IP:PORT, unknown to the control plane.
    let host = backend.addr().to_string();
    let start = Instant::now();
    let resp = client.get(&host, "/some/path?q=1").await.unwrap();
    let first = start.elapsed();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        first < Duration::from_secs(1),
        "the first passthrough request took {first:?}"
    );
    let seen = backend.last();
    assert_eq!(seen.header("host"), Some(host.as_str()), "Host unchanged");
    assert_eq!(seen.uri.to_string(), "/some/path?q=1");
    // Later requests do not wait at all.
    let start = Instant::now();
    for _ in 0..10 {
        assert_eq!(client.get(&host, "/").await.unwrap().status, 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(backend.count(), 11);
    assert_eq!(meshed.count(), 0);

    // The mesh still routes known services on the same proxy.
    assert_eq!(client.get("meshed", "/").await.unwrap().status, 200);
    assert_eq!(meshed.count(), 1);
    let row = cp
        .wait_proxy_state("passthrough-proxy", "SYNCED", Duration::from_secs(5))
        .await;
    assert_eq!(row.last_nack, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_name_goes_to_the_outbound_target_promptly() {
    let target = HttpBackend::echo().await;
    let cp = ControlPlaneBuilder::new().start().await;
    let proxy = cp
        .proxy_builder("passthrough-name-proxy")
        .outbound_target(target.addr())
        .env("SHOAL_DISCOVERY_TIMEOUT", "5s")
        .start()
        .await;
    let mut client = MeshClient::new(proxy.outbound());
    // `nosuch` looks like a service name: the proxy asks the control plane, which does not know
    // it, so the request goes where an unknown authority goes (SHOAL_OUTBOUND_TARGET).
    let start = Instant::now();
    let resp = client.get("nosuch", "/x").await.unwrap();
    let first = start.elapsed();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(first < Duration::from_secs(1), "took {first:?}");
    assert_eq!(target.last().header("host"), Some("nosuch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_unreachable_first_request_waits_at_most_the_timeout() {
    let backend = HttpBackend::echo().await;
    let timeout = Duration::from_millis(300);
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .env(
            "SHOAL_DISCOVERY_ADDR",
            // Plaintext: nothing listens, so there are no anchors to verify with.
            format!("http://{}", closed_port_addr()),
        )
        .env("SHOAL_PROXY_ID", "unreachable-proxy")
        .env("SHOAL_DISCOVERY_TIMEOUT", "300ms")
        .start()
        .await;
    let mut client = MeshClient::new(proxy.outbound());
    let host = backend.addr().to_string();
    let start = Instant::now();
    let resp = client.get(&host, "/").await.unwrap();
    let first = start.elapsed();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        first < timeout + MARGIN,
        "the first request took {first:?} (SHOAL_DISCOVERY_TIMEOUT {timeout:?})"
    );
    assert_eq!(backend.last().header("host"), Some(host.as_str()));
    // The same destination again: it has been asked about already, so it is not delayed again.
    let start = Instant::now();
    let resp = client.get(&host, "/").await.unwrap();
    let second = start.elapsed();
    assert_eq!(resp.status, 200);
    assert!(
        second < timeout,
        "the second request to the same destination took {second:?}: each request waits the \
         discovery timeout again while the control plane is unreachable"
    );
    let config = proxy.config().await;
    assert_eq!(config["discovery"]["connected"], false, "{config}");
}
