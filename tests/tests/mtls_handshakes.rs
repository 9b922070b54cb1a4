//! Real mTLS handshakes against the proxy, from a raw rustls client and to a fake peer proxy.
//!
//! Inbound: a client certificate that is missing, self-signed, expired, for another trust
//! domain, without a SPIFFE id, or from an untrusted root fails the handshake (TLS 1.3 reports
//! a refused client certificate on the client's first read), nothing reaches the app, and
//! `shoal_inbound_tls_refused_total{reason="handshake"}` counts it — in permissive and strict
//! mode alike, since the SNI asks for the proxy's identity. A valid certificate gets 200 over
//! HTTP/2 and the app learns the caller.
//!
//! Outbound: a "peer proxy" that presents the wrong identity, or a certificate from another
//! root, gets no request: the client proxy answers 502 `upstream-tls-handshake`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::ServerName;
use shoal_tests::client::{AbortOnDrop, empty};
use shoal_tests::pki::{self, Leaf, TestCa, Validity};
use shoal_tests::process::TempDir;
use shoal_tests::{H1Client, HttpBackend, Proxy, ProxyBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const T: Duration = Duration::from_secs(10);
const REFUSED: &str = "shoal_inbound_tls_refused_total";

/// An inbound proxy in `mode` in front of an echo app, with the identity `web`.
async fn inbound(mode: &str, dir: &TempDir, ca: &TestCa, web: &Leaf, app: &HttpBackend) -> Proxy {
    let files = web.write(dir.path(), &format!("web-{mode}"), &[ca.root_pem()]);
    ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .identity(&files)
        .env("SHOAL_INBOUND_TLS_MODE", mode)
        .start()
        .await
}

/// How a raw mesh connection ended.
#[derive(Debug)]
enum Outcome {
    /// The handshake failed on the client's side.
    HandshakeFailed(String),
    /// The handshake completed for the client, then the first read failed or met end of file
    /// with no answer (TLS 1.3: the server refuses the client certificate after the client's
    /// Finished).
    ClosedUnanswered(String),
    /// Bytes came back: the request was served.
    Answered(String),
    /// Neither an answer nor a close within the deadline.
    Hung,
}

/// Connects to `addr` with `config` asking for `sni`, sends an HTTP/1.1 request over the TLS
/// stream (ALPN `http/1.1`, which a terminating proxy would forward), and reads until close.
async fn attempt(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
    path: &str,
) -> Outcome {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_string()).expect("SNI");
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    let mut tls = match tokio::time::timeout(T, connect).await {
        Err(_) => return Outcome::Hung,
        Ok(Err(e)) => return Outcome::HandshakeFailed(e.to_string()),
        Ok(Ok(tls)) => tls,
    };
    let req = format!("GET {path} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
    // A write may fail on a connection the server already closed; the reason (its alert) is
    // still there to read.
    let written = tls.write_all(req.as_bytes()).await;
    let mut got = Vec::new();
    match tokio::time::timeout(T, tls.read_to_end(&mut got)).await {
        Err(_) => Outcome::Hung,
        Ok(Err(e)) if got.is_empty() => {
            Outcome::ClosedUnanswered(format!("{e} (write: {written:?})"))
        }
        Ok(Ok(_)) if got.is_empty() => {
            Outcome::ClosedUnanswered(format!("end of file (write: {written:?})"))
        }
        Ok(_) => Outcome::Answered(String::from_utf8_lossy(&got).into_owned()),
    }
}

#[tokio::test]
async fn bad_client_certificates_fail_the_handshake_and_reach_nothing() {
    let dir = TempDir::new("mtls-handshakes").unwrap();
    let ca = TestCa::new("mesh");
    let other_ca = TestCa::new("other");
    let web = ca.workload(WEB_ID);
    let app = HttpBackend::echo().await;
    let sni = pki::identity_sni(WEB_ID);

    // (case, client certificate, a word the client's error must contain)
    let cases: Vec<(&str, Option<Leaf>, &str)> = vec![
        ("no client certificate", None, "CertificateRequired"),
        (
            "self-signed",
            Some(Leaf::self_signed(CLIENT_ID)),
            "UnknownCA",
        ),
        (
            "expired",
            Some(ca.issue(CLIENT_ID, Validity::Expired)),
            "CertificateExpired",
        ),
        (
            "other trust domain",
            Some(ca.workload("spiffe://evil.local/ns/default/sa/x")),
            "CertificateUnknown",
        ),
        (
            "no SPIFFE id",
            Some(ca.issue_without_spiffe("client.example.com")),
            "CertificateUnknown",
        ),
        (
            "untrusted root",
            Some(other_ca.workload(CLIENT_ID)),
            "UnknownCA",
        ),
    ];

    for mode in ["permissive", "strict"] {
        let proxy = inbound(mode, &dir, &ca, &web, &app).await;
        for (case, leaf, alert) in &cases {
            let before = proxy.metric(REFUSED, &[("reason", "handshake")]).await;
            let config =
                pki::client_config(leaf.as_ref(), &[ca.root_pem()], &web, b"http/1.1", false);
            let outcome = attempt(proxy.inbound(), config, &sni, "/refused").await;
            match &outcome {
                Outcome::HandshakeFailed(e) | Outcome::ClosedUnanswered(e) => assert!(
                    e.contains(alert),
                    "{mode}/{case}: refused, but not with {alert}: {e}"
                ),
                Outcome::Answered(text) => panic!("{mode}/{case}: served: {text}"),
                Outcome::Hung => panic!("{mode}/{case}: neither refused nor answered"),
            }
            proxy
                .wait_metric(REFUSED, &[("reason", "handshake")], before + 1.0)
                .await;
            assert_eq!(app.count(), 0, "{mode}/{case}: a request reached the app");
            assert_eq!(app.connections(), 0, "{mode}/{case}: the app was connected");
        }
        // Not counted as any other refusal.
        for reason in ["plaintext", "wrong-identity", "no-certificate"] {
            assert_eq!(
                proxy.metric(REFUSED, &[("reason", reason)]).await,
                0.0,
                "{mode}: {reason}"
            );
        }
    }
}

#[tokio::test]
async fn a_valid_client_certificate_gets_200_over_http2_and_the_app_learns_the_caller() {
    let dir = TempDir::new("mtls-handshakes").unwrap();
    let ca = TestCa::new("mesh");
    let web = ca.workload(WEB_ID);
    let client = ca.workload(CLIENT_ID);
    let app = HttpBackend::echo().await;
    let sni = pki::identity_sni(WEB_ID);

    for mode in ["permissive", "strict"] {
        let proxy = inbound(mode, &dir, &ca, &web, &app).await;
        let before = app.count();
        let config = pki::client_config(Some(&client), &[ca.root_pem()], &web, b"h2", false);
        let tcp = TcpStream::connect(proxy.inbound()).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from(sni.clone()).unwrap(), tcp)
            .await
            .unwrap_or_else(|e| panic!("{mode}: handshake failed: {e}"));
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "{mode}");
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3),
            "{mode}"
        );
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        let _conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let req = http::Request::get("http://web/valid")
            .body(empty())
            .unwrap();
        let resp = tokio::time::timeout(T, sender.send_request(req))
            .await
            .expect("response timed out")
            .unwrap();
        assert_eq!(resp.status(), 200, "{mode}\n{}", proxy.logs());
        assert_eq!(app.count(), before + 1, "{mode}");
        let seen = app.last();
        assert_eq!(seen.uri.path(), "/valid", "{mode}");
        assert_eq!(seen.header("shoal-client-id"), Some(CLIENT_ID), "{mode}");
        let refused = proxy.metric(REFUSED, &[]).await;
        assert_eq!(refused, 0.0, "{mode}: a refusal was counted");
    }
}

