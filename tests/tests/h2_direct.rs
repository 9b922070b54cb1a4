//! The proxy's own HTTP/2 client and server (the `h2` crate driven directly): behaviour the other
//! tests do not pin, against an upstream written with the `h2` crate so the test controls every
//! frame — GOAWAY and reconnection, REFUSED_STREAM sent again (with a body too), an upstream
//! RST_STREAM mapped to `upstream-reset`, and a
//! downstream cancel (HTTP/2 RST_STREAM, or an HTTP/1 client closing its connection) reaching the
//! upstream as RST_STREAM CANCEL, and requests queued behind an upstream's stream limit.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Request, Response};
use shoal_tests::client::{H2Client, RawConn, empty, request};
use shoal_tests::{ProxyBuilder, assert_eventually};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(10);

/// What the upstream does with each stream.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 200 "ok", then GOAWAY once `n` streams were answered on the connection.
    AnswerThenGoAway(usize),
    /// RST_STREAM with this reason instead of a response.
    Reset(h2::Reason),
    /// RST_STREAM REFUSED_STREAM for the first stream of each connection; 200 "ok" for the rest.
    RefuseFirst,
    /// Never answer; record how the stream ended (the client's RST_STREAM reason).
    Hold,
    /// A 200 head and part of the body, then RST_STREAM with this reason.
    ResetMidBody(h2::Reason),
    /// Allow one stream at a time (SETTINGS_MAX_CONCURRENT_STREAMS 1); answer each after a pause.
    OneAtATime(Duration),
}

#[derive(Default)]
struct Seen {
    connections: usize,
    streams: usize,
    /// Reasons of the RST_STREAMs received on held streams.
    resets: Vec<h2::Reason>,
    /// Streams being answered now, and the most at once.
    open: usize,
    max_open: usize,
}

/// An h2c upstream written on the `h2` crate.
struct H2Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    _task: shoal_tests::client::AbortOnDrop<()>,
}

impl H2Upstream {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        return;
                    };
                    seen.lock().unwrap().connections += 1;
                    tokio::spawn(serve(sock, behaviour, seen.clone()));
                }
            }
        });
        Self {
            addr,
            seen,
            _task: shoal_tests::client::AbortOnDrop(task),
        }
    }

    fn seen<R>(&self, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.seen.lock().unwrap())
    }
}

async fn serve(sock: tokio::net::TcpStream, behaviour: Behaviour, seen: Arc<Mutex<Seen>>) {
    let mut builder = h2::server::Builder::new();
    if let Behaviour::OneAtATime(_) = behaviour {
        builder.max_concurrent_streams(1);
    }
    let Ok(mut conn) = builder.handshake(sock).await else {
        return;
    };
    let mut answered = 0;
    while let Some(Ok((_req, respond))) = conn.accept().await {
        seen.lock().unwrap().streams += 1;
        match behaviour {
            Behaviour::AnswerThenGoAway(n) => {
                answer(respond, "ok");
                answered += 1;
                if answered == n {
                    conn.graceful_shutdown();
                }
            }
            Behaviour::Reset(reason) => {
                let mut respond = respond;
                respond.send_reset(reason);
            }
            Behaviour::RefuseFirst if answered == 0 => {
                let mut respond = respond;
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                answered += 1;
            }
            Behaviour::RefuseFirst => answer(respond, "ok"),
            Behaviour::ResetMidBody(reason) => {
                let mut respond = respond;
                let resp = Response::builder().status(200).body(()).unwrap();
                if let Ok(mut tx) = respond.send_response(resp, false) {
                    let _ = tx.send_data(Bytes::from_static(b"partial"), false);
                    // Let the data leave before the reset.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        tx.send_reset(reason);
                    });
                }
            }
            Behaviour::OneAtATime(pause) => {
                let seen = seen.clone();
                tokio::spawn(async move {
                    {
                        let mut s = seen.lock().unwrap();
                        s.open += 1;
                        s.max_open = s.max_open.max(s.open);
                    }
                    tokio::time::sleep(pause).await;
                    seen.lock().unwrap().open -= 1;
                    answer(respond, "ok");
                });
            }
            Behaviour::Hold => {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut respond = respond;
                    let reason = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
                    if let Ok(r) = reason {
                        seen.lock().unwrap().resets.push(r);
                    }
                });
            }
        }
    }
}

