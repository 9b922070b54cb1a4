//! The backend stage: the backend policy's bulkhead cap and circuit breaker (`crate::backend`).
//! A request over the cap on requests in flight is answered 503 `backend-overloaded` at once, and
//! one meeting an open breaker 503 `circuit-open` at once — no queue, so a slow or failing backend
//! costs its callers a fast error instead of their own capacity. Each attempt of a retry passes it
//! again. A backend without a policy costs one branch.

use tokio::time::Instant;

use super::split::Backend;
use crate::backend::Refusal;
use crate::errors::{ProxyError, Reason};
use crate::http::stack::{Exchange, Req, Service, stage};

stage! {
    /// The stage.
    pub(super) Caps, BackendLayer
}

impl<'c, S> Service<Req<'c, Backend>> for Caps<S>
where
    S: Service<Req<'c, Backend>> + Sync,
{
    async fn call(&self, req: Req<'c, Backend>) -> Exchange {
        let runtime = &req.target.service.backend;
        if !runtime.is_active() {
            return self.0.call(req).await;
        }
        // The request's arrival stands for "now": microseconds earlier, and one clock read less.
        let admitted = match runtime.admit(req.start) {
            Ok(a) => a,
            Err(refusal) => return Exchange::failed(refused(&req.target, refusal)),
        };
        let exchange = self.0.call(req).await;
        admitted.report(exchange.upstream_failed(), Instant::now());
        exchange
    }
}

fn refused(backend: &Backend, refusal: Refusal) -> ProxyError {
    let name = backend.service.qualified_name();
    match refusal {
        Refusal::Overloaded(max) => ProxyError::new(
            Reason::BackendOverloaded,
            format!(
                "{max} requests to service {name} are already in flight, its backend policy's limits.max_concurrent_requests; the request was not sent (see the backend_policy in /config)"
            ),
        ),
        Refusal::CircuitOpen => ProxyError::new(
            Reason::CircuitOpen,
            format!(
                "the circuit breaker of service {name} is open: too many of its requests failed recently; the request was not sent (see the backend_policy in /config)"
            ),
        ),
    }
}
