//! Assembles the proxy: state, metrics, listeners, admin, signals and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::{Config, Mode, env};
use crate::control_plane::ControlPlane;
use crate::discovery::Discovery;
use crate::drain;
use crate::endpoint::Clients;
use crate::errors::{ProxyError, Reason};
use crate::identity::Identity;
use crate::listen::{self, Accepted};
use crate::logging::LogHandle;
use crate::metrics::{ConnMetrics, Direction, RequestMetrics};
use crate::state::{self, Store};

/// Process-wide state every connection shares (read-only but for the store's snapshots).
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// Services, endpoints and routes.
    pub store: Arc<Store>,
    /// Upstream connection pools.
    pub clients: Arc<Clients>,
    /// Request metrics of the inbound direction, plain text (`tls="false"`).
    pub inbound_metrics: Arc<RequestMetrics>,
    /// Request metrics of the inbound direction, over mesh mTLS (`tls="true"`).
    pub inbound_mtls_metrics: Arc<RequestMetrics>,
    /// Request metrics of outbound traffic to destinations the state does not know.
    pub passthrough_metrics: Arc<RequestMetrics>,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// The log filter.
    pub log: LogHandle,
    /// Starts graceful shutdown.
    pub drain: drain::Trigger,
    /// True once listeners are bound and the state is loaded.
    pub ready: AtomicBool,
    /// Resolved `SHOAL_OUTBOUND_TARGET`.
    pub outbound_target: Option<SocketAddr>,
    /// The control-plane client, when `SHOAL_DISCOVERY_ADDR` is set.
    pub discovery: Option<Arc<Discovery>>,
    /// The workload identity, when one is configured (`SHOAL_IDENTITY_*`).
    pub identity: Option<Arc<Identity>>,
    /// `name.namespace` of the service this proxy fronts (its inbound policies' key).
    pub own_service: String,
    /// The proxy's own listener addresses (forwarding to one would loop).
    own_addrs: Vec<SocketAddr>,
    /// The span exporter, when `SHOAL_TRACING_OTLP_ENDPOINT` is set.
    pub(crate) spans: Option<Arc<crate::otlp::Spans>>,
    /// Mirror copies in flight (`outbound::http::mirror`), under `SHOAL_MIRROR_MAX_IN_FLIGHT`.
    pub(crate) mirrors_in_flight: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// Refuses destinations that are this proxy's own listeners.
    pub fn check_loop(&self, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
        let own = self.own_addrs.iter().any(|o| {
            o.port() == addr.port()
                && (o.ip() == addr.ip() || (o.ip().is_unspecified() && addr.ip().is_loopback()))
        });
        if own {
            return Err(ProxyError::new(
                Reason::ForwardingLoop,
                format!(
                    "{addr} is this proxy's own listener; check the request's Host and the iptables exclusions (proxy uid)"
                ),
            ));
        }
        Ok(addr)
    }

    /// Explicit outbound mode's target for non-HTTP traffic.
    pub fn explicit_target(&self) -> Option<SocketAddr> {
        self.outbound_target
    }

    /// The port of [`Self::explicit_target`].
    pub fn explicit_target_port(&self) -> Option<u16> {
        self.outbound_target.map(|a| a.port())
    }
}

fn resolve_target(config: &Config) -> Result<Option<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    let Some(t) = &config.outbound.target else {
        return Ok(None);
    };
    t.to_socket_addrs()
        .map_err(|e| format!("{}={t}: cannot resolve: {e}", env::OUTBOUND_TARGET))?
        .next()
        .map(Some)
        .ok_or_else(|| format!("{}={t}: resolved to no address", env::OUTBOUND_TARGET))
}