fn answer(mut respond: SendResponse<Bytes>, text: &'static str) {
    let resp = Response::builder().status(200).body(()).unwrap();
    if let Ok(mut tx) = respond.send_response(resp, false) {
        let _ = tx.send_data(Bytes::from_static(text.as_bytes()), true);
    }
}

fn get(authority: SocketAddr, path: &str) -> Request<shoal_tests::client::Body> {
    request("GET", &format!("http://{authority}{path}"), None)
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn upstream_goaway_moves_later_requests_to_a_new_connection() {
    // The upstream answers two streams per connection, then sends GOAWAY and closes.
    let upstream = H2Upstream::start(Behaviour::AnswerThenGoAway(2)).await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(upstream.addr)
        .start()
        .await;
    let client = H2Client::connect(proxy.inbound()).await.unwrap();
    for i in 0..6 {
        let resp = client
            .send(get(proxy.inbound(), &format!("/{i}")))
            .await
            .unwrap();
        assert_eq!(
            (resp.status.as_u16(), resp.text()),
            (200, "ok".to_string()),
            "request {i}"
        );
        // The upstream sends no Date; the proxy adds one (RFC 9110 §6.6.1).
        let date = resp.header("date").unwrap_or_default();
        assert!(
            date.ends_with(" GMT") && date.len() == 29,
            "request {i}: date {date:?}"
        );
    }
    let (conns, streams) = upstream.seen(|s| (s.connections, s.streams));
    assert_eq!(streams, 6);
    assert!(
        conns >= 3,
        "6 requests at 2 per connection need 3 upstream connections, saw {conns}"
    );
}

#[tokio::test]
async fn requests_beyond_the_upstream_stream_limit_wait_their_turn() {
    // The upstream takes one stream at a time; three client connections (three tasks in the
    // proxy) send eight requests each at once. Every request must be answered: the ones the
    // upstream cannot take yet wait for a free stream instead of failing or stalling.
    let upstream = H2Upstream::start(Behaviour::OneAtATime(Duration::from_millis(5))).await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(upstream.addr)
        .start()
        .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(H2Client::connect(proxy.inbound()).await.unwrap());
    }
    let mut requests = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for i in 0..8 {
            let send = client.send(get(proxy.inbound(), &format!("/{c}/{i}")));
            requests.push(async move { (c, i, tokio::time::timeout(T, send).await) });
        }
    }
    for (c, i, res) in futures_util::future::join_all(requests).await {
        let resp = res
            .unwrap_or_else(|_| panic!("request {c}/{i} not answered within {T:?}"))
            .unwrap();
        assert_eq!(
            (resp.status.as_u16(), resp.text()),
            (200, "ok".to_string()),
            "request {c}/{i}"
        );
    }
    let (streams, max_open) = upstream.seen(|s| (s.streams, s.max_open));
    assert_eq!(streams, 24);
    assert_eq!(
        max_open, 1,
        "the upstream's limit of one stream was exceeded"
    );
}

#[tokio::test]
async fn a_refused_stream_is_sent_again_and_answered() {
    // REFUSED_STREAM means the upstream did not process the request (RFC 9113 §8.7): the proxy
    // sends it again, whatever its method, and the client sees only the answer.
    let upstream = H2Upstream::start(Behaviour::RefuseFirst).await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(upstream.addr)
        .start()
        .await;
    let client = H2Client::connect(proxy.inbound()).await.unwrap();
    let resp = client
        .send(
            request("DELETE", &format!("http://{}/item", proxy.inbound()), None)
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        (resp.status.as_u16(), resp.text()),
        (200, "ok".to_string()),
        "{:?}",
        resp.header("shoal-proxy-error")
    );
    assert_eq!(upstream.seen(|s| (s.connections, s.streams)), (1, 2));
    proxy
        .wait_metric(
            "shoal_upstream_requests_resent_total",
            // Counted with the request's own labels (docs/metrics.md).
            &[
                ("direction", "inbound"),
                ("service", "unknown"),
                ("route", "default"),
                ("tls", "false"),
                ("reason", "refused"),
            ],
            1.0,
        )
        .await;
}

