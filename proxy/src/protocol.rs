//! Per connection: detect the protocol, then hand the connection to HTTP or opaque TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::app::Shared;
use crate::detect::{self, Detected, OpaqueReason};
use crate::http::{self, Downstream};
use crate::io::ProxyIo;
use crate::listen::Accepted;
use crate::metrics::{self, Direction};

/// Serves one accepted connection whose destination is `dst` (`None`: explicit outbound, where
/// HTTP requests name their own destination).
pub async fn serve(
    shared: Arc<Shared>,
    mut conn: Accepted,
    direction: Direction,
    dst: Option<SocketAddr>,
) {
    let cfg = &shared.config;
    let skip = dst
        .or_else(|| {
            shared
                .explicit_target_port()
                .map(|p| SocketAddr::from(([0, 0, 0, 0], p)))
        })
        .is_some_and(|d| cfg.server_first_ports.binary_search(&d.port()).is_ok());
    let (detected, prefix) = if skip {
        (
            Detected::Opaque(OpaqueReason::Skipped),
            bytes::BytesMut::new(),
        )
    } else {
        match Box::pin(detect::detect(&mut conn.stream, cfg.detect_timeout)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(peer = %conn.peer, error = %e, "connection failed during protocol detection");
                conn.metrics.closed("unknown", 0, 0);
                return;
            }
        }
    };
    metrics::detection(direction, detected.label());
    let protocol = match detected {
        Detected::Http1 => "http1",
        Detected::Http2 => "http2",
        Detected::Tls { .. } => "tls",
        Detected::Opaque(_) => "opaque",
    };
    let io = ProxyIo::new(conn.stream, prefix.freeze(), protocol, conn.metrics.clone());
    let version = match detected {
        Detected::Http1 => Downstream::Http1,
        Detected::Http2 => Downstream::Http2,
        Detected::Tls { .. } | Detected::Opaque(_) => {
            let Some(dst) = dst.or_else(|| shared.explicit_target()) else {
                tracing::warn!(peer = %conn.peer, "opaque outbound connection with no destination: set SHOAL_OUTBOUND_TARGET or use transparent mode");
                return;
            };
            let Some(dst) = shared.check_loop(dst).ok() else {
                tracing::warn!(peer = %conn.peer, destination = %dst, "opaque connection to the proxy itself: refusing to loop");
                return;
            };
            let dst = match direction {
                Direction::Outbound => crate::outbound::resolve_opaque(&shared, dst).await,
                Direction::Inbound => dst,
            };
            let http = &cfg.http;
            // Boxed for the same reason as HTTP/2: keep every connection's task small.
            Box::pin(crate::tcp::forward(
                io,
                dst,
                direction,
                http.connect_timeout,
                http.idle_timeout,
            ))
            .await;
            drop(conn.permit);
            return;
        }
    };
    let c = Arc::new(http::Conn {
        shared: shared.clone(),
        direction,
        client: conn.peer,
        dst,
        version,
    });
    http::serve(c, io, conn.drain).await;
    drop(conn.permit);
}
