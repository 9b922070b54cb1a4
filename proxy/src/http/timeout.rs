//! The response timeout stage: no response head within the route's timeout (or
//! `SHOAL_RESPONSE_TIMEOUT`) → 504 `response-timeout`. It runs from the request's arrival and
//! covers everything below it (a retry's every attempt included).

use std::pin::pin;
use std::time::Duration;

use futures_util::future::Either;

use super::deadline::ConnDeadline;
use super::stack::{Exchange, Req, Service, stage};
use crate::errors::{ProxyError, Reason};

static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// What the timeout stage needs from the decision above it.
pub(crate) trait Timed {
    /// A timeout the route sets explicitly, which wins over the default.
    fn route_timeout(&self) -> Option<Duration>;
    /// Who the request waits for, named in the error if it times out.
    fn who(&self) -> Who;
}

/// Who a request waits for: kept per request instead of a formatted name, which would cost an
/// allocation on every request for an error few have.
#[derive(Debug)]
pub(crate) enum Who {
    /// A service of the mesh (its endpoint is chosen below this stage).
    Service(std::sync::Arc<crate::state::Service>),
    /// A fixed address (the app, a passthrough destination).
    Addr(std::net::SocketAddr),
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Service(s) => write!(f, "service {}.{}", s.name, s.namespace),
            Who::Addr(a) => write!(f, "{a}"),
        }
    }
}

stage! {
    /// The stage.
    pub(crate) Timeout, TimeoutLayer
}

impl<'c, T, S> Service<Req<'c, T>> for Timeout<S>
where
    T: Timed + Send + 'c,
    S: Service<Req<'c, T>> + Sync,
{
    async fn call(&self, req: Req<'c, T>) -> Exchange {
        let conn = req.conn;
        // A gRPC call carries its own deadline (grpc-timeout), which the server and client
        // enforce; the proxy's default must not cut a long call short. A route's explicit
        // timeout still holds.
        let timeout = match req.target.route_timeout() {
            Some(t) => Some(t),
            None if req.http.headers().contains_key(&GRPC_TIMEOUT) => None,
            None => conn.shared.config.http.response_timeout,
        };
        let Some(limit) = timeout else {
            return self.0.call(req).await;
        };
        let mut req = req;
        req.deadline = Some(req.start + limit);
        let start = req.start;
        let who = req.target.who();
        let timed_out = |who: Who| {
            Exchange::failed(ProxyError::new(
                Reason::ResponseTimeout,
                format!(
                    "no response head from {who} within {limit:?} (SHOAL_RESPONSE_TIMEOUT or the route's timeout)"
                ),
            ))
        };
        // The connection loop's timer enforces the deadline (http::deadline) when its tick is
        // short enough to meet it on time: HTTP/1's one request, or one of HTTP/2's streams. A
        // timer of its own otherwise.
        let tick = super::loop_tick(&conn.shared.config.http);
        let on_loop = (limit >= 2 * tick)
            .then(|| {
                let at = start + limit;
                match (&conn.response_deadline, &conn.stream_deadlines) {
                    (Some(cell), _) => Some(ConnDeadline::Http1(cell.arm(at))),
                    (None, Some(streams)) => Some(ConnDeadline::Http2(streams.arm(at))),
                    (None, None) => None,
                }
            })
            .flatten();
        match on_loop {
            Some(mut armed) => {
                let call = pin!(self.0.call(req));
                let expired = pin!(std::future::poll_fn(|cx| armed.poll_expired(cx)));
                match futures_util::future::select(call, expired).await {
                    Either::Left((exchange, _)) => exchange,
                    Either::Right(_) => timed_out(who),
                }
            }
            None => match tokio::time::timeout_at(start + limit, self.0.call(req)).await {
                Ok(exchange) => exchange,
                Err(_) => timed_out(who),
            },
        }
    }
}
