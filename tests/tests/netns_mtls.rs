//! Netns tier: mesh mTLS between two transparently captured sidecars.
//!
//! Two network namespaces, each a "pod" with a proxy set up the way Kubernetes would: `shoal-proxy
//! init` rules, the proxy running as its own uid, identity from certificate files signed by one
//! test CA. The client pod (10.200.0.2) runs only clients; the server pod (10.200.0.1) runs an app
//! that answers HTTP on :8080 with the `shoal-client-id` it was given, and echoes opaque TCP on
//! :9000. The server pod's inbound is strict. The test checks that
//!
//! - an unmodified HTTP call from the client pod to 10.200.0.1:8080 arrives with the caller's SPIFFE
//!   id (the header exists only when the server-side proxy terminated mTLS and verified the client
//!   certificate), and both proxies count the mTLS;
//! - opaque TCP to :9000 crosses the same way, to the original port, half-close included;
//! - plaintext that bypasses the client pod's proxy (sent as the proxy's uid, which init excludes)
//!   is refused by the strict server pod (403 `mtls-required`) and never reaches the app.
//!
//! Needs root and the tools `netns_capture` needs; otherwise prints `skipped: …` and passes.

use std::fs;
use std::path::Path;

use anyhow::{Result, ensure};
use shoal_tests::netns::{
    METRICS_TIMEOUT, PEER_IP, PROXY_UID, World, eventually, metric_sum, prerequisites,
    proxy_binary, with_log,
};
use shoal_tests::pki::TestCa;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
const HTTP_PORT: u16 = 8080;
const TCP_PORT: u16 = 9000;
/// Each proxy's admin listener, on the loopback of its own namespace.
const ADMIN_ADDR: &str = "127.0.0.1:15021";

/// The server pod's app: HTTP answers with the caller identity the proxy passed on; TCP echoes
/// what it read until end of file, prefixed, then closes.
const APP: &str = r#"
import http.server, socketserver, threading
class Http(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("client-id=" + self.headers.get("shoal-client-id", "none") + "\n").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print("http request from", self.client_address, flush=True)
    def log_message(self, *args):
        pass
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"pong:" + self.rfile.read())
socketserver.ThreadingTCPServer.allow_reuse_address = True
tcp = socketserver.ThreadingTCPServer(("0.0.0.0", 9000), Echo)
threading.Thread(target=tcp.serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Http).serve_forever()
"#;

/// A TCP client: sends `ping`, half-closes, prints everything it reads.
const TCP_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"ping")
s.shutdown(socket.SHUT_WR)
sys.stdout.write(s.makefile("rb").read().decode())
"#;

#[test]
fn transparent_sidecars_speak_mtls_and_the_strict_side_refuses_plaintext() -> Result<()> {
    if let Err(reason) = prerequisites() {
        eprintln!("skipped: needs root and iptables ({reason})");
        return Ok(());
    }
    let proxy = proxy_binary()?;
    let mut world = World::create("m")?;
    let proxy = world.runnable_by_proxy_uid(&proxy)?;
    let (client_pod, server_pod) = (world.pod.clone(), world.peer.clone());

    let ca = TestCa::new("netns-mesh-ca");
    let mut server_env = identity_env(&world, &ca, "server", SERVER_ID)?;
    server_env.push(("SHOAL_INBOUND_TLS_MODE", "strict".to_owned()));
    let mut client_env = identity_env(&world, &ca, "client", CLIENT_ID)?;
    client_env.push((
        "SHOAL_STATE_FILE",
        world_file(&world, "client-state.yaml", &client_state())?,
    ));

    for ns in [&client_pod, &server_pod] {
        world.init(ns, &proxy, &[])?;
    }
    fs::write(world.dir.join("app.py"), APP)?;
    fs::write(world.dir.join("tcp_client.py"), TCP_CLIENT)?;
    let app = {
        let mut cmd = world.in_ns(&server_pod, "python3");
        cmd.arg(world.dir.join("app.py"));
        cmd
    };
    world.spawn("app", app)?;
    world.spawn_proxy(&server_pod, "server-proxy", &proxy, &server_env)?;
    world.spawn_proxy(&client_pod, "client-proxy", &proxy, &client_env)?;
    // Loopback is never captured, so this reaches the app directly.
    world.wait_answering(
        "app",
        &server_pod,
        &format!("http://127.0.0.1:{HTTP_PORT}/"),
    )?;
    // `/ready` is 200 only once the proxy holds its certificate.
    let ready = format!("http://{ADMIN_ADDR}/ready");
    world.wait_answering("server-proxy", &server_pod, &ready)?;
    world.wait_answering("client-proxy", &client_pod, &ready)?;

    // HTTP: the app is called as if there were no mesh, and learns who called it.
    let url = format!("http://{PEER_IP}:{HTTP_PORT}/");
    let body = world.curl(&client_pod, &url)?;
    ensure!(
        body.trim() == format!("client-id={CLIENT_ID}"),
        "the app answered {body:?}: the call did not arrive over mTLS from the client pod's proxy"
    );

    // Opaque TCP to another port, half-close included.
    let echoed = world.output(
        "the TCP client",
        world
            .in_ns(&client_pod, "python3")
            .arg(world.dir.join("tcp_client.py"))
            .args([PEER_IP, &TCP_PORT.to_string()]),
    )?;
    ensure!(
        echoed == "pong:ping",
        "TCP through the mesh returned {echoed:?}, expected \"pong:ping\""
    );

    // Both proxies saw the mTLS: handshakes originated by one, requests terminated by the other.
    wait_metric(
        &mut world,
        "client-proxy",
        "shoal_outbound_tls_connections_total",
        &["result=\"ok\""],
        2.0,
    )?;
    wait_metric(
        &mut world,
        "server-proxy",
        "shoal_requests_total",
        &["direction=\"inbound\"", "tls=\"true\""],
        1.0,
    )?;

    // Plaintext that skips the client pod's proxy (its uid is excluded from capture) meets the
    // strict inbound: refused with 403 `mtls-required` (curl --fail reports the status), and the
    // app never sees it.
    let served_before = app_requests(&world);
    let plain = world.curl_as(&client_pod, &url, Some(PROXY_UID));
    ensure!(
        plain.as_ref().is_err_and(|e| e.to_string().contains("403")),
        "plaintext to the strict server pod was not refused with 403 mtls-required: {plain:?}"
    );
    wait_metric(
        &mut world,
        "server-proxy",
        "shoal_inbound_tls_refused_total",
        &["reason=\"plaintext\""],
        1.0,
    )?;
    ensure!(
        app_requests(&world) == served_before,
        "the refused plaintext request reached the app:\n{}",
        world.log("app")
    );
    Ok(())
}

