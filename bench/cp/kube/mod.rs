//! `cp-bench kubernetes`: the control plane in Kubernetes mode (bench/README.md, "Kubernetes mode").
//!
//! Fills the fake API server of the integration tests (`shoal_tests::fake_kube`, in this process)
//! with Services, one EndpointSlice each and meshed Pods; starts the real control plane watching it;
//! measures the time to its first complete sync and its memory then; connects the simulated proxies
//! (`fleet`), every one subscribed to service 0 and some others; then changes service 0's
//! EndpointSlice K times and measures each change until the last proxy ACKed it.
//!
//! - [`objects`]: the Kubernetes objects and the marker they carry.
//! - [`report`]: the JSON and the table.

mod objects;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_proto::v1::ResourceType;
use shoal_tests::fake_kube::FakeKube;

use crate::control_plane::ControlPlane;
use crate::fleet::{EndpointMarker, Fleet};
use crate::os;
use crate::phases;
use crate::report::Machine;
use crate::seed::{qualified, wait_until};
use crate::stats::Latency;
use crate::tracker::Tracker;

use self::report::{Changes, Fill, KubeReport, Sync};

/// The bearer token the fake API server accepts.
const TOKEN: &str = "cp-bench-token";
/// The control plane's log line that ends its first complete sync (sources/kubernetes).
const SYNCED: &str = "kubernetes source synced";
/// How long one change may take to reach every subscriber.
const ACK_DEADLINE: Duration = Duration::from_secs(10);

/// Benchmark the control plane's Kubernetes source: sync, memory, EndpointSlice change → ACKs.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct KubeArgs {
    /// Services (each with one EndpointSlice).
    #[arg(long, default_value_t = 5000)]
    services: usize,
    /// Endpoints in each EndpointSlice.
    #[arg(long, default_value_t = 4)]
    endpoints_per_service: usize,
    /// Pods (meshed; endpoint `j` of service `s` is pod `s × endpoints-per-service + j`).
    #[arg(long, default_value_t = 20_000)]
    pods: usize,
    /// Simulated proxies (one HTTP/2 connection and discovery stream each).
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Services each proxy subscribes to: service 0 (the one whose slice changes) and the rest spread.
    #[arg(long, default_value_t = 5)]
    subscriptions: usize,
    /// EndpointSlice changes of service 0, one at a time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Seconds to let the control plane settle after the sync and after the proxies connect, before
    /// reading its RSS.
    #[arg(long, default_value_t = 2.0)]
    settle_seconds: f64,
    /// Seconds the first sync may take.
    #[arg(long, default_value_t = 300.0)]
    sync_timeout: f64,
    /// The control-plane binary (default: target/release/shoal-control-plane of this workspace).
    #[arg(long)]
    cp_bin: Option<PathBuf>,
    /// Do not pin (control plane on CPU 1; proxies and the fake API server on CPU 0).
    #[arg(long)]
    no_pin: bool,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary directory (data, control-plane log) and print its path.
    #[arg(long)]
    keep_tmp: bool,
}

impl KubeArgs {
    fn check(&self) -> Result<()> {
        if self.proxies == 0 {
            bail!("--proxies must be at least 1");
        }
        if self.services == 0 || self.subscriptions == 0 || self.subscriptions > self.services {
            bail!(
                "--subscriptions ({}) must be between 1 and --services ({})",
                self.subscriptions,
                self.services
            );
        }
        if !(1..=1000).contains(&self.endpoints_per_service) {
            bail!("--endpoints-per-service must be between 1 and 1000");
        }
        if self.services * self.endpoints_per_service > 100 * 65_536 {
            bail!("--services × --endpoints-per-service: at most 6,553,600 endpoints");
        }
        if self.changes as u64 > objects::MAX_MARKER {
            bail!("--changes: at most {}", objects::MAX_MARKER);
        }
        if !(self.settle_seconds >= 0.0 && self.sync_timeout > 0.0) {
            bail!("--settle-seconds must be ≥ 0 and --sync-timeout > 0");
        }
        Ok(())
    }
}

