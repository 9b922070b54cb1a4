//! The control plane killed (SIGKILL) under steady traffic through a discovery-fed proxy: not one
//! request fails while it is away, the proxy reports the stream down, and after a restart on the
//! same data directory the store is intact, the proxy resyncs and new changes reach it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shoal_tests::control_plane::{
    ControlPlane, ControlPlaneBuilder, MeshClient, route_yaml, service_yaml,
};
use shoal_tests::{HttpBackend, backend::text_response, eventually};
use tokio::sync::Mutex;

async fn named(name: &'static str) -> HttpBackend {
    HttpBackend::respond(move |_| text_response(200, name)).await
}

/// What the traffic loop saw.
#[derive(Debug, Default)]
struct Seen {
    ok_v1: u64,
    ok_v2: u64,
    failures: Vec<String>,
    /// The body of the latest successful answer.
    last_body: String,
}

/// Sends `GET / Host: web` back to back until `stop`; every tenth request on a new connection.
async fn traffic(proxy: std::net::SocketAddr, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let mut client = MeshClient::new(proxy);
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if n.is_multiple_of(10) {
            client.reconnect();
        }
        let result = client.body("web").await;
        let mut s = seen.lock().await;
        match &result {
            Ok(body) if body == "v1" => s.ok_v1 += 1,
            Ok(body) if body == "v2" => s.ok_v2 += 1,
            Ok(body) => s.failures.push(format!("unexpected body {body:?}")),
            Err(e) => s.failures.push(format!("{e:#}")),
        }
        if let Ok(body) = result {
            s.last_body = body;
        }
        drop(s);
        // Steady, not flat out: a few hundred requests per second.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every stored service, registration and route as `shoalctl get -o json` prints them (with their
/// versions).
async fn stored_resources(cp: &ControlPlane) -> String {
    let mut all = String::new();
    for kind in ["services", "registrations", "routes"] {
        let out = cp.ctl(&["get", kind, "-o", "json"], None).await.success();
        all.push_str(&out.stdout);
    }
    all
}

async fn total_ok(seen: &Mutex<Seen>) -> u64 {
    let s = seen.lock().await;
    s.ok_v1 + s.ok_v2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_under_traffic_then_restarted_from_disk() {
    let v1 = named("v1").await;
    let v2 = named("v2").await;
    let mut cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&format!(
        "{}---\n{}",
        service_yaml("web", 80, &[v1.addr()]),
        service_yaml("web-v2", 80, &[v2.addr()])
    ))
    .await;
    // The route exists (v1 only) so that the proxy already holds it across the outage.
    cp.apply(&route_yaml("web", &[("web", 100), ("web-v2", 0)]))
        .await;
    let proxy = cp.proxy_builder("outage-proxy").start().await;
    let mut warm = MeshClient::new(proxy.outbound());
    assert_eq!(warm.body("web").await.unwrap(), "v1");
    cp.wait_proxy_state("outage-proxy", "SYNCED", Duration::from_secs(5))
        .await;
    let before = stored_resources(&cp).await;
    assert!(before.contains("\"resource_version\""), "{before}");

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let loop_task = tokio::spawn(traffic(proxy.outbound(), seen.clone(), stop.clone()));
    eventually(Duration::from_secs(5), "traffic flowing", || async {
        let ok = total_ok(&seen).await;
        if ok >= 20 { Ok(()) } else { Err(ok) }
    })
    .await;

    // SIGKILL: no goodbye on the stream, no shutdown.
    cp.kill();
    let killed_at = Instant::now();
    let ok_at_kill = total_ok(&seen).await;
    let config = eventually(
        Duration::from_secs(5),
        "the proxy reporting discovery disconnected",
        || async {
            let c = proxy.config().await;
            if c["discovery"]["connected"] == false {
                Ok(c)
            } else {
                Err(c["discovery"].clone())
            }
        },
    )
    .await;
    assert!(
        config["discovery"]["last_error"].is_string(),
        "the stream error is shown: {config}"
    );
    // About 2 s of outage with traffic running.
    eventually(
        Duration::from_secs(8),
        "2 s of outage with traffic",
        || async {
            let ok = total_ok(&seen).await - ok_at_kill;
            if killed_at.elapsed() >= Duration::from_secs(2) && ok >= 50 {
                Ok(())
            } else {
                Err(ok)
            }
        },
    )
    .await;
    {
        let s = seen.lock().await;
        assert!(
            s.failures.is_empty(),
            "requests failed while the control plane was away: {:?}",
            s.failures
        );
        assert_eq!(s.ok_v2, 0, "the last state (all v1) kept serving");
    }
    let c = proxy.config().await;
    assert_eq!(c["discovery"]["connected"], false, "{c}");
    assert_eq!(
        c["state"]["services"].as_array().map(Vec::len),
        Some(2),
        "the last state is kept: {c}"
    );

    // Restart on the same data dir (and addresses): everything is back with the same versions.
    cp.restart().await.expect("restart the control plane");
    let after = stored_resources(&cp).await;
    assert_eq!(after, before, "the store after the restart differs");

    // The proxy reconnects (backoff doubles from 100 ms, so within a few seconds) and resyncs.
    eventually(Duration::from_secs(12), "the proxy reconnected", || async {
        let c = proxy.config().await;
        if c["discovery"]["connected"] == true {
            Ok(())
        } else {
            Err(c["discovery"].clone())
        }
    })
    .await;
    let row = cp
        .wait_proxy_state("outage-proxy", "SYNCED", Duration::from_secs(5))
        .await;
    let (synced, total) = row
        .resources
        .trim_end_matches(" synced")
        .split_once('/')
        .unwrap();
    assert_eq!(synced, total, "{row:?}");
    assert_ne!(total, "0", "the proxy resubscribed: {row:?}");

    // A change made after the restart reaches the proxy: traffic shifts to v2.
    let shift = cp
        .apply(&route_yaml("web", &[("web", 0), ("web-v2", 100)]))
        .await;
    eventually(Duration::from_secs(2), "traffic on v2", || async {
        let s = seen.lock().await;
        if s.last_body == "v2" {
            Ok(())
        } else {
            Err(s.last_body.clone())
        }
    })
    .await;
    eprintln!(
        "shift seen {:?} after shoalctl exited",
        shift.exited_at.elapsed()
    );
    // From then on everything goes to v2.
    let (v1_at_shift, v2_at_shift) = {
        let s = seen.lock().await;
        (s.ok_v1, s.ok_v2)
    };
    eventually(Duration::from_secs(5), "50 more answers", || async {
        let s = seen.lock().await;
        if s.ok_v2 >= v2_at_shift + 50 {
            Ok(())
        } else {
            Err(s.ok_v2)
        }
    })
    .await;
    assert_eq!(
        seen.lock().await.ok_v1,
        v1_at_shift,
        "v1 answered after the shift"
    );
    stop.store(true, Ordering::Relaxed);
    loop_task.await.unwrap();
    let s = seen.lock().await;
    assert!(
        s.failures.is_empty(),
        "failed requests during the outage, restart or resync: {:?}",
        s.failures
    );
    assert!(s.ok_v2 > 0);
    eprintln!("requests: {} v1, {} v2, 0 failed", s.ok_v1, s.ok_v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_started_while_the_control_plane_is_down_syncs_once_it_is_up() {
    let v1 = named("v1").await;
    let fallback = named("fallback").await;
    let mut cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&service_yaml("web", 80, &[v1.addr()])).await;
    cp.kill();
    // Unknown authorities (and `web` while nobody can say what it is) go to the outbound target.
    let proxy = cp
        .proxy_builder("late-proxy")
        .outbound_target(fallback.addr())
        .env("SHOAL_DISCOVERY_TIMEOUT", "200ms")
        .start()
        .await;
    let mut client = MeshClient::new(proxy.outbound());
    assert_eq!(client.body("web").await.unwrap(), "fallback");
    assert_eq!(proxy.config().await["discovery"]["connected"], false);

    cp.restart().await.expect("restart the control plane");
    // The proxy reconnects, re-asks for `web` and routes it.
    eventually(Duration::from_secs(12), "`web` routed to v1", || async {
        let mut c = MeshClient::new(proxy.outbound());
        match c.body("web").await {
            Ok(b) if b == "v1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    cp.wait_proxy_state("late-proxy", "SYNCED", Duration::from_secs(5))
        .await;
}
