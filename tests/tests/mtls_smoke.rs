//! Two proxies with file-based identities: HTTP/1.1 from the app rides mTLS (HTTP/2 between the
//! proxies) and reaches the app as HTTP/1.1 with the caller's identity; a strict port refuses
//! plain text (403 `mtls-required`).

use std::time::Duration;

use shoal_tests::pki::TestCa;
use shoal_tests::process::TempDir;
use shoal_tests::{H1Client, HttpBackend, ProxyBuilder};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";

#[tokio::test]
async fn http1_rides_mtls_and_the_app_learns_the_caller() {
    let dir = TempDir::new("mtls-smoke").unwrap();
    let ca = TestCa::new("mesh");
    let app = HttpBackend::echo().await;

    let server = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .env("SHOAL_INBOUND_TLS_MODE", "strict")
        .identity(
            &ca.workload(WEB_ID)
                .write(dir.path(), "web", &[ca.root_pem()]),
        );
    let server = server.start().await;

    let state = shoal_tests::proxy::mesh_web_state(server.inbound(), WEB_ID);
    let client = ProxyBuilder::new()
        .outbound_explicit()
        .state(&state)
        .identity(
            &ca.workload(CLIENT_ID)
                .write(dir.path(), "client", &[ca.root_pem()]),
        );
    let client = client.start().await;

    let mut c = H1Client::connect(client.outbound()).await.unwrap();
    let resp = c.get("web", "/hello").await.unwrap();
    assert_eq!(
        resp.status,
        200,
        "{resp:?}\n{}\n{}",
        client.logs(),
        server.logs()
    );
    let seen = app.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.uri.path(), "/hello");
    assert_eq!(seen.header("shoal-client-id"), Some(CLIENT_ID));
    assert_eq!(seen.header("shoal-orig-proto"), None);

    // Plain text straight to the strict inbound port: refused with 403 `mtls-required`, nothing
    // reaches the app.
    let before = app.count();
    let plain = async {
        let mut c = H1Client::connect(server.inbound()).await?;
        c.get("web", "/plain").await
    };
    let result = tokio::time::timeout(Duration::from_secs(5), plain)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (result.status.as_u16(), result.header("shoal-proxy-error")),
        (403, Some("mtls-required")),
        "plain text was not refused: {result:?}"
    );
    assert_eq!(app.count(), before);
}