/// The client pod's view of the mesh: the server pod's two ports, each one endpoint whose proxy
/// must prove SERVER_ID.
fn client_state() -> String {
    format!(
        r#"services:
  - name: server
    port: {HTTP_PORT}
    addresses: ["{PEER_IP}"]
    endpoints:
      - address: "{PEER_IP}:{HTTP_PORT}"
        identity: {SERVER_ID}
  - name: server-tcp
    port: {TCP_PORT}
    protocol: tcp
    addresses: ["{PEER_IP}"]
    endpoints:
      - address: "{PEER_IP}:{TCP_PORT}"
        identity: {SERVER_ID}
"#
    )
}

/// Certificate, key and trust bundle for `spiffe_id`, readable by the proxies' uid only, as the
/// `SHOAL_IDENTITY_*` settings plus the admin address.
fn identity_env(
    world: &World,
    ca: &TestCa,
    name: &str,
    spiffe_id: &str,
) -> Result<Vec<(&'static str, String)>> {
    let leaf = ca.workload(spiffe_id);
    Ok(vec![
        ("SHOAL_ADMIN_ADDR", ADMIN_ADDR.to_owned()),
        (
            "SHOAL_IDENTITY_CERT_FILE",
            world_file(world, &format!("{name}.crt"), &leaf.cert_pem)?,
        ),
        (
            "SHOAL_IDENTITY_KEY_FILE",
            world_file(world, &format!("{name}.key"), &leaf.key_pem)?,
        ),
        (
            "SHOAL_IDENTITY_TRUST_BUNDLE_FILE",
            world_file(world, &format!("{name}-bundle.pem"), ca.root_pem())?,
        ),
    ])
}

fn world_file(world: &World, name: &str, text: &str) -> Result<String> {
    Ok(path_string(&world.write_for_proxy(name, text)?))
}

fn path_string(path: &Path) -> String {
    path.display().to_string()
}

/// HTTP requests the app has logged.
fn app_requests(world: &World) -> usize {
    world.log("app").matches("http request from").count()
}

/// Waits until the sum of `name`'s series with `labels` on proxy `proxy` reaches `at_least`.
fn wait_metric(
    world: &mut World,
    proxy: &str,
    name: &str,
    labels: &[&str],
    at_least: f64,
) -> Result<()> {
    let ns = if proxy == "client-proxy" {
        world.pod.clone()
    } else {
        world.peer.clone()
    };
    let what = format!("{proxy}'s {name}{labels:?} to reach {at_least}");
    eventually(&what, METRICS_TIMEOUT, || {
        world.ensure_running(proxy)?;
        let text = world.curl(&ns, &format!("http://{ADMIN_ADDR}/metrics"))?;
        Ok((metric_sum(&text, name, labels) >= at_least).then_some(()))
    })
    .map_err(|e| with_log(e, proxy, &world.log(proxy)))
}
