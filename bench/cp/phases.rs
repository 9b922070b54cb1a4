//! The measured phases: connect, push-to-ACK, endpoint churn, restart and resync.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use shoal_proto::v1::{ResourceType, admin_client::AdminClient};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::control_plane::{ControlPlane, metric_sum, require_metric};
use crate::fleet::{EndpointMarker, Fleet};
use crate::report::{Churn, Connect, Push, Resync};
use crate::seed::{self, qualified, wait_until};
use crate::stats::Latency;
use crate::tracker::Tracker;

/// How long every change may take to reach every subscriber before the phase gives up on it.
const ACK_DEADLINE: Duration = Duration::from_secs(10);
/// Churn writes in flight at most; beyond it sends are late.
const CHURN_IN_FLIGHT: usize = 256;

/// Fails with a clear message when the proxies hit the descriptor limit.
pub fn check_fleet(fleet: &Fleet) -> Result<()> {
    if fleet.counters.emfile.load(Ordering::Relaxed) > 0 {
        bail!(
            "simulated proxies failed with EMFILE (too many open files): raise the descriptor limit \
             (`ulimit -n`) or run fewer proxies (--proxies)"
        );
    }
    Ok(())
}

fn last_error(fleet: &Fleet) -> String {
    fleet
        .counters
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| "none".into())
}

