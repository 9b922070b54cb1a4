//! The control plane, in-process: the same [`ControlPlane`] the `shoal-control-plane` binary serves, on
//! loopback, with its store in the mesh's data directory and its log in a file.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::model::Resource;
use crate::server::config::env;
use crate::server::{Config, ControlPlane, ServerError, Settings};
use crate::store::Store;

/// A serving control plane; [`stop`](Self::stop) shuts it down gracefully.
pub struct Running {
    /// The Admin API (what `shoalctl` calls).
    pub admin: SocketAddr,
    /// Discovery (what the sidecars connect to, over TLS).
    pub discovery: SocketAddr,
    /// The trust anchors the sidecars verify discovery with (`trust-anchors.pem` in the store's directory).
    pub anchors_file: PathBuf,
    /// `/metrics`, `/ready`, `/live`.
    pub metrics: SocketAddr,
    /// The store, for applying the demo's resources without a round trip.
    pub store: Store,
    /// The CA and join tokens, for the sidecars' credentials.
    pub identity: crate::identity::Identity,
    stop: Option<oneshot::Sender<()>>,
    /// The serving task; it ends only on `stop` or when a listener fails.
    pub task: JoinHandle<Result<(), ServerError>>,
}

/// Opens the store under `data_dir` and serves on the given loopback ports.
pub async fn start(data_dir: &Path, ports: [u16; 3]) -> Result<Running, String> {
    // Through `Settings`, like the binary: every setting not given here keeps its documented default.
    let addr = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port)).to_string();
    let settings = Settings::from_map([
        (env::DISCOVERY_ADDR, addr(ports[0])),
        (env::ADMIN_ADDR, addr(ports[1])),
        (env::METRICS_ADDR, addr(ports[2])),
        (env::DATA_DIR, data_dir.display().to_string()),
    ]);
    let config = settings
        .and_then(|s| Config::from_settings(&s))
        .map_err(|e| format!("the control plane's configuration: {e}"))?;
    let cp = ControlPlane::bind(&config)
        .await
        .map_err(|e| format!("the control plane cannot start: {e}"))?;
    let (admin, discovery, metrics) = (cp.admin_addr(), cp.discovery_addr(), cp.metrics_addr());
    let store = cp.store().clone();
    let identity = cp.identity().clone();
    let anchors_file = cp.anchors_file().to_path_buf();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(cp.serve(async {
        let _ = stopped.await;
    }));
    Ok(Running {
        admin,
        discovery,
        anchors_file,
        metrics,
        store,
        identity,
        stop: Some(stop),
        task,
    })
}

impl Running {
    /// Stops accepting, ends the sidecars' streams, and waits for in-flight calls (at most the server's
    /// own grace period).
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the control plane failed: {e}")),
            Err(e) => Err(format!("the control plane task failed: {e}")),
        }
    }
}

/// Applies a YAML stream (the `shoalctl apply` format) straight to the store: services first, so that what
/// names them validates. Blocking (each write is fsynced): call from `spawn_blocking`.
pub fn apply(store: &Store, yaml: &str) -> Result<usize, String> {
    let mut parsed = crate::cli::yaml::parse(yaml)?;
    parsed.sort_by_key(|p| p.resource.kind != shoal_proto::v1::ResourceKind::Service as i32);
    let count = parsed.len();
    for item in parsed {
        let subject = format!("document {}", item.index);
        let resource = Resource::try_from(item.resource).map_err(|e| format!("{subject}: {e}"))?;
        store
            .apply(resource, None)
            .map_err(|e| format!("{subject}: {e}"))?;
    }
    Ok(count)
}

/// A single-use join token for a demo workload's sidecar (service account = the workload's name).
/// Blocking (the token is stored before it is returned): call from `spawn_blocking`.
pub fn join_token(identity: &crate::identity::Identity, workload: &str) -> Result<String, String> {
    identity
        .join_tokens
        .create("default", workload, None, 1)
        .map(|t| t.token)
        .map_err(|e| format!("cannot create a join token for {workload}: {e}"))
}

/// Where the control plane keeps its store inside the mesh's data directory.
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("control-plane")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_mesh_and_the_printed_routes_are_accepted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path().join("store.redb")).expect("store");
        let mesh = super::super::topology::mesh_yaml(|_| 15106, "cluster.local");
        assert_eq!(apply(&store, &mesh).expect("mesh applies"), 12);
        for percent in [0, 80, 100] {
            let route = super::super::topology::split_route(percent);
            apply(&store, &route).unwrap_or_else(|e| panic!("{route}: {e}"));
        }
        // Applying again (a restart with --data-dir) overwrites rather than fails.
        apply(&store, &mesh).expect("mesh applies twice");
    }
}