#[tokio::test]
async fn a_handshake_for_another_identity_is_refused_as_wrong_identity() {
    let dir = TempDir::new("mtls-handshakes").unwrap();
    let ca = TestCa::new("mesh");
    let web = ca.workload(WEB_ID);
    let client = ca.workload(CLIENT_ID);
    let app = HttpBackend::echo().await;
    let proxy = inbound("strict", &dir, &ca, &web, &app).await;
    let config = pki::client_config(Some(&client), &[ca.root_pem()], &web, b"http/1.1", false);
    let sni = pki::identity_sni("spiffe://cluster.local/ns/default/sa/api");
    let outcome = attempt(proxy.inbound(), config, &sni, "/elsewhere").await;
    assert!(
        matches!(
            outcome,
            Outcome::HandshakeFailed(_) | Outcome::ClosedUnanswered(_)
        ),
        "a handshake for sa/api was served by sa/web: {outcome:?}"
    );
    proxy
        .wait_metric(REFUSED, &[("reason", "wrong-identity")], 1.0)
        .await;
    assert_eq!(proxy.metric(REFUSED, &[("reason", "handshake")]).await, 0.0);
    assert_eq!(app.connections(), 0);
}

/// A fake peer proxy: a TLS server presenting `leaf`; counts connections, completed
/// handshakes and the application bytes it received.
struct FakePeer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    app_bytes: Arc<AtomicUsize>,
    _task: AbortOnDrop<()>,
}

