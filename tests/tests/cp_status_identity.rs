//! `shoalctl status` shows the identity each proxy proved on its discovery stream (docs/control-plane.md,
//! "Proxy identity"): the SPIFFE id of the workload certificate a certified proxy presents (it reopens the
//! stream it opened before `Certify` answered), `none` for a proxy over TLS without a certificate, and
//! `none (plaintext)` over the plaintext opt-in. `-o json` carries the transport and the identity.

use std::time::Duration;

use shoal_tests::control_plane::ControlPlaneBuilder;

const ANCHORS: &str = "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE";
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certified_proxy_shows_its_spiffe_id_and_one_without_a_certificate_shows_none() {
    let cp = ControlPlaneBuilder::new().start().await;
    let certified = (cp.joining_proxy("id-frontend", "frontend", Some("0")).await)
        .start()
        .await;
    let anonymous = cp.proxy_builder("id-anonymous").start().await;

    let row = cp
        .wait_proxy_identity("id-frontend", FRONTEND_ID, WAIT)
        .await;
    assert!(
        row.line.contains("default/") && row.line.contains("(frontend)"),
        "the workload it registered as: {}",
        row.line
    );
    let row = cp.wait_proxy_identity("id-anonymous", "none", WAIT).await;
    assert!(!row.line.contains("spiffe://"), "{}", row.line);

    // The same in JSON, with the transport.
    let doc = cp
        .proxy_status_json("id-frontend")
        .await
        .expect("connected");
    assert_eq!(doc["transport"], "MTLS", "{doc}");
    assert_eq!(doc["verifiedIdentity"], FRONTEND_ID, "{doc}");
    assert_eq!(doc["identityMismatch"], false, "{doc}");
    let doc = cp
        .proxy_status_json("id-anonymous")
        .await
        .expect("connected");
    assert_eq!(doc["transport"], "TLS", "{doc}");
    assert_eq!(doc["verifiedIdentity"], "", "{doc}");

    // The certified proxy reopened its stream once to present the certificate: one proxy, one row.
    let out = cp.ctl(&["status"], None).await.success();
    let rows = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("id-frontend "))
        .count();
    assert_eq!(rows, 1, "{}", out.stdout);
    let connected: Vec<String> = cp
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("proxy connected") && l.contains("id-frontend"))
        .collect();
    assert!(
        connected.last().is_some_and(|l| l.contains(FRONTEND_ID)),
        "{connected:?}"
    );
    assert!(connected.len() <= 2, "reopened at most once: {connected:?}");
    // No mismatch, so no warning.
    assert!(
        !cp.logs().contains("registered as another workload"),
        "{}",
        cp.logs()
    );
    drop((certified, anonymous));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_over_the_plaintext_opt_in_shows_none_plaintext() {
    let cp = ControlPlaneBuilder::new()
        .env("SHOAL_CP_DISCOVERY_PLAINTEXT", "true")
        .start()
        .await;
    let _plain = cp
        .proxy_builder("id-plain")
        .env("SHOAL_DISCOVERY_ADDR", cp.discovery_url_plaintext())
        .unset(ANCHORS)
        .start()
        .await;
    cp.wait_proxy_identity("id-plain", "none (plaintext)", WAIT)
        .await;
    let doc = cp.proxy_status_json("id-plain").await.expect("connected");
    assert_eq!(doc["transport"], "PLAINTEXT", "{doc}");
    assert_eq!(doc["verifiedIdentity"], "", "{doc}");
    assert_eq!(doc["identityMismatch"], false, "{doc}");
}
