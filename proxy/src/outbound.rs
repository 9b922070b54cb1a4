//! Outbound: the app's outgoing connections. A destination the state knows (by virtual IP or
//! authority) is routed to its endpoints (route → backend → balancer); anything else passes
//! through to where the app was going, so the mesh never breaks unmeshed calls.

use std::sync::Arc;

use crate::app::Shared;
use crate::config::Mode;
use crate::listen::Accepted;
use crate::metrics::Direction;

/// Serves one outbound connection.
pub async fn handle(shared: Arc<Shared>, conn: Accepted) {
    let dst = match shared.config.outbound.mode {
        Mode::Transparent => match conn.orig_dst {
            Some(d) => Some(d),
            None => {
                tracing::warn!(peer = %conn.peer, "outbound connection was not redirected by iptables (no original destination): run `shoal-proxy init` or set SHOAL_OUTBOUND_MODE=explicit");
                conn.metrics.closed("unknown", 0, 0);
                return;
            }
        },
        // Explicit: HTTP requests carry their destination; other traffic uses the target.
        _ => None,
    };
    crate::protocol::serve(shared, conn, Direction::Outbound, dst).await;
}

/// For opaque traffic to a known service's virtual IP, pick one of its endpoints.
pub(crate) fn resolve_opaque(shared: &Shared, dst: std::net::SocketAddr) -> std::net::SocketAddr {
    // HTTP requests are routed per request; this only decides where opaque bytes go.
    let state = shared.store.snapshot();
    state
        .by_addr(&dst)
        .and_then(|svc| svc.balancer.pick())
        .unwrap_or(dst)
}
