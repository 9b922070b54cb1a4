//! The outbound rate-limit stage: a `RateLimit` with `side: outbound` is kept by every calling
//! proxy, one bucket for its own requests to the service (protecting a dependency from this
//! caller). A request over it is answered here, 429 `rate-limited` with `Retry-After`
//! (RESOURCE_EXHAUSTED for gRPC), never sent; it counts under the service it named. A proxy
//! without outbound limits costs one branch; one with any looks the called service's qualified
//! name up (the map is keyed by it, as the inbound limits are), spelled on the stack.

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
        let mut spelled = [0u8; QUALIFIED_MAX];
        let long;
        let name = match qualified(&named.name, &named.namespace, &mut spelled) {
            Some(name) => name,
            // Longer than two DNS labels: spelled on the heap.
            None => {
                long = named.qualified_name();
                &long
            }
        };
        let admitted = match limits.get(name) {
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

/// The longest `name.namespace`: two DNS labels of 63 bytes and the dot.
const QUALIFIED_MAX: usize = 127;

/// `name.namespace` spelled into `buf`, without allocating; `None` when it does not fit.
fn qualified<'b>(name: &str, namespace: &str, buf: &'b mut [u8; QUALIFIED_MAX]) -> Option<&'b str> {
    let len = name.len() + 1 + namespace.len();
    let out = buf.get_mut(..len)?;
    out[..name.len()].copy_from_slice(name.as_bytes());
    out[name.len()] = b'.';
    out[name.len() + 1..].copy_from_slice(namespace.as_bytes());
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn qualified_names_are_spelled_on_the_stack_up_to_two_dns_labels() {
        let mut buf = [0u8; super::QUALIFIED_MAX];
        assert_eq!(super::qualified("web", "shop", &mut buf), Some("web.shop"));
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}");
        assert_eq!(
            super::qualified(&label, &label, &mut buf),
            Some(longest.as_str())
        );
        assert_eq!(
            super::qualified(&format!("{label}b"), &label, &mut buf),
            None
        );
    }
}
