//! The split stage: a route rule's weighted pick of the backend service (a traffic shift); a
//! request that matched no rule goes to the service it named. The exchange counts in the chosen
//! backend's metrics (`service`, `route`, `backend`), so a caller's `/metrics` shows a shift.
//!
//! It sits above the timeout stage so that a request that times out still counts under the
//! backend it waited for, and the timeout's error names that backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::route::Routed;
use crate::http::stack::{Exchange, Req, Service, stage};
use crate::http::timeout::{Timed, Who};
use crate::metrics::RequestMetrics;
use crate::retry::Retry;
use crate::state::Service as MeshService;

/// The backend a request goes to, and what the stages below it need from the rule.
#[derive(Debug)]
pub(super) struct Backend {
    /// The backend service.
    pub(super) service: Arc<MeshService>,
    /// The metrics the request counts in: carried down to `send` (which counts re-sends in them)
    /// and back up in the exchange.
    pub(super) metrics: Arc<RequestMetrics>,
    /// The rule's timeout, if it sets one.
    pub(super) timeout: Option<Duration>,
    /// The service the caller named, when it has faults to inject (the fault stage's); `None`
    /// otherwise, and for a retry's attempts, which the faults do not touch again.
    pub(super) faulty: Option<Arc<MeshService>>,
    /// The rule's retry policy, if any.
    pub(super) retry: Option<Arc<Retry>>,
    /// An endpoint to avoid when the backend has others: the one a retried attempt failed on.
    pub(super) avoid: Option<SocketAddr>,
}

impl Timed for Backend {
    fn route_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn who(&self) -> Who {
        Who::Service(self.service.clone())
    }
}

stage! {
    /// The stage.
    pub(super) Split, SplitLayer
}

impl<'c, S> Service<Req<'c, Routed>> for Split<S>
where
    S: Service<Req<'c, Backend>> + Sync,
{
    async fn call(&self, req: Req<'c, Routed>) -> Exchange {
        let named = &req.target.service;
        // One branch for a service without faults.
        let faulty = named.fault.is_some().then(|| named.clone());
        let (backend, chosen) = match req.target.rule() {
            Some(rule) => {
                let i = rule.pick_backend();
                let b = &rule.backends[i];
                let backend = Backend {
                    service: b.service.clone(),
                    metrics: b.metrics.clone(),
                    timeout: rule.timeout,
                    faulty,
                    retry: rule.retry.clone(),
                    avoid: None,
                };
                (backend, Some(i))
            }
            None => {
                let service = &req.target.service;
                let backend = Backend {
                    service: service.clone(),
                    metrics: service.metrics.clone(),
                    timeout: None,
                    faulty,
                    retry: None,
                    avoid: None,
                };
                (backend, None)
            }
        };
        let (req, routed) = req.retarget(backend);
        let exchange = self.0.call(req).await;
        if exchange.metrics.is_some() {
            return exchange;
        }
        // It ended before `send` handed the metrics back (no endpoint, the timeout, an injected
        // abort): it counts
        // under the chosen backend all the same. Looked up again rather than kept, so the common
        // path clones the handles once.
        let metrics = match chosen.and_then(|i| routed.rule()?.backends.get(i)) {
            Some(b) => &b.metrics,
            None => &routed.service.metrics,
        };
        exchange.counted_in(metrics)
    }
}
