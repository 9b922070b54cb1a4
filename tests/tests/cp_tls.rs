//! The proxy ↔ control plane channel over TLS (docs/control-plane.md, "Transport security"): discovery
//! and Certify verified with the trust anchors file and the control plane's SPIFFE id; another CA's
//! anchors or another identity never connect (and the join token never leaves the proxy); plaintext is
//! closed unless the control plane opted in; after a CA rotation the control plane's certificate comes
//! from the new signer and the proxy still reconnects, trusting it through the pushed bundle.

use std::time::Duration;

use shoal_tests::control_plane::{ControlPlaneBuilder, MeshClient, service_yaml};
use shoal_tests::pki::{self, TestCa};
use shoal_tests::process::TempDir;
use shoal_tests::{HttpBackend, Proxy, backend::text_response, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ANCHORS: &str = "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE";
const CP_ID: &str = "spiffe://cluster.local/ns/shoal-system/sa/shoal-control-plane";
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";

async fn named(body: &'static str) -> HttpBackend {
    HttpBackend::respond(move |_| text_response(200, body)).await
}

/// `GET / Host: web` through the proxy until it answers `want` (the first answers may predate the push).
async fn wait_body(proxy: &Proxy, want: &str) {
    let mut client = MeshClient::new(proxy.outbound());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let last = client.body("web").await;
        if last.as_ref().is_ok_and(|body| body == want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "web never answered {want} within 5 s; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the proxy's `/config` shows the discovery stream up or down.
async fn wait_connected(proxy: &Proxy, connected: bool) -> serde_json::Value {
    eventually(
        Duration::from_secs(12),
        &format!("discovery connected == {connected}"),
        || async {
            let d = proxy.config().await["discovery"].clone();
            if d["connected"] == connected {
                Ok(d)
            } else {
                Err(d)
            }
        },
    )
    .await
}

fn roots_in(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_certify_run_over_tls_verified_with_the_anchors_file() {
    let cp = ControlPlaneBuilder::new().start().await;
    let v1 = named("v1").await;
    cp.apply(&service_yaml("web", 80, &[v1.addr()])).await;

    // The listener's certificate chains to the anchors file's root, not to another CA's.
    let anchors = std::fs::read_to_string(cp.anchors_file()).expect("the anchors file");
    assert_eq!(roots_in(&anchors), 1, "{anchors}");
    let chain = pki::presented_chain(cp.discovery_addr(), &pki::identity_sni(CP_ID))
        .await
        .expect("a TLS handshake with the discovery listener");
    assert!(pki::chains_to(&chain, &[&anchors]));
    assert!(!pki::chains_to(&chain, &[TestCa::new("other").root_pem()]));

    // Certify (join token) and discovery both over TLS: the proxy is certified and routes with
    // pushed endpoints.
    let proxy = (cp
        .joining_proxy("tls-frontend", "frontend", Some("0"))
        .await)
        .start()
        .await;
    let config = proxy.config().await;
    assert_eq!(config["identity"]["spiffe_id"], FRONTEND_ID, "{config}");
    wait_body(&proxy, "v1").await;
    wait_connected(&proxy, true).await;

    // A change made now reaches the proxy over the same channel.
    let v2 = named("v2").await;
    cp.apply(&service_yaml("web", 80, &[v2.addr()])).await;
    wait_body(&proxy, "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_cas_anchors_never_connect_and_the_error_says_why() {
    let cp = ControlPlaneBuilder::new().start().await;
    let dir = TempDir::new("cp-tls-anchors").unwrap();
    let wrong = dir.path().join("other-anchors.pem");
    std::fs::write(&wrong, TestCa::new("other").root_pem()).unwrap();
    let proxy = cp
        .proxy_builder("wrong-anchors")
        .env(ANCHORS, wrong.display())
        .start()
        .await;
    let discovery = eventually(
        Duration::from_secs(5),
        "a certificate verification error in /config",
        || async {
            let d = proxy.config().await["discovery"].clone();
            match d["last_error"].as_str() {
                Some(e) if e.contains("UnknownIssuer") => Ok(d),
                _ => Err(d),
            }
        },
    )
    .await;
    let error = discovery["last_error"].as_str().unwrap();
    assert!(
        error.contains(ANCHORS),
        "the error names the setting: {error}"
    );
    assert!(
        error.contains(CP_ID),
        "the error names the identity: {error}"
    );
    assert_eq!(discovery["connected"], false, "{discovery}");
    assert_eq!(
        discovery["acked"], 0,
        "nothing was ever received: {discovery}"
    );
    assert!(
        cp.proxy_row("wrong-anchors").await.is_none(),
        "the control plane never saw a stream from it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_refuses_a_control_plane_with_another_identity_and_keeps_the_token() {
    let cp = ControlPlaneBuilder::new().start().await;
    // Single use: if the refused attempts had redeemed it, the second proxy could not.
    let token = cp.join_token("frontend", Some("1")).await;
    let impostor_check = cp
        .proxy_builder("expects-another-cp")
        .env(
            "SHOAL_CONTROL_PLANE_IDENTITY",
            "spiffe://cluster.local/ns/elsewhere/sa/shoal-control-plane",
        )
        .env("SHOAL_IDENTITY_TOKEN", &token)
        .env("SHOAL_SERVICE_ACCOUNT", "frontend")
        .ready_timeout(Duration::from_secs(3))
        .try_start()
        .await;
    let error = format!("{:#}", impostor_check.err().expect("never certified"));
    assert!(
        error.contains(&format!("the peer presented {CP_ID}"))
            && error.contains("spiffe://cluster.local/ns/elsewhere/sa/shoal-control-plane"),
        "the refusal names both identities: {error}"
    );

    let proxy = cp
        .proxy_builder("expects-this-cp")
        .env("SHOAL_IDENTITY_TOKEN", &token)
        .env("SHOAL_SERVICE_ACCOUNT", "frontend")
        .start()
        .await;
    assert_eq!(proxy.config().await["identity"]["spiffe_id"], FRONTEND_ID);
}

/// Sends the HTTP/2 client preface and waits for the server's answer: `Ok(0)` means it closed.
async fn h2c_preface(addr: std::net::SocketAddr) -> std::io::Result<usize> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(0),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other("neither answered nor closed in 5 s")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_closed_unless_the_control_plane_opted_in() {
    let v1 = named("v1").await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&service_yaml("web", 80, &[v1.addr()])).await;
    assert_eq!(h2c_preface(cp.discovery_addr()).await.unwrap(), 0, "closed");
    assert_eq!(h2c_preface(cp.discovery_addr()).await.unwrap(), 0, "closed");
    let proxy = cp
        .proxy_builder("plaintext-refused")
        .env("SHOAL_DISCOVERY_ADDR", cp.discovery_url_plaintext())
        .unset(ANCHORS)
        .start()
        .await;
    let d = eventually(Duration::from_secs(5), "a refused stream", || async {
        let d = proxy.config().await["discovery"].clone();
        if d["last_error"].is_string() {
            Ok(d)
        } else {
            Err(d)
        }
    })
    .await;
    assert_eq!(d["connected"], false, "{d}");
    // Logged once per peer address, with the fix.
    let refusals = cp
        .logs()
        .lines()
        .filter(|l| l.contains("plaintext (h2c) connection to the discovery listener refused"))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].contains("SHOAL_CP_DISCOVERY_PLAINTEXT=true"));
    // …but every refusal is counted (the two raw connections and the proxy's attempts).
    let refused = cp
        .metric(
            "shoal_cp_discovery_connections_total",
            &[("transport", "plaintext"), ("result", "refused")],
        )
        .await;
    assert!(refused >= 3.0, "{refused} refusals counted");

    // With the opt-in the same plaintext proxy works.
    let cp = ControlPlaneBuilder::new()
        .env("SHOAL_CP_DISCOVERY_PLAINTEXT", "true")
        .start()
        .await;
    cp.apply(&service_yaml("web", 80, &[v1.addr()])).await;
    assert!(
        h2c_preface(cp.discovery_addr()).await.unwrap() > 0,
        "h2c is answered"
    );
    let proxy = cp
        .proxy_builder("plaintext-allowed")
        .env("SHOAL_DISCOVERY_ADDR", cp.discovery_url_plaintext())
        .unset(ANCHORS)
        .start()
        .await;
    wait_body(&proxy, "v1").await;
    // TLS keeps working beside it.
    let tls = cp.proxy_builder("tls-beside").start().await;
    wait_body(&tls, "v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_ca_rotation_the_proxy_trusts_the_new_signer_through_the_pushed_bundle() {
    let mut cp = ControlPlaneBuilder::new().start().await;
    let v1 = named("v1").await;
    cp.apply(&service_yaml("web", 80, &[v1.addr()])).await;
    // The proxy's anchors: a copy of today's file (the old root only), never updated.
    let dir = TempDir::new("cp-tls-rotation").unwrap();
    let anchors = dir.path().join("anchors.pem");
    let old_root = std::fs::read_to_string(cp.anchors_file()).unwrap();
    std::fs::write(&anchors, &old_root).unwrap();
    let proxy = (cp.joining_proxy("rotation", "frontend", Some("0")).await)
        .env(ANCHORS, anchors.display())
        .start()
        .await;
    wait_body(&proxy, "v1").await;

    cp.ctl(&["ca", "rotate"], None).await.success();
    // The new bundle reaches the proxy, and the control plane rewrites its anchors file.
    eventually(Duration::from_secs(5), "two roots at the proxy", || async {
        let roots = proxy.config().await["identity"]["trust_roots"].clone();
        if roots == 2 { Ok(()) } else { Err(roots) }
    })
    .await;
    // The new root is PENDING until the proxy has ACKed the bundle carrying it, then signs
    // (mesh_ca_phases.rs); the anchors file follows, active root first.
    let rewritten = eventually(
        Duration::from_secs(10),
        "the new root active, first in the anchors file",
        || async {
            let text = std::fs::read_to_string(cp.anchors_file()).unwrap();
            let first = text.split_inclusive("-----END CERTIFICATE-----").next();
            match first {
                Some(first) if roots_in(&text) == 2 && !old_root.contains(first.trim()) => Ok(text),
                _ => Err(format!("{} roots, old root still first", roots_in(&text))),
            }
        },
    )
    .await;
    let printed = cp.ctl(&["ca", "anchors"], None).await.success().stdout;
    assert_eq!(
        printed.trim(),
        rewritten.trim(),
        "`shoalctl ca anchors` prints the file"
    );
    let new_root = rewritten
        .split_inclusive("-----END CERTIFICATE-----")
        .next()
        .unwrap()
        .to_owned();

    // The listener's certificate now comes from the new signer, not from the proxy's anchors.
    let sni = pki::identity_sni(CP_ID);
    eventually(
        Duration::from_secs(5),
        "a certificate from the new root",
        || async {
            let chain = pki::presented_chain(cp.discovery_addr(), &sni).await;
            match chain {
                Ok(c) if pki::chains_to(&c, &[&new_root]) => Ok(()),
                other => Err(format!("{:?}", other.map(|c| c.len()))),
            }
        },
    )
    .await;
    let chain = pki::presented_chain(cp.discovery_addr(), &sni)
        .await
        .unwrap();
    assert!(!pki::chains_to(&chain, &[&old_root]));

    // A restart forces a new connection: the proxy verifies the new certificate with the pushed
    // bundle (its anchors alone would refuse it) and presents its workload certificate.
    cp.restart().await.expect("restart the control plane");
    wait_connected(&proxy, true).await;
    let v2 = named("v2").await;
    cp.apply(&service_yaml("web", 80, &[v2.addr()])).await;
    wait_body(&proxy, "v2").await;
    let connected = cp
        .log_lines()
        .into_iter()
        .find(|l| l.contains("proxy connected") && l.contains("rotation"))
        .expect("a `proxy connected` line after the restart");
    assert!(
        connected.contains(FRONTEND_ID),
        "the client certificate's identity is recorded: {connected}"
    );
}
