//! HTTP/2 header fields through the proxy, both ways, over one client connection: every field
//! arrives exactly (names, values, and the order of one name's values) while the proxy's HPACK
//! encoders enter, reuse and evict dynamic-table entries over hundreds of requests. The proxy's
//! h2 is vendored with its own encoder path (fields looked up by reference, vendor/README.md
//! patches 9 and 10); this checks it end to end, on both legs, against independent decoders.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use shoal_tests::ProxyBuilder;
use shoal_tests::client::{AbortOnDrop, H2Client, empty, request};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(10);
const REQUESTS: usize = 300;
const AT_ONCE: usize = 10;

/// An h2c upstream that answers every request with the request's `x-t-*` fields, each value in
/// the order received, as its response fields.
async fn echo_upstream() -> (SocketAddr, AbortOnDrop<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let mut resp = Response::builder().status(200);
                    for (name, value) in req.headers() {
                        if name.as_str().starts_with("x-t-") {
                            resp = resp.header(name, value);
                        }
                    }
                    if let Ok(mut tx) = respond.send_response(resp.body(()).unwrap(), false) {
                        let _ = tx.send_data(Bytes::from_static(b"ok"), true);
                    }
                }
            });
        }
    });
    (addr, AbortOnDrop(task))
}

/// Request `i`'s test fields: values that repeat (table hits), change every time (insertions
/// and evictions), several values under one name, values too large for the table, values the
/// client marks never-indexed, a cookie (never entered by value) and, now and then, forty more
/// names at once.
fn fields(i: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut add = |name: &str, value: String, sensitive: bool| {
        let mut v = HeaderValue::from_str(&value).unwrap();
        v.set_sensitive(sensitive);
        h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), v);
    };
    add("x-t-stable", "the-same-value-every-time".into(), false);
    add("x-t-seq", format!("request-{i}"), false);
    for k in 0..=(i % 4) {
        add("x-t-multi", format!("m{}-{k}", i % 5), false);
    }
    if i.is_multiple_of(7) {
        let len = 2_000 + (i % 3) * 700;
        add("x-t-big", "b".repeat(len - 8) + &format!("{:08}", i), false);
    }
    // The same name sometimes never-indexed, sometimes not.
    add("x-t-secret", format!("s{}", i % 6), i.is_multiple_of(3));
    add("x-t-cookie-like", format!("c={}", i % 4), false);
    if i.is_multiple_of(11) {
        for j in 0..40 {
            add(&format!("x-t-f{j}"), format!("v{j}-{}", i % 2), false);
        }
    }
    h
}

/// Each name's values, in order.
fn by_name(h: &HeaderMap) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (name, value) in h {
        if name.as_str().starts_with("x-t-") {
            out.entry(name.as_str().to_string())
                .or_default()
                .push(value.as_bytes().to_vec());
        }
    }
    out
}

#[tokio::test]
async fn header_fields_survive_both_legs_while_the_hpack_tables_churn() {
    let (upstream, _task) = echo_upstream().await;
    let proxy = ProxyBuilder::new().inbound_explicit(upstream).start().await;
    let client = H2Client::connect(proxy.inbound()).await.unwrap();
    let authority = proxy.inbound();
    for batch in (0..REQUESTS).collect::<Vec<_>>().chunks(AT_ONCE) {
        let sends = batch.iter().map(|&i| {
            let mut req = request("GET", &format!("http://{authority}/{i}"), None)
                .body(empty())
                .unwrap();
            *req.headers_mut() = fields(i);
            let send = client.send(req);
            async move { (i, tokio::time::timeout(T, send).await) }
        });
        for (i, res) in futures_util::future::join_all(sends).await {
            let resp = res
                .unwrap_or_else(|_| panic!("request {i} not answered within {T:?}"))
                .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
            assert_eq!(resp.status.as_u16(), 200, "request {i}: {}", resp.text());
            assert_eq!(
                by_name(&resp.headers),
                by_name(&fields(i)),
                "request {i}: the fields the upstream echoed differ from the fields sent"
            );
        }
    }
}
