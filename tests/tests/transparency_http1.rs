//! HTTP/1.1 transparency: what the client sends is what the backend gets, and back, through the
//! explicit inbound listener and the explicit outbound listener (routed by Host).

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response};
use shoal_tests::backend::{echo_response, text_response};
use shoal_tests::client::{self, H1Client, RawConn, full, request};
use shoal_tests::{HttpBackend, ProxyBuilder, Via};

const T: Duration = Duration::from_secs(10);

/// 1 MiB of deterministic, non-repeating-looking bytes.
fn big_body() -> Bytes {
    let mut x: u32 = 0x1234_5678;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn methods_and_request_targets_arrive_unchanged() {
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        let mut c = H1Client::connect(via.entry(&proxy)).await.unwrap();
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"] {
            let target = "/p/a%20b;x?y=1&y=2&z=%2F";
            let body = if method == "GET" || method == "OPTIONS" {
                client::empty()
            } else {
                full(format!("{method} body"))
            };
            let resp = c
                .send(request(method, target, Some(&host)).body(body).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status, 200, "{via:?} {method}");
            assert_eq!(resp.header("x-echo-method"), Some(method), "{via:?}");
            let seen = backend.last();
            assert_eq!(seen.method.as_str(), method, "{via:?}");
            assert_eq!(
                seen.uri.path_and_query().map(|p| p.as_str()),
                Some(target),
                "{via:?} {method}: the request target must not be re-encoded"
            );
            assert_eq!(seen.header("host"), Some(host.as_str()), "{via:?}");
            if method != "GET" && method != "OPTIONS" {
                assert_eq!(seen.body, format!("{method} body").as_bytes(), "{via:?}");
            }
        }
    }
}

