//! Malformed input: bad requests from clients are refused (400/431, connection closed) without
//! reaching the backend; bad responses from upstreams become `502 upstream-malformed-response`.

use std::time::Duration;

use shoal_tests::backend::echo_response;
use shoal_tests::client::{RawConn, http1_get};
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, TcpBackend};

const T: Duration = Duration::from_secs(5);
const MAX_HEADERS: usize = 20;
const MAX_HEADER_BYTES: usize = 8192;

async fn proxy_to(backend: &HttpBackend) -> Proxy {
    ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .outbound_target(backend.addr())
        .env("SHOAL_MAX_HEADERS", MAX_HEADERS)
        .env("SHOAL_MAX_HEADER_BYTES", MAX_HEADER_BYTES)
        .env("SHOAL_DETECT_TIMEOUT", "100ms")
        .start()
        .await
}

/// The ways a client may deliver a request: whole, in small pieces (a byte at a time, or 64
/// bytes at a time for long requests, within the header read timeout), cut in the middle, and
/// stalled past the detection timeout after its first byte. Every check must give the same
/// answer to each (tests/tests/http_edge.rs cuts heads at every offset).
fn deliveries(len: usize) -> Vec<(&'static str, Vec<usize>, Duration)> {
    let step = if len <= 1000 { 1 } else { 64 };
    vec![
        ("whole", vec![], Duration::ZERO),
        (
            "in small pieces",
            (step..len).step_by(step).collect(),
            Duration::from_millis(1),
        ),
        ("cut in the middle", vec![len / 2], Duration::from_millis(5)),
        (
            "stalled after the first byte",
            vec![1],
            Duration::from_millis(300),
        ),
    ]
}

/// Sends `raw` on new connections to the inbound and the outbound listener, in every way of
/// [`deliveries`], and checks that the proxy answers with one of `statuses`, closes the
/// connection, and forwards nothing: afterwards a valid request on a new connection is the only
/// one the backend has seen. Every deviation is collected and reported together.
async fn assert_rejected(raw: &[u8], statuses: &[u16]) {
    assert_rejected_with(raw, statuses, false).await;
}

