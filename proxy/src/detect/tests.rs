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
    // Incomplete line: wait for more...
    assert_eq!(classify(b"GET /slow", false), None);
    // ...and when the deadline passes, it is still HTTP/1, never opaque: the HTTP layer waits
    // for the rest of the head or refuses it.
    assert_eq!(classify(b"GET /slow", true), Some(Detected::Http1));
    assert_eq!(classify(b"G", true), Some(Detected::Http1));
    assert_eq!(classify(b"\r\n", true), Some(Detected::Http1));
    // Lenient parsers accept these; so must detection.
    assert_eq!(
        classify(b"\r\nGET / HTTP/1.1\r\n", false),
        Some(Detected::Http1)
    );
    assert_eq!(
        classify(b"get / http/1.1\r\n", false),
        Some(Detected::Http1)
    );
    assert_eq!(
        classify(b"FOO /\x80\x01 HTTP/1.1\r\n", false),
        Some(Detected::Http1)
    );
    // A request line longer than detection reads is HTTP/1 too (the HTTP layer answers 414).
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 40_000));
    assert_eq!(classify(&long, false), None);
    assert_eq!(classify(&long, true), Some(Detected::Http1));
    // A client that closed after a line that never ended sent no request.
    assert_eq!(
        classify_closed(b"ping-data"),
        Detected::Opaque(OpaqueReason::Unrecognised)
    );
    assert_eq!(
        classify_closed(b"GET /x"),
        Detected::Opaque(OpaqueReason::Unrecognised)
    );
    assert_eq!(classify_closed(b"GET / HTTP/1.1\r\n"), Detected::Http1);
    // Not HTTP: a whole first line naming no HTTP version, or bytes no request starts with.
    for not_http in [
        &b"GET / SMTP/1.0\r\n"[..],
        b"get key\r\n",
        b"PING\r\n",
        b"*3\r\n$3\r\nSET\r\n",
        b" GET / HTTP/1.1\r\n",
        b"\x00\x01binary",
        b"hello world\n",
    ] {
        assert_eq!(
            classify(not_http, false),
            Some(Detected::Opaque(OpaqueReason::Unrecognised)),
            "{not_http:?}"
        );
    }
}

#[test]
fn h2_preface_needs_all_24_bytes() {
    assert_eq!(classify(b"PRI * HTTP/2.0\r\n", false), None);
    assert_eq!(classify(H2_PREFACE, false), Some(Detected::Http2));
    // Arriving slowly, it is still HTTP/2, never opaque.
    assert_eq!(classify(b"PRI * HTTP/2.0\r\n", true), Some(Detected::Http2));
    assert_eq!(classify(b"PRI", true), Some(Detected::Http1));
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
