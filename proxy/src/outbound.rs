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

/// For opaque traffic to a known service, pick one of its endpoints (asking the control plane
/// about the address the first time); anything else goes where it was going.
pub(crate) async fn resolve_opaque(
    shared: &Shared,
    dst: std::net::SocketAddr,
) -> std::net::SocketAddr {
    // HTTP requests are routed per request; this only decides where opaque bytes go.
    let pick = |state: &crate::state::State, bound: Option<&(String, u16)>| {
        state
            .by_addr(&dst)
            .or_else(|| bound.and_then(|(svc, port)| state.by_authority(&format!("{svc}:{port}"))))
            .and_then(|svc| svc.balancer.pick())
    };
    if let Some(addr) = pick(&shared.store.snapshot(), None) {
        return addr;
    }
    let Some(d) = &shared.discovery else {
        return dst;
    };
    let bound = d.ensure_address(dst).await;
    pick(&shared.store.snapshot(), bound.as_ref()).unwrap_or(dst)
}
