//! Discovery: the control-plane client that feeds the state store, and the on-demand lookups the
//! data path makes the first time it meets a destination.
//!
//! - [`client`]: one long-lived stream to the control plane (`shoal.v1.Discovery`): `Hello` with
//!   the versions held, subscriptions, ACK/NACK, jittered exponential backoff on failure. Updates
//!   apply atomically through the same builder the static file uses, resource by resource: the
//!   valid resources of a response apply, each invalid one is NACKed by name and keeps its last
//!   good version; while the control plane is away nothing changes.
//! - [`resources`]: the resources held, the per-resource checks, and their translation into the
//!   state description.

mod client;
mod resources;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use shoal_proto::v1::{self, ResourceType};
use tokio::sync::{mpsc, watch};

use crate::control_plane::ControlPlane;
use crate::identity::Identity;
use crate::state::Store;
use crate::sync::lock;
pub use resources::Key;

/// Settings of the discovery client.
#[derive(Debug, Clone, Serialize)]
pub struct DiscoveryConfig {
    /// The control plane's discovery endpoint (`https://host:port`, or `http://host:port` for plaintext).
    pub addr: String,
    /// This proxy's id (shown by `shoalctl status`).
    pub proxy_id: String,
    /// The workload's namespace; also the default namespace of bare service names.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
    /// The workload's service name (empty for a pure client).
    pub service_name: String,
    /// How long the first request to an unknown destination waits for the control plane.
    #[serde(serialize_with = "crate::config::serialize_duration")]
    pub lookup_timeout: Duration,
}

/// What `/config` shows about discovery.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiscoveryStatus {
    /// Whether the stream is up.
    pub connected: bool,
    /// The last connection or stream error.
    pub last_error: Option<String>,
    /// Updates applied and rejected.
    pub acked: u64,
    /// Updates rejected (NACKed).
    pub nacked: u64,
    /// Resources subscribed.
    pub subscriptions: usize,
}

/// The handle the data path and admin use.
#[derive(Debug)]
pub struct Discovery {
    cfg: DiscoveryConfig,
    subscribe_tx: mpsc::UnboundedSender<Vec<Key>>,
    /// Per subscribed key: whether its first answer arrived (service keys: with their routes'
    /// backends resolved too).
    answers: Mutex<HashMap<Key, watch::Sender<bool>>>,
    /// ADDRESS answers: destination → (service, port); `None` when not in the mesh.
    bindings: Mutex<HashMap<SocketAddr, Option<(String, u16)>>>,
    status: Mutex<DiscoveryStatus>,
    /// Receives the trust bundle of its trust domain.
    identity: Option<Arc<Identity>>,
    /// Opens the stream; also trusts the pushed bundle for the next connection.
    control_plane: Arc<ControlPlane>,
}

/// The keys a proxy subscribes to for one outbound service.
fn service_keys(qualified: &str) -> Vec<Key> {
    [
        ResourceType::Service,
        ResourceType::Endpoints,
        ResourceType::Route,
        ResourceType::BackendPolicy,
        ResourceType::FaultInjection,
        // Its outbound limits; its inbound ones are kept by its own proxies (which subscribe to
        // their own service's), and a caller ignores them.
        ResourceType::RateLimit,
        ResourceType::Mirror,
    ]
    .into_iter()
    .map(|t| (t as i32, qualified.to_string()))
    .collect()
}

impl Discovery {
    /// Starts the client; the store receives every accepted update, `identity` the trust
    /// bundle. The proxy's own service (its inbound mTLS mode) is subscribed at once, the trust
    /// bundle once the first certificate names the trust domain.
    pub fn start(
        cfg: DiscoveryConfig,
        store: Arc<Store>,
        identity: Option<Arc<Identity>>,
        control_plane: Arc<ControlPlane>,
    ) -> Arc<Self> {
        let (subscribe_tx, subscribe_rx) = mpsc::unbounded_channel();
        let own = (!cfg.service_name.is_empty())
            .then(|| format!("{}.{}", cfg.service_name, cfg.namespace));
        let d = Arc::new(Self {
            cfg,
            subscribe_tx,
            answers: Mutex::default(),
            bindings: Mutex::default(),
            status: Mutex::default(),
            identity: identity.clone(),
            control_plane,
        });
        if let Some(own) = own {
            let mut keys = service_keys(&own);
            keys.push((ResourceType::AuthorizationPolicy as i32, own.clone()));
            keys.push((ResourceType::RateLimit as i32, own));
            d.subscribe(keys);
        }
        if let Some(identity) = identity {
            let d = d.clone();
            let mut domain = identity.trust_domain();
            tokio::spawn(async move {
                // The current value first: a certificate from files is in before this task runs,
                // and `changed` reports only later ones.
                loop {
                    let td = domain.borrow_and_update().clone();
                    if let Some(td) = td {
                        d.subscribe(vec![(ResourceType::TrustBundle as i32, td)]);
                    }
                    if domain.changed().await.is_err() {
                        break;
                    }
                }
            });
        }
        tokio::spawn(client::run(d.clone(), store, subscribe_rx));
        d
    }