#[tokio::test]
async fn header_fields_multi_valued_and_mixed_case_arrive_intact() {
    let backend = HttpBackend::respond(|_| {
        Response::builder()
            .header("set-cookie", "a=1; Path=/")
            .header("set-cookie", "b=2; Path=/")
            .header("x-Resp-MiXeD", "Resp Value")
            .header("x-resp-empty", "")
            .body(client::empty())
            .unwrap()
    })
    .await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        let mut raw = RawConn::connect(via.entry(&proxy)).await.unwrap();
        raw.write(format!(
            "GET /h HTTP/1.1\r\nHost: {host}\r\nX-Multi: one\r\nx-MiXeD-CaSe: Value  With Spaces\r\n\
             X-Multi: two, three\r\nX-Empty:\r\nX-Utf8: café\r\nX-Multi: four\r\n\r\n"
        ))
        .await
        .unwrap();
        let resp = raw.read_response(false).await.unwrap();
        assert_eq!(resp.status, 200, "{via:?}");
        let seen = backend.last();
        assert_eq!(
            seen.header_all("x-multi"),
            ["one", "two, three", "four"],
            "{via:?}: repeated fields keep their values and order"
        );
        assert_eq!(
            seen.header("x-mixed-case"),
            Some("Value  With Spaces"),
            "{via:?}"
        );
        assert_eq!(seen.header_all("x-empty"), [""], "{via:?}");
        assert_eq!(
            seen.headers.get("x-utf8").map(|v| v.as_bytes()),
            Some("café".as_bytes()),
            "{via:?}: obs-text bytes pass through"
        );
        // The client's custom fields all arrive, whatever order the proxy writes them in.
        let custom: HashSet<(String, String)> = seen
            .headers
            .iter()
            .filter(|(n, _)| n.as_str().starts_with("x-"))
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let expected: HashSet<(String, String)> = [
            ("x-multi", "one"),
            ("x-multi", "two, three"),
            ("x-multi", "four"),
            ("x-mixed-case", "Value  With Spaces"),
            ("x-empty", ""),
            ("x-utf8", "café"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let custom_without_proxy: HashSet<_> = custom
            .into_iter()
            .filter(|(n, _)| n != "x-request-id")
            .collect();
        assert_eq!(custom_without_proxy, expected, "{via:?}");

        assert_eq!(
            resp.header_all("set-cookie"),
            ["a=1; Path=/", "b=2; Path=/"],
            "{via:?}"
        );
        assert_eq!(resp.header("x-resp-mixed"), Some("Resp Value"), "{via:?}");
        assert_eq!(resp.header_all("x-resp-empty"), [""], "{via:?}");
    }
}

#[tokio::test]
async fn bodies_empty_large_and_chunked() {
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    let big = big_body();
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        let mut c = H1Client::connect(via.entry(&proxy)).await.unwrap();

        // Empty body with an explicit Content-Length: 0.
        let resp = c
            .send(
                request("POST", "/empty", Some(&host))
                    .header("content-length", "0")
                    .body(client::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.body.is_empty(), "{via:?}");
        let seen = backend.last();
        assert!(seen.body.is_empty(), "{via:?}");
        assert!(
            seen.header("transfer-encoding").is_none(),
            "{via:?}: an empty body must not become chunked: {:?}",
            seen.headers
        );

        // 1 MiB with a Content-Length, echoed back.
        let resp = c
            .send(
                request("PUT", "/big", Some(&host))
                    .body(full(big.clone()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), big.len(), "{via:?}");
        assert!(resp.body == big, "{via:?}: the 1 MiB response body differs");
        let seen = backend.last();
        assert!(seen.body == big, "{via:?}: the 1 MiB request body differs");
        assert_eq!(seen.header("content-length"), Some("1048576"), "{via:?}");

        // A chunked request body (no length known up front).
        let parts: Vec<Bytes> = ["alpha-", "beta-", "", "gamma"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        let resp = c
            .send(
                request("POST", "/chunked", Some(&host))
                    .body(client::chunks(parts, None))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, "alpha-beta-gamma", "{via:?}");
        assert_eq!(backend.last().body, "alpha-beta-gamma", "{via:?}");
    }
}

#[tokio::test]
async fn chunked_response_carries_trailers_when_the_client_accepts_them() {
    let backend = HttpBackend::respond(|_| {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "c0ffee".parse().unwrap());
        Response::builder()
            .header("trailer", "x-checksum")
            .body(client::chunks(
                vec![
                    Bytes::from_static(b"part one, "),
                    Bytes::from_static(b"part two"),
                ],
                Some(trailers),
            ))
            .unwrap()
    })
    .await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        let mut raw = RawConn::connect(via.entry(&proxy)).await.unwrap();
        raw.write(format!(
            "GET /t HTTP/1.1\r\nHost: {host}\r\nTE: trailers\r\n\r\n"
        ))
        .await
        .unwrap();
        let resp = raw.read_response(false).await.unwrap();
        assert_eq!(resp.status, 200, "{via:?}");
        assert!(
            resp.chunked,
            "{via:?}: expected a chunked response: {resp:?}"
        );
        assert_eq!(resp.text(), "part one, part two", "{via:?}");
        assert_eq!(
            resp.trailers,
            [("x-checksum".to_string(), "c0ffee".to_string())],
            "{via:?}: trailers must reach a client that sent TE: trailers"
        );
        assert_eq!(
            backend.last().header("te"),
            Some("trailers"),
            "{via:?}: TE: trailers is forwarded so the backend may send trailers"
        );
    }
}

#[tokio::test]
async fn chunked_request_trailers_reach_the_backend() {
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        let mut raw = RawConn::connect(via.entry(&proxy)).await.unwrap();
        raw.write(format!(
            "POST /up HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nTrailer: x-req-sum\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\nx-req-sum: 42\r\n\r\n"
        ))
        .await
        .unwrap();
        let resp = raw.read_response(false).await.unwrap();
        assert_eq!(resp.status, 200, "{via:?}");
        assert_eq!(resp.text(), "hello world", "{via:?}");
        let seen = backend.last();
        assert_eq!(seen.body, "hello world", "{via:?}");
        let trailers = seen.trailers.clone().unwrap_or_default();
        assert_eq!(
            trailers.get("x-req-sum").map(|v| v.as_bytes()),
            Some(&b"42"[..]),
            "{via:?}: request trailers must reach the backend; got {trailers:?}"
        );
    }
}

