//! `shoalctl status` shows the identity each proxy proved on its discovery stream (docs/control-plane.md,
//! "Proxy identity"): the SPIFFE id of the workload certificate a certified proxy presents (it reopens the
//! stream it opened before `Certify` answered), `none` for a proxy over TLS without a certificate, and
//! `none (plaintext)` over the plaintext opt-in. `-o json` carries the transport and the identity. A
//! stream proving another workload than it registered as (a raw client: a real proxy's settings and
//! certificate always agree) is served, flagged `(MISMATCH)` and warned about once.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use shoal_proto::v1;
use shoal_tests::control_plane::{
    ControlPlane, ControlPlaneBuilder, hello_then_bundle_subscription,
};
use shoal_tests::pki::{self, Leaf, TestCa};
use shoal_tests::process::TempDir;
use shoal_tests::{eventually, grpc};
use tokio::sync::mpsc;

const ANCHORS: &str = "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE";
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const WAIT: Duration = Duration::from_secs(15);

/// Asserts `proxy_id`'s transport, verified identity and mismatch flag in `shoalctl status -o json`.
async fn assert_json_identity(
    cp: &ControlPlane,
    proxy_id: &str,
    transport: &str,
    verified: &str,
    mismatch: bool,
) {
    let doc = cp.proxy_status_json(proxy_id).await.expect("connected");
    assert_eq!(doc["transport"], transport, "{doc}");
    assert_eq!(doc["verifiedIdentity"], verified, "{doc}");
    assert_eq!(doc["identityMismatch"], mismatch, "{doc}");
}

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
    assert_json_identity(&cp, "id-frontend", "MTLS", FRONTEND_ID, false).await;
    assert_json_identity(&cp, "id-anonymous", "TLS", "", false).await;

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
    assert_json_identity(&cp, "id-plain", "PLAINTEXT", "", false).await;
}

/// A discovery stream opened by hand over TLS, presenting a certificate of the test's own CA (the control
/// plane runs under that root), whose `Hello` may claim any workload.
struct RawProxy {
    _tx: mpsc::Sender<v1::DiscoveryRequest>,
    responses: tonic::Streaming<v1::DiscoveryResponse>,
}

impl RawProxy {
    async fn connect(
        cp: &ControlPlane,
        ca: &TestCa,
        cert: &Leaf,
        proxy_id: &str,
        service_account: &str,
    ) -> Self {
        let tls = pki::connect_presenting(cp.discovery_addr(), cert, &[ca.root_pem()])
            .await
            .expect("a TLS connection to the discovery listener, presenting the certificate");
        let origin = cp.discovery_url().parse().expect("discovery URL");
        let mut client = v1::discovery_client::DiscoveryClient::with_origin(
            grpc::h2_transport(tls).await,
            origin,
        );
        let hello = v1::Hello {
            proxy_id: proxy_id.into(),
            workload: Some(v1::WorkloadIdentity {
                namespace: "default".into(),
                service_account: service_account.into(),
                service_name: String::new(),
            }),
            ..Default::default()
        };
        let (tx, outgoing) = hello_then_bundle_subscription(hello).await;
        let responses = tokio::time::timeout(WAIT, client.stream(outgoing))
            .await
            .expect("the stream answered within the deadline")
            .expect("stream")
            .into_inner();
        Self { _tx: tx, responses }
    }
}

/// A control plane whose CA runs under `ca`'s root (`SHOAL_CP_CA_CERT_FILE`, `SHOAL_CP_CA_KEY_FILE`).
async fn control_plane_under(ca: &TestCa, dir: &TempDir) -> ControlPlane {
    let (cert, key) = (dir.path().join("root.pem"), dir.path().join("root.key"));
    std::fs::write(&cert, ca.root_pem()).unwrap();
    std::fs::write(&key, ca.key_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    ControlPlaneBuilder::new()
        .env("SHOAL_CP_CA_CERT_FILE", cert.display())
        .env("SHOAL_CP_CA_KEY_FILE", key.display())
        .start()
        .await
}

const MISMATCH_WARNING: &str = "registered as another workload than its client certificate proves";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_proving_another_workload_is_served_flagged_and_warned_about_once() {
    let ca = TestCa::new("operator-root");
    let dir = TempDir::new("cp-status-identity").unwrap();
    let cp = control_plane_under(&ca, &dir).await;
    let frontend = ca.workload(FRONTEND_ID);

    // Proves frontend, registers as frontend: no flag.
    let _honest = RawProxy::connect(&cp, &ca, &frontend, "raw-honest", "frontend").await;
    cp.wait_proxy_identity("raw-honest", FRONTEND_ID, WAIT)
        .await;

    // Proves frontend, registers as backend: served (it gets its trust bundle), flagged.
    let flagged = format!("{FRONTEND_ID} (MISMATCH)");
    for _ in 0..2 {
        let mut impostor = RawProxy::connect(&cp, &ca, &frontend, "raw-impostor", "backend").await;
        let row = cp.wait_proxy_identity("raw-impostor", &flagged, WAIT).await;
        assert!(row.line.contains("default/- (backend)"), "{}", row.line);
        assert_json_identity(&cp, "raw-impostor", "MTLS", FRONTEND_ID, true).await;
        let served = tokio::time::timeout(WAIT, impostor.responses.message())
            .await
            .expect("a response within the deadline")
            .expect("the stream is served, not refused");
        assert!(
            served.is_some_and(|r| !r.resources.is_empty()),
            "the trust bundle is pushed"
        );
        drop(impostor);
        eventually(WAIT, "raw-impostor disconnected", || async {
            match cp.proxy_row("raw-impostor").await {
                // Kept as DISCONNECTED for the grace period (SHOAL_CP_DISCONNECTED_PROXY_GRACE).
                None => Ok(()),
                Some(row) if row.state == "DISCONNECTED" => Ok(()),
                Some(row) => Err(row.line),
            }
        })
        .await;
    }
    // Reconnecting with the same certificate does not log it again.
    let warnings: Vec<String> = cp
        .logs()
        .lines()
        .filter(|l| l.contains(MISMATCH_WARNING))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("raw-impostor")
            && warnings[0].contains("ns/default/sa/backend")
            && warnings[0].contains(FRONTEND_ID),
        "the warning names the proxy and both identities: {}",
        warnings[0]
    );
}
