//! Netns tier: the iptables rules of `shoal-proxy init` really capture a pod's traffic into the proxy.
//!
//! The test builds a small world it owns entirely, so no rule or packet touches the host: a "pod" network
//! namespace (an app, the proxy running as its own uid, init's rules) and a "peer" namespace (a remote
//! server and a remote client), joined by a veth pair 10.200.0.2 (pod) ↔ 10.200.0.1 (peer). It checks that
//!
//! - `init` twice leaves exactly one copy of each rule,
//! - the app's outbound call to the peer and the peer's inbound call to the app both still get their
//!   responses, and the proxy's `/metrics` counts them in the right direction (so they went through it),
//! - `init --uninstall` leaves the nat table as it was (no `SHOAL_` chain), and a second uninstall succeeds.
//!
//! It needs root, `ip`, `iptables`, `iptables-save`, `setpriv`, `curl` and `python3`; without them it prints
//! `skipped: needs root and iptables (…)` and passes. The proxy binary is `$SHOAL_PROXY_BIN` if set, else
//! `<target dir>/debug/shoal-proxy`, built once with cargo if it is missing.

use std::fs;
use std::process::Command;

use anyhow::{Result, ensure};
use shoal_tests::netns::{
    METRICS_TIMEOUT, PEER_IP, POD_IP, World, eventually, metric_sum, prerequisites, proxy_binary,
    with_log,
};

/// The app in the pod namespace.
const APP_PORT: u16 = 8080;
/// The server in the peer namespace the app calls.
const PEER_PORT: u16 = 8081;
const ADMIN_ADDR: &str = "127.0.0.1:15021";
const APP_BODY: &str = "hello from the app in the pod\n";
const PEER_BODY: &str = "hello from the peer\n";

#[test]
fn init_rules_capture_pod_traffic_through_the_proxy() -> Result<()> {
    if let Err(reason) = prerequisites() {
        eprintln!("skipped: needs root and iptables ({reason})");
        return Ok(());
    }
    let proxy = proxy_binary()?;
    let mut world = World::create("t")?;
    let proxy = world.runnable_by_proxy_uid(&proxy)?;
    setup_files(&world)?;
    let pod = world.pod.clone();

    // init twice, as a restarted init container would: the second run must not duplicate anything.
    let before = world.nat_rules(&pod)?;
    let first_run = world.init(&pod, &proxy, &[])?;
    let installed = world.nat_rules(&pod)?;
    world.init(&pod, &proxy, &[])?;
    let reinstalled = world.nat_rules(&pod)?;
    ensure!(
        installed == reinstalled,
        "a second init changed the nat table\nfirst:\n{}\nsecond:\n{}",
        installed.join("\n"),
        reinstalled.join("\n")
    );
    for rule in reinstalled.iter().filter(|r| r.starts_with("-A ")) {
        let copies = reinstalled.iter().filter(|r| *r == rule).count();
        ensure!(
            copies == 1,
            "rule {rule:?} appears {copies} times after two inits"
        );
    }
    for jump in [
        "-A PREROUTING -p tcp -j SHOAL_INBOUND",
        "-A OUTPUT -p tcp -j SHOAL_OUTPUT",
    ] {
        ensure!(
            reinstalled.iter().any(|r| r == jump),
            "jump {jump:?} missing after init (init printed {first_run:?}):\n{}",
            reinstalled.join("\n")
        );
    }

    // The proxy, the app and the remote server, each waited for with a deadline.
    spawn_servers(&mut world)?;
    world.spawn_proxy(
        &pod,
        "proxy",
        &proxy,
        &[("SHOAL_ADMIN_ADDR", ADMIN_ADDR.to_owned())],
    )?;
    wait_ready(&mut world)?;

    // Outbound: the app (root, so not excluded) calls the peer; the rules must send it through the proxy.
    let before_out = counters(&world, "outbound")?;
    let url = format!("http://{PEER_IP}:{PEER_PORT}/hello.txt");
    let body = world.curl(&pod, &url)?;
    ensure!(
        body == PEER_BODY,
        "outbound call to {url} returned {body:?}, expected {PEER_BODY:?}"
    );
    wait_counted(&mut world, "outbound", before_out)?;

    // Inbound: the peer calls the app at the pod's address; the rules must send it through the proxy.
    let before_in = counters(&world, "inbound")?;
    let url = format!("http://{POD_IP}:{APP_PORT}/hello.txt");
    let body = world.curl(&world.peer, &url)?;
    ensure!(
        body == APP_BODY,
        "inbound call to {url} returned {body:?}, expected {APP_BODY:?}"
    );
    wait_counted(&mut world, "inbound", before_in)?;

    // Uninstall removes exactly what init added; doing it again with nothing installed still succeeds.
    world.init(&pod, &proxy, &["--uninstall"])?;
    let after = world.nat_rules(&pod)?;
    ensure!(
        !after.iter().any(|r| r.contains("SHOAL_")),
        "SHOAL_ rules or chains left after --uninstall:\n{}",
        after.join("\n")
    );
    ensure!(
        after == before,
        "--uninstall did not restore the nat table\nbefore:\n{}\nafter:\n{}",
        before.join("\n"),
        after.join("\n")
    );
    world.init(&pod, &proxy, &["--uninstall"])?;
    Ok(())
}

