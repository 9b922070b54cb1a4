//! The control plane: the real `shoal-control-plane` binary in a process of its own, as in production, on
//! loopback ports with its store in the mesh's data directory. `shoal up` talks to it only as an operator
//! would, through the Admin API (applying the demo's resources, creating the sidecars' join tokens), and
//! restarts it on the same data directory and ports if it dies ([`ControlPlane::restart`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use shoal_proto::v1;
use shoal_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use super::process::{self, Process};
use crate::server::config::env;

/// How the control plane is started: the same every time, so a restart serves the same store on the same
/// ports.
pub(crate) struct Launch {
    /// The `shoal-control-plane` binary.
    pub(crate) bin: PathBuf,
    /// Its data directory (`<data dir>/control-plane`).
    pub(crate) store_dir: PathBuf,
    /// Discovery, Admin API, metrics.
    pub(crate) addrs: [SocketAddr; 3],
    /// Its log (`<data dir>/logs/control-plane.log`).
    pub(crate) log: PathBuf,
    /// The process group it joins (the guard's).
    pub(crate) pgid: u32,
}

/// The running control plane process.
pub(crate) struct ControlPlane {
    launch: Launch,
    /// The process; replaced by [`Self::restart`].
    pub(crate) process: Process,
    /// How many times it was restarted.
    pub(crate) restarts: u32,
}

impl Launch {
    /// The Admin API (what `shoalctl` calls).
    pub(crate) fn admin(&self) -> SocketAddr {
        self.addrs[1]
    }

    /// Discovery (what the sidecars connect to, over TLS).
    pub(crate) fn discovery(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// `/metrics`, `/ready`, `/live`.
    pub(crate) fn metrics(&self) -> SocketAddr {
        self.addrs[2]
    }

    /// The trust anchors the sidecars verify discovery with (written by the control plane before it is
    /// ready).
    pub(crate) fn anchors_file(&self) -> PathBuf {
        crate::identity::anchors::path(&self.store_dir)
    }

    fn spawn(&self, append: bool) -> Result<Process, String> {
        let mut cmd = process::command(&self.bin);
        // Every setting it is not given here keeps its documented default (docs/control-plane.md).
        cmd.envs([
            (env::DISCOVERY_ADDR, self.discovery().to_string()),
            (env::ADMIN_ADDR, self.admin().to_string()),
            (env::METRICS_ADDR, self.metrics().to_string()),
            (env::DATA_DIR, self.store_dir.display().to_string()),
        ]);
        Process::spawn(
            "control plane".to_owned(),
            cmd,
            self.log.clone(),
            self.pgid,
            append,
        )
    }
}

impl ControlPlane {
    /// Starts it (then [`Self::wait_ready`]).
    pub(crate) fn spawn(launch: Launch) -> Result<Self, String> {
        let process = launch.spawn(false)?;
        Ok(Self {
            launch,
            process,
            restarts: 0,
        })
    }

    /// Starts it again, on the same data directory and ports, appending to the same log, and waits until
    /// it is ready.
    pub(crate) async fn restart(&mut self) -> Result<(), String> {
        self.process = self.launch.spawn(true)?;
        self.restarts += 1;
        self.wait_ready().await
    }

    /// Waits until `/ready` answers 200; fails if it exits first or is not ready in time.
    pub(crate) async fn wait_ready(&mut self) -> Result<(), String> {
        let metrics = self.launch.metrics();
        let ready = || async move {
            process::http_get(metrics, "shoal", "/ready")
                .await
                .is_some_and(|r| r.0 == 200)
        };
        self.process
            .wait_ready(&format!("http://{metrics}/ready is not 200"), ready)
            .await
    }

    /// How it is started.
    pub(crate) fn launch(&self) -> &Launch {
        &self.launch
    }

    async fn admin(&self) -> Result<AdminClient<Channel>, String> {
        let server = format!("http://{}", self.launch.admin());
        crate::cli::client::connect(&server)
            .await
            .map_err(|e| e.to_string())
    }

    /// The trust domain of the identities its CA issues.
    pub(crate) async fn trust_domain(&self) -> Result<String, String> {
        let status = self
            .admin()
            .await?
            .ca_status(v1::CaStatusRequest::default())
            .await
            .map_err(|s| format!("the control plane's CA status: {}", s.message()))?;
        Ok(status.into_inner().trust_domain)
    }

    /// Applies a YAML stream (the `shoalctl apply` format) through the Admin API: services first, so that
    /// what names them validates. Returns how many resources it applied.
    pub(crate) async fn apply(&self, yaml: &str) -> Result<usize, String> {
        let mut parsed = crate::cli::yaml::parse(yaml)?;
        parsed.sort_by_key(|p| p.resource.kind != v1::ResourceKind::Service as i32);
        let count = parsed.len();
        let mut admin = self.admin().await?;
        for item in parsed {
            let subject = format!("document {}", item.index);
            let request = v1::ApplyRequest {
                resource: Some(item.resource),
            };
            admin
                .apply(request)
                .await
                .map_err(|s| format!("{subject}: {}", s.message()))?;
        }
        Ok(count)
    }

    /// A single-use join token for a demo workload's sidecar (service account = the workload's name).
    pub(crate) async fn join_token(&self, workload: &str) -> Result<String, String> {
        let request = v1::CreateJoinTokenRequest {
            namespace: "default".to_owned(),
            service_account: workload.to_owned(),
            ttl_seconds: 0,
            max_uses: 1,
        };
        let created = self
            .admin()
            .await?
            .create_join_token(request)
            .await
            .map_err(|s| format!("cannot create a join token for {workload}: {}", s.message()))?;
        Ok(created.into_inner().token)
    }
}

/// Where the control plane keeps its store inside the mesh's data directory.
pub(crate) fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("control-plane")
}

/// A loopback address.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    /// What `shoal up` applies, and the routes its banner prints, pass the control plane's validation.
    #[test]
    fn the_demo_mesh_and_the_printed_routes_are_accepted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path().join("store.redb")).expect("store");
        let apply = |yaml: &str| -> Result<usize, String> {
            let mut parsed = crate::cli::yaml::parse(yaml)?;
            parsed
                .sort_by_key(|p| p.resource.kind != shoal_proto::v1::ResourceKind::Service as i32);
            for item in &parsed {
                let resource = crate::model::Resource::try_from(item.resource.clone())
                    .map_err(|e| e.to_string())?;
                store.apply(resource, None).map_err(|e| e.to_string())?;
            }
            Ok(parsed.len())
        };
        let mesh = super::super::topology::mesh_yaml(|_| 15106, "cluster.local");
        assert_eq!(apply(&mesh).expect("mesh applies"), 12);
        for percent in [0, 80, 100] {
            let route = super::super::topology::split_route(percent);
            apply(&route).unwrap_or_else(|e| panic!("{route}: {e}"));
        }
        // Applying again (a restart with --data-dir) overwrites rather than fails.
        apply(&mesh).expect("mesh applies twice");
    }
}
