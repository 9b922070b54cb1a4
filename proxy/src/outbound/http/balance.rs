//! The balance stage: picks the backend's endpoint (`crate::balance`, P2C over peak-EWMA
//! latency by default; by the request's key under ring hashing), decides how to speak to it (mTLS and HTTP/2 between proxies), and reports the
//! exchange's latency back to the balancer.

use std::time::Duration;

use tokio::time::Instant;

use super::route::same_version;
use super::split::Backend;
use crate::balance::Picked;
use crate::endpoint::Version;
use crate::errors::{ProxyError, Reason};
use crate::http::Downstream;
use crate::http::send::Dest;
use crate::http::stack::{Exchange, Req, Service, mark_trailers_only, stage};
use crate::state::Protocol;

/// The latency a failed exchange counts as.
const FAILED_RTT: Duration = Duration::from_secs(1);

stage! {
    /// The stage.
    pub(super) Balance, BalanceLayer
}

impl<'c, S> Service<Req<'c, Backend>> for Balance<S>
where
    S: Service<Req<'c, Dest>> + Sync,
{
    async fn call(&self, req: Req<'c, Backend>) -> Exchange {
        let conn = req.conn;
        let backend = &req.target.service;
        // Ring hash: the request's key, if it carries it (else the default algorithm picks).
        let key =
            (backend.backend.policy.hash_key.as_ref()).and_then(|k| k.hash(&req.http, conn.client));
        let Some(mut picked) = backend.balancer.pick_hashed(key, req.target.avoid) else {
            return Exchange::failed(ProxyError::new(
                Reason::NoEndpoints,
                format!(
                    "service {} has no ready endpoints; check its endpoints in /config",
                    backend.qualified_name()
                ),
            ));
        };
        let addr = match conn.shared.check_loop(picked.addr) {
            Ok(a) => a,
            Err(e) => return Exchange::failed(e),
        };
        let app_version = match backend.protocol {
            Protocol::Http1 => Version::Http1,
            Protocol::Http2 => Version::Http2,
            Protocol::Auto | Protocol::Tcp => same_version(conn),
        };
        let tls = crate::outbound::mesh_identity(&conn.shared, backend, picked.identity.take());
        // Between proxies every request rides one multiplexed HTTP/2 connection, except
        // upgrades (WebSocket), which HTTP/2 cannot carry here: they get their own HTTP/1.1 one.
        let upgrade = conn.version == Downstream::Http1 && req.upgrade;
        let (version, orig_http1) = match &tls {
            None => (app_version, false),
            Some(_) if upgrade => (Version::Http1, false),
            Some(_) => (Version::Http2, app_version == Version::Http1),
        };
        let dest = Dest {
            peer: (addr, tls),
            version,
            orig_http1,
            metrics: None,
            connect_timeout: backend.backend.policy.connect_timeout,
            gate: backend.backend.gate().cloned(),
        };
        let start = req.start;
        let grpc = req.grpc;
        let (mut req, backend) = req.retarget(dest);
        // Moved, not cloned: `send` counts re-sends in them and hands them back in the exchange.
        req.target.metrics = Some(backend.metrics);
        let mut timing = Timing {
            picked,
            start,
            answered: false,
            grpc,
        };
        let mut exchange = self.0.call(req).await;
        if timing.grpc
            && let Ok(resp) = &mut exchange.result
        {
            // A trailers-only failure (the app's, or the endpoint's proxy answering itself): read
            // as the failure it stands for by the balancer below, every stage above, metrics and
            // the mirror.
            mark_trailers_only(resp);
        }
        timing.answered = exchange.result.is_ok();
        backend
            .service
            .balancer
            .report(&timing.picked, exchange.upstream_failed());
        exchange
    }
}

/// Reports an exchange's latency to the balancer when dropped: the time to the response head,
/// or — when no head came (an error, a timeout, the client gone) — at least [`FAILED_RTT`], so
/// an endpoint that fails fast does not look fast and draw more traffic. Dropping it also ends
/// the pick's count of requests in flight.
struct Timing {
    picked: Picked,
    /// The request's arrival: routing takes microseconds, and this saves a clock read.
    start: Instant,
    answered: bool,
    /// The request is a gRPC call (kept here, beside `answered`, rather than in the stage's
    /// future: it fits in this struct's padding, so the future does not grow).
    grpc: bool,
}

impl Drop for Timing {
    fn drop(&mut self) {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.start);
        self.picked.observe(
            if self.answered {
                rtt
            } else {
                rtt.max(FAILED_RTT)
            },
            now,
        );
    }
}
