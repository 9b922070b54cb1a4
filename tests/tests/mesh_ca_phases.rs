//! CA rotation in phases, with the real binaries: `shoalctl ca rotate` adds the new root as PENDING
//! (trusted, not signing); it becomes ACTIVE as soon as every proxy connected to discovery has
//! acknowledged the trust bundle with it (a real `shoal-proxy`: well under the propagation
//! timeout), or — when a connected proxy never acknowledges (a raw discovery client here) — at the
//! `SHOAL_CP_CA_PROPAGATION_TIMEOUT`, with a warning naming that proxy.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shoal_proto::v1;
use shoal_tests::assert_eventually;
use shoal_tests::control_plane::{
    ControlPlane, ControlPlaneBuilder, hello_then_bundle_subscription, root_states,
};
use tokio::sync::mpsc;

const PENDING: [&str; 2] = ["ACTIVE", "PENDING"];
const ACTIVATED: [&str; 2] = ["ACTIVE", "RETIRING"];

/// Waits until `proxy_id` is connected and subscribed to the trust bundle (its row in
/// `shoalctl status -o wide`).
async fn wait_subscribed(cp: &ControlPlane, proxy_id: &str) {
    assert_eventually!(
        Duration::from_secs(10),
        cp.ctl(&["status", "-o", "wide"], None)
            .await
            .stdout
            .lines()
            .any(|l| l.starts_with(proxy_id) && l.contains("trust_bundle/cluster.local")),
        "{proxy_id} subscribed to the trust bundle"
    );
}