fn setup_files(world: &World) -> Result<()> {
    for (sub, body) in [("app", APP_BODY), ("peer", PEER_BODY)] {
        fs::create_dir_all(world.dir.join(sub))?;
        fs::write(world.dir.join(sub).join("hello.txt"), body)?;
    }
    Ok(())
}

fn python(world: &World, ns: &str, port: u16, bind: &str, dir: &str) -> Command {
    let mut cmd = world.in_ns(ns, "python3");
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        bind,
        "--directory",
    ])
    .arg(world.dir.join(dir));
    cmd
}

/// The remote server in the peer namespace, and the app in the pod, on every address: the proxy
/// forwards inbound traffic to the original destination, the pod's IP.
fn spawn_servers(world: &mut World) -> Result<()> {
    let peer = python(world, &world.peer, PEER_PORT, PEER_IP, "peer");
    world.spawn("peer-server", peer)?;
    let app = python(world, &world.pod, APP_PORT, "0.0.0.0", "app");
    world.spawn("app", app)
}

/// Waits until the peer server, the app and the proxy all answer, failing fast if one exits.
fn wait_ready(world: &mut World) -> Result<()> {
    let (pod, peer) = (world.pod.clone(), world.peer.clone());
    world.wait_answering(
        "peer-server",
        &peer,
        &format!("http://{PEER_IP}:{PEER_PORT}/hello.txt"),
    )?;
    // Loopback is never captured, so this reaches the app directly.
    world.wait_answering(
        "app",
        &pod,
        &format!("http://127.0.0.1:{APP_PORT}/hello.txt"),
    )?;
    world.wait_answering("proxy", &pod, &format!("http://{ADMIN_ADDR}/ready"))
}

/// What the proxy has counted for `direction` so far.
fn counters(world: &World, direction: &str) -> Result<Counters> {
    let text = world.curl(&world.pod, &format!("http://{ADMIN_ADDR}/metrics"))?;
    let label = format!("direction=\"{direction}\"");
    Ok(Counters {
        requests: metric_sum(&text, "shoal_requests_total", &[&label]),
        connections: metric_sum(&text, "shoal_tcp_connections_opened_total", &[&label]),
    })
}

/// Waits until the proxy's counters for `direction` exceed `before`: the call went through it.
fn wait_counted(world: &mut World, direction: &str, before: Counters) -> Result<()> {
    let what = format!("the proxy to count the {direction} call (before: {before:?})");
    eventually(&what, METRICS_TIMEOUT, || {
        world.ensure_running("proxy")?;
        let now = counters(world, direction)?;
        Ok((now.requests > before.requests || now.connections > before.connections).then_some(()))
    })
    .map_err(|e| with_log(e, "proxy", &world.log("proxy")))
}

/// A direction's capture evidence: HTTP requests and TCP connections the proxy handled.
#[derive(Debug, Clone, Copy)]
struct Counters {
    requests: f64,
    connections: f64,
}