/// [`assert_rejected`]; with `body_may_stream`, the fault is in the body, whose head may already
/// have gone upstream when the body arrives slowly: the upstream then sees that request fail
/// (a head with a failed body), never complete.
async fn assert_rejected_with(raw: &[u8], statuses: &[u16], body_may_stream: bool) {
    let backend = HttpBackend::echo().await;
    let proxy = proxy_to(&backend).await;
    let mut problems = Vec::new();
    for (entry_name, entry) in [("inbound", proxy.inbound()), ("outbound", proxy.outbound())] {
        for (how, cuts, pause) in deliveries(raw.len()) {
            let mut conn = RawConn::connect(entry).await.unwrap();
            // The proxy may answer and close before the last pieces are written.
            let _ = conn.write_in_pieces(raw, &cuts, pause).await;
            let at = format!("{entry_name}, {how}");
            match conn.read_response_within(false, T).await {
                Ok(resp) => {
                    if !statuses.contains(&resp.status) {
                        problems.push(format!("{at}: expected one of {statuses:?}, got {resp:?}"));
                    }
                    match conn.read_to_close(T).await {
                        Ok(rest) if rest.is_empty() => {}
                        Ok(rest) => problems.push(format!(
                            "{at}: bytes after the error response: {:?}",
                            String::from_utf8_lossy(&rest)
                        )),
                        Err(e) => problems.push(format!(
                            "{at}: the connection stayed open after the {}: {e:#}",
                            resp.status
                        )),
                    }
                }
                Err(e) => {
                    problems.push(format!("{at}: no response to the malformed request: {e:#}"))
                }
            }
        }
    }

    // Confirm with a valid request on a new connection: it must be the only complete request
    // the backend sees.
    let mut ok = RawConn::connect(proxy.inbound()).await.unwrap();
    ok.write("GET /valid HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(ok.read_response(false).await.unwrap().status, 200);
    backend.wait_for(1, T).await;
    let paths: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    if paths != ["/valid"] {
        problems.push(format!("the backend received complete requests {paths:?}"));
    }
    let failed = if body_may_stream {
        backend.body_errors()
    } else {
        0
    };
    if backend.heads() - failed != 1 {
        problems.push(format!(
            "the backend saw {} request heads ({} of them with a failed body): the malformed \
             request was forwarded",
            backend.heads(),
            backend.body_errors()
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn obs_fold_header_is_rejected() {
    assert_rejected(
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Folded: first\r\n  continued\r\n\r\n",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn nul_in_header_value_is_rejected() {
    assert_rejected(
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Nul: a\0b\r\n\r\n",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn bare_cr_in_header_value_is_rejected() {
    assert_rejected(b"GET / HTTP/1.1\r\nHost: app\r\nX-Cr: a\rb\r\n\r\n", &[400]).await;
}

#[tokio::test]
async fn conflicting_content_lengths_are_rejected() {
    assert_rejected(
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn invalid_chunk_size_is_rejected() {
    assert_rejected_with(
        b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        &[400],
        true,
    )
    .await;
}

#[tokio::test]
async fn too_many_headers_are_rejected() {
    let mut req = String::from("GET / HTTP/1.1\r\nHost: app\r\n");
    for i in 0..MAX_HEADERS + 10 {
        req.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    assert_rejected(req.as_bytes(), &[431, 400]).await;
}

#[tokio::test]
async fn oversized_header_block_is_rejected() {
    // Few fields, many bytes: 4 × 3000 > SHOAL_MAX_HEADER_BYTES = 8192.
    let mut req = String::from("GET / HTTP/1.1\r\nHost: app\r\n");
    for i in 0..4 {
        req.push_str(&format!("X-Big{i}: {}\r\n", "v".repeat(3000)));
    }
    req.push_str("\r\n");
    assert_rejected(req.as_bytes(), &[431]).await;
}

/// Both `Content-Length` and `Transfer-Encoding: chunked` on a request, plus a second request
/// pipelined behind it: the classic smuggling attempt. The proxy refuses it: 400
/// `malformed-request`, nothing reaches the upstream, the pipelined bytes are never served, and
/// the connection is closed. Both header orders are checked.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_rejected_and_the_connection_closed() {
    let backend = HttpBackend::respond(echo_response).await;
    let proxy = proxy_to(&backend).await;
    for framing in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "transfer-encoding: chunked\r\ncontent-length: 4",
    ] {
        let mut conn = RawConn::connect(proxy.inbound()).await.unwrap();
        conn.write(format!(
            "POST /first HTTP/1.1\r\nHost: app\r\n{framing}\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n"
        ))
        .await
        .unwrap();
        let resp = conn.read_response(false).await.unwrap();
        assert_eq!(resp.status, 400, "{framing}: {resp:?}");
        assert_eq!(resp.header("shoal-proxy-error"), Some("malformed-request"));
        let rest = conn
            .read_to_close(T)
            .await
            .expect("the connection must be closed after a CL+TE request");
        assert!(
            !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
            "a second response followed: the pipelined request was served: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    // A valid request on a new connection is the only one the backend ever sees.
    let ok = http1_get(proxy.inbound(), "app", "/valid").await.unwrap();
    assert_eq!(ok.status, 200);
    let paths: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/valid"],
        "nothing of the CL+TE requests reached the backend"
    );
}

/// Sends a valid request through a proxy whose upstream answers with `response` and checks the
/// client gets `502 upstream-malformed-response` and nothing of the bad response.
async fn assert_bad_upstream(response: &'static [u8]) {
    let upstream = TcpBackend::http_response(response).await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(upstream.addr())
        .start()
        .await;
    let mut conn = RawConn::connect(proxy.inbound()).await.unwrap();
    conn.write("GET /x HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let resp = conn.read_response(false).await.unwrap();
    // Whatever else the proxy wrote on the connection (a second, smuggled response?).
    let trailing = match conn.read_to_close(Duration::from_secs(1)).await {
        Ok(rest) => String::from_utf8_lossy(&rest).into_owned(),
        Err(_) => String::from_utf8_lossy(conn.buffered()).into_owned(),
    };
    assert_eq!(
        (resp.status, resp.header("shoal-proxy-error")),
        (502, Some("upstream-malformed-response")),
        "upstream answered {:?}; the client got {resp:?} followed by {trailing:?}",
        String::from_utf8_lossy(response)
    );
    assert!(resp.header("x-request-id").is_some(), "{resp:?}");
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn upstream_response_with_content_length_and_transfer_encoding_is_a_502() {
    assert_bad_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn upstream_response_with_conflicting_content_lengths_is_a_502() {
    assert_bad_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
        .await;
}

#[tokio::test]
async fn upstream_response_with_invalid_header_bytes_is_a_502() {
    assert_bad_upstream(b"HTTP/1.1 200 OK\r\nX-Bad: a\0b\r\nContent-Length: 2\r\n\r\nok").await;
}

#[tokio::test]
async fn upstream_garbage_status_line_is_a_502() {
    assert_bad_upstream(b"HTTP/1.1 two hundred OK\r\nContent-Length: 2\r\n\r\nok").await;
}

#[tokio::test]
async fn upstream_non_http_answer_is_a_502() {
    assert_bad_upstream(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
}
