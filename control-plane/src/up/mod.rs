//! `shoal up`: a whole mesh on loopback in one command, without root or Kubernetes, until Ctrl-C.
//!
//! It starts a process-group guard ([`guard`]: no child outlives `shoal up`, even on SIGKILL), the real
//! `shoal-control-plane` binary in a process of its own ([`control`]), then each demo app ([`demo`], this
//! same executable as `shoal demo-app`) behind its own `shoal-proxy` sidecar in explicit mode, registers them
//! through the Admin API ([`topology`]), checks that a request crosses the mesh, and prints where to look
//! ([`banner`]), reporting each process as it starts and becomes ready. Ports are remembered in the data
//! directory for the next run ([`ports`]).
//!
//! While it runs, [`supervise`] restarts a control plane that dies, on the same data directory and ports
//! (sidecars keep serving their last state and reconnect); an app or sidecar that dies stops the mesh. On
//! SIGINT/SIGTERM every child gets SIGTERM (SIGKILL after a deadline), then the control plane, then the guard
//! sweeps the group, and a temporary data directory is removed. If anything fails to start, everything is
//! stopped and `shoal up` exits 1 with a message naming the part and the end of its log. docs/shoal-up.md is
//! the user's guide.

mod banner;
mod control;
pub mod demo;
pub mod guard;
mod holder;
mod ports;
mod process;
mod supervise;
mod topology;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use control::ControlPlane;
use process::Process;
use topology::{Addrs, WORKLOADS, Workload};

/// `shoal up`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Port layout base: control plane on BASE+10/11/14, workload k on BASE+100k (+1, +6, +21). Left out:
    /// the ports the data directory remembers from its last run, else 15000 with busy ports replaced by free
    /// ones; given: exactly this layout or an error; 0: free ports.
    #[arg(long, value_name = "PORT")]
    pub base_port: Option<u16>,
    /// Keep the control plane's store, the applied resources, the ports and the logs here (default: a
    /// temporary directory, removed on exit).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The shoal-proxy binary (default: next to this executable).
    #[arg(long, env = "SHOAL_PROXY_BIN", value_name = "PATH")]
    pub proxy_bin: Option<PathBuf>,
    /// The shoal-control-plane binary (default: next to this executable).
    #[arg(long, env = "SHOAL_CONTROL_PLANE_BIN", value_name = "PATH")]
    pub control_plane_bin: Option<PathBuf>,
    /// Once the mesh is ready, write its addresses and process ids here as JSON, and again after each
    /// control plane restart (for scripts and tests).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

/// One line of start-up progress (and of what happens later: a restart).
fn progress(message: &str) {
    println!("shoal up: {message}");
}

