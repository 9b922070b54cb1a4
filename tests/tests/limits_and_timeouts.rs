//! Limits and timeouts: slowloris, the connection limit, HTTP/2 stream limit, the response
//! timeout, refused upstreams and services without endpoints.

use std::time::{Duration, Instant};

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, H2Client, RawConn, empty, http1_get, request};
use shoal_tests::{HttpBackend, ProxyBuilder, closed_port_addr, eventually};
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn slowloris_head_is_cut_off_by_the_header_read_timeout() {
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_HEADER_READ_TIMEOUT", "1s")
        .start()
        .await;
    let started = Instant::now();
    let mut conn = RawConn::connect(proxy.inbound()).await.unwrap();
    conn.write("GET /slow HTTP/1.1\r\nHost: app\r\n")
        .await
        .unwrap();
    // Trickle one header byte every 200 ms: progress must not extend the deadline.
    let trickle = async {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if conn.stream().write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let closed = conn.read_to_close(Duration::from_millis(500)).await;
    let elapsed = started.elapsed();
    let rest = closed.unwrap_or_else(|e| {
        panic!("the slowloris connection was still open after {elapsed:?}: {e:#}")
    });
    // hyper may answer 408 before closing; no request may have gone upstream.
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer {text:?}"
    );
    assert_eq!(backend.heads(), 0);
}