#[tokio::test]
async fn status_codes_pass_through_on_one_connection() {
    let backend = HttpBackend::respond(|r| {
        let code: u16 = r.uri.path().trim_start_matches("/status/").parse().unwrap();
        let mut resp = match code {
            204 | 304 => text_response(code, ""),
            _ => text_response(code, &format!("status {code}")),
        };
        if code == 301 {
            resp.headers_mut()
                .insert("location", "/elsewhere".parse().unwrap());
        }
        if code == 304 {
            resp.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
        }
        resp
    })
    .await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        // Raw, so a 204/304 that wrongly carried a body would corrupt the next response.
        let mut raw = RawConn::connect(via.entry(&proxy)).await.unwrap();
        for code in [200u16, 201, 204, 301, 304, 400, 404, 418, 500, 503] {
            raw.write(format!(
                "GET /status/{code} HTTP/1.1\r\nHost: {host}\r\n\r\n"
            ))
            .await
            .unwrap();
            let resp = raw.read_response(false).await.unwrap();
            assert_eq!(resp.status, code, "{via:?}");
            assert!(
                resp.header("shoal-proxy-error").is_none(),
                "{via:?}: {code} came from the backend, not the proxy"
            );
            match code {
                204 | 304 => {
                    assert!(resp.body.is_empty(), "{via:?} {code}");
                    assert!(
                        resp.header("transfer-encoding").is_none(),
                        "{via:?} {code} must not be chunked"
                    );
                }
                _ => assert_eq!(resp.text(), format!("status {code}"), "{via:?}"),
            }
            if code == 301 {
                assert_eq!(resp.header("location"), Some("/elsewhere"));
            }
            if code == 304 {
                assert_eq!(resp.header("etag"), Some("\"v1\""));
            }
        }
        assert!(
            raw.buffered().is_empty(),
            "{via:?}: stray bytes after the responses"
        );
    }
}

#[tokio::test]
async fn head_response_has_the_length_but_no_body() {
    let backend = HttpBackend::respond(|_| text_response(200, &"x".repeat(1234))).await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        let mut raw = RawConn::connect(via.entry(&proxy)).await.unwrap();
        raw.write(format!("HEAD /h HTTP/1.1\r\nHost: {host}\r\n\r\n"))
            .await
            .unwrap();
        let head = raw.read_response(true).await.unwrap();
        assert_eq!(head.status, 200, "{via:?}");
        assert_eq!(head.header("content-length"), Some("1234"), "{via:?}");
        assert_eq!(backend.last().method, "HEAD");
        // The same connection must still be in sync: no body bytes followed the HEAD response.
        raw.write(format!("GET /g HTTP/1.1\r\nHost: {host}\r\n\r\n"))
            .await
            .unwrap();
        let get = raw.read_response(false).await.unwrap();
        assert_eq!(get.status, 200, "{via:?}");
        assert_eq!(get.body.len(), 1234, "{via:?}");
    }
}

/// Sends 20 sequential requests on one client connection through each listener and returns the
/// number of distinct upstream connections the backend saw for each.
async fn upstream_connections_for(body: &'static str) -> Vec<(Via, usize)> {
    let backend = HttpBackend::respond(move |_| text_response(200, body)).await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    let mut out = Vec::new();
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        let before = backend.requests().len();
        let mut c = H1Client::connect(via.entry(&proxy)).await.unwrap();
        for i in 0..20 {
            let resp = c.get(&host, &format!("/ka/{i}")).await.unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.text(), body);
        }
        assert!(!c.is_closed(), "{via:?}: the client connection was closed");
        let ports: HashSet<u16> = backend.requests()[before..]
            .iter()
            .map(|r| r.peer.port())
            .collect();
        out.push((via, ports.len()));
    }
    out
}

#[tokio::test]
async fn keep_alive_reuses_one_upstream_connection() {
    for (via, conns) in upstream_connections_for("some body").await {
        assert!(
            conns <= 2,
            "{via:?}: 20 sequential requests on one client connection used {conns} upstream connections"
        );
    }
}

#[tokio::test]
async fn keep_alive_reuses_upstream_connections_after_empty_responses() {
    // A response with an empty body (Content-Length: 0, like 204/304/HEAD answers) must return
    // its upstream connection to the pool too.
    for (via, conns) in upstream_connections_for("").await {
        assert!(
            conns <= 2,
            "{via:?}: 20 sequential requests with empty responses used {conns} upstream connections"
        );
    }
}

