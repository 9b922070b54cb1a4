//! The inbound mTLS modes and when the outbound side uses mTLS.
//!
//! - permissive: plain text and mesh mTLS are both served, counted `tls="false"` / `"true"`;
//! - strict: plain-text HTTP is answered 403 `mtls-required`, other plain text (the app's own
//!   TLS) is closed; both are counted `reason="plaintext"`, nothing reaches the app;
//! - disabled: a TLS ClientHello (the app's own TLS) reaches the app byte for byte;
//! - a per-port `tls_mode` in the state overrides `SHOAL_INBOUND_TLS_MODE` for the proxy's own
//!   service (`SHOAL_SERVICE_NAME`), both ways;
//! - outbound: an endpoint without `identity:`, or a service with `tls_mode: disabled`, is
//!   reached in plain text.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_tests::pki::{self, TestCa};
use shoal_tests::process::TempDir;
use shoal_tests::{H1Client, HttpBackend, Proxy, ProxyBuilder, TcpBackend, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const T: Duration = Duration::from_secs(10);
const REFUSED: &str = "shoal_inbound_tls_refused_total";
const REQUESTS: &str = "shoal_requests_total";
const TLS_OUT: &str = "shoal_outbound_tls_connections_total";

/// The web side: an inbound proxy with the web identity, configured by `configure`.
async fn server(
    dir: &TempDir,
    ca: &TestCa,
    app: SocketAddr,
    configure: impl FnOnce(ProxyBuilder) -> ProxyBuilder,
) -> Proxy {
    let files = ca
        .workload(WEB_ID)
        .write(dir.path(), "web", &[ca.root_pem()]);
    let builder = ProxyBuilder::new().inbound_explicit(app).identity(&files);
    configure(builder).start().await
}

/// The client side: an outbound proxy with the client identity and `state`.
async fn client(dir: &TempDir, ca: &TestCa, state: &str) -> Proxy {
    let files = ca
        .workload(CLIENT_ID)
        .write(dir.path(), "client", &[ca.root_pem()]);
    ProxyBuilder::new()
        .outbound_explicit()
        .state(state)
        .identity(&files)
        .start()
        .await
}

/// A state naming the service `web` whose one endpoint is `addr` with the web identity.
fn web_state(addr: SocketAddr) -> String {
    shoal_tests::proxy::mesh_web_state(addr, WEB_ID)
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<shoal_tests::Resp> {
    tokio::time::timeout(T, async {
        let mut c = H1Client::connect(addr).await?;
        c.get("web", path).await
    })
    .await?
}

fn inbound_requests(tls: &'static str) -> [(&'static str, &'static str); 2] {
    [("direction", "inbound"), ("tls", tls)]
}

#[tokio::test]
async fn permissive_serves_plain_and_mtls_and_labels_them() {
    let dir = TempDir::new("mtls-modes").unwrap();
    let ca = TestCa::new("mesh");
    let app = HttpBackend::echo().await;
    let server = server(&dir, &ca, app.addr(), |b| {
        b.env("SHOAL_INBOUND_TLS_MODE", "permissive")
    })
    .await;
    let client = client(&dir, &ca, &web_state(server.inbound())).await;

    let plain = get(server.inbound(), "/plain").await.unwrap();
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(
        app.last().header("shoal-client-id"),
        None,
        "plain text has no caller identity"
    );
    server
        .wait_metric(REQUESTS, &inbound_requests("false"), 1.0)
        .await;
    assert_eq!(
        server.metric(REQUESTS, &inbound_requests("true")).await,
        0.0
    );

    let mesh = get(client.outbound(), "/mesh").await.unwrap();
    assert_eq!(mesh.status, 200, "{mesh:?}");
    assert_eq!(app.last().uri.path(), "/mesh");
    assert_eq!(app.last().header("shoal-client-id"), Some(CLIENT_ID));
    server
        .wait_metric(REQUESTS, &inbound_requests("true"), 1.0)
        .await;
    assert_eq!(
        server.metric(REQUESTS, &inbound_requests("false")).await,
        1.0
    );
    assert_eq!(client.metric(TLS_OUT, &[("result", "ok")]).await, 1.0);
    assert_eq!(server.metric(REFUSED, &[]).await, 0.0);
}

#[tokio::test]
async fn strict_refuses_plain_text_and_counts_it() {
    let dir = TempDir::new("mtls-modes").unwrap();
    let ca = TestCa::new("mesh");
    let app = HttpBackend::echo().await;
    let server = server(&dir, &ca, app.addr(), |b| {
        b.env("SHOAL_INBOUND_TLS_MODE", "strict")
    })
    .await;
    let client = client(&dir, &ca, &web_state(server.inbound())).await;

    let plain = get(server.inbound(), "/plain").await.unwrap();
    assert_eq!(plain.status, 403, "{plain:?}");
    assert_eq!(plain.header("shoal-proxy-error"), Some("mtls-required"));
    server
        .wait_metric(REFUSED, &[("reason", "plaintext")], 1.0)
        .await;
    assert_eq!(app.connections(), 0, "plain text reached the app");

    // A TLS ClientHello that is not for the mesh (the app's own TLS) is not mesh mTLS either.
    let mut raw = TcpStream::connect(server.inbound()).await.unwrap();
    raw.write_all(&client_hello("app.example.com"))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(T, raw.read_to_end(&mut buf))
        .await
        .expect("the strict port kept a non-mesh TLS connection open");
    assert!(read.is_err() || buf.is_empty(), "answered: {buf:?}");
    server
        .wait_metric(REFUSED, &[("reason", "plaintext")], 2.0)
        .await;
    assert_eq!(
        app.connections(),
        0,
        "the app's own TLS reached the app in strict mode"
    );

    // Mesh mTLS still works.
    let mesh = get(client.outbound(), "/mesh").await.unwrap();
    assert_eq!(mesh.status, 200, "{mesh:?}");
    assert_eq!(app.count(), 1);
    assert_eq!(app.last().header("shoal-client-id"), Some(CLIENT_ID));
}

/// The exact bytes of a TLS ClientHello asking for `sni` (what rustls would send first).
fn client_hello(sni: &str) -> Vec<u8> {
    let ca = TestCa::new("any");
    let anyone = ca.workload(WEB_ID);
    let config = pki::client_config(None, &[ca.root_pem()], &anyone, b"http/1.1", false);
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

/// A TCP app that records every byte it receives.
async fn recording_app() -> (TcpBackend, Arc<Mutex<Vec<u8>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = TcpBackend::start(move |mut s| {
        let sink = sink.clone();
        async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    })
    .await;
    (app, got)
}

#[tokio::test]
async fn disabled_passes_tls_through_to_the_app_untouched() {
    let dir = TempDir::new("mtls-modes").unwrap();
    let ca = TestCa::new("mesh");
    let (app, got) = recording_app().await;
    let server = server(&dir, &ca, app.addr(), |b| {
        b.env("SHOAL_INBOUND_TLS_MODE", "disabled")
    })
    .await;

    // The app's own TLS, and even a ClientHello naming the proxy's mesh identity: in disabled
    // mode neither is terminated.
    for sni in ["app.example.com".to_string(), pki::identity_sni(WEB_ID)] {
        got.lock().unwrap().clear();
        let hello = client_hello(&sni);
        let mut raw = TcpStream::connect(server.inbound()).await.unwrap();
        raw.write_all(&hello).await.unwrap();
        let seen = eventually(
            T,
            &format!("the ClientHello for {sni} at the app"),
            || async {
                let seen = got.lock().unwrap().clone();
                if seen.len() >= hello.len() {
                    Ok(seen)
                } else {
                    Err(seen.len())
                }
            },
        )
        .await;
        assert_eq!(seen, hello, "{sni}: the ClientHello was changed on the way");
    }
    assert_eq!(server.metric(REFUSED, &[]).await, 0.0);
}

#[tokio::test]
async fn per_port_mode_in_the_state_overrides_the_default() {
    let dir = TempDir::new("mtls-modes").unwrap();
    let ca = TestCa::new("mesh");
    let app = HttpBackend::echo().await;
    // (default, the port's mode in the state, plain text served?)
    for (default, port_mode, plain_served) in [
        ("permissive", "strict", false),
        ("strict", "permissive", true),
    ] {
        let own = format!(
            "services:\n  - name: web\n    namespace: default\n    port: 80\n    target_port: {}\n    tls_mode: {port_mode}\n",
            app.addr().port()
        );
        let server = server(&dir, &ca, app.addr(), |b| {
            b.env("SHOAL_INBOUND_TLS_MODE", default)
                .env("SHOAL_SERVICE_NAME", "web")
                .state(&own)
        })
        .await;
        let client = client(&dir, &ca, &web_state(server.inbound())).await;
        let before = app.count();

        let plain = get(server.inbound(), "/plain").await;
        if plain_served {
            assert_eq!(plain.unwrap().status, 200, "{default} → {port_mode}");
            assert_eq!(app.count(), before + 1);
            assert_eq!(server.metric(REFUSED, &[]).await, 0.0);
        } else {
            let plain = plain.unwrap();
            assert_eq!(
                (plain.status.as_u16(), plain.header("shoal-proxy-error")),
                (403, Some("mtls-required")),
                "{default} → {port_mode}: plain text was not refused: {plain:?}"
            );
            server
                .wait_metric(REFUSED, &[("reason", "plaintext")], 1.0)
                .await;
            assert_eq!(
                app.count(),
                before,
                "{default} → {port_mode}: reached the app"
            );
        }
        let mesh = get(client.outbound(), "/mesh").await.unwrap();
        assert_eq!(mesh.status, 200, "{default} → {port_mode}: {mesh:?}");
        assert_eq!(app.last().header("shoal-client-id"), Some(CLIENT_ID));
    }
}

#[tokio::test]
async fn outbound_uses_plain_text_without_identity_or_with_tls_disabled() {
    let dir = TempDir::new("mtls-modes").unwrap();
    let ca = TestCa::new("mesh");
    // Plain HTTP apps, no proxy in front: an mTLS attempt would get no HTTP answer.
    let plain_app = HttpBackend::echo().await;
    let disabled_app = HttpBackend::echo().await;
    let state = format!(
        "services:
  - name: plain
    port: 80
    endpoints:
      - address: \"{}\"
  - name: nomtls
    port: 80
    tls_mode: disabled
    endpoints:
      - address: \"{}\"
        identity: {WEB_ID}
",
        plain_app.addr(),
        disabled_app.addr()
    );
    let client = client(&dir, &ca, &state).await;
    for (host, app) in [("plain", &plain_app), ("nomtls", &disabled_app)] {
        let mut c = H1Client::connect(client.outbound()).await.unwrap();
        let resp = tokio::time::timeout(T, c.get(host, "/plain-upstream"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status, 200, "{host}: {resp:?}\n{}", client.logs());
        assert_eq!(app.count(), 1, "{host}");
        assert_eq!(app.last().uri.path(), "/plain-upstream", "{host}");
    }
    assert_eq!(
        client.metric(TLS_OUT, &[]).await,
        0.0,
        "an mTLS handshake was attempted"
    );
}