#[tokio::test]
async fn stalled_partial_heads_are_closed_within_the_deadline() {
    // A partial head and then silence (no trickle): every such connection must be closed about
    // 2 s after it opened (SHOAL_HEADER_READ_TIMEOUT), certainly within 3.5 s. Several at once,
    // with different partial heads. (2 s rather than 1 s: longer than the proxy's 1 s idle
    // check, which must not restart the head's clock.)
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_HEADER_READ_TIMEOUT", "2s")
        .start()
        .await;
    let heads = [
        "GET /slow HTTP/1.1\r\n",
        "GET /slow HTTP/1.1\r\nHost: app\r\n",
        "GET /slow HTTP/1.1\r\nHost: app\r\nX-Partial: ",
        "POST /slow HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n",
        "GET /slow HTTP/1.1\r\nHost: app\r\nX-A: 1\r\nX-B: 2\r\n",
    ];
    let mut conns = tokio::task::JoinSet::new();
    for head in heads {
        let addr = proxy.inbound();
        conns.spawn(async move {
            let started = Instant::now();
            let mut conn = RawConn::connect(addr).await.unwrap();
            conn.write(head).await.unwrap();
            let closed = conn.read_to_close(Duration::from_millis(3500)).await;
            (head, closed.is_ok(), started.elapsed())
        });
    }
    let mut problems = Vec::new();
    while let Some(r) = conns.join_next().await {
        let (head, closed, elapsed) = r.unwrap();
        if !closed {
            problems.push(format!("{head:?}: still open after {elapsed:?}"));
        } else if elapsed < Duration::from_millis(1900) {
            problems.push(format!(
                "{head:?}: closed after {elapsed:?}, before the 2 s timeout"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "SHOAL_HEADER_READ_TIMEOUT=2s not enforced on stalled heads:\n{}",
        problems.join("\n")
    );
    assert_eq!(backend.heads(), 0);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    // docs/configuration.md: SHOAL_HEADER_READ_TIMEOUT is also the idle limit of a kept-alive
    // HTTP/1 connection between requests.
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_HEADER_READ_TIMEOUT", "2s")
        .start()
        .await;
    let mut conn = RawConn::connect(proxy.inbound()).await.unwrap();
    conn.write("GET /one HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.read_response(false).await.unwrap().status, 200);
    let idle_since = Instant::now();
    let rest = conn
        .read_to_close(Duration::from_millis(4500))
        .await
        .unwrap_or_else(|e| panic!("the idle connection was not closed: {e:#}"));
    let idle = idle_since.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        idle >= Duration::from_millis(1800) && idle < Duration::from_millis(4500),
        "closed after {idle:?} idle, expected about 2 s"
    );
}

#[tokio::test]
async fn connection_limit_closes_extra_connections_and_counts_them() {
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_MAX_CONNECTIONS", 2)
        .start()
        .await;
    let mut first = H1Client::connect(proxy.inbound()).await.unwrap();
    let mut second = H1Client::connect(proxy.inbound()).await.unwrap();
    assert_eq!(first.get("app", "/1").await.unwrap().status, 200);
    assert_eq!(second.get("app", "/2").await.unwrap().status, 200);

    let mut third = RawConn::connect(proxy.inbound()).await.unwrap();
    let _ = third.write("GET /3 HTTP/1.1\r\nHost: app\r\n\r\n").await;
    let got = third
        .read_to_close(Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("the third connection must be closed at once: {e:#}"));
    assert!(
        got.is_empty(),
        "the third connection got an answer: {got:?}"
    );
    proxy
        .wait_metric(
            "shoal_proxy_errors_total",
            &[("direction", "inbound"), ("reason", "connection-limit")],
            1.0,
        )
        .await;
    assert_eq!(
        backend.count(),
        2,
        "the third request must not be forwarded"
    );

    // The kept connections still work, and a slot frees up when one closes.
    assert_eq!(first.get("app", "/1b").await.unwrap().status, 200);
    drop(second);
    let resp = eventually(T, "a new connection once one closed", || async {
        match http1_get(proxy.inbound(), "app", "/4").await {
            Ok(r) if r.status == 200 => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn h2_max_concurrent_streams_is_advertised() {
    let backend = HttpBackend::echo().await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_H2_MAX_CONCURRENT_STREAMS", 7)
        .start()
        .await;
    let c = H2Client::connect(proxy.inbound()).await.unwrap();
    // One exchange guarantees the server's SETTINGS have been processed.
    let resp = c
        .send(
            shoal_tests::client::request("GET", "http://app/", None)
                .body(shoal_tests::client::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let advertised = eventually(T, "SETTINGS_MAX_CONCURRENT_STREAMS", || async {
        match c.current_max_send_streams().await {
            7 => Ok(7),
            other => Err(other),
        }
    })
    .await;
    assert_eq!(advertised, 7);
}

#[tokio::test]
async fn slow_upstream_gets_504_response_timeout() {
    let backend = HttpBackend::start(|_| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        text_response(200, "too late")
    })
    .await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_RESPONSE_TIMEOUT", "500ms")
        .start()
        .await;
    let started = Instant::now();
    let resp = http1_get(proxy.inbound(), "app", "/slow").await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 504, "{resp:?}");
    assert_eq!(resp.header("shoal-proxy-error"), Some("response-timeout"));
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(2500),
        "504 after {elapsed:?}, expected about 500 ms"
    );
}

/// A backend that answers `/slow` after 6 s (everything else at once), behind a proxy whose
/// response timeout is 2.5 s: more than two of the connection loop's 1 s ticks.
async fn slow_path_behind_proxy_with_2500ms_timeout() -> (HttpBackend, shoal_tests::Proxy) {
    let backend = HttpBackend::start(|req| async move {
        if req.uri.path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        text_response(200, "ok")
    })
    .await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_RESPONSE_TIMEOUT", "2500ms")
        .start()
        .await;
    (backend, proxy)
}

/// A timeout of at least two of the HTTP/1 connection loop's ticks (1 s) is kept by that loop's
/// timer rather than one per request (proxy/src/http/deadline.rs): still on time, and the
/// connection serves the next request (whose deadline starts afresh).
#[tokio::test]
async fn a_long_response_timeout_on_http1_fires_on_time_from_the_connection_timer() {
    let (_backend, proxy) = slow_path_behind_proxy_with_2500ms_timeout().await;
    let mut client = H1Client::connect(proxy.inbound()).await.unwrap();
    // A quick request first: its deadline must not linger and cut the next one short.
    let resp = client
        .send(request("GET", "/fast", Some("app")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    let started = Instant::now();
    let resp = client
        .send(request("GET", "/slow", Some("app")).body(empty()).unwrap())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 504, "{resp:?}");
    assert_eq!(resp.header("shoal-proxy-error"), Some("response-timeout"));
    assert!(
        elapsed >= Duration::from_millis(2450) && elapsed < Duration::from_millis(2900),
        "504 after {elapsed:?}, expected about 2.5 s"
    );
}

/// HTTP/2: the streams' deadlines are kept by the connection loop's one timer
/// (`deadline::StreamDeadlines`). Slow streams started at different times each get their 504 on
/// time, and a quick stream alongside them is answered.
#[tokio::test]
async fn long_response_timeouts_on_h2_streams_fire_on_time_from_the_connection_timer() {
    let (_backend, proxy) = slow_path_behind_proxy_with_2500ms_timeout().await;
    let client = H2Client::connect(proxy.inbound()).await.unwrap();
    let slow = |delay: u64| {
        let client = client.clone();
        let uri = format!("http://{}/slow", proxy.inbound());
        async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let started = Instant::now();
            let resp = client
                .send(request("GET", &uri, None).body(empty()).unwrap())
                .await
                .unwrap();
            (resp, started.elapsed())
        }
    };
    let fast = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let uri = format!("http://{}/fast", proxy.inbound());
        client
            .send(request("GET", &uri, None).body(empty()).unwrap())
            .await
            .unwrap()
    };
    let (first, second, quick) = tokio::join!(slow(0), slow(1200), fast);
    assert_eq!(quick.status, 200, "{quick:?}");
    for (resp, elapsed) in [first, second] {
        assert_eq!(resp.status, 504, "{resp:?}");
        assert_eq!(resp.header("shoal-proxy-error"), Some("response-timeout"));
        assert!(
            elapsed >= Duration::from_millis(2450) && elapsed < Duration::from_millis(2900),
            "504 after {elapsed:?}, expected about 2.5 s"
        );
    }
}

#[tokio::test]
async fn refused_upstream_gets_502_connect_refused() {
    let proxy = ProxyBuilder::new()
        .inbound_explicit(closed_port_addr())
        .start()
        .await;
    let resp = http1_get(proxy.inbound(), "app", "/").await.unwrap();
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(
        resp.header("shoal-proxy-error"),
        Some("upstream-connect-refused")
    );
}

#[tokio::test]
async fn service_without_endpoints_gets_503_no_endpoints() {
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(
            "services:\n  - name: empty\n    port: 80\n    hosts: [empty.example]\n    endpoints: []\n",
        )
        .start()
        .await;
    for host in [
        "empty.example",
        "empty",
        "empty.default.svc.cluster.local:80",
    ] {
        let resp = http1_get(proxy.outbound(), host, "/").await.unwrap();
        assert_eq!(resp.status, 503, "Host {host}: {resp:?}");
        assert_eq!(
            resp.header("shoal-proxy-error"),
            Some("no-endpoints"),
            "Host {host}"
        );
    }
}
