//! The whole identity path with real processes: `shoalctl token create` → proxies redeem their
//! join tokens at the control plane's CA → HTTP between them rides mTLS (the app learns the
//! caller's SPIFFE id) → `shoalctl ca rotate` under steady traffic: the new root reaches every
//! proxy through discovery (PENDING), then signs (ACTIVE), a proxy certified by the new root and
//! one by the old talk to each other, and not one request fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use shoal_tests::control_plane::{ControlPlaneBuilder, MeshClient};
use shoal_tests::{HttpBackend, Proxy, assert_eventually};

const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";

async fn trust_roots(proxy: &Proxy) -> u64 {
    proxy.config().await["identity"]["trust_roots"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certified_proxies_speak_mtls_and_survive_a_ca_rotation() {
    let cp = ControlPlaneBuilder::new().start().await;
    let app = HttpBackend::echo().await;
    let server = shoal_tests::ProxyBuilder::new()
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
        "kind: Service\nmetadata: {{name: web}}\nspec:\n  ports: [{{port: 80}}]\n---\nkind: EndpointRegistration\nmetadata: {{name: web-0}}\nspec: {{service: web, address: {}, port: {}, identity: \"{WEB_ID}\"}}\n",
        inbound.ip(),
        inbound.port()
    ))
    .await;
    let old = cp
        .joining_proxy("frontend", "frontend", None)
        .await
        .start()
        .await;
    let mut c = MeshClient::new(old.outbound());
    assert_eq!(
        c.get("web", "/").await.unwrap().status,
        200,
        "{}",
        server.logs()
    );
    assert_eq!(
        app.last().header("shoal-client-id"),
        Some("spiffe://cluster.local/ns/default/sa/frontend")
    );
    let tls_ok = old
        .metric("shoal_outbound_tls_connections_total", &[("result", "ok")])
        .await;
    assert!(tls_ok >= 1.0, "no mTLS connection was made");

    // Steady traffic from the old-root client during the whole rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        let addr = old.outbound();
        tokio::spawn(async move {
            let mut c = MeshClient::new(addr);
            while !stop.load(Ordering::SeqCst) {
                sent.fetch_add(1, Ordering::SeqCst);
                if c.body("web").await.is_err() {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    cp.ctl(&["ca", "rotate"], None).await.success();
    // The new root reaches both proxies through discovery.
    assert_eventually!(
        Duration::from_secs(5),
        trust_roots(&server).await == 2 && trust_roots(&old).await == 2,
        "both proxies trusting the old and the new root"
    );
    // Both proxies have ACKed the bundle with the new root: it starts signing (PENDING → ACTIVE)
    // on the control plane's next upkeep tick, well before the 60 s propagation timeout.
    assert_eventually!(
        Duration::from_secs(5),
        cp.ca_states().await == ["ACTIVE", "RETIRING"],
        "the new root active once both proxies have it"
    );
    // A proxy certified now gets a certificate from the new root; it reaches the old-root
    // server, and the old-root client keeps reaching it too.
    let new = cp
        .joining_proxy("checkout", "checkout", None)
        .await
        .start()
        .await;
    let mut c = MeshClient::new(new.outbound());
    for _ in 0..20 {
        assert_eq!(c.body("web").await.ok().map(|_| ()), Some(()));
    }
    // (The old-root client's steady traffic interleaves: look for the new client among them.)
    let checkout = Some("spiffe://cluster.local/ns/default/sa/checkout");
    assert!(
        app.requests()
            .iter()
            .any(|r| r.header("shoal-client-id") == checkout),
        "no request arrived as checkout"
    );
    assert_eventually!(
        Duration::from_secs(5),
        sent.load(Ordering::SeqCst) > 50,
        "steady traffic flowing"
    );
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} of {} requests failed during the rotation",
        failed.load(Ordering::SeqCst),
        sent.load(Ordering::SeqCst)
    );
}