#[tokio::test]
async fn a_refused_request_with_a_body_is_sent_again_body_and_all() {
    // The proxy keeps a request body as it streams (up to 64 KiB), so a refused POST goes again.
    let upstream = H2Upstream::start(Behaviour::RefuseFirst).await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(upstream.addr)
        .start()
        .await;
    let client = H2Client::connect(proxy.inbound()).await.unwrap();
    let post = request("POST", &format!("http://{}/item", proxy.inbound()), None)
        .body(shoal_tests::client::full("payload"))
        .unwrap();
    let resp = client.send(post).await.unwrap();
    assert_eq!(
        (resp.status.as_u16(), resp.text()),
        (200, "ok".to_string()),
        "{:?}",
        resp.header("shoal-proxy-error")
    );
    assert_eq!(upstream.seen(|s| s.streams), 2);
}

#[tokio::test]
async fn upstream_rst_stream_before_the_head_is_upstream_reset() {
    let upstream = H2Upstream::start(Behaviour::Reset(h2::Reason::INTERNAL_ERROR)).await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(upstream.addr)
        .start()
        .await;
    let client = H2Client::connect(proxy.inbound()).await.unwrap();
    let resp = client.send(get(proxy.inbound(), "/reset")).await.unwrap();
    assert_eq!(
        (resp.status.as_u16(), resp.header("shoal-proxy-error")),
        (502, Some("upstream-reset")),
        "{}",
        resp.text()
    );
    // The connection stays usable: a reset stream is not a failed connection.
    let again = client.send(get(proxy.inbound(), "/reset")).await.unwrap();
    assert_eq!(again.header("shoal-proxy-error"), Some("upstream-reset"));
    assert_eq!(upstream.seen(|s| s.connections), 1);
}

#[tokio::test]
async fn downstream_h2_cancel_resets_the_upstream_stream() {
    let upstream = H2Upstream::start(Behaviour::Hold).await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(upstream.addr)
        .start()
        .await;
    let client = H2Client::connect(proxy.inbound()).await.unwrap();
    let call = tokio::spawn({
        let client = client.clone();
        let req = get(proxy.inbound(), "/hold");
        async move { client.send(req).await }
    });
    assert_eventually!(
        T,
        upstream.seen(|s| s.streams) == 1,
        "the request at the upstream"
    );
    // Dropping the response future makes the client send RST_STREAM(CANCEL).
    call.abort();
    assert_eventually!(
        T,
        upstream.seen(|s| s.resets.clone()) == vec![h2::Reason::CANCEL],
        "RST_STREAM CANCEL at the upstream after the client cancelled"
    );
}

#[tokio::test]
async fn downstream_h1_disconnect_resets_the_upstream_h2_stream() {
    let upstream = H2Upstream::start(Behaviour::Hold).await;
    // HTTP/1.1 in, HTTP/2 out: the service's protocol says so.
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            r#"services:
  - name: app
    port: 80
    hosts: [app.example]
    protocol: http2
    endpoints: [{{ address: "{}" }}]
"#,
            upstream.addr
        ))
        .start()
        .await;
    let mut conn = RawConn::connect(proxy.outbound()).await.unwrap();
    conn.write("GET /hold HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await
        .unwrap();
    assert_eventually!(
        T,
        upstream.seen(|s| s.streams) == 1,
        "the request at the upstream"
    );
    drop(conn);
    assert_eventually!(
        T,
        upstream.seen(|s| s.resets.clone()) == vec![h2::Reason::CANCEL],
        "RST_STREAM CANCEL at the upstream after the HTTP/1 client closed its connection"
    );
}

#[tokio::test]
async fn upstream_rst_mid_body_reaches_the_h2_client_with_its_reason() {
    let upstream = H2Upstream::start(Behaviour::ResetMidBody(h2::Reason::ENHANCE_YOUR_CALM)).await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(upstream.addr)
        .start()
        .await;
    let client = H2Client::connect(proxy.inbound()).await.unwrap();
    let resp = client
        .send_streaming(get(proxy.inbound(), "/partial"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let err = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect_err("the body must fail: the upstream reset the stream mid-body");
    // The client sees the upstream's RST_STREAM reason, passed on by the proxy.
    let mut reason = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cur {
        if let Some(h2e) = e.downcast_ref::<h2::Error>() {
            reason = h2e.reason();
        }
        cur = e.source();
    }
    assert_eq!(reason, Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
}