#[tokio::test]
async fn http10_client_gets_an_http1_response_without_chunking() {
    // A streamed body of unknown length: to an HTTP/1.1 client this would be chunked.
    let backend = HttpBackend::respond(|_| {
        Response::builder()
            .body(client::chunks(
                vec![
                    Bytes::from_static(b"streamed "),
                    Bytes::from_static(b"body"),
                ],
                None,
            ))
            .unwrap()
    })
    .await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        let mut raw = RawConn::connect(via.entry(&proxy)).await.unwrap();
        raw.write(format!("GET /old HTTP/1.0\r\nHost: {host}\r\n\r\n"))
            .await
            .unwrap();
        let resp = raw.read_response(false).await.unwrap();
        assert_eq!(resp.status, 200, "{via:?}");
        assert!(
            !resp.chunked,
            "{via:?}: an HTTP/1.0 client cannot read chunked encoding: {resp:?}"
        );
        assert_eq!(resp.text(), "streamed body", "{via:?}");
        // Without keep-alive an HTTP/1.0 exchange ends with the connection.
        let rest = raw.read_to_close(T).await.unwrap();
        assert!(rest.is_empty(), "{via:?}: unexpected bytes {rest:?}");
        assert_eq!(backend.last().uri.path(), "/old");
    }
}

#[tokio::test]
async fn expect_100_continue_waits_for_the_go_ahead() {
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        let mut raw = RawConn::connect(via.entry(&proxy)).await.unwrap();
        raw.write(format!(
            "PUT /upload HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n"
        ))
        .await
        .unwrap();
        // The client sends nothing more until it hears 100 Continue.
        let interim = raw.read_response_within(false, T).await.unwrap();
        assert_eq!(
            interim.status, 100,
            "{via:?}: expected 100 Continue before the body"
        );
        raw.write("hello there").await.unwrap();
        let resp = raw.read_response(false).await.unwrap();
        assert_eq!(resp.status, 200, "{via:?}");
        assert_eq!(resp.text(), "hello there", "{via:?}");
        assert_eq!(backend.last().body, "hello there", "{via:?}");
    }
}

#[tokio::test]
async fn hop_by_hop_fields_are_removed_and_host_is_kept() {
    let backend = HttpBackend::respond(|r| {
        let mut resp = echo_response(r);
        let h = resp.headers_mut();
        h.insert("connection", "x-resp-hop".parse().unwrap());
        h.insert("x-resp-hop", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-resp-end-to-end", "kept".parse().unwrap());
        resp
    })
    .await;
    let proxy = ProxyBuilder::new()
        .both_explicit(backend.addr())
        .start()
        .await;
    for via in Via::BOTH {
        let host = via.host(backend.addr());
        let mut raw = RawConn::connect(via.entry(&proxy)).await.unwrap();
        raw.write(format!(
            "GET /hop HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive, X-Hop-A\r\nConnection: x-hop-b\r\n\
             X-Hop-A: 1\r\nX-Hop-B: 2\r\nKeep-Alive: timeout=30\r\nProxy-Connection: keep-alive\r\n\
             X-End-To-End: yes\r\n\r\n"
        ))
        .await
        .unwrap();
        let resp = raw.read_response(false).await.unwrap();
        assert_eq!(resp.status, 200, "{via:?}");
        let seen = backend.last();
        for gone in ["x-hop-a", "x-hop-b", "keep-alive", "proxy-connection"] {
            assert!(
                seen.headers.get(gone).is_none(),
                "{via:?}: hop-by-hop {gone} reached the backend: {:?}",
                seen.headers
            );
        }
        for v in seen.header_all("connection") {
            assert!(
                !v.to_ascii_lowercase().contains("x-hop"),
                "{via:?}: Connection still lists a client's hop field: {v}"
            );
        }
        assert_eq!(seen.header("x-end-to-end"), Some("yes"), "{via:?}");
        assert_eq!(
            seen.header_all("host"),
            std::slice::from_ref(&host),
            "{via:?}: Host is end to end"
        );

        assert!(resp.header("x-resp-hop").is_none(), "{via:?}: {resp:?}");
        assert!(resp.header("keep-alive").is_none(), "{via:?}: {resp:?}");
        assert_eq!(resp.header("x-resp-end-to-end"), Some("kept"), "{via:?}");
    }
}
