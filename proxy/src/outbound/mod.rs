//! Outbound: the app's outgoing connections. A destination the state knows (by virtual IP or
//! authority) is routed to its endpoints (route → backend → balancer); anything else passes
//! through to where the app was going, so the mesh never breaks unmeshed calls.

pub(crate) mod http;

use std::sync::Arc;

use crate::app::Shared;
use crate::config::Mode;
use crate::listen::Accepted;
use crate::metrics::Direction;
use crate::state::Service;
use crate::tcp::Upstream;
use crate::tls::{SpiffeId, TlsMode};

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
/// about the address the first time), over mTLS when the endpoint is in the mesh; anything else
/// goes where it was going, in plain text.
/// Under ring hashing by `source_ip`, the client's address (`client`) picks the endpoint; the other
/// keys are HTTP's, so opaque connections are balanced by the default algorithm.
pub(crate) async fn resolve_opaque(
    shared: &Shared,
    dst: std::net::SocketAddr,
    client: std::net::SocketAddr,
) -> Upstream {
    // HTTP requests are routed per request; this only decides where opaque bytes go.
    let pick = |state: &crate::state::State, bound: Option<&(String, u16)>| {
        let svc = state.by_addr(&dst).or_else(|| {
            bound.and_then(|(svc, port)| state.by_authority(&format!("{svc}:{port}")))
        })?;
        // Only the choice: an opaque connection's length says nothing of the endpoint's speed.
        let key = match svc.backend.policy.hash_key {
            Some(crate::balance::HashKey::SourceIp) => {
                Some(crate::balance::HashKey::source(client))
            }
            _ => None,
        };
        let mut picked = svc.balancer.pick_hashed(key, None)?;
        Some(Upstream {
            addr: picked.addr,
            tls: mesh_identity(shared, svc, picked.identity.take()),
            connect_timeout: svc.backend.policy.connect_timeout,
        })
    };
    if let Some(upstream) = pick(&shared.store.snapshot(), None) {
        return upstream;
    }
    let Some(d) = &shared.discovery else {
        return Upstream::plain(dst);
    };
    let bound = d.ensure_address(dst).await;
    pick(&shared.store.snapshot(), bound.as_ref()).unwrap_or_else(|| Upstream::plain(dst))
}

/// The identity to demand from an endpoint of `service` over mTLS, or `None` for plain text:
/// the endpoint must be in the mesh (have an identity), the service port must not disable mTLS,
/// and this proxy must have an identity configured (without one, mesh traffic stays plain; a
/// configured identity that has no certificate yet fails the request with `no-identity`).
pub(crate) fn mesh_identity(
    shared: &Shared,
    service: &Service,
    endpoint_id: Option<SpiffeId>,
) -> Option<SpiffeId> {
    if service.tls_mode == Some(TlsMode::Disabled) || shared.identity.is_none() {
        return None;
    }
    // A server-speaks-first port is not detected by a permissive inbound proxy (plain clients
    // must not stall), so it could not see the handshake: mTLS there only when the port is strict.
    let server_first = shared
        .config
        .server_first_ports
        .binary_search(&service.port)
        .is_ok();
    if server_first && service.tls_mode != Some(TlsMode::Strict) {
        return None;
    }
    endpoint_id
}
