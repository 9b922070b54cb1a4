//! Errors that explain mTLS, with real proxies and real TLS (docs/errors.md, docs/mtls.md).
//!
//! - A caller's proxy that sends plain text to an endpoint whose proxy is `strict` — because it
//!   has no identity, or because its view of the service says `tls_mode: disabled` — answers
//!   502 `upstream-requires-mtls`, naming mTLS, the endpoint and the cause; the strict side
//!   answered 403 `mtls-required` (as it does to any plain-text HTTP client, HTTP/1.1 and h2c)
//!   and nothing reached the app. Opaque plain text (no HTTP to answer in) is still closed
//!   without a byte back.
//! - A handshake that fails because the endpoint's proxy holds another identity, or has no
//!   certificate yet, is `upstream-tls-handshake` naming that cause; a caller whose own
//!   certificate has not arrived answers `no-identity` naming its settings.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_tests::client::{H2Client, empty, request};
use shoal_tests::pki::TestCa;
use shoal_tests::process::TempDir;
use shoal_tests::{H1Client, HttpBackend, Proxy, ProxyBuilder, Resp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const API_ID: &str = "spiffe://cluster.local/ns/default/sa/api";
const T: Duration = Duration::from_secs(10);
const ERRORS: &str = "shoal_proxy_errors_total";

/// A strict inbound proxy with identity `id` in front of `app`.
async fn strict_server(dir: &TempDir, ca: &TestCa, id: &str, app: &HttpBackend) -> Proxy {
    let files = ca
        .workload(id)
        .write(dir.path(), "server", &[ca.root_pem()]);
    ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .identity(&files)
        .env("SHOAL_INBOUND_TLS_MODE", "strict")
        .start()
        .await
}

/// An outbound proxy with `state`, with the client identity when `identity` is set.
async fn caller(dir: &TempDir, ca: &TestCa, state: &str, identity: bool) -> Proxy {
    let mut builder = ProxyBuilder::new().outbound_explicit().state(state);
    if identity {
        let files = ca
            .workload(CLIENT_ID)
            .write(dir.path(), "client", &[ca.root_pem()]);
        builder = builder.identity(&files);
    }
    builder.start().await
}

/// A proxy whose identity comes from a control plane that is not there: its certificate never
/// arrives (it stays unready, its listeners serve).
fn certificate_never_comes(dir: &TempDir, ca: &TestCa) -> ProxyBuilder {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let anchors = dir.path().join("anchors.pem");
    std::fs::write(&anchors, ca.root_pem()).unwrap();
    ProxyBuilder::new()
        .env("SHOAL_IDENTITY_TOKEN", "join-token-nobody-redeems")
        .env("SHOAL_IDENTITY_ADDR", addr)
        .env(
            "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE",
            anchors.display().to_string(),
        )
        .unready()
}

async fn get_h1(addr: SocketAddr, path: &str) -> Resp {
    tokio::time::timeout(T, async {
        let mut c = H1Client::connect(addr).await?;
        c.get("web", path).await
    })
    .await
    .expect("no answer in time")
    .expect("request failed")
}

async fn get_h2(addr: SocketAddr, path: &str) -> Resp {
    tokio::time::timeout(T, async {
        let c = H2Client::connect(addr).await?;
        c.send(
            request("GET", &format!("http://web{path}"), None)
                .body(empty())
                .unwrap(),
        )
        .await
    })
    .await
    .expect("no answer in time")
    .expect("request failed")
}

/// Asserts `resp` is the proxy's own answer `status` / `reason` whose body contains every one of
/// `words`.
fn assert_explained(resp: &Resp, status: u16, reason: &str, words: &[&str], logs: &str) {
    assert_eq!(resp.status, status, "{resp:?}\n{logs}");
    assert_eq!(
        resp.header("shoal-proxy-error"),
        Some(reason),
        "{resp:?}\n{logs}"
    );
    let body = resp.text();
    for word in words {
        assert!(
            body.contains(word),
            "the {reason} body does not name {word:?}: {body}"
        );
    }
}

#[tokio::test]
async fn a_plain_text_client_of_a_strict_port_is_told_mtls_is_required() {
    let dir = TempDir::new("mtls-errors").unwrap();
    let ca = TestCa::new("mesh");
    let app = HttpBackend::echo().await;
    let server = strict_server(&dir, &ca, WEB_ID, &app).await;

    let h1 = get_h1(server.inbound(), "/h1").await;
    assert_explained(
        &h1,
        403,
        "mtls-required",
        &["mesh mTLS", "strict", "SHOAL_IDENTITY_", "tls_mode"],
        &server.logs(),
    );
    assert_eq!(
        h1.header("connection"),
        Some("close"),
        "a strict port kept a plain-text HTTP/1.1 connection open"
    );
    let h2 = get_h2(server.inbound(), "/h2c").await;
    assert_explained(
        &h2,
        403,
        "mtls-required",
        &["mesh mTLS", "strict"],
        &server.logs(),
    );

    // Opaque bytes have no protocol to carry an answer: closed, nothing written back.
    let mut raw = TcpStream::connect(server.inbound()).await.unwrap();
    raw.write_all(b"\x00\x01opaque bytes\r\n").await.unwrap();
    let mut back = Vec::new();
    let read = tokio::time::timeout(T, raw.read_to_end(&mut back))
        .await
        .expect("the strict port kept an opaque plain-text connection open");
    assert!(
        read.is_err() || back.is_empty(),
        "opaque plain text was answered: {back:?}"
    );

    assert_eq!(app.connections(), 0, "plain text reached the app");
    server
        .wait_metric(
            ERRORS,
            &[("direction", "inbound"), ("reason", "mtls-required")],
            2.0,
        )
        .await;
    server
        .wait_metric(
            "shoal_inbound_tls_refused_total",
            &[("reason", "plaintext")],
            3.0,
        )
        .await;
}

#[tokio::test]
async fn a_caller_without_an_identity_is_told_why_the_strict_endpoint_refused_it() {
    let dir = TempDir::new("mtls-errors").unwrap();
    let ca = TestCa::new("mesh");
    let app = HttpBackend::echo().await;
    let server = strict_server(&dir, &ca, WEB_ID, &app).await;
    let state = shoal_tests::proxy::mesh_web_state(server.inbound(), WEB_ID);
    let client = caller(&dir, &ca, &state, false).await;
    let endpoint = server.inbound().to_string();

    for (version, resp) in [
        ("HTTP/1.1", get_h1(client.outbound(), "/no-identity").await),
        ("h2c", get_h2(client.outbound(), "/no-identity").await),
    ] {
        let body = resp.text();
        assert_explained(
            &resp,
            502,
            "upstream-requires-mtls",
            &[
                "mesh mTLS",
                &endpoint,
                "web.default",
                "no identity configured",
                "SHOAL_IDENTITY_TOKEN",
            ],
            &client.logs(),
        );
        assert!(
            !body.contains("upstream-reset"),
            "{version}: still the generic reason: {body}"
        );
    }
    assert_eq!(app.connections(), 0, "plain text reached the app");
    client
        .wait_metric(
            ERRORS,
            &[
                ("direction", "outbound"),
                ("reason", "upstream-requires-mtls"),
            ],
            2.0,
        )
        .await;
    server
        .wait_metric(
            ERRORS,
            &[("direction", "inbound"), ("reason", "mtls-required")],
            2.0,
        )
        .await;
    assert!(
        client
            .logs()
            .contains("this proxy has no identity configured"),
        "the caller's log does not say why:\n{}",
        client.logs()
    );
}

#[tokio::test]
async fn a_caller_whose_view_disables_mtls_is_told_to_check_tls_mode() {
    let dir = TempDir::new("mtls-errors").unwrap();
    let ca = TestCa::new("mesh");
    let app = HttpBackend::echo().await;
    let server = strict_server(&dir, &ca, WEB_ID, &app).await;
    let state = format!(
        "services:\n  - name: web\n    port: 80\n    tls_mode: disabled\n    endpoints:\n      - address: \"{}\"\n        identity: {WEB_ID}\n",
        server.inbound()
    );
    let client = caller(&dir, &ca, &state, true).await;

    let resp = get_h1(client.outbound(), "/disabled").await;
    assert_explained(
        &resp,
        502,
        "upstream-requires-mtls",
        &[
            "mesh mTLS",
            &server.inbound().to_string(),
            "tls_mode: disabled",
        ],
        &client.logs(),
    );
    assert_eq!(app.connections(), 0, "plain text reached the app");
}

#[tokio::test]
async fn an_endpoint_proxy_with_another_identity_is_named_in_the_handshake_error() {
    let dir = TempDir::new("mtls-errors").unwrap();
    let ca = TestCa::new("mesh");
    let app = HttpBackend::echo().await;
    // Discovery says the endpoint is `web`; the proxy there is `api`.
    let server = strict_server(&dir, &ca, API_ID, &app).await;
    let state = shoal_tests::proxy::mesh_web_state(server.inbound(), WEB_ID);
    let client = caller(&dir, &ca, &state, true).await;

    let resp = get_h1(client.outbound(), "/impostor").await;
    assert_explained(
        &resp,
        502,
        "upstream-tls-handshake",
        &[
            &server.inbound().to_string(),
            WEB_ID,
            "does not hold the identity",
            "check the endpoint's identity",
        ],
        &client.logs(),
    );
    server
        .wait_metric(
            "shoal_inbound_tls_refused_total",
            &[("reason", "wrong-identity")],
            1.0,
        )
        .await;
    assert_eq!(app.connections(), 0);
}

#[tokio::test]
async fn missing_certificates_on_either_side_are_named() {
    let dir = TempDir::new("mtls-errors").unwrap();
    let ca = TestCa::new("mesh");
    let app = HttpBackend::echo().await;

    // The endpoint's proxy has no certificate yet: the caller hears so in the handshake.
    let server = certificate_never_comes(&dir, &ca)
        .inbound_explicit(app.addr())
        .env("SHOAL_INBOUND_TLS_MODE", "strict")
        .start()
        .await;
    let state = shoal_tests::proxy::mesh_web_state(server.inbound(), WEB_ID);
    let client = caller(&dir, &ca, &state, true).await;
    let resp = get_h1(client.outbound(), "/server-without-cert").await;
    assert_explained(
        &resp,
        502,
        "upstream-tls-handshake",
        &[WEB_ID, "no certificate yet", "/ready"],
        &client.logs(),
    );
    server
        .wait_metric(
            "shoal_inbound_tls_refused_total",
            &[("reason", "no-certificate")],
            1.0,
        )
        .await;

    // The caller has no certificate yet: `no-identity`, naming mTLS and its settings.
    let good = strict_server(&dir, &ca, WEB_ID, &app).await;
    let state = shoal_tests::proxy::mesh_web_state(good.inbound(), WEB_ID);
    let client = certificate_never_comes(&dir, &ca)
        .outbound_explicit()
        .state(&state)
        .start()
        .await;
    let resp = get_h1(client.outbound(), "/caller-without-cert").await;
    assert_explained(
        &resp,
        503,
        "no-identity",
        &[
            "mTLS",
            &good.inbound().to_string(),
            "SHOAL_IDENTITY_",
            "/config",
        ],
        &client.logs(),
    );
    assert_eq!(app.connections(), 0);
}
