//! The fault stage: the delays and aborts a `FaultInjection` asks the calling proxy to inject into
//! a share of the requests to a service (chaos experiments). A delayed request waits, then goes on
//! (the route's timeout runs meanwhile); an aborted one is answered with `shoal-proxy-error:
//! fault-injected`, never sent: a gRPC call (`headers::is_grpc`) in a trailers-only HTTP 200 with
//! the abort's `grpc_status`, or without one what the gRPC spec makes of its HTTP status (503 →
//! UNAVAILABLE; `http::respond`, like every proxy answer to a gRPC call), any other request with
//! the abort's HTTP status. A fault may be scoped by `matches` (path, method, headers: a route rule's
//! conditions), so that only e.g. requests with `x-chaos: on` are hit. A service without faults
//! costs one branch. It runs below the split, so an
//! aborted request counts under the backend the split chose, like any other failure.

use super::split::Backend;
use crate::errors::{ProxyError, Reason};
use crate::http::stack::{Exchange, Req, Service, stage};

stage! {
    /// The stage.
    pub(super) Faults, FaultLayer
}

/// Whether a request falls in the `percent` share.
fn hit(percent: f64) -> bool {
    percent > 0.0 && fastrand::f64() * 100.0 < percent
}

impl<'c, S> Service<Req<'c, Backend>> for Faults<S>
where
    S: Service<Req<'c, Backend>> + Sync,
{
    async fn call(&self, req: Req<'c, Backend>) -> Exchange {
        // Drawn before the request moves on; a request outside the faults' scope is never hit.
        let (abort, delay) = match req.target.faulty.as_deref().and_then(|s| s.fault.as_ref()) {
            Some(fault) if fault.scoped_to(&req.http) => (
                fault.abort.filter(|a| hit(a.percent)),
                fault.delay.filter(|&(percent, _)| hit(percent)),
            ),
            _ => return self.0.call(req).await,
        };
        if let Some(abort) = abort {
            let name =
                (req.target.faulty.as_deref()).map_or_else(String::new, |s| s.qualified_name());
            let mut err = ProxyError::new(Reason::FaultInjected, String::new())
                .with_status(abort.http_status);
            err.grpc_status = abort.grpc_status;
            let answer = if req.grpc {
                format!("gRPC status {}", err.grpc_code())
            } else {
                abort.http_status.to_string()
            };
            err.detail = format!(
                "a fault injection on service {name} aborts {} % of its requests with {answer}; this request was one (see fault_injection in /config)",
                abort.percent
            );
            return Exchange::failed(err);
        }
        if let Some((_, delay)) = delay {
            tokio::time::sleep(delay).await;
        }
        self.0.call(req).await
    }
}
