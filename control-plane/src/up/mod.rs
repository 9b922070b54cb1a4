//! `shoal up`: a whole mesh on loopback in one command, without root or Kubernetes, until Ctrl-C.
//!
//! It starts the control plane (in this process), then each demo app ([`demo`], this same executable as
//! `shoal demo-app`) behind its own `shoal-proxy` sidecar in explicit mode, registers them
//! ([`topology`]), checks that a request crosses the mesh, and prints where to look ([`banner`]). On
//! SIGINT/SIGTERM every child gets SIGTERM (SIGKILL after a deadline), the control plane drains, and a
//! temporary data directory is removed. If anything fails to start, or a child dies while running,
//! everything is stopped and `shoal up` exits 1 with a message naming the part and the end of its log.
//! docs/shoal-up.md is the user's guide.

mod banner;
mod control;
pub mod demo;
mod ports;
mod process;
mod topology;

use std::path::{Path, PathBuf};
use std::time::Duration;

use process::Process;
use topology::{Addrs, WORKLOADS, Workload};

/// `shoal up`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Port layout base: control plane on BASE+10/11/14, workload k on BASE+100k (+1, +6, +21). Left out:
    /// 15000, with busy ports replaced by free ones; given: exactly this layout or an error; 0: free ports.
    #[arg(long, value_name = "PORT")]
    pub base_port: Option<u16>,
    /// Keep the control plane's store, the applied resources and the logs here (default: a temporary
    /// directory, removed on exit).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The shoal-proxy binary (default: next to this executable).
    #[arg(long, env = "SHOAL_PROXY_BIN", value_name = "PATH")]
    pub proxy_bin: Option<PathBuf>,
    /// Once the mesh is ready, write its addresses and process ids here as JSON (for scripts and tests).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