/// Runs the proxy until SIGTERM/SIGINT or `/shutdown`, then drains and returns.
pub async fn run(config: Config, log: LogHandle) -> Result<(), String> {
    let prometheus = crate::metrics::install()?;
    let config = Arc::new(config);
    let store = Store::new(match (&config.state_file, &config.discovery) {
        (Some(p), _) => format!("file:{}", p.display()),
        (None, Some(d)) => format!("discovery:{}", d.addr),
        (None, None) => "none".into(),
    });
    if let Some(zone) = &config.zone {
        store.set_zone(zone);
    }
    let outbound_target = resolve_target(&config)?;
    // One connector for discovery and Certify: both verify the control plane the same way.
    let control_plane = ControlPlane::new(config.control_plane_tls.clone());
    let identity = match &config.identity {
        Some(cfg) => Some(
            Identity::start(cfg.clone(), control_plane.clone())
                .map_err(|e| format!("identity: {e}"))?,
        ),
        None => None,
    };
    // Health checks probe endpoints through the clients requests use (mTLS included): set
    // before the first state is stored.
    let clients = Clients::new(config.http.clone(), identity.clone());
    store.set_prober(crate::balance::Prober::new(
        clients.clone(),
        identity.is_some(),
        config.server_first_ports.clone(),
    ));
    if let Some(path) = &config.state_file {
        state::file::load_into(&store, path).map_err(|e| format!("{}: {e}", env::STATE_FILE))?;
    }
    let discovery = config
        .discovery
        .clone()
        .map(|d| Discovery::start(d, store.clone(), identity.clone(), control_plane.clone()));

    let bind = |mode: Mode, addr: SocketAddr, setting: &str| match mode {
        Mode::Off => Ok(None),
        _ => listen::bind(addr, setting).map(Some),
    };
    let inbound = bind(config.inbound.mode, config.inbound.addr, env::INBOUND_ADDR)?;
    let outbound = bind(
        config.outbound.mode,
        config.outbound.addr,
        env::OUTBOUND_ADDR,
    )?;
    let admin = listen::bind(config.admin_addr, env::ADMIN_ADDR)?;
    let mut own_addrs = Vec::new();
    for l in [&inbound, &outbound].into_iter().flatten() {
        own_addrs.push(l.local_addr().map_err(|e| e.to_string())?);
    }
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;

    let (trigger, watch) = drain::channel();
    let shared = Arc::new(Shared {
        clients,
        inbound_metrics: RequestMetrics::inbound(&config.service_name, false),
        inbound_mtls_metrics: RequestMetrics::inbound(&config.service_name, true),
        passthrough_metrics: RequestMetrics::outbound("passthrough", "default", "passthrough"),
        prometheus,
        log,
        drain: trigger.clone(),
        ready: AtomicBool::new(false),
        outbound_target,
        discovery,
        identity,
        own_service: format!("{}.{}", config.service_name, config.namespace),
        own_addrs: own_addrs.clone(),
        spans: crate::otlp::Spans::start(&config),
        mirrors_in_flight: std::sync::atomic::AtomicUsize::new(0),
        store,
        config: config.clone(),
    });

    if let Some(l) = inbound {
        let s = shared.clone();
        tokio::spawn(listen::accept_loop(
            l,
            config.inbound.mode,
            config.max_connections,
            ConnMetrics::new(Direction::Inbound),
            watch.clone(),
            move |c: Accepted| crate::inbound::handle(s.clone(), c),
        ));
    }
    if let Some(l) = outbound {
        let s = shared.clone();
        tokio::spawn(listen::accept_loop(
            l,
            config.outbound.mode,
            config.max_connections,
            ConnMetrics::new(Direction::Outbound),
            watch.clone(),
            move |c: Accepted| crate::outbound::handle(s.clone(), c),
        ));
    }
    drop(watch);
    tokio::spawn(crate::admin::serve(admin, shared.clone()));
    if let Some(path) = &config.state_file {
        tokio::spawn(state::file::watch(
            shared.store.clone(),
            path.clone(),
            Duration::from_secs(1),
        ));
    }
    tokio::spawn(housekeeping(shared.clone()));
    shared.ready.store(true, Ordering::Release);
    tracing::info!(
        inbound = %display_listener(config.inbound.mode, config.inbound.addr),
        outbound = %display_listener(config.outbound.mode, config.outbound.addr),
        admin = %admin_addr,
        listeners = ?own_addrs,
        version = env!("CARGO_PKG_VERSION"),
        "shoal-proxy ready"
    );

    wait_for_shutdown(&trigger).await;
    let open = trigger.watchers();
    tracing::info!(open_connections = open, grace = ?config.shutdown_grace, "draining: no new connections; finishing in-flight requests");
    if trigger.wait_idle(config.shutdown_grace).await {
        tracing::info!("drained: all connections finished");
    } else {
        tracing::warn!(
            still_open = trigger.watchers(),
            "shutdown grace period (SHOAL_SHUTDOWN_GRACE) ended with connections still open; closing them"
        );
    }
    if let Some(spans) = &shared.spans {
        spans.final_export().await;
    }
    Ok(())
}

fn display_listener(mode: Mode, addr: SocketAddr) -> String {
    match mode {
        Mode::Off => "off".into(),
        Mode::Transparent => format!("{addr} (transparent)"),
        Mode::Explicit => format!("{addr} (explicit)"),
    }
}

async fn wait_for_shutdown(trigger: &drain::Trigger) {
    use tokio::signal::unix::{SignalKind, signal};
    async fn on(kind: SignalKind) {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    }
    let mut requested = trigger.subscribe();
    tokio::select! {
        _ = on(SignalKind::terminate()) => tracing::info!("SIGTERM received"),
        _ = on(SignalKind::interrupt()) => tracing::info!("SIGINT received"),
        _ = requested.signaled() => {}
    }
    drop(requested);
    trigger.drain();
}

/// Periodic upkeep: fold histogram samples into buckets and close idle upstream connections.
/// The exporter keeps raw samples until folded (8 bytes per request), so folding every second
/// bounds that memory to one second of traffic whether or not anybody scrapes.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        shared.prometheus.run_upkeep();
        shared.clients.sweep();
        if let Some(identity) = &shared.identity {
            identity.report();
        }
        if crate::http::PARKED_SINCE_COLLECT.swap(false, std::sync::atomic::Ordering::Relaxed) {
            crate::alloc::release_free_memory();
        }
    }
}
