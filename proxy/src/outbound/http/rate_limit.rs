//! The outbound rate-limit stage: a `RateLimit` with `side: outbound` is kept by every calling
//! proxy, one bucket for its own requests to the service (protecting a dependency from this
//! caller). A request over it is answered here, 429 `rate-limited` with `Retry-After`
//! (RESOURCE_EXHAUSTED for gRPC), never sent; it counts under the service it named. A proxy
//! without outbound limits costs one branch; one with any builds the called service's qualified
//! name per request for the lookup (the map is keyed by it, as the inbound limits are).

use super::route::Routed;
use crate::http::stack::{Exchange, Req, Service, stage};
use crate::inbound::rate_limit::refusal;

stage! {
    /// The stage.
    pub(super) OutboundRateLimit, OutboundRateLimitLayer
}

impl<'c, S> Service<Req<'c, Routed>> for OutboundRateLimit<S>
where
    S: Service<Req<'c, Routed>> + Sync,
{
    async fn call(&self, req: Req<'c, Routed>) -> Exchange {
        let limits = &req.target.state.outbound_rate_limits;
        if limits.is_empty() {
            return self.0.call(req).await;
        }
        let named = &req.target.service;
        let name = named.qualified_name();
        let admitted = match limits.get(&name) {
            Some(limiter) if limiter.counts(&req.http) => {
                limiter.admit(None, || "".into(), req.start)
            }
            _ => Ok(()),
        };
        match admitted {
            Ok(()) => self.0.call(req).await,
            Err(wait) => {
                let message = format!(
                    "this proxy's requests to service {name} are over its outbound rate limit; retry in {:.3} s (see outbound_rate_limits in /config)",
                    wait.as_secs_f64()
                );
                Exchange::failed(refusal(message, wait)).counted_in(&named.metrics)
            }
        }
    }
}