/// A started workload: its addresses and its app's and sidecar's process ids.
type Started = (&'static Workload, Addrs, [u32; 2]);

/// Runs the mesh until SIGINT or SIGTERM. `Err` carries the message to print.
pub async fn run(args: UpArgs) -> Result<(), String> {
    let proxy_bin = sibling_binary(
        args.proxy_bin.as_deref(),
        "shoal-proxy",
        "--proxy-bin / SHOAL_PROXY_BIN",
        "cargo build -p shoal-proxy",
    )?;
    let cp_bin = sibling_binary(
        args.control_plane_bin.as_deref(),
        "shoal-control-plane",
        "--control-plane-bin / SHOAL_CONTROL_PLANE_BIN",
        "cargo build -p shoal-control-plane --bins",
    )?;
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

    // From here on, a signal must reach the shutdown below, not kill the process: listen first.
    let signal = crate::server::shutdown_signal();
    tokio::pin!(signal);
    let mut ports = ports::Ports::choose(args.base_port, &data_dir)?;
    let cp_addrs = [
        control::loopback(ports.take(10, "control plane discovery")?),
        control::loopback(ports.take(11, "control plane admin API")?),
        control::loopback(ports.take(14, "control plane metrics")?),
    ];
    let mut planned = Vec::new();
    for w in &WORKLOADS {
        planned.push((w, w.addrs(&mut ports)?));
    }
    ports.save(&data_dir)?;
    let kept = if temp.is_some() {
        "temporary, removed on exit"
    } else {
        "kept"
    };
    progress(&format!(
        "data directory {} ({kept}); ports: {}",
        data_dir.display(),
        ports.origin()
    ));
    for moved in &ports.moved {
        progress(&format!("{}: using {} instead", moved.why, moved.used));
    }

    let guard = guard::Guard::start(&self_exe)?;
    let launch = control::Launch {
        bin: cp_bin,
        store_dir: control::store_dir(&data_dir),
        addrs: cp_addrs,
        log: logs.join("control-plane.log"),
        pgid: guard.pgid,
    };
    let mut mesh = supervise::Mesh {
        guard,
        cp: None,
        children: Vec::new(),
    };
    let started = tokio::select! {
        started = start(&mut mesh, launch, planned, &self_exe, &proxy_bin, &data_dir) => started,
        () = &mut signal => Err("interrupted while starting".to_owned()),
    };
    let outcome = match started {
        Ok(workloads) => {
            let ready = supervise::ReadyFile {
                path: args.ready_file.clone(),
                workloads,
                data_dir: data_dir.clone(),
                temporary: temp.is_some(),
                moved: ports.moved.clone(),
            };
            match ready.write(&mesh) {
                Ok(()) => {
                    println!("{}", ready.summary(&mesh).banner());
                    supervise::supervise(&mut mesh, &ready, &mut signal).await
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    if outcome.is_ok() {
        progress("stopping");
    }
    for warning in mesh.stop().await {
        eprintln!("shoal up: warning: {warning}");
    }
    if let Some(path) = &args.ready_file {
        let _ = std::fs::remove_file(path);
    }
    match (outcome, temp) {
        (Ok(()), _) => {
            progress("stopped");
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

/// Starts the control plane, applies the demo's resources through it, then starts every app and sidecar,
/// waiting for each to be ready, and checks that a request crosses the mesh. Everything started is put in
/// `mesh` as it starts, so the caller stops it whatever happens.
async fn start(
    mesh: &mut supervise::Mesh,
    launch: control::Launch,
    planned: Vec<(&'static Workload, Addrs)>,
    self_exe: &Path,
    proxy_bin: &Path,
    data_dir: &Path,
) -> Result<Vec<Started>, String> {
    let began = Instant::now();
    let [discovery, admin, metrics] = launch.addrs;
    let cp = mesh.cp.insert(ControlPlane::spawn(launch)?);
    progress(&format!(
        "control plane started (pid {}): discovery {discovery}, admin API {admin}, metrics {metrics}",
        cp.process.pid
    ));
    cp.wait_ready().await?;
    progress(&format!("control plane ready ({})", since(began)));

    let inbound = |name: &str| {
        let found = planned.iter().find(|(w, _)| w.name == name);
        found.map_or(0, |(_, a)| a.inbound.port())
    };
    let trust_domain = cp.trust_domain().await?;
    let yaml = topology::mesh_yaml(inbound, &trust_domain);
    let path = data_dir.join("mesh.yaml");
    std::fs::write(&path, &yaml).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let count = cp
        .apply(&yaml)
        .await
        .map_err(|e| format!("the control plane rejected the demo's resources: {e}"))?;
    progress(&format!(
        "applied the demo's {count} resources ({})",
        path.display()
    ));

    let logs = data_dir.join("logs");
    let pgid = mesh.guard.pgid;
    let mut started = Vec::new();
    for (w, a) in planned {
        let began = Instant::now();
        let mut app = process::command(self_exe);
        app.args(["demo-app", w.role.as_str()])
            .args(["--port", &a.app.port().to_string(), "--version", w.version])
            .env(demo::OUTBOUND_ENV, a.outbound.to_string());
        let log = logs.join(format!("{}.log", w.name));
        let app = Process::spawn(format!("{} app", w.name), app, log, pgid, false)?;
        let app_pid = app.pid;
        progress(&format!("{} app started (pid {app_pid})", w.name));
        mesh.children.push(app);
        let token = mesh.control_plane()?.join_token(w.name).await?;
        let proxy = sidecar(proxy_bin, w, &a, mesh.control_plane()?.launch(), &token);
        let log = logs.join(format!("{}-sidecar.log", w.name));
        let proxy = Process::spawn(format!("{} sidecar", w.name), proxy, log, pgid, false)?;
        let proxy_pid = proxy.pid;
        progress(&format!("{} sidecar started (pid {proxy_pid})", w.name));
        mesh.children.push(proxy);
        let n = mesh.children.len();
        mesh.children[n - 2]
            .wait_ready(&format!("nothing listens on {}", a.app), || {
                process::listening(a.app)
            })
            .await?;
        progress(&format!("{} app ready on {}", w.name, a.app));
        let ready = || async move {
            process::http_get(a.admin, "shoal", "/ready")
                .await
                .is_some_and(|r| r.0 == 200)
        };
        mesh.children[n - 1]
            .wait_ready(&format!("http://{}/ready is not 200", a.admin), ready)
            .await?;
        progress(&format!(
            "{} sidecar ready: inbound {}, outbound {}, admin {} ({})",
            w.name,
            a.inbound,
            a.outbound,
            a.admin,
            since(began)
        ));
        started.push((w, a, [app_pid, proxy_pid]));
    }
    let frontend = started
        .iter()
        .find(|(w, _, _)| w.name == "frontend")
        .map(|s| s.1);
    if let Some(frontend) = frontend {
        check_mesh(frontend).await?;
        progress(&format!(
            "a request crossed the mesh: frontend → backend and greeter, over mTLS ({} in all)",
            since(began)
        ));
    }
    Ok(started)
}

fn since(began: Instant) -> String {
    format!("{:.1} s", began.elapsed().as_secs_f64())
}

/// The sidecar of workload `w`: explicit mode on both sides, state from the control plane (over TLS,
/// verified with the control plane's trust anchors file), its certificate from the control plane's CA
/// (redeeming `token`).
fn sidecar(
    bin: &Path,
    w: &Workload,
    a: &Addrs,
    cp: &control::Launch,
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
        (
            "SHOAL_DISCOVERY_ADDR",
            format!("https://{}", cp.discovery()),
        ),
        (
            "SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE",
            cp.anchors_file().display().to_string(),
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

/// `given` (an option or its variable, named in `option`), else `name` next to this executable (the same
/// target directory); an error says how to build it.
fn sibling_binary(
    given: Option<&Path>,
    name: &str,
    option: &str,
    build: &str,
) -> Result<PathBuf, String> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this executable: {e}"))?
            .with_file_name(name),
    };
    if path.is_file() {
        return Ok(path);
    }
    Err(format!(
        "the {name} binary is not at {}: build it with `{build}` (or point {option} at it)",
        path.display()
    ))
}
