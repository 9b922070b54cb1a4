//! Every protocol the mesh carries, through two proxies over mTLS (the server side is strict,
//! so plain text could not have got through): gRPC unary and streaming, an HTTP/2 client,
//! WebSocket (an upgrade, carried on an HTTP/1.1 mesh connection) and opaque TCP with
//! half-close. Each test checks what the app got and that the client proxy's mTLS handshakes
//! succeeded (`shoal_outbound_tls_connections_total{result="ok"}`).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shoal_tests::backend::websocket_echo;
use shoal_tests::client::{empty, request};
use shoal_tests::grpc::{self, GrpcBackend};
use shoal_tests::pki::TestCa;
use shoal_tests::process::TempDir;
use shoal_tests::{H2Client, HttpBackend, Proxy, ProxyBuilder, TcpBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const T: Duration = Duration::from_secs(10);
const TLS_OUT: &str = "shoal_outbound_tls_connections_total";
/// The virtual address opaque TCP is sent to (the state maps it to the web service).
const TCP_VIP: &str = "10.255.255.1:7000";

/// A strict server proxy in front of `app` and a client proxy whose state sends `web` (and the
/// virtual address [`TCP_VIP`]) to it over mTLS.
struct Mesh {
    server: Proxy,
    client: Proxy,
    _dir: TempDir,
}

impl Mesh {
    async fn start(app: SocketAddr) -> Self {
        let dir = TempDir::new("mtls-protocols").unwrap();
        let ca = TestCa::new("mesh");
        let files = ca
            .workload(WEB_ID)
            .write(dir.path(), "web", &[ca.root_pem()]);
        let server = ProxyBuilder::new()
            .inbound_explicit(app)
            .identity(&files)
            .env("SHOAL_INBOUND_TLS_MODE", "strict")
            .start()
            .await;
        let (vip_ip, vip_port) = TCP_VIP.split_once(':').unwrap();
        let state = format!(
            "services:
  - name: web
    port: 80
    endpoints:
      - address: \"{inbound}\"
        identity: {WEB_ID}
  - name: web-tcp
    port: {vip_port}
    addresses: [\"{vip_ip}\"]
    protocol: tcp
    endpoints:
      - address: \"{inbound}\"
        identity: {WEB_ID}
",
            inbound = server.inbound()
        );
        let files = ca
            .workload(CLIENT_ID)
            .write(dir.path(), "client", &[ca.root_pem()]);
        let client = ProxyBuilder::new()
            .outbound_target(TCP_VIP)
            .state(&state)
            .identity(&files)
            .start()
            .await;
        Self {
            server,
            client,
            _dir: dir,
        }
    }

    /// mTLS was used: the client's handshakes succeeded, none failed, the server refused none.
    async fn assert_mtls(&self, what: &str) {
        let ok = self.client.metric(TLS_OUT, &[("result", "ok")]).await;
        assert!(
            ok >= 1.0,
            "{what}: no successful mTLS handshake was counted"
        );
        assert_eq!(
            self.client.metric(TLS_OUT, &[("result", "failed")]).await,
            0.0,
            "{what}"
        );
        assert_eq!(
            self.server
                .metric("shoal_inbound_tls_refused_total", &[])
                .await,
            0.0,
            "{what}"
        );
    }
}

#[tokio::test]
async fn grpc_unary_and_streaming() {
    let app = GrpcBackend::start().await;
    let mesh = Mesh::start(app.addr()).await;
    let mut c = grpc::client_with_origin(mesh.client.outbound(), "http://web").await;

    let resp = tokio::time::timeout(T, c.unary(grpc::msg("hello")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.get_ref().message, "hello");
    assert_eq!(
        resp.metadata()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok()),
        Some("echo")
    );

    let mut req = grpc::msg("s");
    req.count = 5;
    let stream = tokio::time::timeout(T, c.server_stream(req))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let got: Vec<String> = tokio::time::timeout(T, stream.map(|m| m.unwrap().message).collect())
        .await
        .unwrap();
    assert_eq!(got, ["s-0", "s-1", "s-2", "s-3", "s-4"]);

    let (tx, rx) = grpc::request_stream();
    let mut replies = tokio::time::timeout(T, c.bidi(rx))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    for i in 0..3 {
        tx.send(grpc::msg(&format!("b{i}"))).await.unwrap();
        let reply = tokio::time::timeout(T, replies.next())
            .await
            .expect("bidi reply timed out")
            .expect("bidi stream ended")
            .unwrap();
        assert_eq!(reply.message, format!("b{i}"));
        assert_eq!(reply.index, i);
    }
    drop(tx);

    for method in ["Unary", "ServerStream", "Bidi"] {
        let calls = app.calls_of(method);
        assert_eq!(calls.len(), 1, "{method}");
        assert_eq!(
            calls[0]
                .metadata
                .get("shoal-client-id")
                .and_then(|v| v.to_str().ok()),
            Some(CLIENT_ID),
            "{method}: the caller's identity"
        );
    }
    mesh.assert_mtls("gRPC").await;
}

#[tokio::test]
async fn http2_client() {
    let app = HttpBackend::echo().await;
    let mesh = Mesh::start(app.addr()).await;
    let c = H2Client::connect(mesh.client.outbound()).await.unwrap();
    for i in 0..3 {
        let resp = tokio::time::timeout(
            T,
            c.send(
                request("GET", &format!("http://web/h2/{i}"), None)
                    .body(empty())
                    .unwrap(),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(
            resp.header("x-echo-path"),
            Some(format!("/h2/{i}").as_str())
        );
    }
    assert_eq!(app.count(), 3);
    for r in app.requests() {
        assert_eq!(r.header("shoal-client-id"), Some(CLIENT_ID));
    }
    mesh.assert_mtls("HTTP/2").await;
}

#[tokio::test]
async fn websocket_upgrade() {
    let app = HttpBackend::respond(websocket_echo).await;
    let mesh = Mesh::start(app.addr()).await;
    let tcp = TcpStream::connect(mesh.client.outbound()).await.unwrap();
    let (mut ws, resp) =
        tokio::time::timeout(T, tokio_tungstenite::client_async("ws://web/chat", tcp))
            .await
            .expect("WebSocket handshake timed out")
            .expect("WebSocket handshake failed");
    assert_eq!(resp.status(), 101);
    let seen = app.last();
    assert_eq!(seen.uri.path(), "/chat");
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("shoal-client-id"), Some(CLIENT_ID));
    for i in 0..3 {
        let text = format!("over mTLS {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(T, ws.next())
            .await
            .expect("echo timed out")
            .expect("stream ended")
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    ws.close(None).await.unwrap();
    mesh.assert_mtls("WebSocket").await;
}

#[tokio::test]
async fn opaque_tcp_with_half_close() {
    // The app reads until the client's end of file, then answers and closes.
    let app = TcpBackend::start(|mut s| async move {
        let mut req = Vec::new();
        if s.read_to_end(&mut req).await.is_ok() {
            let reply = format!("got {} bytes: {}", req.len(), String::from_utf8_lossy(&req));
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    let mesh = Mesh::start(app.addr()).await;
    let mut s = TcpStream::connect(mesh.client.outbound()).await.unwrap();
    s.write_all(b"\x00\x01opaque-bytes").await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut reply))
        .await
        .expect("no reply and no close after the half-close")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "got 14 bytes: \u{0}\u{1}opaque-bytes"
    );
    assert_eq!(app.accepted(), 1);
    mesh.assert_mtls("opaque TCP").await;
}
