//! The HTTP edge as an attacker sees it: no client gets around the HTTP checks by pausing,
//! splitting or padding its request.
//!
//! - A request whose first bytes arrive slower than `SHOAL_DETECT_TIMEOUT`, or whose request
//!   line is longer than detection reads, is still HTTP: a `shoal-client-id` the caller made up
//!   never reaches the app (the app is told to trust that header as the caller's mesh identity).
//! - Every check on a request head gives the same answer however the head is cut across reads:
//!   at every offset, one byte at a time, and with pauses longer than the detection timeout.
//! - RFC 9112 edges: two Host fields, an absolute-form target that disagrees with Host, an
//!   upstream response head over `SHOAL_MAX_HEADER_BYTES`.
//!
//! Each runs through the inbound and the outbound listener.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_tests::client::RawConn;
use shoal_tests::pki::TestCa;
use shoal_tests::process::TempDir;
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, TcpBackend};

const T: Duration = Duration::from_secs(10);
/// Short, so pauses longer than it stay short too.
const DETECT: Duration = Duration::from_millis(150);
/// A pause longer than the detection timeout.
const LONG_PAUSE: Duration = Duration::from_millis(400);
/// A pause that makes each piece its own read.
const SHORT_PAUSE: Duration = Duration::from_millis(3);
const MAX_HEADER_BYTES: usize = 8192;
const FORGED: &str = "spiffe://cluster.local/ns/default/sa/admin";

/// A proxy in front of `app` both ways: inbound (explicit) and outbound (fixed target).
async fn proxy_to(app: SocketAddr, max_header_bytes: usize) -> Proxy {
    ProxyBuilder::new()
        .inbound_explicit(app)
        .outbound_target(app)
        .env("SHOAL_DETECT_TIMEOUT", format!("{}ms", DETECT.as_millis()))
        .env("SHOAL_HEADER_READ_TIMEOUT", "5s")
        .env("SHOAL_MAX_HEADER_BYTES", max_header_bytes)
        .env("SHOAL_MAX_HEADERS", 20)
        .start()
        .await
}

fn entries(proxy: &Proxy) -> [(&'static str, SocketAddr); 2] {
    [("inbound", proxy.inbound()), ("outbound", proxy.outbound())]
}

fn forged_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app\r\nshoal-client-id: {FORGED}\r\n\r\n")
}

/// Sends `raw` cut at `cuts` with `pause` between the pieces; expects a 200 from the app, which
/// must have received the request without the made-up identity.
async fn assert_served_without_forged_id(
    proxy: &Proxy,
    app: &HttpBackend,
    raw: &str,
    cuts: &[usize],
    pause: Duration,
) {
    for (name, entry) in entries(proxy) {
        let before = app.count();
        let mut conn = RawConn::connect(entry).await.unwrap();
        conn.write_in_pieces(raw, cuts, pause).await.unwrap();
        let resp = conn.read_response_within(false, T).await.unwrap();
        assert_eq!(resp.status, 200, "{name}, cut at {cuts:?}: {resp:?}");
        let seen = app.wait_for(before + 1, T).await;
        let last = seen.last().unwrap();
        assert_eq!(
            last.header("shoal-client-id"),
            None,
            "{name}, cut at {cuts:?}: the app received the caller's made-up identity"
        );
    }
}

#[tokio::test]
async fn a_slow_request_with_a_forged_identity_is_still_http() {
    let app = HttpBackend::echo().await;
    let proxy = proxy_to(app.addr(), MAX_HEADER_BYTES).await;
    let raw = forged_request("/slow");
    // After the first byte, inside the method, after the method, inside the target, before the
    // forged field: each pause longer than the detection timeout.
    for cut in [1, 2, 4, 8, 20, 33] {
        assert_served_without_forged_id(&proxy, &app, &raw, &[cut], LONG_PAUSE).await;
    }
    // Empty lines before the request line, which servers skip, paused after.
    let padded = format!("\r\n\r\n{raw}");
    assert_served_without_forged_id(&proxy, &app, &padded, &[2], LONG_PAUSE).await;
    // Split everywhere, quickly: separate reads, one check.
    let every: Vec<usize> = (1..raw.len()).collect();
    assert_served_without_forged_id(&proxy, &app, &raw, &every, Duration::ZERO).await;
}