    /// Status for `/config`.
    pub fn status(&self) -> DiscoveryStatus {
        let mut s = lock(&self.status).clone();
        s.subscriptions = lock(&self.answers).len();
        s
    }

    /// Subscribes to `keys` (those not yet subscribed); returns a watcher per key.
    fn subscribe(&self, keys: Vec<Key>) -> Vec<watch::Receiver<bool>> {
        let mut answers = lock(&self.answers);
        let mut new = Vec::new();
        let rx = keys
            .into_iter()
            .map(|k| {
                answers
                    .entry(k.clone())
                    .or_insert_with(|| {
                        new.push(k);
                        watch::channel(false).0
                    })
                    .subscribe()
            })
            .collect();
        drop(answers);
        if !new.is_empty() {
            let _ = self.subscribe_tx.send(new);
        }
        rx
    }

    /// Waits for the first answer about `key`, at most the lookup timeout. Once a wait has timed
    /// out (control plane away or slow) the key counts as answered, so later requests pass
    /// through at once instead of each waiting again; the real answer still applies when it comes.
    async fn wait(&self, key: &Key, mut rx: watch::Receiver<bool>) {
        let waited =
            tokio::time::timeout(self.cfg.lookup_timeout, rx.wait_for(|answered| *answered)).await;
        if waited.is_err() {
            if let Some(tx) = lock(&self.answers).get(key) {
                tx.send_replace(true);
            }
            metrics::counter!("shoal_discovery_lookup_timeouts_total").increment(1);
        }
    }

    /// Makes sure the service `qualified` (`name.namespace`) is subscribed and waits (at most
    /// the lookup timeout) for the control plane's first answer about it.
    pub async fn ensure_service(&self, qualified: &str) {
        let keys = service_keys(qualified);
        let mut rx = self.subscribe(keys.clone());
        self.wait(&keys[0], rx.swap_remove(0)).await;
    }

    /// Transparent mode: which service (and port) is behind `addr`, asking the control plane the
    /// first time; the service is subscribed too.
    pub async fn ensure_address(&self, addr: SocketAddr) -> Option<(String, u16)> {
        let key = (ResourceType::Address as i32, addr.to_string());
        let rx = self.subscribe(vec![key.clone()]).pop()?;
        self.wait(&key, rx).await;
        let binding = lock(&self.bindings).get(&addr).cloned().flatten()?;
        self.ensure_service(&binding.0).await;
        Some(binding)
    }

    /// The qualified service name an HTTP authority's host names, if it looks like a service
    /// (`name`, `name.ns`, `name.ns.svc[.cluster.local]`).
    pub fn service_for_host(&self, host: &str) -> Option<String> {
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            return None;
        }
        let mut labels = host.split('.');
        let name = labels.next().filter(|n| !n.is_empty())?;
        let namespace = labels.next().unwrap_or(&self.cfg.namespace);
        Some(format!(
            "{}.{}",
            name.to_ascii_lowercase(),
            namespace.to_ascii_lowercase()
        ))
    }

    fn hello(&self, held: Vec<v1::HeldResource>) -> v1::DiscoveryRequest {
        v1::DiscoveryRequest {
            request: Some(v1::discovery_request::Request::Hello(v1::Hello {
                proxy_id: self.cfg.proxy_id.clone(),
                workload: Some(v1::WorkloadIdentity {
                    namespace: self.cfg.namespace.clone(),
                    service_account: self.cfg.service_account.clone(),
                    service_name: self.cfg.service_name.clone(),
                }),
                node: std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                proxy_version: env!("CARGO_PKG_VERSION").to_string(),
                held,
            })),
        }
    }
}
