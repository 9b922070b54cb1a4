//! The `shoal-control-plane` process: configuration, then the assembly of the store, the Admin API, the
//! Discovery listener and the metrics listener, and graceful shutdown.
//!
//! ```text
//!   SHOAL_CP_ADMIN_ADDR     127.0.0.1:15011  gRPC  Admin      (operators, shoalctl)
//!   SHOAL_CP_DISCOVERY_ADDR 0.0.0.0:15010    gRPC  Discovery + Identity (proxies), TLS (discovery_tls)
//!   SHOAL_CP_METRICS_ADDR   0.0.0.0:15014    HTTP  /metrics /ready /live
//!   SHOAL_CP_DATA_DIR       ./shoal-data     the store's data file, store.redb
//!   SHOAL_CP_ENDPOINTS_FILE (unset)          static endpoints and DNS names (crate::sources)
//!   SHOAL_CP_KUBERNETES     false            Services, EndpointSlices, Pods from the API server
//!   SHOAL_CP_WEBHOOK_ADDR   0.0.0.0:15017    HTTPS /inject: the sidecar injector (webhook), only with
//!                                            SHOAL_CP_WEBHOOK_CERT_FILE + SHOAL_CP_WEBHOOK_KEY_FILE
//! ```

mod admission;
pub mod config;
pub mod discovery_listener;
pub mod discovery_tls;
mod http;
pub mod logging;
pub mod metrics;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use config::{Config, ConfigError, LogFormat, Settings, WebhookConfig};
pub use discovery_listener::PeerInfo;

use crate::admin::{AdminService, StatusSource};
use crate::identity::server_cert::ServerCert;
use crate::identity::{CaSettings, Identity, RootFiles, SystemClock, anchors, bundle};
use crate::sources::kubernetes::KubernetesSource;
use crate::store::{self, Store};