#[tokio::test]
async fn a_request_line_longer_than_detection_reads_is_still_http() {
    let app = HttpBackend::echo().await;
    let proxy = proxy_to(app.addr(), 61_440).await;
    // 40 KB: longer than detection buffers, within the head limit: served, identity stripped.
    let path = format!("/{}", "a".repeat(40_000));
    assert_served_without_forged_id(&proxy, &app, &forged_request(&path), &[], Duration::ZERO)
        .await;
    // 70 KB: over the limit: 414, and nothing reaches the app.
    let before = app.heads();
    let path = format!("/{}", "a".repeat(70_000));
    for (name, entry) in entries(&proxy) {
        let mut conn = RawConn::connect(entry).await.unwrap();
        conn.write(forged_request(&path)).await.unwrap();
        let resp = conn.read_response_within(false, T).await.unwrap();
        assert_eq!(resp.status, 414, "{name}: {resp:?}");
        assert_eq!(resp.header("shoal-proxy-error"), Some("uri-too-long"));
    }
    assert_eq!(app.heads(), before, "a 70 KB request line reached the app");
}

/// Malformed heads and the status each must get, whatever way they arrive.
fn bad_heads() -> Vec<(&'static str, String, u16)> {
    let mut many = String::from("GET / HTTP/1.1\r\nHost: app\r\n");
    for i in 0..25 {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let mut big = String::from("GET / HTTP/1.1\r\nHost: app\r\n");
    for i in 0..3 {
        big.push_str(&format!("X-Big{i}: {}\r\n", "v".repeat(3000)));
    }
    big.push_str("\r\n");
    let post = |framing: &str| {
        format!("POST / HTTP/1.1\r\nHost: app\r\n{framing}\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    };
    vec![
        (
            "CL+TE",
            post("Content-Length: 4\r\nTransfer-Encoding: chunked"),
            400,
        ),
        (
            "TE+CL",
            post("transfer-encoding: chunked\r\ncontent-length: 4"),
            400,
        ),
        (
            "two Content-Length",
            post("Content-Length: 5\r\nContent-Length: 5"),
            400,
        ),
        ("Content-Length list", post("Content-Length: 5, 5"), 400),
        ("TE gzip", post("Transfer-Encoding: gzip"), 400),
        (
            "TE chunked, gzip",
            post("Transfer-Encoding: chunked, gzip"),
            400,
        ),
        (
            "TE chunked twice",
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
            400,
        ),
        (
            "two Host",
            "GET / HTTP/1.1\r\nHost: app\r\nHost: other\r\n\r\n".into(),
            400,
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: app\r\nX-F: a\r\n b\r\n\r\n".into(),
            400,
        ),
        (
            "NUL",
            "GET / HTTP/1.1\r\nHost: app\r\nX-N: a\0b\r\n\r\n".into(),
            400,
        ),
        (
            "bare CR",
            "GET / HTTP/1.1\r\nHost: app\r\nX-C: a\rb\r\n\r\n".into(),
            400,
        ),
        (
            "bare LF",
            "GET / HTTP/1.1\r\nHost: app\nX-L: 1\r\n\r\n".into(),
            400,
        ),
        ("too many fields", many, 431),
        ("too many bytes", big, 431),
    ]
}

/// Delivers `raw` to `entry` cut at `cuts` and checks the answer is `status` with a reason, then
/// that the connection closes.
async fn refused_as(
    entry: SocketAddr,
    raw: &str,
    cuts: &[usize],
    pause: Duration,
    status: u16,
) -> Result<(), String> {
    let mut conn = RawConn::connect(entry).await.map_err(|e| e.to_string())?;
    // The proxy may answer and close before the last pieces are written: that is fine.
    let _ = conn.write_in_pieces(raw, cuts, pause).await;
    let resp = conn
        .read_response_within(false, T)
        .await
        .map_err(|e| format!("no response: {e:#}"))?;
    if resp.status != status || resp.header("shoal-proxy-error").is_none() {
        return Err(format!("got {resp:?}"));
    }
    conn.read_to_close(T)
        .await
        .map_err(|e| format!("the connection stayed open after the {status}: {e:#}"))?;
    Ok(())
}

#[tokio::test]
async fn every_bad_head_gets_the_same_answer_however_it_is_split() {
    let app = HttpBackend::echo().await;
    let proxy = proxy_to(app.addr(), MAX_HEADER_BYTES).await;
    let mut runs = tokio::task::JoinSet::new();
    let mut failures = Vec::new();
    for (what, raw, status) in bad_heads() {
        let head_end = raw.find("\r\n\r\n").map_or(raw.len(), |i| i + 4);
        let mut deliveries: Vec<(String, Vec<usize>, Duration)> =
            vec![("whole".into(), vec![], Duration::ZERO)];
        // Every offset of the head (and a few into the body).
        for cut in 1..(head_end + 4).min(raw.len()) {
            deliveries.push((format!("split at {cut}"), vec![cut], SHORT_PAUSE));
        }
        if raw.len() < 400 {
            deliveries.push((
                "one byte at a time".into(),
                (1..raw.len()).collect(),
                Duration::from_millis(1),
            ));
        }
        for cut in [1, head_end / 2, head_end - 1] {
            deliveries.push((
                format!("paused past detection at {cut}"),
                vec![cut],
                LONG_PAUSE,
            ));
        }
        for (name, entry) in entries(&proxy) {
            for (how, cuts, pause) in deliveries.clone() {
                let raw = raw.clone();
                runs.spawn(async move {
                    refused_as(entry, &raw, &cuts, pause, status)
                        .await
                        .map_err(|e| format!("{what}, {name}, {how}: {e}"))
                });
                // Bounded concurrency: the proxy's accept loop and this machine's two cores.
                while runs.len() >= 64 {
                    if let Some(Err(e)) = runs.join_next().await.map(Result::unwrap) {
                        failures.push(e);
                    }
                }
            }
        }
    }
    while let Some(r) = runs.join_next().await {
        if let Err(e) = r.unwrap() {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} deliveries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(app.heads(), 0, "a malformed request reached the app");
}

#[tokio::test]
async fn a_bad_head_pipelined_behind_a_good_request_is_refused_after_its_answer() {
    let app = HttpBackend::echo().await;
    let proxy = proxy_to(app.addr(), MAX_HEADER_BYTES).await;
    for (name, entry) in entries(&proxy) {
        let before = app.heads();
        let mut conn = RawConn::connect(entry).await.unwrap();
        conn.write(
            "GET /first HTTP/1.1\r\nHost: app\r\n\r\n\
             POST /second HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let first = conn.read_response(false).await.unwrap();
        assert_eq!(first.status, 200, "{name}: {first:?}");
        let second = conn.read_response(false).await.unwrap();
        assert_eq!(second.status, 400, "{name}: {second:?}");
        assert_eq!(
            second.header("shoal-proxy-error"),
            Some("malformed-request")
        );
        conn.read_to_close(T).await.unwrap();
        assert_eq!(
            app.heads(),
            before + 1,
            "{name}: only the first request reaches the app"
        );
        assert_eq!(app.last().uri.path(), "/first");
    }
}

#[tokio::test]
async fn an_absolute_form_target_wins_over_a_disagreeing_host() {
    let app = HttpBackend::echo().await;
    let proxy = proxy_to(app.addr(), MAX_HEADER_BYTES).await;
    for (name, entry) in entries(&proxy) {
        let mut conn = RawConn::connect(entry).await.unwrap();
        conn.write("GET http://app.example/x?y=1 HTTP/1.1\r\nHost: other.example\r\n\r\n")
            .await
            .unwrap();
        let resp = conn.read_response(false).await.unwrap();
        assert_eq!(resp.status, 200, "{name}: {resp:?}");
        let seen = app.last();
        assert_eq!(seen.header_all("host"), ["app.example"], "{name}");
        assert_eq!(seen.uri.to_string(), "/x?y=1", "{name}");
    }
}

#[tokio::test]
async fn upstream_response_heads_over_the_limit_are_always_a_502() {
    // The default limit (60 KiB); heads around and well past it, and one just under.
    let limit = 61_440;
    for (size, status) in [
        (60_000, 200),
        (62_000, 502),
        (70_000, 502),
        (90_000, 502),
        (107_000, 502),
        (150_000, 502),
    ] {
        let filler = size - 100;
        let response: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: {}\r\n\r\nok",
                "v".repeat(filler)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let upstream = TcpBackend::http_response(response).await;
        let proxy = proxy_to(upstream.addr(), limit).await;
        for (name, entry) in entries(&proxy) {
            let mut conn = RawConn::connect(entry).await.unwrap();
            conn.write("GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                .await
                .unwrap();
            let resp = conn.read_response_within(false, T).await.unwrap();
            assert_eq!(
                resp.status,
                status,
                "{name}: a {size}-byte upstream head: {:?}",
                resp.header("shoal-proxy-error")
            );
            if status == 502 {
                assert_eq!(
                    resp.header("shoal-proxy-error"),
                    Some("upstream-malformed-response")
                );
            }
        }
    }
}

#[tokio::test]
async fn http2_trickled_a_byte_at_a_time_or_paused_in_its_preface_is_still_http2() {
    let app = HttpBackend::echo().await;
    let proxy = proxy_to(app.addr(), MAX_HEADER_BYTES).await;
    for (name, entry) in entries(&proxy) {
        // Every byte in small pieces, paused between them.
        let client = shoal_tests::H2Client::connect_with(entry, true)
            .await
            .unwrap();
        let req = shoal_tests::client::request("GET", "http://app/trickle", None)
            .header("shoal-client-id", FORGED)
            .body(shoal_tests::client::full(""))
            .unwrap();
        let resp = client.send(req).await.unwrap();
        assert_eq!(resp.status, 200, "{name}");
        assert_eq!(app.last().uri.path(), "/trickle");
        assert_eq!(
            app.last().header("shoal-client-id"),
            None,
            "{name}: forged identity reached the app"
        );
    }

    // The preface, paused past the detection timeout after "PRI * HTTP/2.0\r\n", towards an
    // app that never answers: the proxy's own SETTINGS frame (type 4) answers, and no byte of it
    // reached the app.
    let silent = TcpBackend::start(|s| async move {
        let _keep = s;
        std::future::pending::<()>().await;
    })
    .await;
    let proxy = proxy_to(silent.addr(), MAX_HEADER_BYTES).await;
    for (name, entry) in entries(&proxy) {
        let mut conn = RawConn::connect(entry).await.unwrap();
        conn.write_in_pieces(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            &[16],
            LONG_PAUSE,
        )
        .await
        .unwrap();
        let settings = conn.read_until(&[0x04], T).await.unwrap();
        assert_eq!(settings.len(), 4, "{name}: {settings:?}");
    }
    assert_eq!(
        silent.accepted(),
        0,
        "the HTTP/2 preface was passed to the app as opaque bytes"
    );
}

#[tokio::test]
async fn a_port_declared_http_never_carries_opaque_bytes() {
    // The app listens on its port; the state says this proxy's own service speaks HTTP/1.1 there.
    let app = TcpBackend::echo().await;
    let state = format!(
        "services:\n  - name: web\n    port: 80\n    target_port: {}\n    protocol: http1\n    endpoints:\n      - address: \"{}\"\n",
        app.addr().port(),
        app.addr()
    );
    let declared = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .env("SHOAL_SERVICE_NAME", "web")
        .env("SHOAL_DETECT_TIMEOUT", format!("{}ms", DETECT.as_millis()))
        .state(&state)
        .start()
        .await;
    // Not HTTP at all: refused as HTTP (400), nothing reaches the app.
    let mut conn = RawConn::connect(declared.inbound()).await.unwrap();
    conn.write(b"\x00\x01 not http\r\n\r\n").await.unwrap();
    let resp = conn.read_response_within(false, T).await.unwrap();
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(resp.header("shoal-proxy-error"), Some("malformed-request"));
    // Silent past the detection timeout, then a request: still HTTP (the echo app would answer
    // the raw bytes with themselves, not with a response).
    let mut conn = RawConn::connect(declared.inbound()).await.unwrap();
    tokio::time::sleep(LONG_PAUSE).await;
    conn.write("GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let resp = conn.read_response_within(false, T).await;
    assert!(
        resp.as_ref().is_ok_and(|r| r.status == 502),
        "the echo app does not speak HTTP: the proxy's 502, got {resp:?}"
    );
    assert_eq!(app.accepted(), 1, "only the HTTP request reached the app");
}

// ---------------------------------------------------------------------------------------------
// Through the mesh: the made-up identity is replaced by the one the caller's proxy proved.

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";

#[tokio::test]
async fn through_the_mesh_a_slow_caller_cannot_forge_its_identity_permissive_or_strict() {
    for mode in ["permissive", "strict"] {
        let dir = TempDir::new("http-edge").unwrap();
        let ca = TestCa::new("mesh");
        let app = HttpBackend::echo().await;
        let web = ca
            .workload(WEB_ID)
            .write(dir.path(), "web", &[ca.root_pem()]);
        let server = ProxyBuilder::new()
            .inbound_explicit(app.addr())
            .identity(&web)
            .env("SHOAL_INBOUND_TLS_MODE", mode)
            .env("SHOAL_DETECT_TIMEOUT", format!("{}ms", DETECT.as_millis()))
            .start()
            .await;
        let client_files = ca
            .workload(CLIENT_ID)
            .write(dir.path(), "client", &[ca.root_pem()]);
        let state = shoal_tests::proxy::mesh_web_state(server.inbound(), WEB_ID);
        let client = ProxyBuilder::new()
            .outbound_explicit()
            .state(&state)
            .identity(&client_files)
            .env("SHOAL_DETECT_TIMEOUT", format!("{}ms", DETECT.as_millis()))
            .start()
            .await;

        // The calling app, slow and lying, through its own proxy.
        let raw = format!("GET /mesh HTTP/1.1\r\nHost: web\r\nshoal-client-id: {FORGED}\r\n\r\n");
        let mut conn = RawConn::connect(client.outbound()).await.unwrap();
        conn.write_in_pieces(&raw, &[1], LONG_PAUSE).await.unwrap();
        let resp = conn.read_response_within(false, T).await.unwrap();
        assert_eq!(resp.status, 200, "{mode}: {resp:?}");
        assert_eq!(
            app.last().header_all("shoal-client-id"),
            [CLIENT_ID],
            "{mode}"
        );

        // A plain caller, slow and lying, straight at the server's inbound port.
        let before = app.heads();
        let mut conn = RawConn::connect(server.inbound()).await.unwrap();
        conn.write_in_pieces(&raw, &[1], LONG_PAUSE).await.unwrap();
        match mode {
            "strict" => {
                // Plain text is refused: the connection closes, nothing reaches the app.
                conn.read_to_close(T).await.unwrap();
                assert_eq!(app.heads(), before, "strict: plain text reached the app");
            }
            _ => {
                let resp = conn.read_response_within(false, T).await.unwrap();
                assert_eq!(resp.status, 200, "{mode}: {resp:?}");
                assert_eq!(
                    app.last().header("shoal-client-id"),
                    None,
                    "{mode}: the forged identity reached the app"
                );
            }
        }
    }
}
