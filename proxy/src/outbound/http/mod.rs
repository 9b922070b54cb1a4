//! The outbound HTTP stack: the stages an app's request passes, top to bottom, each a module.
//!
//! ```text
//! route       destination (virtual IP or authority) → service → route rule; else passthrough
//!  └ split    weighted pick of the rule's backend; the exchange counts in its metrics
//!     └ timeout   the rule's timeout (or SHOAL_RESPONSE_TIMEOUT) over everything below
//!        └ retry      the rule's retry policy: budget, backoff, deadline; each attempt re-enters
//!           │         the balancer (another endpoint where there is one)
//!           └ balance    P2C-EWMA pick of the backend's endpoint; reports latency back
//!              └ send    shape for the wire, pooled connection (mTLS to mesh peers)
//! ```
//!
//! A request to a destination the state does not know skips split and balance: it passes
//! through (timeout → send) to where the app was going.

mod balance;
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
        .push(retry::RetryLayer)
        .push(TimeoutLayer)
        .push(split::SplitLayer)
        .into_inner();
    let passthrough = Stack::new(Send).push(TimeoutLayer).into_inner();
    route::Route::new(known, passthrough)
}
