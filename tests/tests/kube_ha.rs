//! High availability in Kubernetes mode: two real control planes on one fake API server serve the same policies
//! (a proxy connected to each routes alike), exactly one holds the Lease `shoal-control-plane` and runs CA
//! rotation (`shoal_cp_leader`, the Lease's holder), and when it dies the other takes the Lease over within the
//! lease's duration.

use std::time::Duration;

use serde_json::json;
use shoal_tests::control_plane::{ControlPlane, MeshClient};
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::kube_mesh::{TOKEN, backend_service, control_plane, shoal};
use shoal_tests::process::TempDir;
use shoal_tests::wait::eventually;

/// Lease duration (15 s) plus a few rounds (2 s each) and room for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(45);

async fn leader(cp: &ControlPlane) -> f64 {
    cp.metric("shoal_cp_leader", &[]).await
}

/// Waits until 10 requests through `client` to `web` are all answered by `only`.
async fn wait_all(client: &mut MeshClient, only: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut answers = Vec::new();
    while tokio::time::Instant::now() < deadline {
        answers.clear();
        for _ in 0..10 {
            answers.push(client.body("web").await.unwrap_or_else(|e| e.to_string()));
        }
        if answers.iter().all(|a| a == only) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("web never answered by {only} only: {answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_the_same_routes_and_one_holds_the_lease() {
    let kube = FakeKube::start(TOKEN).await;
    let _web = backend_service(&kube, "web", "10.96.0.10").await;
    let _v1 = backend_service(&kube, "web-v1", "10.96.0.11").await;
    kube.apply(shoal(
        "Route",
        "web",
        json!({"parent_service": "web", "rules": [{"backends": [{"service": "web-v1", "weight": 1}]}]}),
    ));
    let (dir_a, dir_b) = (TempDir::new("ha-a").unwrap(), TempDir::new("ha-b").unwrap());
    let mut a = control_plane(&kube, &dir_a, &[]).await;
    let mut b = control_plane(&kube, &dir_b, &[]).await;

    // A proxy on each replica: the same route.
    let proxy_a = a.proxy_builder("proxy-a").start().await;
    let proxy_b = b.proxy_builder("proxy-b").start().await;
    let mut client_a = MeshClient::new(proxy_a.outbound());
    let mut client_b = MeshClient::new(proxy_b.outbound());
    wait_all(&mut client_a, "web-v1").await;
    wait_all(&mut client_b, "web-v1").await;
    let (config_a, config_b) = (proxy_a.config().await, proxy_b.config().await);
    assert_eq!(
        config_a["state"]["routes"], config_b["state"]["routes"],
        "both replicas push the same routes"
    );

    // Exactly one holds the Lease, and the Lease names it.
    let (first_is_a, pid) = eventually(TAKEOVER, "one leader", || async {
        match (leader(&a).await, leader(&b).await) {
            (1.0, 0.0) => Ok((true, a.pid())),
            (0.0, 1.0) => Ok((false, b.pid())),
            other => Err(other),
        }
    })
    .await;
    let lease = kube.lease("shoal-system", "shoal-control-plane").unwrap();
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    assert!(
        holder.ends_with(&format!("_{pid}")),
        "{holder} is not {pid}"
    );
    // It stays so over several rounds: the other does not take a live Lease.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let both = (leader(&a).await, leader(&b).await);
    assert_eq!(both, if first_is_a { (1.0, 0.0) } else { (0.0, 1.0) });

    // The holder dies without giving the Lease up: the other takes it over.
    let (dead, survivor) = if first_is_a {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    dead.kill();
    eventually(TAKEOVER, "the survivor takes the Lease", || async {
        let holds = leader(survivor).await;
        if holds == 1.0 { Ok(()) } else { Err(holds) }
    })
    .await;
    survivor
        .wait_for_log(Duration::from_secs(5), "the takeover", |l| {
            l.contains("lease acquired")
        })
        .await;
    let lease = kube.lease("shoal-system", "shoal-control-plane").unwrap();
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap();
    assert!(holder.ends_with(&format!("_{}", survivor.pid())), "{lease}");
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    // The survivor's proxy still routes as before.
    let mut client = if first_is_a { client_b } else { client_a };
    wait_all(&mut client, "web-v1").await;
}
