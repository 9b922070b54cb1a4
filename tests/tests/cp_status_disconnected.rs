//! A proxy that has gone away: `shoalctl status` shows it `DISCONNECTED` with when it was last seen for the
//! control plane's grace period (`SHOAL_CP_DISCONNECTED_PROXY_GRACE`), then no more; a proxy that comes back
//! with the same id is connected again at once.

use std::time::{Duration, Instant};

use shoal_tests::control_plane::ControlPlaneBuilder;
use shoal_tests::eventually;

const GRACE: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_proxy_shows_as_such_then_leaves_status_after_the_grace_period() {
    let cp = ControlPlaneBuilder::new()
        .env(
            "SHOAL_CP_DISCONNECTED_PROXY_GRACE",
            format!("{}s", GRACE.as_secs()),
        )
        .start()
        .await;
    let mut gone = cp.proxy_builder("gone-proxy").start().await;
    let stays = cp.proxy_builder("stays-proxy").start().await;
    cp.wait_proxy_state("gone-proxy", "SYNCED", WAIT).await;
    cp.wait_proxy_state("stays-proxy", "SYNCED", WAIT).await;

    gone.quiet();
    drop(gone);
    let killed = Instant::now();
    let row = eventually(WAIT, "gone-proxy DISCONNECTED", || async {
        match cp.proxy_row("gone-proxy").await {
            Some(row) if row.state == "DISCONNECTED" => Ok(row),
            other => Err(other),
        }
    })
    .await;
    let seen_disconnected = Instant::now();
    assert!(row.line.contains(" ago "), "SEEN says when: {row:?}");
    let doc = cp.proxy_status_json("gone-proxy").await.expect("listed");
    assert_eq!(doc["connected"], false, "{doc}");
    assert!(doc["disconnectedAt"].is_string(), "{doc}");
    let stays_doc = cp.proxy_status_json("stays-proxy").await.expect("listed");
    assert_eq!(
        (&stays_doc["connected"], &stays_doc["disconnectedAt"]),
        (&serde_json::json!(true), &serde_json::Value::Null),
        "{stays_doc}"
    );
    let stays_row = cp.proxy_row("stays-proxy").await.expect("listed");
    assert_eq!(stays_row.state, "SYNCED", "{stays_row:?}");
    assert!(stays_row.line.contains(" now "), "{stays_row:?}");

    eventually(WAIT, "gone-proxy out of `shoalctl status`", || async {
        match cp.proxy_row("gone-proxy").await {
            None => Ok(()),
            Some(row) => Err(row.line),
        }
    })
    .await;
    // Not before the grace period: it was listed for (about) GRACE after its stream ended. The stream
    // ended after `killed` and it was seen disconnected before `seen_disconnected`, so its grace ended
    // no earlier than `killed + GRACE`.
    let listed_for = killed.elapsed();
    assert!(
        listed_for >= GRACE,
        "left status {listed_for:?} after the kill, before the {GRACE:?} grace period (seen disconnected after {:?})",
        seen_disconnected - killed
    );
    assert_eq!(
        cp.proxy_row("stays-proxy").await.map(|r| r.state),
        Some("SYNCED".to_owned())
    );

    // Gone and back with the same id: one row, connected again.
    let mut stays = stays;
    stays.quiet();
    drop(stays);
    eventually(WAIT, "stays-proxy DISCONNECTED", || async {
        match cp.proxy_row("stays-proxy").await {
            Some(row) if row.state == "DISCONNECTED" => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let _back = cp.proxy_builder("stays-proxy").start().await;
    cp.wait_proxy_state("stays-proxy", "SYNCED", WAIT).await;
    let out = cp.ctl(&["status"], None).await.success();
    let rows: Vec<&str> = (out.stdout.lines())
        .filter(|l| l.starts_with("stays-proxy "))
        .collect();
    assert_eq!(rows.len(), 1, "{}", out.stdout);
}
