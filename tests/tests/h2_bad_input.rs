//! Bad input on HTTP/2 (the h1 cases are in bad_input.rs): too many header fields, a header block
//! over `SHOAL_MAX_HEADER_BYTES`, and a body that does not match its `content-length`. Each is
//! refused on its own stream, nothing of it reaches the app complete, and the connection's next
//! request is served as usual — through the inbound and the outbound listener, from a client
//! that sends whole frames and from one that trickles every byte in small pieces.

use std::time::Duration;

use shoal_tests::client::{H2Client, full, request};
use shoal_tests::{HttpBackend, ProxyBuilder, eventually};

const T: Duration = Duration::from_secs(10);

/// Which listener, and how the client sends: every test runs each way.
const WAYS: [(&str, bool); 4] = [
    ("inbound", false),
    ("inbound", true),
    ("outbound", false),
    ("outbound", true),
];

async fn proxy_and_client(
    (entry, trickled): (&str, bool),
) -> (HttpBackend, shoal_tests::Proxy, H2Client) {
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .outbound_target(backend.addr())
        .env("SHOAL_MAX_HEADERS", 50)
        .env("SHOAL_MAX_HEADER_BYTES", 16_384)
        .start()
        .await;
    let addr = match entry {
        "inbound" => proxy.inbound(),
        _ => proxy.outbound(),
    };
    let client = H2Client::connect_with(addr, trickled).await.unwrap();
    (backend, proxy, client)
}

/// The connection still serves: one ordinary request, answered by the app.
async fn assert_connection_still_serves(client: &H2Client, backend: &HttpBackend, seen: usize) {
    let ok = request("GET", "http://app/after", None)
        .body(full(""))
        .unwrap();
    let resp = client.send(ok).await.unwrap();
    assert_eq!(resp.status, 200, "the next request on the same connection");
    assert_eq!(backend.count(), seen + 1);
    assert_eq!(backend.last().uri.path(), "/after");
}

#[tokio::test]
async fn too_many_header_fields_get_431_with_a_reason_on_their_stream_only() {
    for way in WAYS {
        let (backend, proxy, client) = proxy_and_client(way).await;
        let mut req = request("GET", "http://app/many", None);
        for i in 0..60 {
            req = req.header(format!("x-field-{i}"), "v");
        }
        let resp = client.send(req.body(full("")).unwrap()).await.unwrap();
        assert_eq!(resp.status, 431, "{way:?}");
        assert_eq!(resp.header("shoal-proxy-error"), Some("headers-too-large"));
        assert!(
            resp.text().contains("SHOAL_MAX_HEADERS (50)"),
            "the body names the setting: {}",
            resp.text()
        );
        assert_eq!(backend.heads(), 0, "nothing of the request reached the app");
        proxy
            .wait_metric(
                "shoal_proxy_errors_total",
                &[("direction", way.0), ("reason", "headers-too-large")],
                1.0,
            )
            .await;
        // Exactly at the limit is fine (the count includes the request's own fields: none here).
        let mut req = request("GET", "http://app/fifty", None);
        for i in 0..50 {
            req = req.header(format!("x-field-{i}"), "v");
        }
        let resp = client.send(req.body(full("")).unwrap()).await.unwrap();
        assert_eq!(
            resp.status, 200,
            "{way:?}: 50 fields with SHOAL_MAX_HEADERS=50"
        );
        assert_eq!(backend.count(), 1);
        assert_connection_still_serves(&client, &backend, 1).await;
    }
}

#[tokio::test]
async fn a_header_block_over_the_byte_limit_gets_431_and_is_not_forwarded() {
    for way in WAYS {
        let (backend, _proxy, client) = proxy_and_client(way).await;
        let req = request("GET", "http://app/big", None)
            .header("x-big", "a".repeat(20_000))
            .body(full(""))
            .unwrap();
        let resp = client.send(req).await.unwrap();
        assert_eq!(
            resp.status, 431,
            "{way:?}: SHOAL_MAX_HEADER_BYTES=16384, 20 KB sent"
        );
        assert_eq!(backend.heads(), 0, "nothing of the request reached the app");
        assert_connection_still_serves(&client, &backend, 0).await;
    }
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_reset_and_never_completes_upstream() {
    for way in WAYS {
        let (backend, _proxy, client) = proxy_and_client(way).await;
        let req = request("POST", "http://app/short", None)
            .header("content-length", "10")
            .body(full("abc"))
            .unwrap();
        let outcome = client.send(req).await;
        assert!(
            outcome.is_err() || outcome.as_ref().is_ok_and(|r| r.status.as_u16() >= 400),
            "a request whose body breaks its content-length must fail, got {:?}",
            outcome.map(|r| r.status)
        );
        // Whatever reached the app (the head may be forwarded before the body is known to be short)
        // must end in a failed body, never a complete request.
        eventually(T, "the app's side of the request ended", || async {
            if backend.heads() == backend.body_errors() {
                Ok(())
            } else {
                Err(format!(
                    "{} heads, {} body errors",
                    backend.heads(),
                    backend.body_errors()
                ))
            }
        })
        .await;
        assert_eq!(backend.count(), 0, "no complete request reached the app");
        assert_connection_still_serves(&client, &backend, 0).await;
    }
}
