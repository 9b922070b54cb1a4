//! The outbound HTTP stack: the stages an app's request passes, top to bottom, each a module.
//!
//! ```text
//! route       destination (virtual IP or authority) → service → route rule; else passthrough
//!  └ filter   the rule's filters: a redirect answered here; request header edits (once, above
//!   │         the retries); response header edits on the way back
//!   └ rate limit  the called service's outbound rate limit: over it, 429 here, never sent
//!   └ mirror  a share copied to the service's shadow (its own task, through `shadow_stack`),
//!   │         the shadow's answer compared with the primary's; the client never waits for it
//!   └ split   weighted pick of the rule's backend; the exchange counts in its metrics
//!     └ timeout   the rule's timeout (or SHOAL_RESPONSE_TIMEOUT) over everything below
//!      └ fault    the named service's injected delays and aborts (chaos experiments), scoped
//!        │        by matches when the fault has them
//!        └ retry      the rule's retry policy: budget, backoff, deadline; each attempt re-enters
//!           │         the stages below (another endpoint where there is one)
//!           └ backend    the backend policy's cap on requests in flight and circuit breaker
//!              └ balance    the backend's algorithm picks the endpoint; latency reported back
//!                 └ send    shape for the wire, pooled connection (mTLS to mesh peers)
//! ```
//!
//! A request to a destination the state does not know skips filter, split and balance: it passes
//! through (timeout → send) to where the app was going.

mod backend;
mod balance;
mod fault;
mod filter;
mod mirror;
mod rate_limit;
mod retry;
mod route;
mod split;

use crate::http::send::Send;
use crate::http::stack::{Req, Service, Stack};
use crate::http::timeout::TimeoutLayer;

/// The stack, composed: one stage a line, bottom first.
pub(crate) fn stack() -> impl for<'c> Service<Req<'c, ()>> {
    let known = Stack::new(Send)
        .push(balance::BalanceLayer)
        .push(backend::BackendLayer)
        .push(retry::RetryLayer)
        .push(fault::FaultLayer)
        .push(TimeoutLayer)
        .push(split::SplitLayer)
        .push(mirror::MirrorLayer::new(shadow_stack()))
        .push(rate_limit::OutboundRateLimitLayer)
        .push(filter::FilterLayer)
        .into_inner();
    let passthrough = Stack::new(Send).push(TimeoutLayer).into_inner();
    route::Route::new(known, passthrough)
}

/// The stack a mirror's copies go through to the shadow: the path of a request to a backend,
/// without faults and retries (a copy is sent once).
fn shadow_stack()
-> impl for<'c> Service<Req<'c, split::Backend>> + std::marker::Send + Sync + 'static {
    Stack::new(Send)
        .push(balance::BalanceLayer)
        .push(backend::BackendLayer)
        .push(TimeoutLayer)
        .into_inner()
}
