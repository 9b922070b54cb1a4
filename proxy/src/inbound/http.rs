//! The inbound HTTP stack: the stages a request to the app passes, top to bottom.
//!
//! ```text
//! authorize   plain text on a strict port (403 `mtls-required`); the service's
//!             AuthorizationPolicy for this caller (403 `unauthorized`)
//!  └ limit    the service's RateLimit for this caller (429 `rate-limited`, `Retry-After`)
//!   └ app     the app's address; HTTP/1.1 restored for requests that rode the mesh's HTTP/2;
//!             the app's trailers-only gRPC failure counted as the HTTP status it stands for
//!     └ timeout   SHOAL_RESPONSE_TIMEOUT
//!        └ send   shape for the wire (the caller's identity in `shoal-client-id`), pooled connection
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use crate::endpoint::Version;
use crate::errors::{ProxyError, Reason};
use crate::http::send::{Dest, ORIG_PROTO, Send};
use crate::http::stack::{Exchange, Req, Service, Stack, mark_trailers_only, stage};
use crate::http::timeout::TimeoutLayer;
use crate::http::{Conn, Downstream};
use crate::metrics::RequestMetrics;

/// The stack, composed: one stage a line, bottom first.
pub(crate) fn stack() -> impl for<'c> Service<Req<'c, ()>> {
    Stack::new(Send)
        .push(TimeoutLayer)
        .push(AppLayer)
        .push(RateLimitLayer)
        .push(AuthorizeLayer)
        .into_inner()
}

/// Inbound request metrics, by whether the connection is mesh mTLS.
pub(crate) fn metrics(conn: &Conn) -> &Arc<RequestMetrics> {
    match conn.client_id {
        Some(_) => &conn.shared.inbound_mtls_metrics,
        None => &conn.shared.inbound_metrics,
    }
}

stage! {
    /// The authorization stage.
    Authorize, AuthorizeLayer
}

impl<'c, S> Service<Req<'c, ()>> for Authorize<S>
where
    S: Service<Req<'c, ()>> + Sync,
{
    async fn call(&self, req: Req<'c, ()>) -> Exchange {
        // Decided once per connection (`inbound::admit`); a branch per request here.
        if req.conn.mtls_required {
            return Exchange::failed(super::mtls_required(req.conn));
        }
        match super::authorize_http(req.conn, &req.http) {
            Ok(()) => self.0.call(req).await,
            Err(e) => Exchange::failed(e),
        }
    }
}

stage! {
    /// The rate-limit stage.
    RateLimitStage, RateLimitLayer
}

impl<'c, S> Service<Req<'c, ()>> for RateLimitStage<S>
where
    S: Service<Req<'c, ()>> + Sync,
{
    async fn call(&self, req: Req<'c, ()>) -> Exchange {
        let conn = req.conn;
        let limited = {
            let state = conn.shared.store.peek();
            // Most proxies have no limit: no hashing of the service name per request then.
            let limiter = (!state.rate_limits.is_empty())
                .then(|| state.rate_limits.get(&conn.shared.own_service))
                .flatten();
            match limiter {
                Some(limiter) if limiter.counts(&req.http) => limiter.admit(
                    conn.client_id.as_ref().map(|id| id.as_str()),
                    || match &conn.client_id {
                        Some(id) => Cow::Borrowed(id.as_str()),
                        None => Cow::Owned(conn.client.ip().to_string()),
                    },
                    req.start,
                ),
                _ => Ok(()),
            }
        };
        match limited {
            Ok(()) => self.0.call(req).await,
            Err(wait) => Exchange::failed(rate_limited(&req, wait)),
        }
    }
}

/// The answer to a request over its service's rate limit.
fn rate_limited(req: &Req<'_, ()>, wait: std::time::Duration) -> ProxyError {
    let conn = req.conn;
    let message = format!(
        "{} is over the rate limit of service {}; retry in {:.3} s (see rate_limits in /config)",
        conn.client_id
            .as_ref()
            .map_or_else(|| conn.client.ip().to_string(), ToString::to_string),
        conn.shared.own_service,
        wait.as_secs_f64()
    );
    super::rate_limit::refusal(message, wait)
}

stage! {
    /// The stage that decides the app's address and HTTP version.
    App, AppLayer
}

impl<'c, S> Service<Req<'c, ()>> for App<S>
where
    S: Service<Req<'c, Dest>> + Sync,
{
    async fn call(&self, req: Req<'c, ()>) -> Exchange {
        let conn = req.conn;
        let Some(addr) = conn.dst else {
            return Exchange::failed(ProxyError::new(
                Reason::NoDestination,
                "inbound connection without a destination",
            ));
        };
        // Over the mesh, HTTP/1.1 requests arrive on HTTP/2 and go back to HTTP/1.1 for the app.
        let orig_http1 = conn.client_id.is_some()
            && req
                .http
                .headers()
                .get(&ORIG_PROTO)
                .is_some_and(|v| v.as_bytes() == b"HTTP/1.1");
        let version = match (orig_http1, conn.version) {
            (true, _) | (false, Downstream::Http1) => Version::Http1,
            (false, Downstream::Http2) => Version::Http2,
        };
        let dest = Dest {
            peer: (addr, None),
            version,
            orig_http1: false,
            metrics: None,
            connect_timeout: None,
            gate: None,
        };
        let grpc = req.grpc;
        let (req, ()) = req.retarget(dest);
        let mut exchange = self.0.call(req).await;
        if grpc && let Ok(resp) = &mut exchange.result {
            // The app's trailers-only failure counts in the inbound metrics as the failure it is.
            mark_trailers_only(resp);
        }
        exchange.counted_in(metrics(conn))
    }
}
