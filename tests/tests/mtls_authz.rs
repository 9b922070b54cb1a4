//! Authorization at the inbound proxy, with real mTLS identities: allow / deny / default by
//! caller identity, path prefix and method, plain-text callers, and opaque TCP.

use std::time::Duration;

use shoal_tests::pki::TestCa;
use shoal_tests::process::TempDir;
use shoal_tests::{H1Client, HttpBackend, Proxy, ProxyBuilder, TcpBackend};

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const STRANGER: &str = "spiffe://cluster.local/ns/shop/sa/stranger";
const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

/// The server proxy's state: its own service and the policy protecting it.
fn server_state(app_port: u16) -> String {
    format!(
        r#"services:
  - name: web
    port: 80
    target_port: {app_port}
authorization:
  - service: web
    default_action: deny
    rules:
      - name: no-admin
        action: deny
        path_prefixes: [/admin]
      - name: frontend-reads
        action: allow
        from: [{{exact: "{FRONTEND}"}}]
        methods: [GET]
"#
    )
}

async fn client_proxy(ca: &TestCa, dir: &TempDir, id: &str, name: &str, server: &Proxy) -> Proxy {
    let state = format!(
        "services:\n  - name: web\n    port: 80\n    endpoints:\n      - address: \"{}\"\n        identity: {WEB}\n",
        server.inbound()
    );
    let b = ProxyBuilder::new()
        .outbound_explicit()
        .state(&state)
        .identity(&ca.workload(id).write(dir.path(), name, &[ca.root_pem()]));
    b.start().await
}

async fn call(proxy: &Proxy, method: &str, path: &str) -> shoal_tests::Resp {
    let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
    let req = shoal_tests::client::request(method, path, Some("web"))
        .body(shoal_tests::client::empty())
        .unwrap();
    c.send(req).await.unwrap()
}

#[tokio::test]
async fn allow_deny_and_default_by_identity_path_and_method() {
    let dir = TempDir::new("mtls-authz").unwrap();
    let ca = TestCa::new("mesh");
    let app = HttpBackend::echo().await;
    let server = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .env("SHOAL_SERVICE_NAME", "web")
        .state(&server_state(app.addr().port()))
        .identity(&ca.workload(WEB).write(dir.path(), "web", &[ca.root_pem()]));
    let server = server.start().await;
    let frontend = client_proxy(&ca, &dir, FRONTEND, "frontend", &server).await;
    let stranger = client_proxy(&ca, &dir, STRANGER, "stranger", &server).await;

    let ok = call(&frontend, "GET", "/items").await;
    assert_eq!(ok.status, 200, "{ok:?}\n{}", server.logs());
    assert_eq!(app.count(), 1);

    for (proxy, method, path, rule) in [
        (&frontend, "POST", "/items", "default"),
        (&frontend, "GET", "/admin/users", "no-admin"),
        (&stranger, "GET", "/items", "default"),
    ] {
        let resp = call(proxy, method, path).await;
        assert_eq!(resp.status, 403, "{method} {path}: {resp:?}");
        assert_eq!(resp.header("shoal-proxy-error"), Some("unauthorized"));
        let body = resp.text();
        assert!(
            body.contains("web.default") && body.contains(rule),
            "{body}"
        );
    }
    // Plain text, straight to the inbound listener: no identity, so only the default applies.
    let mut plain = H1Client::connect(server.inbound()).await.unwrap();
    let resp = plain.get("web", "/items").await.unwrap();
    assert_eq!(resp.status, 403);
    assert_eq!(app.count(), 1, "a denied request reached the app");

    let denied = server
        .metric(
            "shoal_authz_decisions_total",
            &[
                ("policy", "web.default"),
                ("rule", "default"),
                ("decision", "deny"),
            ],
        )
        .await;
    assert_eq!(denied, 3.0);
    let allowed = server
        .metric(
            "shoal_authz_decisions_total",
            &[("rule", "frontend-reads"), ("decision", "allow")],
        )
        .await;
    assert_eq!(allowed, 1.0);
}

#[tokio::test]
async fn opaque_connections_are_closed_when_denied() {
    let app = TcpBackend::echo().await;
    let state = format!(
        "services:\n  - name: db\n    port: 5000\n    target_port: {}\nauthorization:\n  - service: db\n    default_action: deny\n",
        app.addr().port()
    );
    let server = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .env("SHOAL_SERVICE_NAME", "db")
        .env("SHOAL_DETECT_TIMEOUT", "50ms")
        .state(&state)
        .start()
        .await;
    let mut conn = tokio::net::TcpStream::connect(server.inbound())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"\x00\x01binary hello").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("the proxy neither answered nor closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "a denied connection got bytes back: {:?}", &buf[..n]);
    assert_eq!(app.accepted(), 0, "a denied connection reached the app");
}