/// Waits until every proxy has had `sessions` synced sessions.
async fn wait_synced(fleet: &Fleet, n: usize, sessions: u64, deadline: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        check_fleet(fleet)?;
        let synced = fleet.synced_at_least(sessions);
        if synced == n {
            return Ok(());
        }
        if started.elapsed() > deadline {
            bail!(
                "only {synced} of {n} proxies in sync after {deadline:?} ({} streams open; last error: {})",
                fleet.counters.connected.load(Ordering::Relaxed),
                last_error(fleet)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects the fleet and measures memory and CPU per proxy.
#[allow(clippy::too_many_arguments)]
pub async fn connect(
    on: &tokio::runtime::Handle,
    cp: &ControlPlane,
    n: usize,
    m: usize,
    services: usize,
    tracker: Arc<Tracker>,
    endpoint_marker: EndpointMarker,
    settle: Duration,
) -> Result<(Fleet, Connect)> {
    let before = cp.sample()?;
    let started = Instant::now();
    let fleet = Fleet::start(
        on,
        n,
        m,
        services,
        cp.addrs.discovery,
        tracker,
        endpoint_marker,
        100,
    );
    wait_synced(&fleet, n, 1, Duration::from_secs(300)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let connected = cp.sample()?;
    // Let allocations settle (and tonic's buffers shrink) before reading the RSS.
    tokio::time::sleep(settle).await;
    let after = cp.sample()?;
    let gauge = require_metric(&cp.metrics().await?, "shoal_cp_connected_proxies")?;
    let report = Connect {
        proxies: n,
        keys_per_proxy: crate::fleet::plan(0, m, services).len() * 3,
        seconds,
        rss_before_kib: before.rss_kib,
        rss_after_kib: after.rss_kib,
        hwm_kib: after.hwm_kib,
        kib_per_proxy: (after.rss_kib as f64 - before.rss_kib as f64) / n as f64,
        cpu_ms_per_proxy: (connected.cpu_seconds - before.cpu_seconds) * 1e3 / n as f64,
        idle_cores: after.cores_since(&connected),
        cp_connected_gauge: gauge,
    };
    Ok((fleet, report))
}

/// K route changes of service 0 (every proxy subscribes to it), one at a time.
pub async fn push(
    cp: &ControlPlane,
    admin: &mut AdminClient<Channel>,
    tracker: &Tracker,
    fleet: &Fleet,
    k: usize,
) -> Result<Push> {
    let key = (ResourceType::Route as i32, qualified(0));
    let mut latencies = Vec::with_capacity(k);
    let mut writes = Vec::with_capacity(k);
    let histogram = "shoal_cp_push_ack_seconds";
    let buckets_before = crate::control_plane::buckets(&cp.metrics().await?, histogram);
    let before = cp.sample()?;
    for generation in 1..=k as u64 {
        let sent = Instant::now();
        tracker.expect(&key, generation, sent);
        seed::apply(admin, seed::route(0, generation)).await?;
        writes.push(sent.elapsed());
        let mut done = Vec::new();
        wait_until(
            &format!("every proxy to ACK route generation {generation}"),
            ACK_DEADLINE,
            || {
                done.extend(tracker.take_done(&key));
                !done.is_empty()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e} (last proxy error: {})", last_error(fleet)))?;
        latencies.extend(done.iter().map(|d| d.latency));
        // A short gap, so consecutive changes are separate pushes rather than one queue.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = cp.sample()?;
    let buckets_after = crate::control_plane::buckets(&cp.metrics().await?, histogram);
    let cp_quantile =
        |q| crate::control_plane::bucket_quantile_ms(&buckets_before, &buckets_after, q);
    Ok(Push {
        changes: k,
        latency: Latency::of(&latencies),
        write: Latency::of(&writes),
        cores: after.cores_since(&before),
        cp_push_ack_p50_le_ms: cp_quantile(0.5),
        cp_push_ack_p99_le_ms: cp_quantile(0.99),
    })
}

/// Endpoint changes at a fixed rate: change `i` rewrites registration `(i / S) % E` of service
/// `i % S` with weight `i + 2` (its marker).
#[allow(clippy::too_many_arguments)]
pub async fn churn(
    cp: &ControlPlane,
    admin: &AdminClient<Channel>,
    tracker: &Tracker,
    fleet: &Fleet,
    services: usize,
    per_service: usize,
    rate: f64,
    seconds: f64,
) -> Result<Churn> {
    let total = (rate * seconds).round() as usize;
    let permits = Arc::new(Semaphore::new(CHURN_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let responses_before = fleet.counters.responses.load(Ordering::Relaxed);
    let before = cp.sample()?;
    let start = tokio::time::Instant::now();
    let mut late = 0;
    for i in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                late += 1;
                permits.clone().acquire_owned().await?
            }
        };
        let service = i % services;
        let marker = i as u64 + 2;
        let resource = seed::registration(service, (i / services) % per_service, marker as u32);
        let mut client = admin.clone();
        let sent = Instant::now();
        tracker.expect(
            &(ResourceType::Endpoints as i32, qualified(service)),
            marker,
            sent,
        );
        tasks.spawn(async move {
            let result = seed::apply(&mut client, resource).await;
            drop(permit);
            (result, sent.elapsed(), Instant::now())
        });
    }
    let sending = cp.sample()?;
    let mut writes = Vec::with_capacity(total);
    let mut failed = 0;
    let mut first_error = None;
    let mut last_reply = Instant::now();
    while let Some(joined) = tasks.join_next().await {
        let (result, took, at) = joined?;
        match result {
            Ok(()) => {
                writes.push(took);
                last_reply = at;
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("cp-bench: {failed} churn writes failed; the first: {e:#}");
    }
    // Wait for the last changes to reach every subscriber.
    let mut lags = Vec::new();
    let drain_start = Instant::now();
    let waiting = loop {
        let (done, waiting) = tracker.drain();
        lags.extend(done.iter().map(|d| d.latency));
        if waiting == 0 || drain_start.elapsed() > ACK_DEADLINE {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tracker.clear_pending();
    let end = cp.sample()?;
    let completed = writes.len();
    let window = last_reply
        .duration_since(start.into_std())
        .as_secs_f64()
        .max(1e-9);
    let achieved_rate = completed as f64 / window.max(seconds);
    Ok(Churn {
        target_rate: rate,
        seconds,
        issued: total,
        completed,
        failed,
        achieved_rate,
        late_sends: late,
        write: Latency::of(&writes),
        lag: Latency::of(&lags),
        not_acked: waiting,
        cores: sending.cores_since(&before),
        responses: fleet.counters.responses.load(Ordering::Relaxed) - responses_before,
        rss_kib: end.rss_kib,
        kept_up: failed == 0 && waiting == 0 && achieved_rate >= 0.95 * rate,
    })
}

/// SIGKILL, restart on the same data directory and addresses, wait until every proxy is back in
/// sync.
pub async fn resync(cp: &mut ControlPlane, fleet: &Fleet, n: usize) -> Result<Resync> {
    let sessions = fleet.synced_at_least(2) as u64;
    if sessions != 0 {
        bail!("{sessions} proxies reconnected before the restart (streams broke during the run)");
    }
    // Start from a quiet fleet: after heavy churn the proxies may still be working through a backlog,
    // and a restart then would measure that backlog, not the resync.
    quiesce(fleet, Duration::from_millis(500), Duration::from_secs(120)).await?;
    let resources_before = fleet.counters.resources.load(Ordering::Relaxed);
    let removed_before = fleet.counters.removed.load(Ordering::Relaxed);
    let responses_before = fleet.counters.responses.load(Ordering::Relaxed);
    let killed = Instant::now();
    cp.kill().await?;
    let spawning = Instant::now();
    cp.restart().await?;
    let ready = spawning + cp.startup;
    wait_synced(fleet, n, 2, Duration::from_secs(120)).await?;
    let synced = fleet.last_sync().unwrap_or_else(Instant::now);
    let sample = cp.sample()?;
    let metrics = cp.metrics().await?;
    let gauge = metric_sum(&metrics, "shoal_cp_connected_proxies").unwrap_or(0.0);
    if gauge as usize != n {
        eprintln!(
            "cp-bench: after the resync the control plane counts {gauge} connected proxies, expected {n}"
        );
    }
    Ok(Resync {
        startup_ms: cp.startup.as_secs_f64() * 1e3,
        from_kill_ms: synced.duration_since(killed).as_secs_f64() * 1e3,
        from_ready_ms: synced.saturating_duration_since(ready).as_secs_f64() * 1e3,
        proxies_synced: fleet.synced_at_least(2),
        resources_resent: fleet.counters.resources.load(Ordering::Relaxed) - resources_before,
        absent_answers: fleet.counters.removed.load(Ordering::Relaxed) - removed_before,
        responses: fleet.counters.responses.load(Ordering::Relaxed) - responses_before,
        cpu_seconds: sample.cpu_seconds,
        rss_kib: sample.rss_kib,
    })
}

/// Waits until the proxies received no response for `quiet`, at most `deadline`.
async fn quiesce(fleet: &Fleet, quiet: Duration, deadline: Duration) -> Result<()> {
    let started = Instant::now();
    let mut last = fleet.counters.responses.load(Ordering::Relaxed);
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        if started.elapsed() > deadline {
            bail!("the proxies were still receiving updates {deadline:?} after the churn phase");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = fleet.counters.responses.load(Ordering::Relaxed);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    Ok(())
}
