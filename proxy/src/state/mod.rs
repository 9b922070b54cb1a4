//! The state store: services, endpoints and routes the proxy routes by.
//!
//! One mutator ([`Store::replace`]) swaps in a whole new [`State`]; readers take a cheap
//! snapshot ([`Store::snapshot`]) so a request sees the old or the new state, never a mix. The
//! static file ([`file`]) feeds it today; the control-plane discovery client will feed the same
//! store later.

pub(crate) mod backend_policy;
pub(crate) mod fault;
pub mod file;
pub(crate) mod filter;
pub(crate) mod mirror;
mod model;
pub(crate) mod spec;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde::Serialize;

pub use model::{Endpoint, FastMap, Protocol, RouteRule, Service, State};
pub(crate) use model::{Match, serialize_duration, serialize_duration_opt};

/// Where the current state came from and how its last update went (shown in `/config`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// `none`, or `file:<path>`.
    pub source: String,
    /// Version of the state being served (increments on every accepted update).
    pub version: u64,
    /// The error of the last rejected update, if the latest attempt was rejected.
    pub last_error: Option<String>,
}

/// Holds the current [`State`] and swaps it atomically.
#[derive(Debug)]
pub struct Store {
    current: ArcSwap<State>,
    status: ArcSwap<SyncStatus>,
    version: AtomicU64,
    /// This proxy's zone (`SHOAL_ZONE`): balancers prefer endpoints of it.
    zone: std::sync::OnceLock<Arc<str>>,
    /// How health checks reach endpoints (the process's clients).
    prober: std::sync::OnceLock<Arc<crate::balance::Prober>>,
}

impl Store {
    /// An empty store: every destination is passthrough.
    pub fn new(source: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(State::default()),
            status: ArcSwap::from_pointee(SyncStatus {
                source: source.into(),
                ..SyncStatus::default()
            }),
            version: AtomicU64::new(0),
            zone: std::sync::OnceLock::new(),
            prober: std::sync::OnceLock::new(),
        })
    }

    /// Sets this proxy's zone, before the first state is stored: every balancer of a state stored
    /// afterwards prefers endpoints of it.
    pub fn set_zone(&self, zone: &str) {
        let _ = self.zone.set(zone.into());
    }

    /// Sets how health checks reach endpoints, before the first state is stored: the backends of
    /// a state stored afterwards with `health_check` are probed through it.
    pub fn set_prober(&self, prober: Arc<crate::balance::Prober>) {
        let _ = self.prober.set(prober);
    }

    /// The state to route one request or connection by.
    pub fn snapshot(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// A short look at the state without taking a reference count (arc-swap's guard): for
    /// per-request checks that read a field and are done, never held across an `.await`.
    pub fn peek(&self) -> arc_swap::Guard<Arc<State>> {
        self.current.load()
    }

    /// Replaces the whole state (the only mutator); returns the new version. Each service's
    /// balancer first takes over what the previous state's balancer of the same service and port
    /// learnt about the endpoints that stay (`balance`).
    pub fn replace(&self, mut state: State) -> u64 {
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        state.inherit_runtime(&self.current.load());
        state.start_runtime(self.zone.get(), self.prober.get());
        self.current.store(Arc::new(state));
        let mut status = (**self.status.load()).clone();
        status.version = version;
        status.last_error = None;
        self.status.store(Arc::new(status));
        metrics::gauge!(crate::metrics::names::STATE_VERSION).set(version as f64);
        metrics::counter!(crate::metrics::names::STATE_UPDATES, "result" => "applied").increment(1);
        version
    }

    /// Records a rejected update; the current state stays.
    pub fn reject(&self, error: String) {
        let mut status = (**self.status.load()).clone();
        status.last_error = Some(error);
        self.status.store(Arc::new(status));
        metrics::counter!(crate::metrics::names::STATE_UPDATES, "result" => "rejected")
            .increment(1);
    }

    /// Source, version and last error.
    pub fn status(&self) -> SyncStatus {
        (**self.status.load()).clone()
    }
}
