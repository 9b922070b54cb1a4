//! The running mesh: watched until a signal, with a control plane that dies restarted on the same data
//! directory and ports, and everything stopped in order at the end.
//!
//! Only the control plane is restarted: while it is away the sidecars keep serving what they were last sent
//! and reconnect by themselves (with jitter), so traffic through the mesh does not notice. An app or a
//! sidecar that dies is a broken demo, not something to hide: `shoal up` stops and says which one.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::control::ControlPlane;
use super::guard::Guard;
use super::process::Process;
use super::{Started, banner, ports, progress};

/// At most this many control plane restarts within [`RESTART_WINDOW`]; one more stops the mesh (a control
/// plane that cannot stay up is reported with its log, not restarted forever).
const MAX_RESTARTS: usize = 5;
/// See [`MAX_RESTARTS`].
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Everything `shoal up` started.
pub(crate) struct Mesh {
    /// The process group's guard.
    pub(crate) guard: Guard,
    /// The control plane, once started.
    pub(crate) cp: Option<ControlPlane>,
    /// Apps and sidecars, in start order.
    pub(crate) children: Vec<Process>,
}

impl Mesh {
    /// The control plane (started first, so always there once workloads start).
    pub(crate) fn control_plane(&self) -> Result<&ControlPlane, String> {
        self.cp
            .as_ref()
            .ok_or_else(|| "the control plane is not running".to_owned())
    }

    /// Stops the apps and sidecars (in parallel), then the control plane, then sweeps the process group.
    /// Returns warnings about children that had to be killed or did not exit cleanly.
    pub(crate) async fn stop(self) -> Vec<String> {
        let stops = self.children.into_iter().map(Process::stop);
        let mut warnings: Vec<String> = futures_util::future::join_all(stops)
            .await
            .into_iter()
            .flatten()
            .collect();
        if let Some(cp) = self.cp {
            warnings.extend(cp.process.stop().await);
        }
        self.guard.sweep().await;
        warnings
    }
}

/// What the `--ready-file` and the banner describe; written again after each control plane restart.
pub(crate) struct ReadyFile {
    /// Where (none: not asked for).
    pub(crate) path: Option<PathBuf>,
    /// Each workload with its addresses and process ids.
    pub(crate) workloads: Vec<Started>,
    /// The data directory.
    pub(crate) data_dir: PathBuf,
    /// Whether it is removed on exit.
    pub(crate) temporary: bool,
    /// Ports of the layout that were busy.
    pub(crate) moved: Vec<ports::Moved>,
}

impl ReadyFile {
    /// The summary of the mesh as it is now.
    pub(crate) fn summary<'a>(&'a self, mesh: &Mesh) -> banner::Summary<'a> {
        let (addrs, pid, restarts) = mesh
            .cp
            .as_ref()
            .map_or(([super::control::loopback(0); 3], 0, 0), |cp| {
                (cp.launch().addrs, cp.process.pid, cp.restarts)
            });
        let [discovery, admin, metrics] = addrs;
        banner::Summary {
            control_plane: [admin, discovery, metrics],
            control_plane_pid: pid,
            control_plane_restarts: restarts,
            process_group: mesh.guard.pgid,
            workloads: self.workloads.clone(),
            data_dir: &self.data_dir,
            temporary: self.temporary,
            moved: &self.moved,
        }
    }

    /// Writes the ready file, if one was asked for.
    pub(crate) fn write(&self, mesh: &Mesh) -> Result<(), String> {
        match &self.path {
            Some(path) => banner::write_ready_file(path, &self.summary(mesh).json()),
            None => Ok(()),
        }
    }
}

/// Runs until a signal (`Ok`), or until an app, a sidecar or the guard stops on its own, or the control
/// plane cannot be brought back (`Err`).
pub(crate) async fn supervise(
    mesh: &mut Mesh,
    ready: &ReadyFile,
    signal: &mut Pin<&mut impl Future<Output = ()>>,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut restarts: Vec<Instant> = Vec::new();
    loop {
        tokio::select! {
            () = signal.as_mut() => return Ok(()),
            _ = tick.tick() => {}
        }
        for child in &mut mesh.children {
            if let Some(status) = child.exited() {
                return Err(child.died(status));
            }
        }
        if mesh.guard.exited() {
            return Err(
                "the process-group guard exited (was it killed?): stopping, since nothing would stop the children if shoal up died"
                    .to_owned(),
            );
        }
        let Some(cp) = mesh.cp.as_mut() else {
            return Err("the control plane is not running".to_owned());
        };
        let Some(status) = cp.process.exited() else {
            continue;
        };
        restarts.retain(|at| at.elapsed() < RESTART_WINDOW);
        if restarts.len() >= MAX_RESTARTS {
            return Err(format!(
                "{}\n(it was restarted {MAX_RESTARTS} times within {RESTART_WINDOW:?}; not again)",
                cp.process.died(status)
            ));
        }
        restarts.push(Instant::now());
        progress(&format!(
            "the control plane (pid {}) exited ({status}); restarting it on the same data directory and ports (the sidecars keep serving their last configuration meanwhile; its log: {})",
            cp.process.pid,
            cp.process.log.display()
        ));
        let began = Instant::now();
        tokio::select! {
            () = signal.as_mut() => return Ok(()),
            restarted = cp.restart() => restarted?,
        }
        progress(&format!(
            "control plane restarted (pid {}), ready on the same ports in {:.1} s; the sidecars reconnect by themselves",
            cp.process.pid,
            began.elapsed().as_secs_f64()
        ));
        ready.write(mesh)?;
    }
}