/// Runs the Kubernetes mode.
pub fn run(args: KubeArgs) -> Result<()> {
    args.check()?;
    let (no_pin, proxies) = (args.no_pin, args.proxies);
    crate::with_runtimes(no_pin, proxies, move |fleet, placement| {
        bench(args, fleet, placement)
    })
}

async fn bench(
    args: KubeArgs,
    fleet_runtime: tokio::runtime::Handle,
    placement: crate::Placement,
) -> Result<()> {
    let load_start = os::load_average();
    let mut tmp = tempfile::Builder::new()
        .prefix("cp-bench-kube-")
        .tempdir()?;
    if args.keep_tmp {
        tmp.disable_cleanup(true);
        eprintln!("cp-bench: keeping {}", tmp.path().display());
    }
    let kube = FakeKube::start(TOKEN).await;
    let fill = fill(&kube, &args);
    eprintln!(
        "cp-bench: fake API server filled with {} objects in {:.1} s; starting the control plane",
        fill.objects, fill.seconds
    );
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, TOKEN).context("cannot write the token file")?;
    let env = vec![
        ("SHOAL_CP_KUBERNETES".to_owned(), "true".to_owned()),
        ("SHOAL_CP_KUBERNETES_API_URL".to_owned(), kube.url()),
        (
            "SHOAL_CP_KUBERNETES_TOKEN_FILE".to_owned(),
            token_file.display().to_string(),
        ),
    ];
    let cp = ControlPlane::start(
        &crate::cp_binary(&args.cp_bin),
        tmp.path(),
        placement.cp_cpu,
        env,
    )
    .await?;
    let sync = sync(&cp, &args).await?;
    eprintln!(
        "cp-bench: synced {:.2} s after spawn ({} services, {} slices, {} meshed pods), RSS {} KiB \
         (peak {} KiB); connecting {} proxies",
        sync.from_spawn_ms / 1e3,
        sync.services,
        sync.endpoint_slices,
        sync.meshed_pods,
        sync.settled_rss_kib,
        sync.settled_hwm_kib,
        args.proxies
    );

    let key = (ResourceType::Endpoints as i32, qualified(0));
    let mut tracker = Tracker::default();
    tracker.track(key.clone(), args.proxies);
    let tracker = Arc::new(tracker);
    let (fleet, connect) = phases::connect(
        &fleet_runtime,
        &cp,
        args.proxies,
        args.subscriptions,
        args.services,
        tracker.clone(),
        EndpointMarker::Port {
            base: objects::PORT_BASE,
        },
        Duration::from_secs_f64(args.settle_seconds),
    )
    .await?;
    eprintln!(
        "cp-bench: {} proxies in sync in {:.2} s; {:.1} KiB per proxy; {} EndpointSlice changes",
        args.proxies, connect.seconds, connect.kib_per_proxy, args.changes
    );
    let changes = changes(&kube, &cp, &tracker, &fleet, &args).await?;
    eprintln!(
        "cp-bench: each change → last ACK, ms, in order: {:?}",
        changes.each_ms
    );
    phases::check_fleet(&fleet)?;
    fleet.stop().await;
    let report = KubeReport {
        settings: serde_json::to_value(&args)?,
        machine: Machine {
            cpus: placement.cpus,
            control_plane_cpu: placement.cp_cpu,
            proxies_cpu: placement.proxies_cpu,
            load_start,
            load_end: os::load_average(),
            control_plane_startup_ms: cp.startup.as_secs_f64() * 1e3,
        },
        fill,
        sync,
        connect,
        changes,
    };
    crate::report::emit(
        &report.table(),
        &report.machine,
        &report,
        args.json.as_deref(),
    )
}

