//! Inbound: connections to the app. Everything goes to the app's own address — the original
//! destination (transparent) or `SHOAL_INBOUND_APP_ADDR` (explicit). Authorization and rate
//! limits (identity issue, resilience issue) slot in here, before forwarding.

use std::sync::Arc;

use crate::app::Shared;
use crate::config::Mode;
use crate::listen::Accepted;
use crate::metrics::Direction;

/// Serves one inbound connection.
pub async fn handle(shared: Arc<Shared>, conn: Accepted) {
    let dst = match shared.config.inbound.mode {
        Mode::Explicit => Some(shared.config.inbound.app_addr),
        _ => conn.orig_dst,
    };
    let Some(dst) = dst else {
        tracing::warn!(peer = %conn.peer, "inbound connection was not redirected by iptables (no original destination): run `shoal-proxy init` or set SHOAL_INBOUND_MODE=explicit");
        conn.metrics.closed("unknown", 0, 0);
        return;
    };
    crate::protocol::serve(shared, conn, Direction::Inbound, Some(dst)).await;
}
