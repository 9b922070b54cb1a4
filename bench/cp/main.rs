//! `cp-bench`: the control-plane benchmark (bench/README.md, "Control-plane benchmark").
//!
//! Starts the real `shoal-control-plane` (pinned to CPU 1), seeds services and endpoints through
//! the Admin API, connects N simulated proxies (tonic clients in this process, pinned to CPU 0),
//! then measures policy push-to-ACK latency, control-plane memory and CPU per proxy, endpoint churn
//! and the resync after a SIGKILL and restart. Prints a Markdown table; `--json FILE` writes every
//! figure.
//!
//! - [`control_plane`]: the child process, its addresses, `/proc` samples and `/metrics`.
//! - [`seed`]: the resources written through the Admin API and the markers they carry.
//! - [`fleet`]: the simulated proxies (subscribe, apply, ACK, reconnect and resync).
//! - [`tracker`]: which proxies ACKed which marker, and when the last one did.
//! - [`wire`]: the part of a discovery response the simulated proxies decode.
//! - [`phases`]: the measurements; [`report`]: the JSON and the table.
//! - [`kube`]: `cp-bench kubernetes`, the control plane's Kubernetes source against the fake API
//!   server of the integration tests (sync time, memory, EndpointSlice change → ACKs).

mod control_plane;
mod fleet;
mod kube;
mod os;
mod phases;
mod report;
mod seed;
mod stats;
mod tracker;
mod wire;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use shoal_proto::v1::ResourceType;

use crate::control_plane::ControlPlane;
use crate::report::{Machine, Report};

/// Benchmark the Shoal control plane with simulated proxies.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(name = "cp-bench", version, args_conflicts_with_subcommands = true)]
struct Args {
    /// Another benchmark than the default (the Admin-API-fed control plane).
    #[command(subcommand)]
    #[serde(skip)]
    mode: Option<Mode>,
    /// Simulated proxies (one HTTP/2 connection and discovery stream each).
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Services each proxy subscribes to (3 keys each: SERVICE, ENDPOINTS, ROUTE).
    #[arg(long, default_value_t = 50)]
    subscriptions: usize,
    /// Services in the mesh.
    #[arg(long, default_value_t = 200)]
    services: usize,
    /// Endpoints in the mesh (registrations, spread evenly over the services).
    #[arg(long, default_value_t = 10_000)]
    endpoints: usize,
    /// Policy changes in the push-to-ACK phase.
    #[arg(long = "pushes", short = 'k', default_value_t = 50)]
    pushes: usize,
    /// Endpoint changes per second in the churn phase (0 skips it).
    #[arg(long, default_value_t = 1000.0)]
    churn_rate: f64,
    /// Length of the churn phase, seconds.
    #[arg(long, default_value_t = 10.0)]
    churn_seconds: f64,
    /// Skip the kill/restart/resync phase.
    #[arg(long)]
    no_resync: bool,
    /// Seconds to let the control plane settle after the proxies connect, before reading its RSS.
    #[arg(long, default_value_t = 2.0)]
    settle_seconds: f64,
    /// The control-plane binary (default: target/release/shoal-control-plane of this workspace).
    #[arg(long)]
    cp_bin: Option<PathBuf>,
    /// Do not pin (control plane on CPU 1, proxies on CPU 0).
    #[arg(long)]
    no_pin: bool,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary directory (data, control-plane log) and print its path.
    #[arg(long)]
    keep_tmp: bool,
}

/// The benchmarks besides the default one.
#[derive(Debug, Clone, clap::Subcommand)]
enum Mode {
    /// The control plane in Kubernetes mode against a fake API server: first sync, memory, and
    /// EndpointSlice change → every subscribed proxy's ACK.
    Kubernetes(kube::KubeArgs),
}

impl Args {
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
        if self.endpoints < self.services || !self.endpoints.is_multiple_of(self.services) {
            bail!(
                "--endpoints ({}) must be a multiple of --services ({}): every service gets the same number",
                self.endpoints,
                self.services
            );
        }
        if self.endpoints / self.services > 1000 {
            bail!("at most 1000 endpoints per service (--endpoints / --services)");
        }
        if !(self.churn_rate >= 0.0 && self.churn_seconds > 0.0) {
            bail!("--churn-rate must be ≥ 0 and --churn-seconds > 0");
        }
        Ok(())
    }
}

/// `--cp-bin`, or target/release/shoal-control-plane of this workspace.
fn cp_binary(cp_bin: &Option<PathBuf>) -> PathBuf {
    cp_bin.clone().unwrap_or_else(|| {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(|t| workspace.join(t))
            .unwrap_or_else(|| workspace.join("target"));
        target.join("release").join("shoal-control-plane")
    })
}

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    let result = match args.mode.take() {
        Some(Mode::Kubernetes(kube)) => kube::run(kube),
        None => run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cp-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    args.check()?;
    let (no_pin, proxies) = (args.no_pin, args.proxies);
    with_runtimes(no_pin, proxies, move |fleet, placement| {
        bench(args, fleet, placement)
    })
}

/// Which CPUs the parts run on.
#[derive(Debug, Clone)]
struct Placement {
    /// The CPUs this process may use.
    cpus: Vec<usize>,
    /// The control plane's (`None`: not pinned).
    cp_cpu: Option<usize>,
    /// The simulated proxies' and the benchmark's own.
    proxies_cpu: Option<usize>,
}

