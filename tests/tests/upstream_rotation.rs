//! An upstream that rotates its HTTP/2 connections: nginx closes each one after
//! `keepalive_requests` (1,000 by default) with a GOAWAY, and the streams a busy client opened
//! in the meantime were never processed. The proxy sends those again on a new connection
//! (RFC 9113 §8.7), so a client sees no failure at all — inbound (HTTP/2 in and out) and outbound
//! (HTTP/1.1 in, HTTP/2 to a `protocol: http2` service).
//!
//! Real nginx (Debian `nginx-light`) and h2load (`nghttp2-client`); `.ci/run` installs both, and
//! the test fails if either is missing.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use shoal_tests::process::{ChildProcess, TempDir, require_tool};
use shoal_tests::{ProxyBuilder, closed_port_addr, eventually};

const REQUESTS: u32 = 100_000;

/// nginx serving `ok` over h2c on `addr`, closing each connection after `keepalive_requests`.
struct Nginx {
    addr: SocketAddr,
    _child: ChildProcess,
    _dir: TempDir,
}

impl Nginx {
    async fn start(keepalive_requests: u32) -> Self {
        let nginx = require_tool("nginx", "nginx-light");
        let dir = TempDir::new("nginx").unwrap();
        let addr = closed_port_addr();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log stderr warn;\n\
             pid {d}/nginx.pid;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             server {{\n    listen {addr} http2;\n    keepalive_requests {keepalive_requests};\n\
             location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new(nginx);
        cmd.arg("-p").arg(dir.path()).arg("-c").arg(&conf_path);
        let child = ChildProcess::spawn("nginx", cmd).unwrap();
        eventually(Duration::from_secs(10), "nginx listening", || async move {
            tokio::net::TcpStream::connect(addr).await.map(|_| ())
        })
        .await;
        Self {
            addr,
            _child: child,
            _dir: dir,
        }
    }
}

/// Runs h2load off the test's runtime (it blocks until done).
async fn run_h2load(args: &[&str]) -> (u64, u64, u64) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || h2load(&args))
        .await
        .unwrap()
}

/// What h2load reported: (succeeded, failed + errored + timed out, 2xx).
fn h2load(args: &[String]) -> (u64, u64, u64) {
    let out = Command::new(require_tool("h2load", "nghttp2-client"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "h2load failed: {text}");
    let number_before = |line: &str, what: &str| -> u64 {
        line.split(',')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(what)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no `{what}` in {line:?}: {text}"))
    };
    let requests = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no requests line: {text}"));
    let statuses = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let failed = number_before(requests, "failed")
        + number_before(requests, "errored")
        + number_before(requests, "timeout");
    (
        number_before(requests, "succeeded"),
        failed,
        number_before(statuses, "2xx"),
    )
}

/// Requests re-sent after a GOAWAY, counted with the requests' own `labels` (docs/metrics.md).
async fn resent(proxy: &shoal_tests::Proxy, labels: &[(&str, &str)]) -> f64 {
    let mut labels = labels.to_vec();
    labels.push(("reason", "goaway"));
    proxy
        .metric("shoal_upstream_requests_resent_total", &labels)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_rotating_every_1000_streams_fails_no_request() {
    let nginx = Nginx::start(1000).await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(nginx.addr)
        .start()
        .await;
    let url = format!("http://{}/", proxy.inbound());
    let n = REQUESTS.to_string();
    let (ok, failed, ok_status) = run_h2load(&["-n", &n, "-c", "4", "-m", "16", &url]).await;
    assert_eq!(
        (ok, failed, ok_status),
        (u64::from(REQUESTS), 0, u64::from(REQUESTS)),
        "(succeeded, failed, 2xx) through the proxy while nginx rotated its connections every 1,000 streams; proxy logs:\n{}",
        proxy.logs()
    );
    // The rotation raced requests, and those were sent again rather than failed.
    let inbound = [
        ("direction", "inbound"),
        ("service", "unknown"),
        ("tls", "false"),
    ];
    assert!(
        resent(&proxy, &inbound).await > 0.0,
        "no request needed re-sending: the test did not exercise the race"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_to_an_h2_service_rotating_its_connections_fails_no_request() {
    let nginx = Nginx::start(1000).await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            "services:\n  - name: app\n    port: 80\n    hosts: [app.example]\n    protocol: http2\n    endpoints: [{{ address: \"{}\" }}]\n",
            nginx.addr
        ))
        .start()
        .await;
    let url = format!("http://{}/", proxy.outbound());
    let n = REQUESTS.to_string();
    let (ok, failed, ok_status) = run_h2load(&[
        "--h1",
        "-H",
        ":authority: app.example",
        "-n",
        &n,
        "-c",
        "32",
        &url,
    ])
    .await;
    assert_eq!(
        (ok, failed, ok_status),
        (u64::from(REQUESTS), 0, u64::from(REQUESTS)),
        "(succeeded, failed, 2xx) through the proxy while nginx rotated its connections every 1,000 streams; proxy logs:\n{}",
        proxy.logs()
    );
    let outbound = [
        ("direction", "outbound"),
        ("service", "app.default"),
        ("route", "default"),
        ("backend", "app.default"),
    ];
    assert!(
        resent(&proxy, &outbound).await > 0.0,
        "no request needed re-sending: the test did not exercise the race"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_bodies_are_sent_again_too() {
    // POSTs with a 1 KiB body (gRPC calls and uploads always carry one): the proxy keeps the body
    // as it streams, so a request the upstream never processed goes again, body and all.
    let nginx = Nginx::start(1000).await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(nginx.addr)
        .start()
        .await;
    let dir = TempDir::new("h2load-body").unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'x'; 1024]).unwrap();
    let url = format!("http://{}/", proxy.inbound());
    let n = (REQUESTS / 2).to_string();
    let (ok, failed, ok_status) = run_h2load(&[
        "-d",
        &body.to_string_lossy(),
        "-n",
        &n,
        "-c",
        "4",
        "-m",
        "16",
        &url,
    ])
    .await;
    assert_eq!(
        (ok, failed, ok_status),
        (u64::from(REQUESTS / 2), 0, u64::from(REQUESTS / 2)),
        "(succeeded, failed, 2xx) for POSTs with bodies while nginx rotated its connections; proxy logs:\n{}",
        proxy.logs()
    );
    assert!(
        resent(&proxy, &[("direction", "inbound")]).await > 0.0,
        "no request needed re-sending: the test did not exercise the race"
    );
}