/// Creates every Service, EndpointSlice and Pod.
fn fill(kube: &FakeKube, args: &KubeArgs) -> Fill {
    let started = Instant::now();
    let per_service = args.endpoints_per_service;
    for s in 0..args.services {
        kube.apply(objects::service(s));
        kube.apply(objects::slice(s, per_service, args.pods, 0));
    }
    for i in 0..args.pods {
        kube.apply(objects::pod(i, per_service, args.services));
    }
    Fill {
        objects: 2 * args.services + args.pods,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Waits for the first complete sync; checks what the control plane says it holds; reads its memory
/// then and after settling.
async fn sync(cp: &ControlPlane, args: &KubeArgs) -> Result<Sync> {
    let deadline = Duration::from_secs_f64(args.sync_timeout);
    let (synced, line) = cp.wait_for_log(SYNCED, deadline).await?;
    let at_sync = cp.sample()?;
    let fields: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("not a JSON log line: {line}"))?;
    let count = |name: &str| fields[name].as_u64().unwrap_or(0) as usize;
    let (services, slices, pods) = (
        count("services"),
        count("endpoint_slices"),
        count("meshed_pods"),
    );
    if (services, slices, pods) != (args.services, args.services, args.pods) {
        bail!(
            "the control plane synced {services} services, {slices} slices and {pods} meshed pods; \
             the fake API server holds {0}, {0} and {1}",
            args.services,
            args.pods
        );
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle_seconds)).await;
    let settled = cp.sample()?;
    let ready = cp.spawned + cp.startup;
    Ok(Sync {
        from_spawn_ms: synced.duration_since(cp.spawned).as_secs_f64() * 1e3,
        from_ready_ms: synced.saturating_duration_since(ready).as_secs_f64() * 1e3,
        services,
        endpoint_slices: slices,
        meshed_pods: pods,
        cpu_seconds: at_sync.cpu_seconds,
        rss_kib: at_sync.rss_kib,
        hwm_kib: at_sync.hwm_kib,
        settled_rss_kib: settled.rss_kib,
        settled_hwm_kib: settled.hwm_kib,
    })
}

/// K changes of service 0's EndpointSlice (every proxy subscribes to it), one at a time, each from
/// the fake API server's write (the watch event goes out in it) to the last proxy's ACK.
async fn changes(
    kube: &FakeKube,
    cp: &ControlPlane,
    tracker: &Tracker,
    fleet: &Fleet,
    args: &KubeArgs,
) -> Result<Changes> {
    let key = (ResourceType::Endpoints as i32, qualified(0));
    let responses_before = fleet
        .counters
        .responses
        .load(std::sync::atomic::Ordering::Relaxed);
    let before = cp.sample()?;
    let mut latencies = Vec::with_capacity(args.changes);
    for marker in 1..=args.changes as u64 {
        let slice = objects::slice(0, args.endpoints_per_service, args.pods, marker);
        let sent = Instant::now();
        tracker.expect(&key, marker, sent);
        kube.apply(slice);
        let mut done = Vec::new();
        wait_until(
            &format!("every proxy to ACK EndpointSlice change {marker}"),
            ACK_DEADLINE,
            || {
                done.extend(tracker.take_done(&key));
                !done.is_empty()
            },
        )
        .await
        .with_context(|| {
            format!(
                "the fake API server has {} EndpointSlice watches open; it received {:?}",
                kube.open_watches("EndpointSlice"),
                kube.requests("EndpointSlice")
            )
        })?;
        latencies.extend(done.iter().map(|d| d.latency));
        // A short gap, so consecutive changes are separate pushes rather than one queue.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = cp.sample()?;
    Ok(Changes {
        count: args.changes,
        subscribers: args.proxies,
        latency: Latency::of(&latencies),
        each_ms: (latencies.iter())
            .map(|l| (l.as_secs_f64() * 1e4).round() / 10.0)
            .collect(),
        cores: after.cores_since(&before),
        responses: fleet
            .counters
            .responses
            .load(std::sync::atomic::Ordering::Relaxed)
            - responses_before,
        rss_kib: after.rss_kib,
        hwm_kib: after.hwm_kib,
    })
}