/// Runs the mesh until SIGINT or SIGTERM. `Err` carries the message to print.
pub async fn run(args: UpArgs) -> Result<(), String> {
    let proxy_bin = proxy_binary(args.proxy_bin.as_deref())?;
    let self_exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable (to start the demo apps): {e}"))?;
    let (data_dir, temp) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("shoal-up.")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    init_logging(&logs.join("control-plane.log"))?;

    // From here on, a signal must reach the shutdown below, not kill the process: listen first.
    let signal = crate::server::shutdown_signal();
    tokio::pin!(signal);
    let mut ports = ports::Ports::new(args.base_port);
    let cp_ports = [
        ports.take(10, "control plane discovery")?,
        ports.take(11, "control plane admin API")?,
        ports.take(14, "control plane metrics")?,
    ];
    let mut planned = Vec::new();
    for w in &WORKLOADS {
        planned.push((w, w.addrs(&mut ports)?));
    }
    let cp = control::start(&control::store_dir(&data_dir), cp_ports).await?;
    let mut children = Vec::new();
    let started = tokio::select! {
        started = start(&mut children, planned, &cp, &self_exe, &proxy_bin, &data_dir) => started,
        () = &mut signal => Err("interrupted while starting".to_owned()),
    };
    let outcome = match started {
        Ok(workloads) => {
            let summary = banner::Summary {
                control_plane: [cp.admin, cp.discovery, cp.metrics],
                workloads,
                data_dir: &data_dir,
                temporary: temp.is_some(),
                moved: &ports.moved,
            };
            let written = match &args.ready_file {
                Some(path) => banner::write_ready_file(path, &summary.json()),
                None => Ok(()),
            };
            match written {
                Ok(()) => {
                    println!("{}", summary.banner());
                    watch(&mut children, &cp, &mut signal).await
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    if outcome.is_ok() {
        println!("shoal up: stopping");
    }
    let warnings = futures_util::future::join_all(children.into_iter().map(Process::stop)).await;
    for warning in warnings.into_iter().flatten() {
        eprintln!("shoal up: warning: {warning}");
    }
    if let Err(e) = cp.stop().await {
        eprintln!("shoal up: warning: {e}");
    }
    if let Some(path) = &args.ready_file {
        let _ = std::fs::remove_file(path);
    }
    match (outcome, temp) {
        (Ok(()), _) => {
            println!("shoal up: stopped");
            Ok(())
        }
        // The logs explain the failure: keep them even when the directory was temporary.
        (Err(e), Some(temp)) => Err(format!(
            "{e}\n(logs kept in {})",
            temp.keep().join("logs").display()
        )),
        (Err(e), None) => Err(e),
    }
}

/// Applies the demo's resources, then starts every app and sidecar, waiting for each to be ready, and
/// checks that a request crosses the mesh. Started children are pushed to `children` as they start, so
/// the caller stops them whatever happens.
async fn start(
    children: &mut Vec<Process>,
    planned: Vec<(&'static Workload, Addrs)>,
    cp: &control::Running,
    self_exe: &Path,
    proxy_bin: &Path,
    data_dir: &Path,
) -> Result<Vec<(&'static Workload, Addrs, [u32; 2])>, String> {
    let inbound = |name: &str| {
        let found = planned.iter().find(|(w, _)| w.name == name);
        found.map_or(0, |(_, a)| a.inbound.port())
    };
    let trust_domain = cp.identity.ca.trust_domain().to_string();
    let mesh = topology::mesh_yaml(inbound, &trust_domain);
    let path = data_dir.join("mesh.yaml");
    std::fs::write(&path, &mesh).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let store = cp.store.clone();
    tokio::task::spawn_blocking(move || control::apply(&store, &mesh))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the control plane rejected the demo's resources: {e}"))?;

    let logs = data_dir.join("logs");
    let mut started = Vec::new();
    for (w, a) in planned {
        let mut app = process::command(self_exe);
        app.args(["demo-app", w.role.as_str()])
            .args(["--port", &a.app.port().to_string(), "--version", w.version])
            .env(demo::OUTBOUND_ENV, a.outbound.to_string());
        let log = logs.join(format!("{}.log", w.name));
        children.push(Process::spawn(format!("{} app", w.name), app, log)?);
        let app_pid = children.last().map_or(0, |p| p.pid);
        let identity = cp.identity.clone();
        let token = tokio::task::spawn_blocking(move || control::join_token(&identity, w.name))
            .await
            .map_err(|e| e.to_string())??;
        let proxy = sidecar(proxy_bin, w, &a, cp, &token);
        let log = logs.join(format!("{}-sidecar.log", w.name));
        children.push(Process::spawn(format!("{} sidecar", w.name), proxy, log)?);
        let proxy_pid = children.last().map_or(0, |p| p.pid);
        let n = children.len();
        children[n - 2]
            .wait_ready(&format!("nothing listens on {}", a.app), || {
                process::listening(a.app)
            })
            .await?;
        let ready = || async move {
            process::http_get(a.admin, "shoal", "/ready")
                .await
                .is_some_and(|r| r.0 == 200)
        };
        children[n - 1]
            .wait_ready(&format!("http://{}/ready is not 200", a.admin), ready)
            .await?;
        started.push((w, a, [app_pid, proxy_pid]));
    }
    let frontend = started
        .iter()
        .find(|(w, _, _)| w.name == "frontend")
        .map(|s| s.1);
    if let Some(frontend) = frontend {
        check_mesh(frontend).await?;
    }
    Ok(started)
}

/// The sidecar of workload `w`: explicit mode on both sides, state from the control plane (over TLS,
/// verified with the control plane's trust anchors file), its certificate from the control plane's CA
/// (redeeming `token`).
fn sidecar(
    bin: &Path,
    w: &Workload,
    a: &Addrs,
    cp: &control::Running,
    token: &str,
) -> tokio::process::Command {
    let mut cmd = process::command(bin);
    cmd.envs([
        ("SHOAL_INBOUND_MODE", "explicit".to_owned()),
        ("SHOAL_INBOUND_ADDR", a.inbound.to_string()),
        ("SHOAL_INBOUND_APP_ADDR", a.app.to_string()),
        ("SHOAL_OUTBOUND_MODE", "explicit".to_owned()),
        ("SHOAL_OUTBOUND_ADDR", a.outbound.to_string()),
        ("SHOAL_ADMIN_ADDR", a.admin.to_string()),
        ("SHOAL_DISCOVERY_ADDR", format!("https://{}", cp.discovery)),
        (
            "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE",
            cp.anchors_file.display().to_string(),
        ),
        ("SHOAL_SERVICE_NAME", w.name.to_owned()),
        ("SHOAL_SERVICE_ACCOUNT", w.name.to_owned()),
        ("SHOAL_IDENTITY_TOKEN", token.to_owned()),
        ("SHOAL_PROXY_ID", w.name.to_owned()),
        ("SHOAL_ACCESS_LOG", "true".to_owned()),
        // Short: a demo should stop in a moment, and its requests are quick.
        ("SHOAL_SHUTDOWN_GRACE", "2s".to_owned()),
    ]);
    cmd
}

/// One request through the frontend's sidecar, retried for a few seconds: the first calls may wait for
/// the sidecars' first discovery answers.
async fn check_mesh(frontend: Addrs) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = process::http_get(frontend.inbound, "frontend", "/").await;
        match answer {
            Some((200, _)) => return Ok(()),
            _ if tokio::time::Instant::now() > deadline => {
                let (status, body) = answer.unwrap_or((0, "no answer".to_owned()));
                return Err(format!(
                    "the mesh started but a request through it failed: GET http://{}/ answered {status}: {body}",
                    frontend.inbound
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs until a signal (`Ok`), or until a child or the control plane stops on its own (`Err`).
async fn watch(
    children: &mut [Process],
    cp: &control::Running,
    signal: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = signal.as_mut() => return Ok(()),
            _ = tick.tick() => {}
        }
        for child in children.iter_mut() {
            if let Some(status) = child.exited() {
                return Err(child.died(status));
            }
        }
        if cp.task.is_finished() {
            return Err("the control plane stopped; see logs/control-plane.log".to_owned());
        }
    }
}

/// `--proxy-bin` / `SHOAL_PROXY_BIN`, else `shoal-proxy` next to this executable (the same target dir).
fn proxy_binary(given: Option<&Path>) -> Result<PathBuf, String> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this executable: {e}"))?
            .with_file_name("shoal-proxy"),
    };
    if path.is_file() {
        return Ok(path);
    }
    Err(format!(
        "the shoal-proxy binary is not at {}: build it with `cargo build -p shoal-proxy` (or point --proxy-bin / SHOAL_PROXY_BIN at it)",
        path.display()
    ))
}

/// The in-process control plane logs to a file: the terminal is for the banner.
fn init_logging(path: &Path) -> Result<(), String> {
    let file = std::fs::File::create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    // Already installed (an embedding program or a test): keep theirs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}
