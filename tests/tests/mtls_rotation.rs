//! Certificate rotation under steady traffic through two proxies, with file identities (re-read
//! every 2 s when they change): not one request may fail.
//!
//! (a) The server's leaf is replaced by a new one from the same CA. (b) The root is rotated the
//! way the control plane does it: bundles holding old + new roots on both proxies (wait until
//! both loaded them), then both leaves from the new root, then bundles with only the new root.
//! Every step is awaited on `/config`, never on time. The traffic mixes plain HTTP requests
//! (multiplexed on the proxies' pooled HTTP/2 mesh connection) and WebSocket sessions, each of
//! which needs a fresh mTLS handshake, so the new certificates and roots are really used.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use shoal_tests::backend::{echo_response, websocket_echo};
use shoal_tests::client::{AbortOnDrop, empty};
use shoal_tests::pki::{self, Leaf, TestCa, Validity, write_atomically};
use shoal_tests::process::TempDir;
use shoal_tests::{H1Client, HttpBackend, Proxy, ProxyBuilder, eventually};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const T: Duration = Duration::from_secs(10);
/// How long a proxy may take to pick up changed files (polled every 2 s; generous for CI).
const RELOAD: Duration = Duration::from_secs(20);

/// Seconds since the epoch of a rcgen `date_time_ymd(year, 1, 1)`.
fn jan_first(year: i32) -> u64 {
    rcgen::date_time_ymd(year, 1, 1).unix_timestamp() as u64
}

/// Waits until `/config`'s identity shows `roots` trusted roots and a leaf expiring at
/// `not_after` (Unix seconds).
async fn wait_identity(proxy: &Proxy, who: &str, roots: u64, not_after: u64) {
    eventually(
        RELOAD,
        &format!("{who}: {roots} roots, leaf until {not_after}"),
        || async {
            let identity = proxy.config().await["identity"].clone();
            let ok = identity["trust_roots"] == roots
                && identity["not_after_unix_seconds"] == not_after
                && identity["last_error"].is_null();
            if ok { Ok(()) } else { Err(identity) }
        },
    )
    .await
}

/// Requests and WebSocket sessions in a loop until stopped; every failure is kept.
struct Traffic {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Traffic {
    fn start(entry: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, d, f) = (stop.clone(), done.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let mut i = 0usize;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let result = if i.is_multiple_of(4) {
                    websocket_once(entry, i).await
                } else {
                    request_once(entry, i).await
                };
                if let Err(e) = result {
                    f.lock().unwrap().push(format!("#{i}: {e}"));
                }
                d.fetch_add(1, Ordering::SeqCst);
                // Pacing, not waiting for anything: ~100 exchanges a second at most.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self {
            stop,
            done,
            failures,
            task: Some(task),
        }
    }

    /// Waits until `n` more exchanges completed (traffic kept flowing after a step).
    async fn wait_more(&self, n: usize, what: &str) {
        let target = self.done.load(Ordering::SeqCst) + n;
        eventually(T, &format!("{n} more exchanges {what}"), || async {
            let done = self.done.load(Ordering::SeqCst);
            if done >= target { Ok(()) } else { Err(done) }
        })
        .await
    }

    /// Stops the loop; returns how many exchanges ran and the failures.
    async fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let task = self.task.take().unwrap();
        tokio::time::timeout(T, task)
            .await
            .expect("the traffic loop did not stop")
            .expect("the traffic loop panicked");
        let failures = self.failures.lock().unwrap().clone();
        (self.done.load(Ordering::SeqCst), failures)
    }
}

async fn request_once(entry: SocketAddr, i: usize) -> Result<(), String> {
    let resp = tokio::time::timeout(T, async {
        let mut c = H1Client::connect(entry).await?;
        c.get("web", &format!("/steady/{i}")).await
    })
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| format!("{e:#}"))?;
    if resp.status != 200 {
        return Err(format!("status {}: {}", resp.status, resp.text()));
    }
    Ok(())
}

async fn websocket_once(entry: SocketAddr, i: usize) -> Result<(), String> {
    tokio::time::timeout(T, async {
        let tcp = TcpStream::connect(entry).await.map_err(|e| e.to_string())?;
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://web/ws/{i}"), tcp)
            .await
            .map_err(|e| format!("WebSocket handshake: {e}"))?;
        let text = format!("ws {i}");
        ws.send(Message::text(text.clone()))
            .await
            .map_err(|e| e.to_string())?;
        match ws.next().await {
            Some(Ok(m)) if m == Message::text(text.clone()) => {}
            other => return Err(format!("WebSocket echo: {other:?}")),
        }
        let _ = ws.close(None).await;
        Ok(())
    })
    .await
    .map_err(|_| "WebSocket timed out".to_string())?
}