/// `shoalctl ca rotate -o json`: the status right after the rotation started.
async fn rotate(cp: &ControlPlane) -> serde_json::Value {
    let out = cp
        .ctl(&["ca", "rotate", "-o", "json"], None)
        .await
        .success();
    assert!(out.stderr.contains("is PENDING"), "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("rotate -o json")
}

/// Polls `shoalctl ca status` until the roots are ACTIVE + RETIRING (within `timeout`); returns every
/// distinct state sequence seen on the way, in order, and when activation was first seen.
async fn follow_until_active(cp: &ControlPlane, timeout: Duration) -> (Vec<Vec<String>>, Instant) {
    let deadline = Instant::now() + timeout;
    let mut seen: Vec<Vec<String>> = Vec::new();
    loop {
        let states = cp.ca_states().await;
        if seen.last() != Some(&states) {
            seen.push(states.clone());
        }
        if states == ACTIVATED {
            return (seen, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "not active within {timeout:?}; states seen: {seen:?}\n{}",
            cp.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_root_signs_as_soon_as_the_connected_proxy_has_it() {
    let cp = ControlPlaneBuilder::new()
        .env("SHOAL_CP_CA_PROPAGATION_TIMEOUT", "30s")
        .start()
        .await;
    let proxy = cp
        .joining_proxy("frontend", "frontend", None)
        .await
        .start()
        .await;
    wait_subscribed(&cp, "frontend").await;
    let old = cp.ca_status().await["roots"][0]["fingerprintSha256"].clone();

    let started = Instant::now();
    let rotated = rotate(&cp).await;
    assert_eq!(root_states(&rotated), PENDING);
    assert_eq!(
        rotated["roots"][0]["fingerprintSha256"], old,
        "the old root still signs"
    );
    let new = rotated["roots"][1]["fingerprintSha256"].clone();

    let (seen, activated_at) = follow_until_active(&cp, Duration::from_secs(10)).await;
    let took = activated_at - started;
    // Only PENDING, then ACTIVE: never anything else on the way.
    assert!(
        seen.iter().all(|s| *s == PENDING || *s == ACTIVATED),
        "{seen:?}"
    );
    // The proxy ACKs within milliseconds; the upkeep decides on its next tick (1 s).
    assert!(
        took < Duration::from_secs(5),
        "activation took {took:?} (timeout 30 s)"
    );
    let status = cp.ca_status().await;
    assert_eq!(status["roots"][0]["fingerprintSha256"], new);
    assert_eq!(status["roots"][1]["fingerprintSha256"], old);
    assert!(status["roots"][1]["retireAt"].is_string(), "{status}");
    assert_eq!(
        proxy.config().await["identity"]["trust_roots"].as_u64(),
        Some(2),
        "the proxy holds both roots"
    );
    cp.wait_for_log(Duration::from_secs(1), "the activation log line", |l| {
        l.contains("every connected proxy has the trust bundle") && l.contains("proxies=1")
    })
    .await;
    for (name, labels, value) in [
        (
            "shoal_cp_ca_activations_total",
            [("reason", "propagated")],
            1.0,
        ),
        ("shoal_cp_ca_rotation_phase", [("phase", "retiring")], 1.0),
        ("shoal_cp_ca_rotation_phase", [("phase", "pending")], 0.0),
        ("shoal_cp_ca_pending_proxies", [("", "")], 0.0),
    ] {
        let labels: &[(&str, &str)] = if labels[0].0.is_empty() { &[] } else { &labels };
        assert_eq!(cp.metric(name, labels).await, value, "{name}{labels:?}");
    }
    assert_eq!(cp.metric("shoal_cp_ca_roots", &[]).await, 2.0);
}

/// A discovery stream that says `Hello`, subscribes to the trust bundle and never ACKs.
struct SilentProxy {
    _tx: mpsc::Sender<v1::DiscoveryRequest>,
    responses: tonic::Streaming<v1::DiscoveryResponse>,
}

impl SilentProxy {
    async fn connect(cp: &ControlPlane, proxy_id: &str) -> Self {
        // Plaintext (the control plane opts in below): a raw tonic client, no TLS set-up needed to
        // play a proxy that never ACKs.
        let channel = tonic::transport::Endpoint::from_shared(cp.discovery_url_plaintext())
            .expect("discovery URL")
            .connect()
            .await
            .expect("discovery listener");
        let mut client = v1::discovery_client::DiscoveryClient::new(channel);
        let hello = v1::Hello {
            proxy_id: proxy_id.into(),
            ..Default::default()
        };
        let (tx, outgoing) = hello_then_bundle_subscription(hello).await;
        let responses = client.stream(outgoing).await.expect("stream").into_inner();
        Self { _tx: tx, responses }
    }

    /// The roots of the next trust bundle pushed (within 5 s), not ACKed.
    async fn next_roots(&mut self) -> usize {
        let response = tokio::time::timeout(Duration::from_secs(5), self.responses.next())
            .await
            .expect("a push within 5 s")
            .expect("stream open")
            .expect("a response");
        match &response.resources[0].payload {
            Some(v1::discovery_resource::Payload::TrustBundle(b)) => b.roots_pem.len(),
            other => panic!("expected a trust bundle, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_proxy_that_never_acks_holds_activation_until_the_timeout() {
    let cp = ControlPlaneBuilder::new()
        .env("SHOAL_CP_CA_PROPAGATION_TIMEOUT", "3s")
        .env("SHOAL_CP_DISCOVERY_PLAINTEXT", "true")
        .start()
        .await;
    let mut silent = SilentProxy::connect(&cp, "silent-proxy").await;
    assert_eq!(silent.next_roots().await, 1);
    wait_subscribed(&cp, "silent-proxy").await;

    let started = Instant::now();
    let rotated = rotate(&cp).await;
    assert_eq!(root_states(&rotated), PENDING);
    assert_eq!(silent.next_roots().await, 2, "the pending root is pushed");
    let refused = cp.ctl(&["ca", "rotate"], None).await;
    assert_eq!(refused.code(), Some(1));
    assert!(
        refused.stderr.contains("FAILED_PRECONDITION") && refused.stderr.contains("is PENDING"),
        "{}",
        refused.stderr
    );

    let (seen, activated_at) = follow_until_active(&cp, Duration::from_secs(10)).await;
    let took = activated_at - started;
    assert_eq!(
        seen.first().map(Vec::as_slice),
        Some(&PENDING.map(String::from)[..])
    );
    // Activation is due 3 s after the rotation's start, in whole seconds of the control plane's
    // clock (the start second is truncated), seen within the next upkeep tick.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "activated after {took:?}, timeout 3 s; states seen {seen:?}"
    );
    cp.wait_for_log(Duration::from_secs(1), "the timeout warning", |l| {
        l.contains("CA propagation timeout") && l.contains("silent-proxy")
    })
    .await;
    assert_eq!(
        cp.metric("shoal_cp_ca_activations_total", &[("reason", "timeout")])
            .await,
        1.0
    );
}
