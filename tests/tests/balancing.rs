//! Load balancing across a service's endpoints (P2C over peak-EWMA latency, the default): real
//! HTTP backends, one of them ten times slower than its peers, behind a real proxy.
//!
//! - The slow endpoint gets well under its 1/N share (round robin would give it exactly 1/N).
//! - `/config` shows what the balancer learnt per endpoint, and a state update that keeps an
//!   endpoint keeps what was learnt about it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use shoal_tests::backend::text_response;
use shoal_tests::{H1Client, HttpBackend, Proxy, ProxyBuilder, eventually};

const FAST: Duration = Duration::from_millis(5);
const SLOW: Duration = Duration::from_millis(50);
const T: Duration = Duration::from_secs(10);

/// A backend that answers `200 <name>` after `delay`.
async fn backend(name: &'static str, delay: Duration) -> HttpBackend {
    HttpBackend::start(move |_| async move {
        tokio::time::sleep(delay).await;
        text_response(200, name)
    })
    .await
}

fn state(endpoints: &[SocketAddr]) -> String {
    let mut s = String::from("services:\n  - name: web\n    port: 80\n    endpoints:\n");
    for e in endpoints {
        s.push_str(&format!("      - address: \"{e}\"\n"));
    }
    s
}

/// Sends `n` requests to `web` through the outbound listener, 8 at a time, and counts the
/// answers per backend name.
async fn spread(proxy: &Proxy, n: usize) -> HashMap<String, usize> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let addr = proxy.outbound();
        tasks.spawn(async move {
            let mut client = H1Client::connect(addr).await.unwrap();
            let mut seen = Vec::new();
            for _ in (worker..n).step_by(8) {
                let resp = client.get("web", "/").await.unwrap();
                assert_eq!(resp.status, 200, "{resp:?}");
                seen.push(resp.text());
            }
            seen
        });
    }
    let mut counts = HashMap::new();
    while let Some(seen) = tasks.join_next().await {
        for name in seen.unwrap() {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
}

/// The balancer's view of `web` in `/config`: address → (in flight, latency estimate in ms).
async fn learnt(proxy: &Proxy) -> HashMap<String, Option<f64>> {
    let config = proxy.config().await;
    let services = config["state"]["services"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let web = services
        .iter()
        .find(|s| s["name"] == "web")
        .expect("web in /config");
    assert_eq!(web["load_balancer"]["algorithm"], "p2c_ewma", "{web}");
    web["load_balancer"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_string(),
                e["rtt_estimate_ms"].as_f64(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_ten_times_slower_endpoint_gets_well_under_its_share_and_updates_keep_what_was_learnt() {
    let fast = [
        backend("a", FAST).await,
        backend("b", FAST).await,
        backend("c", FAST).await,
    ];
    let slow = backend("slow", SLOW).await;
    let mut endpoints: Vec<SocketAddr> = fast.iter().map(HttpBackend::addr).collect();
    endpoints.push(slow.addr());
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&state(&endpoints))
        .start()
        .await;

    let n = 800;
    let counts = spread(&proxy, n).await;
    let to_slow = counts.get("slow").copied().unwrap_or(0);
    // Round robin: n/4 = 200. P2C-EWMA: the slow endpoint is tried, learnt, then mostly avoided.
    assert!(
        to_slow < n / 10,
        "the slow endpoint got {to_slow} of {n}: {counts:?}"
    );
    for name in ["a", "b", "c"] {
        assert!(
            counts.get(name).copied().unwrap_or(0) > n / 5,
            "{name}: {counts:?}"
        );
    }

    // What was learnt is visible, and survives an update that keeps the endpoints (one added).
    let before = learnt(&proxy).await;
    let slow_key = slow.addr().to_string();
    assert!(before[&slow_key].is_some_and(|ms| ms >= 20.0), "{before:?}");
    let extra = backend("d", FAST).await;
    endpoints.push(extra.addr());
    let version = proxy.config().await["sync"]["version"].as_u64().unwrap();
    std::fs::write(proxy.state_path(), state(&endpoints)).unwrap();
    eventually(T, "the updated state to be served", || async {
        let v = proxy.config().await["sync"]["version"].as_u64().unwrap();
        if v > version { Ok(()) } else { Err(v) }
    })
    .await;
    let after = learnt(&proxy).await;
    assert_eq!(after.len(), 5, "{after:?}");
    assert!(
        after[&slow_key].is_some_and(|ms| ms >= 10.0),
        "the slow endpoint's estimate was reset by the update: {after:?}"
    );
    // A new endpoint starts from its peers' mean estimate, so it is tried at once.
    let fresh = after[&extra.addr().to_string()].expect("a new endpoint's estimate");
    let peers: Vec<f64> = endpoints[..4]
        .iter()
        .filter_map(|e| after[&e.to_string()])
        .collect();
    let mean = peers.iter().sum::<f64>() / peers.len() as f64;
    assert!(
        (fresh - mean).abs() < mean / 2.0,
        "{fresh} vs the peers' mean {mean}: {after:?}"
    );
    let counts = spread(&proxy, 200).await;
    assert!(
        counts.get("d").copied().unwrap_or(0) > 0,
        "the new endpoint got nothing: {counts:?}"
    );
}