impl FakePeer {
    async fn start(leaf: &Leaf, roots: &[&str]) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(pki::server_config(leaf, roots));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let app_bytes = Arc::new(AtomicUsize::new(0));
        let (c, h, b) = (connections.clone(), handshakes.clone(), app_bytes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (acceptor, h, b) = (acceptor.clone(), h.clone(), b.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            handshakes,
            app_bytes,
            _task: AbortOnDrop(task),
        }
    }
}

#[tokio::test]
async fn a_peer_with_the_wrong_identity_or_root_gets_no_request() {
    let dir = TempDir::new("mtls-handshakes").unwrap();
    let ca = TestCa::new("mesh");
    let other_ca = TestCa::new("other");
    let roots = [ca.root_pem(), other_ca.root_pem()];
    let cases = [
        (
            "wrong SPIFFE id",
            ca.workload("spiffe://cluster.local/ns/default/sa/impostor"),
        ),
        ("untrusted root", other_ca.workload(WEB_ID)),
    ];
    for (case, leaf) in cases {
        let peer = FakePeer::start(&leaf, &roots).await;
        let state = shoal_tests::proxy::mesh_web_state(peer.addr, WEB_ID);
        let files = ca
            .workload(CLIENT_ID)
            .write(dir.path(), "client", &[ca.root_pem()]);
        let client = ProxyBuilder::new()
            .outbound_explicit()
            .state(&state)
            .identity(&files)
            .start()
            .await;

        let mut c = H1Client::connect(client.outbound()).await.unwrap();
        let resp = tokio::time::timeout(T, c.get("web", "/to-the-fake"))
            .await
            .expect("response timed out")
            .unwrap();
        assert_eq!(resp.status, 502, "{case}: {resp:?}\n{}", client.logs());
        assert_eq!(
            resp.header("shoal-proxy-error"),
            Some("upstream-tls-handshake"),
            "{case}: {resp:?}"
        );
        assert!(
            client
                .metric(
                    "shoal_outbound_tls_connections_total",
                    &[("result", "failed")]
                )
                .await
                >= 1.0,
            "{case}: the failed handshake was not counted"
        );
        assert_eq!(
            client
                .metric("shoal_outbound_tls_connections_total", &[("result", "ok")])
                .await,
            0.0,
            "{case}"
        );
        assert!(
            peer.connections.load(Ordering::SeqCst) >= 1,
            "{case}: the client proxy never connected to the fake peer"
        );
        assert_eq!(
            peer.handshakes.load(Ordering::SeqCst),
            0,
            "{case}: a handshake completed"
        );
        assert_eq!(
            peer.app_bytes.load(Ordering::SeqCst),
            0,
            "{case}: bytes reached the fake's app"
        );
    }
}
