use super::*;

#[test]
fn http1_request_lines() {
    assert_eq!(
        classify(b"GET / HTTP/1.1\r\nHost: a\r\n", false),
        Some(Detected::Http1)
    );
    assert_eq!(
        classify(b"POST /x?y=1 HTTP/1.0\r\n", false),
        Some(Detected::Http1)
    );
    // Incomplete line: wait for more.
    assert_eq!(classify(b"GET /slow", false), None);
    // ...unless the deadline passed.
    assert_eq!(
        classify(b"GET /slow", true),
        Some(Detected::Opaque(OpaqueReason::Unrecognised))
    );
    // Not HTTP.
    assert_eq!(
        classify(b"GET / SMTP/1.0\r\n", false),
        Some(Detected::Opaque(OpaqueReason::Unrecognised))
    );
    assert_eq!(
        classify(b"\x00\x01binary", false),
        Some(Detected::Opaque(OpaqueReason::Unrecognised))
    );
    assert_eq!(
        classify(b"hello world\n", false),
        Some(Detected::Opaque(OpaqueReason::Unrecognised))
    );
}

#[test]
fn h2_preface_needs_all_24_bytes() {
    assert_eq!(classify(b"PRI * HTTP/2.0\r\n", false), None);
    assert_eq!(classify(H2_PREFACE, false), Some(Detected::Http2));
}

#[test]
fn tls_client_hello_gives_sni_and_alpn() {
    let hello = client_hello_bytes("backend.example", &[b"h2", b"http/1.1"]);
    assert_eq!(classify(&hello[..3], false), None);
    assert_eq!(classify(&hello[..hello.len() - 1], false), None);
    assert_eq!(
        classify(&hello, false),
        Some(Detected::Tls {
            sni: Some("backend.example".into()),
            alpn: vec!["h2".into(), "http/1.1".into()],
            refused: None,
        })
    );
    // 0x16 followed by garbage is not TLS.
    assert_eq!(
        classify(b"\x16\x99\x00", false),
        Some(Detected::Opaque(OpaqueReason::Unrecognised))
    );
}

/// A real ClientHello from a rustls client.
fn client_hello_bytes(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), sni.to_string().try_into().unwrap())
            .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[tokio::test]
async fn silent_client_times_out_as_opaque() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    let started = std::time::Instant::now();
    let (d, buf) = detect(&mut server, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(d, Detected::Opaque(OpaqueReason::Timeout));
    assert!(buf.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2));
}