/// Pins this process (unless `no_pin`), raises the descriptor limit for `proxies` connections, and
/// runs `bench` on a current-thread runtime, handing it the runtime of the simulated proxies (a
/// thread of its own on the same CPU).
fn with_runtimes<F, Fut>(no_pin: bool, proxies: usize, bench: F) -> Result<()>
where
    F: FnOnce(tokio::runtime::Handle, Placement) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let cpus = os::allowed_cpus();
    let (cp_cpu, proxies_cpu) = if no_pin {
        (None, None)
    } else if cpus.len() >= 2 {
        (Some(cpus[1]), Some(cpus[0]))
    } else {
        eprintln!("cp-bench: fewer than 2 CPUs available; not pinning");
        (None, None)
    };
    if let Some(cpu) = proxies_cpu {
        // Before the runtime starts: its threads inherit the mask.
        os::pin_to(cpu)?;
    }
    os::ensure_descriptors(proxies as u64 + 512)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    // The simulated proxies get a runtime (and thread) of their own, on the same CPU: the Admin
    // writes and measurements then do not queue behind a thousand proxy tasks, and the kernel
    // shares the core between the two threads.
    let fleet_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the proxies' runtime")?;
    let fleet = fleet_runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let fleet_thread = std::thread::Builder::new()
        .name("proxies".into())
        .spawn(move || {
            fleet_runtime.block_on(async {
                let _ = stopped.await;
            })
        })
        .context("cannot start the proxies' thread")?;
    let placement = Placement {
        cpus,
        cp_cpu,
        proxies_cpu,
    };
    let result = runtime.block_on(bench(fleet, placement));
    let _ = stop.send(());
    let _ = fleet_thread.join();
    result
}

async fn bench(
    args: Args,
    fleet_runtime: tokio::runtime::Handle,
    placement: Placement,
) -> Result<()> {
    let Placement {
        cpus,
        cp_cpu,
        proxies_cpu,
    } = placement;
    let load_start = os::load_average();
    let mut tmp = tempfile::Builder::new().prefix("cp-bench-").tempdir()?;
    if args.keep_tmp {
        // Kept on failure too: the control plane's log is what explains one.
        tmp.disable_cleanup(true);
        eprintln!("cp-bench: keeping {}", tmp.path().display());
    }
    let mut cp =
        ControlPlane::start(&cp_binary(&args.cp_bin), tmp.path(), cp_cpu, Vec::new()).await?;
    let startup = cp.startup;
    let per_service = args.endpoints / args.services;
    eprintln!(
        "cp-bench: control plane pid {} ready in {:.0} ms; seeding {} services × {} endpoints",
        cp.pid(),
        startup.as_secs_f64() * 1e3,
        args.services,
        per_service
    );
    let mut admin = seed::admin(cp.addrs.admin).await?;
    let seeded = seed::seed(&admin, args.services, per_service).await?;
    eprintln!(
        "cp-bench: seeded {} writes in {:.1} s; connecting {} proxies",
        seeded.writes, seeded.seconds, args.proxies
    );

    let mut tracker = tracker::Tracker::default();
    tracker.track(
        (ResourceType::Route as i32, seed::qualified(0)),
        args.proxies,
    );
    let mut subscribers = vec![0usize; args.services];
    for p in 0..args.proxies {
        for s in fleet::plan(p, args.subscriptions, args.services) {
            subscribers[s] += 1;
        }
    }
    for (s, count) in subscribers.iter().enumerate() {
        tracker.track((ResourceType::Endpoints as i32, seed::qualified(s)), *count);
    }
    let tracker = Arc::new(tracker);

    let settle = Duration::from_secs_f64(args.settle_seconds);
    let (fleet, connect) = phases::connect(
        &fleet_runtime,
        &cp,
        args.proxies,
        args.subscriptions,
        args.services,
        tracker.clone(),
        fleet::EndpointMarker::Weight,
        settle,
    )
    .await?;
    eprintln!(
        "cp-bench: {} proxies in sync in {:.2} s; {:.1} KiB per proxy; push phase ({} changes)",
        args.proxies, connect.seconds, connect.kib_per_proxy, args.pushes
    );
    let push = phases::push(&cp, &mut admin, &tracker, &fleet, args.pushes).await?;
    let churn = if args.churn_rate > 0.0 {
        eprintln!(
            "cp-bench: churn phase ({}/s for {} s)",
            args.churn_rate, args.churn_seconds
        );
        let churn = phases::churn(
            &cp,
            &admin,
            &tracker,
            &fleet,
            args.services,
            per_service,
            args.churn_rate,
            args.churn_seconds,
        )
        .await?;
        Some(churn)
    } else {
        None
    };
    let resync = if args.no_resync {
        None
    } else {
        eprintln!("cp-bench: kill -9, restart, resync");
        Some(phases::resync(&mut cp, &fleet, args.proxies).await?)
    };
    phases::check_fleet(&fleet)?;
    fleet.stop().await;
    let report = Report {
        settings: serde_json::to_value(&args)?,
        machine: Machine {
            cpus,
            control_plane_cpu: cp_cpu,
            proxies_cpu,
            load_start,
            load_end: os::load_average(),
            control_plane_startup_ms: startup.as_secs_f64() * 1e3,
        },
        seed: seeded,
        connect,
        push,
        churn,
        resync,
    };
    crate::report::emit(
        &report.table(),
        &report.machine,
        &report,
        args.json.as_deref(),
    )
}