/// A raw mTLS request to the server proxy: proves which leaf it presents (exactly `server`,
/// chaining to `root`) and that it accepts `client`.
async fn raw_request(
    addr: SocketAddr,
    client: &Leaf,
    root: &str,
    server: &Leaf,
) -> Result<u16, String> {
    let config = pki::client_config(Some(client), &[root], server, b"h2", false);
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            ServerName::try_from(pki::identity_sni(WEB_ID)).unwrap(),
            tcp,
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(|e| format!("HTTP/2: {e}"))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let req = http::Request::get("http://web/raw").body(empty()).unwrap();
    let resp = tokio::time::timeout(T, sender.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    Ok(resp.status().as_u16())
}

#[tokio::test]
async fn leaf_and_root_rotation_under_traffic_fail_no_request() {
    let dir = TempDir::new("mtls-rotation").unwrap();
    let old = TestCa::new("root-1");
    let new = TestCa::new("root-2");
    let app = HttpBackend::respond(|r| {
        if r.header("upgrade").is_some() {
            websocket_echo(r)
        } else {
            echo_response(r)
        }
    })
    .await;

    let web1 = old.issue(WEB_ID, Validity::Until(2040));
    let web_files = web1.write(dir.path(), "web", &[old.root_pem()]);
    let server = ProxyBuilder::new()
        .inbound_explicit(app.addr())
        .identity(&web_files)
        .env("SHOAL_INBOUND_TLS_MODE", "strict")
        .start()
        .await;
    let client1 = old.issue(CLIENT_ID, Validity::Until(2040));
    let client_files = client1.write(dir.path(), "client", &[old.root_pem()]);
    let state = shoal_tests::proxy::mesh_web_state(server.inbound(), WEB_ID);
    let client = ProxyBuilder::new()
        .outbound_explicit()
        .state(&state)
        .identity(&client_files)
        .start()
        .await;
    wait_identity(&server, "server", 1, jan_first(2040)).await;
    wait_identity(&client, "client", 1, jan_first(2040)).await;

    let traffic = Traffic::start(client.outbound());
    traffic.wait_more(20, "before any rotation").await;

    // (a) A new leaf for the server from the same CA.
    let web2 = old.issue(WEB_ID, Validity::Until(2041));
    web2.overwrite(&web_files);
    wait_identity(&server, "server after leaf renewal", 1, jan_first(2041)).await;
    traffic.wait_more(20, "after the leaf renewal").await;
    assert_eq!(
        raw_request(server.inbound(), &client1, old.root_pem(), &web2).await,
        Ok(200),
        "the server does not present its renewed leaf"
    );

    // (b) Root rotation. 1: both trust old + new.
    let both = [old.root_pem(), new.root_pem()].concat();
    write_atomically(&web_files.trust_bundle, &both);
    write_atomically(&client_files.trust_bundle, &both);
    wait_identity(&server, "server trusting both roots", 2, jan_first(2041)).await;
    wait_identity(&client, "client trusting both roots", 2, jan_first(2040)).await;
    traffic.wait_more(20, "with both roots").await;

    // 2: both leaves from the new root.
    let web3 = new.issue(WEB_ID, Validity::Until(2042));
    let client3 = new.issue(CLIENT_ID, Validity::Until(2042));
    web3.overwrite(&web_files);
    client3.overwrite(&client_files);
    wait_identity(&server, "server with a new-root leaf", 2, jan_first(2042)).await;
    wait_identity(&client, "client with a new-root leaf", 2, jan_first(2042)).await;
    traffic.wait_more(20, "with new-root leaves").await;

    // 3: only the new root.
    write_atomically(&web_files.trust_bundle, new.root_pem());
    write_atomically(&client_files.trust_bundle, new.root_pem());
    wait_identity(
        &server,
        "server trusting only the new root",
        1,
        jan_first(2042),
    )
    .await;
    wait_identity(
        &client,
        "client trusting only the new root",
        1,
        jan_first(2042),
    )
    .await;
    traffic
        .wait_more(20, "after the old root was dropped")
        .await;

    let (done, failures) = traffic.stop().await;
    let handshakes = client
        .metric("shoal_outbound_tls_connections_total", &[("result", "ok")])
        .await;
    eprintln!(
        "rotation: {done} exchanges ({} WebSocket sessions), {handshakes} mTLS handshakes, {} failed",
        done / 4,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {done} exchanges failed: {failures:#?}",
        failures.len()
    );
    assert!(done >= 100, "only {done} exchanges ran");
    assert_eq!(
        client
            .metric(
                "shoal_outbound_tls_connections_total",
                &[("result", "failed")]
            )
            .await,
        0.0
    );
    // Every WebSocket session needed its own handshake: the new material was really used.
    assert!(
        handshakes >= (done / 4) as f64 - 1.0,
        "{handshakes} mTLS handshakes for {} WebSocket sessions",
        done / 4
    );

    // The server now presents the new-root leaf and accepts new-root clients...
    assert_eq!(
        raw_request(server.inbound(), &client3, new.root_pem(), &web3).await,
        Ok(200)
    );
    // ...and no longer trusts the old root.
    let refused = raw_request(server.inbound(), &client1, new.root_pem(), &web3).await;
    assert!(
        refused.is_err(),
        "a client from the dropped root was served: {refused:?}"
    );
    let expiry = server
        .metric("shoal_identity_certificate_expiry_seconds", &[])
        .await;
    assert!(expiry > 0.0, "expiry gauge {expiry}");
}
