//! A backend's connection limits (its backend policy's `limits.max_connections`,
//! `max_pending_requests`, `max_requests_per_connection`), counted over all its endpoints'
//! connections — HTTP/1 pool connections and HTTP/2 connections together.
//!
//! A request that needs a new connection takes a [`ConnPermit`] (held by the connection's driver
//! task until the connection ends). Under the cap it gets one at once; at the cap it waits as a
//! *pending* request — for a pooled connection to be released or a connection to close — at most
//! the connect timeout; beyond `max_pending_requests` waiting requests (default
//! [`DEFAULT_MAX_PENDING`], as Envoy's) it is answered 503 `backend-overloaded` at once: there is
//! no unbounded queue. A pending request also closes one idle HTTP/1 connection of the backend to
//! another endpoint, so idle connections elsewhere cannot hold the cap forever.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use metrics::Gauge;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::H1Pool;
use crate::errors::{ProxyError, Reason};
use crate::sync::lock;

/// Requests that may wait for a connection when the policy sets `max_connections` but not
/// `max_pending_requests` (Envoy's default).
pub(crate) const DEFAULT_MAX_PENDING: u32 = 1024;

/// A backend's connection limits, as its policy sets them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ConnLimits {
    /// Connections open to all the backend's endpoints together.
    pub(crate) max_connections: Option<u32>,
    /// Requests waiting for a connection at the cap (default [`DEFAULT_MAX_PENDING`]).
    pub(crate) max_pending_requests: Option<u32>,
    /// Requests one connection carries before it is retired.
    pub(crate) max_requests_per_connection: Option<u32>,
}

impl ConnLimits {
    /// Whether any limit is set.
    pub(crate) fn any(&self) -> bool {
        self.max_connections.is_some()
            || self.max_pending_requests.is_some()
            || self.max_requests_per_connection.is_some()
    }
}

/// A backend's connection accounting: shared by the state snapshots (an update keeps the counts)
/// and by the connections it counts.
#[derive(Debug)]
pub(crate) struct ConnGate {
    /// The service, for errors and metrics.
    service: String,
    /// The current limits (0: none); an update rewrites them.
    max_connections: AtomicU32,
    max_pending: AtomicU32,
    max_per_connection: AtomicU32,
    open: AtomicU32,
    pending: AtomicU32,
    /// A connection closed or went back to its pool.
    freed: Notify,
    /// The HTTP/1 pools holding the backend's connections (one per endpoint it connected to).
    pools: Mutex<Vec<Weak<H1Pool>>>,
    open_gauge: Gauge,
    pending_gauge: Gauge,
}

/// One open connection counted under a gate, until dropped (with the connection).
#[derive(Debug)]
pub(crate) struct ConnPermit(Arc<ConnGate>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.open_gauge.decrement(1.0);
        self.0.freed.notify_waiters();
    }
}

/// One request waiting for a connection, until dropped.
struct Pending<'a>(&'a ConnGate);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        self.0.pending_gauge.decrement(1.0);
    }
}

/// What waiting for a connection gave.
pub(crate) enum Opened {
    /// A new connection may be opened.
    Permit(ConnPermit),
    /// A pooled connection may have been released: look again.
    Released,
}

/// How a gate's counts and limits show in `/config`.
#[derive(Debug, Serialize)]
pub(crate) struct GateUse {
    pub(crate) connections_open: u32,
    pub(crate) max_connections: Option<u32>,
    pub(crate) requests_pending: u32,
    pub(crate) max_pending_requests: Option<u32>,
}

impl ConnGate {
    /// A gate for `service`'s connections under `limits`.
    pub(crate) fn new(service: &str, limits: &ConnLimits) -> Arc<Self> {
        let gate = Arc::new(Self {
            service: service.to_string(),
            max_connections: AtomicU32::new(0),
            max_pending: AtomicU32::new(0),
            max_per_connection: AtomicU32::new(0),
            open: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            freed: Notify::new(),
            pools: Mutex::default(),
            open_gauge: metrics::gauge!(crate::metrics::names::BACKEND_CONNECTIONS, "service" => service.to_string()),
            pending_gauge: metrics::gauge!(crate::metrics::names::BACKEND_PENDING, "service" => service.to_string()),
        });
        gate.set_limits(limits);
        gate
    }

