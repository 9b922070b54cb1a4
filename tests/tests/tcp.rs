//! Opaque TCP through the proxy: echo through the explicit outbound target and the explicit
//! inbound listener, half-close, and server-speaks-first protocols with and without
//! `SHOAL_SERVER_FIRST_PORTS`.

use std::time::{Duration, Instant};

use shoal_tests::{ProxyBuilder, TcpBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

async fn read_exact_within(s: &mut TcpStream, n: usize, timeout: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(timeout, s.read_exact(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{n} bytes did not arrive within {timeout:?}"))
        .expect("reading");
    buf
}

async fn read_to_eof_within(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(timeout, s.read_to_end(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no end of file within {timeout:?}; got {buf:?}"))
        .expect("reading");
    buf
}

/// Opaque entry points of one proxy: (name, address).
fn entries(proxy: &shoal_tests::Proxy) -> [(&'static str, std::net::SocketAddr); 2] {
    [("outbound", proxy.outbound()), ("inbound", proxy.inbound())]
}

#[tokio::test]
async fn opaque_echo_through_outbound_target_and_inbound() {
    let backend = TcpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .outbound_target(backend.addr())
        .inbound_explicit(backend.addr())
        .start()
        .await;
    for (name, entry) in entries(&proxy) {
        let mut s = TcpStream::connect(entry).await.unwrap();
        // Not HTTP, not TLS: detection decides "opaque" from the first byte.
        s.write_all(b"hello, opaque world\n").await.unwrap();
        assert_eq!(
            read_exact_within(&mut s, 20, T).await,
            b"hello, opaque world\n",
            "{name}"
        );
        let blob: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        s.write_all(&blob).await.unwrap();
        assert_eq!(
            read_exact_within(&mut s, blob.len(), T).await,
            blob,
            "{name}"
        );
        s.shutdown().await.unwrap();
        assert!(read_to_eof_within(&mut s, T).await.is_empty(), "{name}");
    }
    assert_eq!(backend.accepted(), 2);
    for direction in ["inbound", "outbound"] {
        proxy
            .wait_metric(
                "shoal_protocol_detections_total",
                &[("direction", direction), ("result", "opaque")],
                1.0,
            )
            .await;
    }
}

#[tokio::test]
async fn half_close_lets_the_server_answer_after_end_of_file() {
    // The server reads the whole request (until the client's FIN), then answers and closes.
    let backend = TcpBackend::start(|mut s| async move {
        let mut req = Vec::new();
        if s.read_to_end(&mut req).await.is_ok() {
            let _ = s
                .write_all(
                    format!("got {} bytes: {}", req.len(), String::from_utf8_lossy(&req))
                        .as_bytes(),
                )
                .await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    let proxy = ProxyBuilder::new()
        .outbound_target(backend.addr())
        .inbound_explicit(backend.addr())
        .start()
        .await;
    for (name, entry) in entries(&proxy) {
        let mut s = TcpStream::connect(entry).await.unwrap();
        s.write_all(b"ping-data").await.unwrap();
        s.shutdown().await.unwrap();
        let reply = read_to_eof_within(&mut s, T).await;
        assert_eq!(
            String::from_utf8_lossy(&reply),
            "got 9 bytes: ping-data",
            "{name}: the reply after the client's half-close"
        );
    }
}

/// A server that speaks first: a banner on accept, then echo.
async fn banner_server() -> TcpBackend {
    TcpBackend::start(|mut s| async move {
        if s.write_all(b"220 banner ready\r\n").await.is_err() {
            return;
        }
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

#[tokio::test]
async fn server_first_port_skips_detection() {
    let backend = banner_server().await;
    let proxy = ProxyBuilder::new()
        .outbound_target(backend.addr())
        .inbound_explicit(backend.addr())
        .env(
            "SHOAL_SERVER_FIRST_PORTS",
            format!("25,{}", backend.addr().port()),
        )
        // A stall in detection would be obvious: 5 s against the 1 s allowed below.
        .env("SHOAL_DETECT_TIMEOUT", "5s")
        .start()
        .await;
    for (name, entry) in entries(&proxy) {
        let started = Instant::now();
        let mut s = TcpStream::connect(entry).await.unwrap();
        let banner = read_exact_within(&mut s, 18, Duration::from_secs(1)).await;
        assert_eq!(banner, b"220 banner ready\r\n", "{name}");
        assert!(started.elapsed() < Duration::from_secs(1), "{name}");
        s.write_all(b"QUIT\r\n").await.unwrap();
        assert_eq!(read_exact_within(&mut s, 6, T).await, b"QUIT\r\n", "{name}");
    }
    for direction in ["inbound", "outbound"] {
        proxy
            .wait_metric(
                "shoal_protocol_detections_total",
                &[("direction", direction), ("result", "skipped")],
                1.0,
            )
            .await;
    }
}

#[tokio::test]
async fn server_first_without_the_port_falls_back_to_opaque_after_the_detect_timeout() {
    let backend = banner_server().await;
    let proxy = ProxyBuilder::new()
        .outbound_target(backend.addr())
        .env("SHOAL_SERVER_FIRST_PORTS", "25")
        .env("SHOAL_DETECT_TIMEOUT", "1s")
        .start()
        .await;
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.outbound()).await.unwrap();
    let banner = read_exact_within(&mut s, 18, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert_eq!(banner, b"220 banner ready\r\n");
    assert!(
        waited >= Duration::from_millis(900),
        "the banner arrived after {waited:?}: detection cannot have waited for the 1 s timeout"
    );
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    s.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(read_exact_within(&mut s, 6, T).await, b"QUIT\r\n");
    proxy
        .wait_metric(
            "shoal_protocol_detections_total",
            &[("direction", "outbound"), ("result", "timeout")],
            1.0,
        )
        .await;
}

#[tokio::test]
async fn transparent_listener_closes_connections_that_were_not_redirected() {
    // Without iptables there is no original destination: the proxy must close the connection
    // (forwarding it anywhere would be a guess) and say why.
    let backend = TcpBackend::echo().await;
    let proxy = ProxyBuilder::new().inbound_transparent().start().await;
    let mut conn = shoal_tests::RawConn::connect(proxy.inbound())
        .await
        .unwrap();
    let _ = conn.write("hello\n").await;
    // Closed or reset (the proxy never read "hello"): either way, nothing comes back.
    let got = conn
        .read_to_close(T)
        .await
        .expect("the connection must be closed");
    assert!(got.is_empty(), "{got:?}");
    proxy
        .wait_for_log(T, "the not-redirected warning", |l| {
            l.contains("not redirected") && l.contains("SHOAL_INBOUND_MODE=explicit")
        })
        .await;
    assert_eq!(backend.accepted(), 0);
}
