//! Proxy-made responses: every one carries `shoal-proxy-error: <reason>`, the documented status
//! and an `x-request-id`, and the proxy logs exactly one line with that request id and reason.

use std::time::Duration;

use shoal_tests::backend::text_response;
use shoal_tests::client::{RawConn, RawResponse};
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, TcpBackend, closed_port_addr};

const T: Duration = Duration::from_secs(15);

/// Sends `raw` to `addr` and returns the response.
async fn exchange(addr: std::net::SocketAddr, raw: &str) -> RawResponse {
    let mut c = RawConn::connect(addr).await.unwrap();
    c.write(raw).await.unwrap();
    c.read_response_within(false, T)
        .await
        .unwrap_or_else(|e| panic!("no response to {raw:?}: {e:#}"))
}

/// Checks the contract of a proxy-made response with `reason` and `status`; returns the
/// request id.
async fn assert_proxy_error(
    proxy: &Proxy,
    resp: &RawResponse,
    status: u16,
    reason: &str,
) -> String {
    assert_eq!(
        (resp.status, resp.header("shoal-proxy-error")),
        (status, Some(reason)),
        "{resp:?}"
    );
    let id = resp
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id on the {reason} response: {resp:?}"))
        .to_string();
    assert!(!id.is_empty());
    assert!(
        resp.text().contains(reason),
        "the body should explain the reason: {:?}",
        resp.text()
    );
    let line = proxy
        .wait_for_log(
            Duration::from_secs(5),
            &format!("a log line for {id}"),
            |l| l.contains(&id) && l.contains(reason),
        )
        .await;
    let count = proxy
        .log_lines()
        .iter()
        .filter(|l| l.contains(&id) && l.contains(reason))
        .count();
    assert_eq!(
        count, 1,
        "expected one log line with {id} and {reason}, got {count}: {line}"
    );
    id
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

#[tokio::test]
async fn connect_refused_is_502_with_request_id_and_one_log_line() {
    let proxy = ProxyBuilder::new()
        .inbound_explicit(closed_port_addr())
        .start()
        .await;
    let resp = exchange(proxy.inbound(), "GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let id = assert_proxy_error(&proxy, &resp, 502, "upstream-connect-refused").await;
    assert!(is_uuid(&id), "a generated request id is a UUID: {id}");
    proxy
        .wait_metric(
            "shoal_proxy_errors_total",
            &[
                ("direction", "inbound"),
                ("reason", "upstream-connect-refused"),
            ],
            1.0,
        )
        .await;
}

#[tokio::test]
async fn client_request_id_is_kept_on_proxy_errors() {
    let proxy = ProxyBuilder::new()
        .inbound_explicit(closed_port_addr())
        .start()
        .await;
    let resp = exchange(
        proxy.inbound(),
        "GET / HTTP/1.1\r\nHost: app\r\nX-Request-Id: client-chosen-id-4711\r\n\r\n",
    )
    .await;
    let id = assert_proxy_error(&proxy, &resp, 502, "upstream-connect-refused").await;
    assert_eq!(id, "client-chosen-id-4711");
}

#[tokio::test]
async fn response_timeout_is_504() {
    let backend = HttpBackend::start(|_| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        text_response(200, "late")
    })
    .await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_RESPONSE_TIMEOUT", "300ms")
        .start()
        .await;
    let resp = exchange(proxy.inbound(), "GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert_proxy_error(&proxy, &resp, 504, "response-timeout").await;
}

#[tokio::test]
async fn no_endpoints_is_503() {
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state("services:\n  - name: empty\n    port: 80\n    endpoints:\n      - { address: \"127.0.0.1:9\", ready: false }\n")
        .start()
        .await;
    let resp = exchange(proxy.outbound(), "GET / HTTP/1.1\r\nHost: empty\r\n\r\n").await;
    assert_proxy_error(&proxy, &resp, 503, "no-endpoints").await;
}

#[tokio::test]
async fn malformed_upstream_response_is_502() {
    let upstream = TcpBackend::http_response(b"HTTP/1.1 OK-ish\r\n\r\n").await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(upstream.addr())
        .start()
        .await;
    let resp = exchange(proxy.inbound(), "GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert_proxy_error(&proxy, &resp, 502, "upstream-malformed-response").await;
}

#[tokio::test]
async fn upstream_closing_without_response_is_502_upstream_reset() {
    let upstream = TcpBackend::start(|mut s| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        // Close without answering.
    })
    .await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(upstream.addr())
        .start()
        .await;
    let resp = exchange(proxy.inbound(), "GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert_proxy_error(&proxy, &resp, 502, "upstream-reset").await;
}

#[tokio::test]
async fn request_to_the_proxy_itself_is_508_forwarding_loop() {
    let proxy = ProxyBuilder::new().outbound_explicit().start().await;
    let resp = exchange(
        proxy.outbound(),
        &format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.outbound()),
    )
    .await;
    assert_proxy_error(&proxy, &resp, 508, "forwarding-loop").await;
}

#[tokio::test]
async fn request_without_destination_is_400_no_destination() {
    let proxy = ProxyBuilder::new().outbound_explicit().start().await;
    // HTTP/1.0 allows a request without Host; explicit outbound then has nowhere to send it.
    let resp = exchange(proxy.outbound(), "GET / HTTP/1.0\r\n\r\n").await;
    assert_proxy_error(&proxy, &resp, 400, "no-destination").await;
}

#[tokio::test]
async fn unresolvable_host_is_502_upstream_unresolvable() {
    let proxy = ProxyBuilder::new().outbound_explicit().start().await;
    let resp = exchange(
        proxy.outbound(),
        "GET / HTTP/1.1\r\nHost: no-such-host.invalid\r\n\r\n",
    )
    .await;
    assert_proxy_error(&proxy, &resp, 502, "upstream-unresolvable").await;
}

/// hyper answers a request whose head it cannot parse by itself (before the proxy sees a
/// request); the proxy's contract says every response it makes carries its reason.
#[tokio::test]
async fn malformed_request_response_carries_the_reason() {
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .start()
        .await;
    let resp = exchange(
        proxy.inbound(),
        "GET / HTTP/1.1\r\nHost: app\r\nX-Bad: a\0b\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(
        resp.header("shoal-proxy-error"),
        Some("malformed-request"),
        "the proxy's 400 for an unparsable head has no reason header: {resp:?}"
    );
}

/// As above for a head over `SHOAL_MAX_HEADER_BYTES` (docs/configuration.md: "larger → 431").
#[tokio::test]
async fn oversized_request_head_response_carries_the_reason() {
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_MAX_HEADER_BYTES", 8192)
        .start()
        .await;
    let resp = exchange(
        proxy.inbound(),
        &format!(
            "GET / HTTP/1.1\r\nHost: app\r\nX-Big: {}\r\n\r\n",
            "v".repeat(10_000)
        ),
    )
    .await;
    assert_eq!(resp.status, 431, "{resp:?}");
    assert_eq!(
        resp.header("shoal-proxy-error"),
        Some("headers-too-large"),
        "the proxy's 431 has no reason header: {resp:?}"
    );
}