    /// Applies an updated policy's limits (the counts stay).
    pub(crate) fn set_limits(&self, limits: &ConnLimits) {
        let pending = match limits.max_connections {
            Some(_) => limits.max_pending_requests.unwrap_or(DEFAULT_MAX_PENDING),
            None => 0,
        };
        self.max_connections
            .store(limits.max_connections.unwrap_or(0), Ordering::Relaxed);
        self.max_pending.store(pending, Ordering::Relaxed);
        self.max_per_connection.store(
            limits.max_requests_per_connection.unwrap_or(0),
            Ordering::Relaxed,
        );
    }

    /// Requests a connection carries before it is retired; `None`: no limit.
    pub(crate) fn max_per_connection(&self) -> Option<u32> {
        match self.max_per_connection.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// The counts against the limits, for `/config`.
    pub(crate) fn usage(&self) -> GateUse {
        let max = |a: &AtomicU32| Some(a.load(Ordering::Relaxed)).filter(|&n| n > 0);
        GateUse {
            connections_open: self.open.load(Ordering::Relaxed),
            max_connections: max(&self.max_connections),
            requests_pending: self.pending.load(Ordering::Relaxed),
            max_pending_requests: max(&self.max_pending),
        }
    }

    /// Wakes the requests waiting for a connection: one went back to a pool.
    pub(super) fn released(&self) {
        self.freed.notify_waiters();
    }

    /// Remembers `pool` as one holding the backend's connections.
    pub(super) fn track(&self, pool: &Arc<H1Pool>) {
        let mut pools = lock(&self.pools);
        if pools
            .iter()
            .any(|p| std::ptr::eq(p.as_ptr(), Arc::as_ptr(pool)))
        {
            return;
        }
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    /// A permit for a new connection, at once when under the cap.
    fn try_open(self: &Arc<Self>) -> Option<ConnPermit> {
        let max = self.max_connections.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        self.open_gauge.increment(1.0);
        Some(ConnPermit(self.clone()))
    }

    /// A permit for a new connection; at the cap, waits as a pending request until `until` for
    /// one — or returns [`Opened::Released`] when `released()` says `own` pool has an idle
    /// connection again. Over `max_pending_requests`, or when `until` passes, the request is
    /// refused with `backend-overloaded`.
    pub(super) async fn open(
        self: &Arc<Self>,
        until: Instant,
        own: Option<&Arc<H1Pool>>,
    ) -> Result<Opened, ProxyError> {
        if let Some(permit) = self.try_open() {
            return Ok(Opened::Permit(permit));
        }
        let max_pending = self.max_pending.load(Ordering::Relaxed);
        let admitted = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max_pending).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(self.overloaded(
                "max_pending_requests",
                format!(
                    "service {} has its limits.max_connections ({}) open and {max_pending} requests already waiting for one, its backend policy's limits.max_pending_requests; the request was not sent (see the backend_policy in /config)",
                    self.service,
                    self.max_connections.load(Ordering::Relaxed)
                ),
            ));
        }
        self.pending_gauge.increment(1.0);
        let _pending = Pending(self);
        self.close_idle_elsewhere(own);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(permit) = self.try_open() {
                return Ok(Opened::Permit(permit));
            }
            if own.is_some_and(|p| p.has_idle()) {
                return Ok(Opened::Released);
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                return Err(self.overloaded(
                    "max_connections",
                    format!(
                        "service {} has its limits.max_connections ({}) open and none was freed while the request waited (up to its connect timeout); the request was not sent (see the backend_policy in /config)",
                        self.service,
                        self.max_connections.load(Ordering::Relaxed)
                    ),
                ));
            }
        }
    }

    /// Closes one idle HTTP/1 connection of the backend in a pool other than `own`: its slot
    /// goes to the waiting request once the connection has ended.
    fn close_idle_elsewhere(&self, own: Option<&Arc<H1Pool>>) {
        let pools: Vec<Arc<H1Pool>> = lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        for pool in pools {
            if own.is_some_and(|o| Arc::ptr_eq(o, &pool)) {
                continue;
            }
            if pool.close_one_idle() {
                return;
            }
        }
    }

    fn overloaded(&self, limit: &'static str, message: String) -> ProxyError {
        crate::metrics::backend_overloaded(&self.service, limit);
        ProxyError::new(Reason::BackendOverloaded, message)
    }
}
