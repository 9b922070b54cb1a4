//! What `shoal up` prints once the mesh is ready, and the `--ready-file` it writes for scripts and tests.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::Started;
use super::ports::Moved;
use super::topology::{Addrs, split_route};

/// Everything the banner and the ready file describe.
pub(crate) struct Summary<'a> {
    /// The control plane's Admin API, Discovery and metrics addresses.
    pub(crate) control_plane: [SocketAddr; 3],
    /// The control plane's process id (a new one after each restart).
    pub(crate) control_plane_pid: u32,
    /// How many times the control plane was restarted.
    pub(crate) control_plane_restarts: u32,
    /// The process group every child runs in (the guard's pid).
    pub(crate) process_group: u32,
    /// Each workload with its addresses and its app's and sidecar's process ids.
    pub(crate) workloads: Vec<Started>,
    /// The data directory, and whether it is removed on exit.
    pub(crate) data_dir: &'a Path,
    /// Whether the data directory is temporary.
    pub(crate) temporary: bool,
    /// Preferred ports that were busy, and what was used instead.
    pub(crate) moved: &'a [Moved],
}

impl Summary<'_> {
    fn addrs(&self, name: &str) -> Addrs {
        let found = self.workloads.iter().find(|(w, _, _)| w.name == name);
        found.map(|(_, a, _)| *a).unwrap_or(self.workloads[0].1)
    }

    /// The text printed to standard output.
    pub(crate) fn banner(&self) -> String {
        let [admin, discovery, metrics] = self.control_plane;
        let shoalctl = shoalctl_path();
        let server = if admin.port() == 15011 {
            String::new()
        } else {
            format!("export SHOAL_SERVER=http://{admin}     # shoalctl's control plane\n  ")
        };
        let frontend = self.addrs("frontend");
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nshoal up: a local mesh is running. Ctrl-C stops it.\n\n  Every sidecar holds a SPIFFE certificate from the control plane's CA; calls between sidecars ride\n  mTLS, and backend and greeter accept nothing else (strict). The frontend is permissive, for curl.\n"
        );
        let _ = writeln!(
            out,
            "  control plane  admin API {admin}  discovery {discovery}  metrics http://{metrics}/metrics  pid {}",
            self.control_plane_pid
        );
        let _ = writeln!(
            out,
            "  {:<11}{:<17}{:<17}{:<18}sidecar metrics",
            "workload", "app", "sidecar inbound", "sidecar outbound"
        );
        for (w, a, _) in &self.workloads {
            let _ = writeln!(
                out,
                "  {:<11}{:<17}{:<17}{:<18}http://{}/metrics",
                w.name, a.app, a.inbound, a.outbound, a.admin
            );
        }
        for moved in self.moved {
            let _ = writeln!(
                out,
                "  ({}: using {} instead; --base-port N picks another layout)",
                moved.why, moved.used
            );
        }
        let _ = write!(
            out,
            "
Try:
  # the frontend through its sidecar; it calls backend (HTTP) and greeter (gRPC) through the mesh
  curl http://{inbound}/
  # backend through the frontend's sidecar, 20 times: who answers? (x-canary: 1 always gets v2)
  for i in $(seq 20); do curl -s -H 'Host: backend' http://{outbound}/; done | sort | uniq -c
  {server}{shoalctl} get services
  {shoalctl} status
  # shift 20% of backend's traffic to v2 (then 0 and 100), and run the loop again:
  {shoalctl} apply -f - <<EOF
{route}EOF
  # a sidecar's view: its routes and endpoints, its sync state and its identity (SPIFFE id, expiry)
  curl http://{admin}/config
  # the mesh CA, and a CA rotation with no failed request (the new root reaches every sidecar first)
  {shoalctl} ca status
  {shoalctl} ca rotate
  # the control plane is a process of its own: kill it, and shoal up restarts it on the same ports while
  # the sidecars keep serving (run the curl loop meanwhile); `status` shows them SYNCED again
  kill -9 {cp_pid}

Resources applied: {mesh}   logs: {logs}
",
            inbound = frontend.inbound,
            outbound = frontend.outbound,
            cp_pid = self.control_plane_pid,
            route = indent(&split_route(80)),
            admin = frontend.admin,
            mesh = self.data_dir.join("mesh.yaml").display(),
            logs = self.data_dir.join("logs").display(),
        );
        if self.temporary {
            let _ = writeln!(
                out,
                "(a temporary directory, removed on exit; --data-dir DIR keeps it, and the ports for the next run)"
            );
        } else {
            let _ = writeln!(
                out,
                "The next run with this --data-dir uses the same ports ({}).",
                self.data_dir.join(super::ports::FILE).display()
            );
        }
        out
    }

    /// The ready file: JSON with every address and process id.
    pub(crate) fn json(&self) -> serde_json::Value {
        let [admin, discovery, metrics] = self.control_plane;
        let workloads: Vec<_> = self
            .workloads
            .iter()
            .map(|(w, a, [app_pid, proxy_pid])| {
                serde_json::json!({
                    "name": w.name, "app": a.app, "inbound": a.inbound, "outbound": a.outbound,
                    "admin": a.admin, "app_pid": app_pid, "proxy_pid": proxy_pid,
                })
            })
            .collect();
        serde_json::json!({
            "pid": std::process::id(),
            "data_dir": self.data_dir,
            "temporary": self.temporary,
            "process_group": self.process_group,
            "control_plane": {
                "admin": admin, "discovery": discovery, "metrics": metrics,
                "pid": self.control_plane_pid, "restarts": self.control_plane_restarts,
            },
            "workloads": workloads,
        })
    }
}

/// Writes `value` to `path` atomically (a temporary file renamed), so a reader never sees half of it.
pub(crate) fn write_ready_file(path: &Path, value: &serde_json::Value) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write the ready file {}: {e}", path.display()))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// `shoalctl` as the user can type it: next to this executable (relative to the current directory when
/// under it), else from `PATH`.
fn shoalctl_path() -> String {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("shoalctl")))
        .filter(|p| p.exists());
    let Some(path) = beside else {
        return "shoalctl".to_owned();
    };
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(PathBuf::from));
    relative.unwrap_or(path).display().to_string()
}