/// How long shutdown waits for in-flight calls and streams before the process exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the control plane could not start or keep serving. Each names the setting or file to check.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory cannot be created.
    #[error("cannot create the data directory {} ({setting}): {source}", path.display(), setting = config::env::DATA_DIR)]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store cannot be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] store::Error),
    /// A listener cannot bind.
    #[error("cannot listen on {addr} ({setting}): {source}; is another process using the port?")]
    Bind {
        /// The setting that names the address.
        setting: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The endpoints file (`SHOAL_CP_ENDPOINTS_FILE`) is missing or invalid at start-up.
    #[error("{0} ({setting})", setting = config::env::ENDPOINTS_FILE)]
    Sources(#[from] crate::sources::FileError),
    /// The Kubernetes source cannot start (`SHOAL_CP_KUBERNETES_*`: the message names the setting).
    #[error("cannot start discovery from Kubernetes: {0}")]
    Kubernetes(#[from] crate::sources::kubernetes::KubernetesError),
    /// The CA cannot be loaded or created (SHOAL_CP_CA_CERT_FILE / SHOAL_CP_CA_KEY_FILE, or the store).
    #[error("cannot start the CA: {0}")]
    Ca(#[from] crate::identity::CaError),
    /// The discovery listener's TLS cannot be set up (its certificate, or the trust anchors file).
    #[error("cannot set up TLS on the discovery listener: {0}")]
    Tls(String),
    /// The sidecar injector cannot start: its certificate files or its configuration file.
    #[error("cannot start the sidecar injector's webhook ({setting}): {message}")]
    Webhook {
        /// The setting naming the file at fault.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A gRPC listener stopped with an error.
    #[error("the {listener} listener failed: {source}")]
    Serve {
        /// `admin` or `discovery`.
        listener: &'static str,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

/// What the discovery listener serves, and where `Admin.Status` learns about proxies.
pub struct DiscoveryParts {
    /// The gRPC services of the discovery listener (Discovery and Identity).
    pub routes: Routes,
    /// Connected proxies and their sync state.
    pub status: Arc<dyn StatusSource>,
}

/// Builds the discovery side over the store.
///
/// DISCOVERY HOOK: this is where the Discovery service is added. Build it over `store`, put its tonic
/// server in `routes` (`Routes::new(service.into_server())`) and return whatever holds the per-proxy sync
/// state as `status` (it implements [`StatusSource`]). Streams must end once `closing` turns true, or
/// shutdown waits [`SHUTDOWN_GRACE`] for them.
fn discovery(
    push_interval: Duration,
    disconnected_grace: Duration,
    store: &Store,
    sources: Option<crate::sources::Sources>,
    // With the control plane's namespace, where its Lease is.
    kubernetes: Option<(KubernetesSource, &str)>,
    identity: &Identity,
    mut closing: watch::Receiver<bool>,
) -> DiscoveryParts {
    let hub = crate::discovery::Hub::with_settings(push_interval, disconnected_grace);
    // ... or services claiming one host, which proxies holding both NACK.
    crate::discovery::hub::warn_conflicting_hosts(store);
    tokio::spawn(hub.clone().follow(store.clone()));
    // The trust bundle is a discovery resource; the upkeep task activates a rotation's new root once the
    // proxies connected here have it, and retires rotated-out roots on time.
    tokio::spawn(bundle::publish(
        identity.clone(),
        hub.clone(),
        closing.clone(),
    ));
    // With several replicas (Kubernetes mode), only the holder of the Lease runs CA rotation; alone, this one.
    let leader = match &kubernetes {
        Some((kubernetes, namespace)) => kubernetes.elect(namespace, closing.clone()),
        None => watch::channel(true).1,
    };
    // ... and every replica follows the CA record they share (a Secret), and reports whether its own proxies
    // have a pending root, so the holder activates it only once the proxies of every replica have it.
    let replicas = kubernetes.as_ref().map(|(kubernetes, namespace)| {
        tokio::spawn(crate::identity::ca::backend::follow(
            identity.ca.clone(),
            crate::identity::ca::backend::FOLLOW_INTERVAL,
            closing.clone(),
        ));
        kubernetes.ca_reports(
            namespace,
            identity.clone(),
            hub.clone(),
            leader.clone(),
            closing.clone(),
        )
    });
    tokio::spawn(bundle::upkeep(
        identity.clone(),
        hub.clone(),
        bundle::UPKEEP_INTERVAL,
        leader,
        replicas,
        closing.clone(),
    ));
    // Endpoint sources (SHOAL_CP_ENDPOINTS_FILE) publish into the same hub as the store.
    if let Some(sources) = sources {
        sources.start(&hub, closing.clone());
    }
    // ... and so does the Kubernetes source (SHOAL_CP_KUBERNETES=true), whose client also reviews proxies'
    // service-account tokens for Certify.
    let token_verifier = kubernetes.as_ref().map(|(k, _)| {
        Arc::new(k.token_verifier()) as Arc<dyn crate::identity::credentials::CredentialVerifier>
    });
    if let Some((kubernetes, _)) = kubernetes {
        crate::sources::spawn(Box::new(kubernetes), hub.clone(), closing.clone());
    }
    let on_close = hub.clone();
    tokio::spawn(async move {
        let _ = closing.wait_for(|closed| *closed).await;
        on_close.shutdown();
    });
    let routes = Routes::new(crate::discovery::DiscoveryService::new(hub.clone()).into_server())
        .add_service(identity.certify_service(token_verifier).into_server());
    DiscoveryParts {
        routes,
        status: hub,
    }
}

/// A control plane whose store is open and whose listeners are bound, ready to [`serve`](Self::serve).
pub struct ControlPlane {
    store: Store,
    admin: TcpListener,
    discovery: TcpListener,
    metrics: TcpListener,
    /// The endpoint sources, loaded in `bind` so that an invalid endpoints file stops start-up.
    sources: Option<crate::sources::Sources>,
    /// The Kubernetes source, its client built in `bind` so that a bad setting stops start-up.
    kubernetes: Option<KubernetesSource>,
    /// The control plane's namespace (`SHOAL_CP_NAMESPACE`): where its Lease is, in Kubernetes mode.
    namespace: String,
    /// The CA and join tokens, loaded (or created) in `bind`.
    identity: Identity,
    /// See [`Config::push_interval`].
    push_interval: Duration,
    /// See [`Config::disconnected_proxy_grace`].
    disconnected_grace: Duration,
    /// The discovery listener's certificate, issued in `bind` by the CA.
    server_cert: Arc<ServerCert>,
    /// See [`Config::discovery_plaintext`].
    discovery_plaintext: bool,
    /// See [`Config::admin_max_request_bytes`].
    admin_max_request_bytes: usize,
    /// `trust-anchors.pem` in the data directory.
    anchors_file: PathBuf,
    /// The sidecar injector's webhook, when enabled.
    webhook: Option<Webhook>,
}

/// The webhook's listener, certificate and injector, ready in `bind`.
struct Webhook {
    listener: TcpListener,
    cert: Arc<webhook::WebhookCert>,
    injector: crate::inject::Injector,
}

impl ControlPlane {
    /// Creates the data directory if needed, opens the store and binds the three listeners (port 0 binds a
    /// free port: see [`Self::admin_addr`] and friends).
    pub async fn bind(config: &Config) -> Result<Self, ServerError> {
        let dir = config.data_dir.clone();
        let path = config.store_path();
        let opened = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|source| ServerError::DataDir { path: dir, source })?;
            Store::open(&path).map_err(ServerError::Store)
        });
        let store = opened.await.map_err(|e| ServerError::DataDir {
            path: config.data_dir.clone(),
            source: std::io::Error::other(e),
        })??;
        let sources = match &config.endpoints_file {
            Some(path) => Some(crate::sources::Sources::load(path).await?),
            None => None,
        };
        let kubernetes = match &config.kubernetes {
            Some(settings) => {
                Some(KubernetesSource::connect(settings, config.trust_domain.clone()).await?)
            }
            None => None,
        };
        // In Kubernetes mode the replicas share one CA record, in a Secret.
        let shared = kubernetes.as_ref().map(|k| {
            Arc::new(k.ca_backend(&config.namespace, config.ca_state_timeout))
                as Arc<dyn crate::identity::ca::RecordBackend>
        });
        let mut identity = open_identity(config, store.clone(), shared).await?;
        // ...and the join tokens, in another Secret: a token created through one replica works on all.
        if let Some(k) = &kubernetes {
            identity.join_tokens = crate::identity::JoinTokens::shared(
                Arc::new(k.join_tokens_backend(&config.namespace)),
                identity.clock.clone(),
            );
        }
        let server_cert = ServerCert::new(&identity, &config.namespace)?;
        // Written before the listeners are ready, so whoever waits for readiness finds it.
        let anchors_file = anchors::path(&config.data_dir);
        anchors::write(&anchors_file, &identity.ca.roots_pem()).map_err(|e| {
            ServerError::Tls(format!(
                "cannot write the trust anchors file {}: {e}",
                anchors_file.display()
            ))
        })?;
        let webhook = match &config.webhook {
            Some(settings) => Some(open_webhook(config, settings).await?),
            None => None,
        };
        Ok(Self {
            webhook,
            store,
            sources,
            kubernetes,
            namespace: config.namespace.clone(),
            identity,
            server_cert,
            discovery_plaintext: config.discovery_plaintext,
            admin_max_request_bytes: config.admin_max_request_bytes,
            anchors_file,
            push_interval: config.push_interval,
            disconnected_grace: config.disconnected_proxy_grace,
            admin: bind(config::env::ADMIN_ADDR, config.admin_addr).await?,
            discovery: bind(config::env::DISCOVERY_ADDR, config.discovery_addr).await?,
            metrics: bind(config::env::METRICS_ADDR, config.metrics_addr).await?,
        })
    }

    /// The bound Admin API address.
    pub fn admin_addr(&self) -> SocketAddr {
        local_addr(&self.admin)
    }

    /// The bound Discovery address.
    pub fn discovery_addr(&self) -> SocketAddr {
        local_addr(&self.discovery)
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        local_addr(&self.metrics)
    }

    /// The bound webhook address, when the webhook is enabled.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.as_ref().map(|w| local_addr(&w.listener))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The CA and join tokens.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The public trust anchors file (`trust-anchors.pem` in the data directory): the roots proxies
    /// verify the discovery listener with.
    pub fn anchors_file(&self) -> &std::path::Path {
        &self.anchors_file
    }

    /// The discovery listener's certificate.
    pub fn server_cert(&self) -> &Arc<ServerCert> {
        &self.server_cert
    }

    /// Serves until `shutdown` completes, then stops accepting, ends `Watch` and discovery streams, and
    /// waits up to [`SHUTDOWN_GRACE`] for in-flight calls.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let (admin_addr, discovery_addr, metrics_addr) = (
            self.admin_addr(),
            self.discovery_addr(),
            self.metrics_addr(),
        );
        let webhook_addr = self.webhook_addr().map(|a| a.to_string());
        let prometheus = metrics::recorder();
        let (close, closing) = watch::channel(false);
        let kubernetes_policies = self.kubernetes.is_some();
        let parts = discovery(
            self.push_interval,
            self.disconnected_grace,
            &self.store,
            self.sources,
            self.kubernetes.map(|k| (k, self.namespace.as_str())),
            &self.identity,
            closing.clone(),
        );
        let mut admin = AdminService::with_identity(
            self.store.clone(),
            parts.status,
            Some(self.identity.clone()),
        );
        if kubernetes_policies {
            admin = admin.with_policies_from_kubernetes();
        }
        let ready = Arc::new(AtomicBool::new(false));
        let clients = discovery_tls::BundleClientVerifier::new(
            Arc::new(rustls::crypto::ring::default_provider()),
            &self.identity.ca.roots_pem(),
        )
        .map_err(ServerError::Tls)?;
        let clients = Arc::new(clients);
        let tls = discovery_tls::server_config(self.server_cert.clone(), clients.clone())
            .map_err(ServerError::Tls)?;
        tokio::spawn(clients.follow(self.identity.clone(), closing.clone()));
        tokio::spawn(self.server_cert.clone().maintain(closing.clone()));
        tokio::spawn(anchors::follow(
            self.identity.clone(),
            self.anchors_file.clone(),
            closing.clone(),
        ));

        tokio::spawn(http::serve(
            self.metrics,
            prometheus.clone(),
            ready.clone(),
            closing.clone(),
        ));
        tokio::spawn(upkeep(prometheus, closing.clone()));
        if let Some(hook) = self.webhook {
            let tls = webhook::server_config(hook.cert.clone()).map_err(|message| {
                ServerError::Webhook {
                    setting: config::env::WEBHOOK_CERT_FILE,
                    message,
                }
            })?;
            tokio::spawn(hook.cert.follow(closing.clone()));
            tokio::spawn(webhook::serve(
                hook.listener,
                tls,
                hook.injector,
                self.identity.clone(),
                closing.clone(),
            ));
        }
        let admin_server = Server::builder()
            .add_service(
                (admin.clone().into_server())
                    .max_decoding_message_size(self.admin_max_request_bytes),
            )
            .serve_with_incoming_shutdown(TcpIncoming::from(self.admin), closed(closing.clone()));
        let discovery_server = Server::builder()
            .add_routes(parts.routes)
            .serve_with_incoming_shutdown(
                discovery_listener::incoming(self.discovery, tls, self.discovery_plaintext),
                closed(closing),
            );
        let mut admin_task = tokio::spawn(admin_server);
        let mut discovery_task = tokio::spawn(discovery_server);

        ready.store(true, Ordering::Release);
        let data_file = self.store.path().display().to_string();
        let revision = self.store.revision();
        let discovery_identity = self.server_cert.spiffe_id();
        let discovery_plaintext = self.discovery_plaintext;
        let anchors_file = self.anchors_file.display().to_string();
        let webhook_addr = webhook_addr.unwrap_or_else(|| "off".to_owned());
        tracing::info!(%admin_addr, %discovery_addr, %metrics_addr, %webhook_addr, data_file, revision, discovery_identity, discovery_plaintext, anchors_file, "control plane ready");

        let failed = tokio::select! {
            () = shutdown => None,
            result = &mut admin_task => Some(("admin", result)),
            result = &mut discovery_task => Some(("discovery", result)),
        };
        ready.store(false, Ordering::Release);
        close.send_replace(true);
        admin.close();
        if let Some((listener, result)) = failed {
            return match result {
                Ok(Err(source)) => Err(ServerError::Serve { listener, source }),
                // A listener that stops without error, or panics: shut down like on a signal.
                _ => Ok(()),
            };
        }
        tracing::info!(grace = ?SHUTDOWN_GRACE, "shutting down: finishing in-flight calls");
        let drained = async {
            let _ = admin_task.await;
            let _ = discovery_task.await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
            tracing::warn!("calls still in flight after the grace period; stopping anyway");
        }
        tracing::info!("control plane stopped");
        Ok(())
    }
}

/// Loads the CA (and reads the operator's root files, if configured) on a blocking thread.
async fn open_identity(
    config: &Config,
    store: Store,
    shared: Option<Arc<dyn crate::identity::ca::RecordBackend>>,
) -> Result<Identity, ServerError> {
    let (trust_domain, cert_ttl, files, propagation_timeout) = (
        config.trust_domain.clone(),
        config.cert_ttl,
        config.ca_root.clone(),
        config.ca_propagation_timeout,
    );
    let opened = tokio::task::spawn_blocking(move || {
        let root = match files {
            Some((cert, key)) => Some(RootFiles::read(&cert, &key)?),
            None => None,
        };
        let settings = CaSettings {
            trust_domain,
            cert_ttl,
            root,
            propagation_timeout,
        };
        Identity::open_with(store, shared, settings, Arc::new(SystemClock))
    });
    let identity = opened.await.map_err(|e| {
        ServerError::Ca(crate::identity::CaError::Generate(format!(
            "CA start-up task failed: {e}"
        )))
    })??;
    Ok(identity)
}

/// Loads the injector's configuration and the webhook's certificate, and binds its listener.
async fn open_webhook(config: &Config, settings: &WebhookConfig) -> Result<Webhook, ServerError> {
    let template = match &settings.injector_config_file {
        None => crate::inject::Template::default(),
        Some(path) => {
            let invalid = |message: String| ServerError::Webhook {
                setting: config::env::INJECTOR_CONFIG_FILE,
                message: format!("{}: {message}", path.display()),
            };
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| invalid(e.to_string()))?;
            crate::inject::Template::from_yaml(&text).map_err(invalid)?
        }
    };
    let control_plane = crate::inject::ControlPlaneRef {
        namespace: config.namespace.clone(),
        trust_domain: config.trust_domain.as_str().to_owned(),
    };
    let injector = crate::inject::Injector::new(template, &control_plane).map_err(|message| {
        ServerError::Webhook {
            setting: config::env::INJECTOR_CONFIG_FILE,
            message,
        }
    })?;
    let cert =
        webhook::WebhookCert::load(&settings.cert_file, &settings.key_file).map_err(|message| {
            ServerError::Webhook {
                setting: config::env::WEBHOOK_CERT_FILE,
                message,
            }
        })?;
    Ok(Webhook {
        listener: bind(config::env::WEBHOOK_ADDR, settings.addr).await?,
        cert: Arc::new(cert),
        injector,
    })
}

/// Opens everything and serves until `shutdown` completes.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    ControlPlane::bind(config).await?.serve(shutdown).await
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the control plane")
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn bind(setting: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let bind = TcpListener::bind(addr).await;
    bind.map_err(|source| ServerError::Bind {
        setting,
        addr,
        source,
    })
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    // A bound listener always has a local address; the fallback is never used.
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

async fn closed(mut closing: watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

async fn upkeep(
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    mut closing: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(metrics::UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => prometheus.run_upkeep(),
            _ = closing.wait_for(|closing| *closing) => return,
        }
    }
}
