//! Graceful shutdown: on SIGTERM or `POST /shutdown` the proxy stops accepting, reports not
//! ready, lets in-flight requests finish (HTTP/1: `Connection: close`; HTTP/2: GOAWAY) and exits
//! 0 — or exits when `SHOAL_SHUTDOWN_GRACE` runs out.

use std::time::{Duration, Instant};

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, H2Client, Resp, request};
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, assert_eventually, eventually};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);
const HOLD: Duration = Duration::from_millis(1500);

/// A backend that holds `/slow` for [`HOLD`] and answers everything else at once.
async fn slow_backend() -> HttpBackend {
    HttpBackend::start(|r| async move {
        if r.uri.path() == "/slow" {
            tokio::time::sleep(HOLD).await;
            text_response(200, "slow done")
        } else {
            text_response(200, "fast")
        }
    })
    .await
}

async fn proxy_to(backend: &HttpBackend, grace: &str) -> Proxy {
    ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .env("SHOAL_SHUTDOWN_GRACE", grace)
        .start()
        .await
}

/// While draining: `/ready` answers 503 and the data listener refuses new connections.
async fn assert_draining(proxy: &Proxy) {
    eventually(T, "/ready to turn 503", || async {
        match proxy.admin_get("/ready").await {
            Ok(r) if r.status == 503 => Ok(r.body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(proxy.config().await["draining"], true);
    let inbound = proxy.inbound();
    eventually(T, "new connections to be refused", || async {
        match TcpStream::connect(inbound).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

async fn assert_exits_zero(proxy: &mut Proxy, within: Duration) {
    let status = proxy
        .wait_exit(within)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the proxy did not exit within {within:?}"));
    assert!(status.success(), "exit status {status}");
}

/// The shared scenario: a slow HTTP/1 request in flight, then `trigger`.
async fn drain_http1(trigger: impl AsyncFnOnce(&Proxy)) {
    let backend = slow_backend().await;
    let mut proxy = proxy_to(&backend, "10s").await;
    let mut client = H1Client::connect(proxy.inbound()).await.unwrap();
    // One request first, so the connection is a kept-alive one.
    assert_eq!(client.get("app", "/fast").await.unwrap().status, 200);
    let in_flight = tokio::spawn(async move {
        let resp = client.get("app", "/slow").await;
        (resp, client)
    });
    wait_in_flight_slow(&backend).await;
    let signalled = Instant::now();
    trigger(&proxy).await;
    assert_draining(&proxy).await;

    let (resp, client) = tokio::time::timeout(T, in_flight).await.unwrap().unwrap();
    let resp: Resp = resp.expect("the in-flight request must complete");
    assert_eq!(
        (resp.status.as_u16(), resp.text().as_str()),
        (200, "slow done")
    );
    assert_eq!(
        resp.header("connection"),
        Some("close"),
        "a response finished while draining tells the kept-alive client to go: {:?}",
        resp.headers
    );
    assert_eventually!(T, client.is_closed(), "the client connection to be closed");
    assert_exits_zero(&mut proxy, T).await;
    assert!(
        signalled.elapsed() < HOLD + Duration::from_secs(5),
        "shutdown took {:?}",
        signalled.elapsed()
    );
    proxy
        .wait_for_log(T, "the drained log line", |l| l.contains("drained"))
        .await;
}

async fn wait_in_flight_slow(backend: &HttpBackend) {
    assert_eventually!(
        T,
        backend.requests().iter().any(|r| r.uri.path() == "/slow"),
        "the slow request at the backend"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_http1_and_exits_zero() {
    drain_http1(async |proxy: &Proxy| proxy.signal("TERM").unwrap()).await;
}

#[tokio::test]
async fn admin_shutdown_drains_in_flight_http1_and_exits_zero() {
    drain_http1(async |proxy: &Proxy| {
        let resp = proxy
            .admin_request("POST", "/shutdown", None)
            .await
            .unwrap();
        assert_eq!(resp.status, 202, "{}", resp.body);
    })
    .await;
}

#[tokio::test]
async fn h2_client_gets_goaway_and_in_flight_stream_completes() {
    let backend = slow_backend().await;
    let mut proxy = proxy_to(&backend, "10s").await;
    let client = H2Client::connect(proxy.inbound()).await.unwrap();
    let get = |path: &str| {
        request("GET", &format!("http://app{path}"), None)
            .body(shoal_tests::client::empty())
            .unwrap()
    };
    assert_eq!(client.send(get("/fast")).await.unwrap().status, 200);
    let in_flight = tokio::spawn({
        let client = client.clone();
        let req = get("/slow");
        async move { (client.send(req).await, Instant::now()) }
    });
    wait_in_flight_slow(&backend).await;
    proxy.signal("TERM").unwrap();

    // After GOAWAY no new stream may start on the connection: a new request fails at once,
    // while the in-flight one is still running.
    let refused_at = eventually(
        T,
        "a new stream on the draining connection to fail",
        || async {
            match tokio::time::timeout(Duration::from_millis(300), client.send(get("/fast"))).await
            {
                Ok(Err(_)) => Ok(Instant::now()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let (resp, done_at) = tokio::time::timeout(T, in_flight).await.unwrap().unwrap();
    let resp = resp.expect("the in-flight stream must complete");
    assert_eq!(
        (resp.status.as_u16(), resp.text().as_str()),
        (200, "slow done")
    );
    assert!(
        refused_at < done_at,
        "new streams were only refused once the in-flight stream had finished (GOAWAY missing?)"
    );
    assert_exits_zero(&mut proxy, T).await;
}

#[tokio::test]
async fn shutdown_grace_bounds_a_request_that_takes_too_long() {
    let backend = HttpBackend::start(|_| async {
        tokio::time::sleep(Duration::from_secs(20)).await;
        text_response(200, "never")
    })
    .await;
    let mut proxy = proxy_to(&backend, "1s").await;
    let mut client = H1Client::connect(proxy.inbound()).await.unwrap();
    let in_flight = tokio::spawn(async move { client.get("app", "/forever").await });
    assert_eventually!(T, backend.heads() == 1, "the request at the backend");
    let signalled = Instant::now();
    proxy.signal("TERM").unwrap();
    assert_exits_zero(&mut proxy, Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exit {took:?} after SIGTERM with SHOAL_SHUTDOWN_GRACE=1s"
    );
    let result = tokio::time::timeout(T, in_flight).await.unwrap().unwrap();
    assert!(
        result.is_err(),
        "the cut-off request cannot succeed: {result:?}"
    );
    proxy
        .wait_for_log(T, "the grace warning", |l| {
            l.contains("SHOAL_SHUTDOWN_GRACE")
        })
        .await;
}

#[tokio::test]
async fn idle_connections_do_not_delay_shutdown() {
    let backend = slow_backend().await;
    let mut proxy = proxy_to(&backend, "10s").await;
    // Kept-alive HTTP/1 connections, one of them idle long enough for the proxy to park it
    // (PARK_AFTER = 1 s in proxy/src/http/mod.rs), and an idle h2 connection.
    let mut parked = H1Client::connect(proxy.inbound()).await.unwrap();
    assert_eq!(parked.get("app", "/fast").await.unwrap().status, 200);
    let h2 = H2Client::connect(proxy.inbound()).await.unwrap();
    let req = request("GET", "http://app/fast", None)
        .body(shoal_tests::client::empty())
        .unwrap();
    assert_eq!(h2.send(req).await.unwrap().status, 200);
    // Deliberate idle time (not a wait for an outcome).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut fresh = H1Client::connect(proxy.inbound()).await.unwrap();
    assert_eq!(fresh.get("app", "/fast").await.unwrap().status, 200);

    let signalled = Instant::now();
    proxy.signal("TERM").unwrap();
    assert_exits_zero(&mut proxy, T).await;
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "idle connections held shutdown for {:?} (grace 10 s)",
        signalled.elapsed()
    );
    assert_eventually!(
        T,
        parked.is_closed() && fresh.is_closed(),
        "the idle connections closed"
    );
}
