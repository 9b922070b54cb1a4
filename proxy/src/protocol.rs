//! Per connection: detect the protocol, let the inbound side terminate mesh mTLS, then hand the
//! connection to HTTP or opaque TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::app::Shared;
use crate::detect::{self, Detected, OpaqueReason};
use crate::http::{self, Downstream};
use crate::io::{ProxyIo, Transport};
use crate::listen::Accepted;
use crate::metrics::{self, Direction};
use crate::tls::SpiffeId;

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
    // A strict inbound port only takes mesh mTLS, whose client speaks first: detect even there.
    let skip = skip
        && !(direction == Direction::Inbound
            && dst.is_some_and(|d| {
                crate::inbound::tls_mode(&shared, d.port()) == crate::tls::TlsMode::Strict
            }));
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
    let mut mtls_required = false;
    if direction == Direction::Inbound {
        match crate::inbound::admit(&shared, &detected, dst) {
            crate::inbound::Admit::Plain => {}
            crate::inbound::Admit::MtlsRequired => mtls_required = true,
            crate::inbound::Admit::Mesh(creds) => {
                // Boxed: the TLS session is large, and most connections never have one.
                return Box::pin(crate::inbound::serve_mesh(shared, conn, prefix, dst, creds))
                    .await;
            }
            crate::inbound::Admit::Refuse => {
                conn.metrics.closed("unknown", 0, 0);
                return;
            }
            crate::inbound::Admit::Alert(alert) => {
                use tokio::io::AsyncWriteExt;
                let _ = conn.stream.write_all(&alert).await;
                conn.metrics.closed("unknown", 0, alert.len() as u64);
                return;
            }
        }
    }
    let (carried, protocol) = match detected {
        Detected::Http1 => (Carried::Http(Downstream::Http1), "http1"),
        Detected::Http2 => (Carried::Http(Downstream::Http2), "http2"),
        Detected::Tls { .. } => (Carried::Opaque, "tls"),
        Detected::Opaque(_) => match declared_http(&shared, direction, dst) {
            // A port its service declares HTTP never carries opaque bytes: whatever arrived is
            // served as the declared HTTP, which refuses what is not.
            Some(Downstream::Http1) => (Carried::Http(Downstream::Http1), "http1"),
            Some(Downstream::Http2) => (Carried::Http(Downstream::Http2), "http2"),
            None => (Carried::Opaque, "opaque"),
        },
    };
    let io = ProxyIo::new(
        Transport::Plain(conn.stream.into()),
        prefix.freeze(),
        protocol,
        conn.metrics.clone(),
    );
    let conn = Served {
        peer: conn.peer,
        permit: conn.permit,
        drain: conn.drain,
        mtls_required,
    };
    carry(shared, io, conn, direction, dst, carried, None).await;
}

/// The HTTP version the service of `dst` declares for its port (HTTP/1.1, or HTTP/2 and gRPC),
/// if it declares one: this proxy's own service inbound, the destination service outbound.
fn declared_http(
    shared: &Shared,
    direction: Direction,
    dst: Option<SocketAddr>,
) -> Option<Downstream> {
    use crate::state::Protocol;
    let dst = dst?;
    let protocol = match direction {
        Direction::Inbound => crate::inbound::declared_protocol(shared, dst.port())?,
        Direction::Outbound => shared.store.peek().by_addr(&dst)?.protocol,
    };
    match protocol {
        Protocol::Http1 => Some(Downstream::Http1),
        Protocol::Http2 => Some(Downstream::Http2),
        Protocol::Auto | Protocol::Tcp => None,
    }
}

/// What a connection carries, once detection (and mesh TLS) said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carried {
    /// HTTP of this version.
    Http(Downstream),
    /// Opaque bytes.
    Opaque,
}

/// What outlives the socket of an accepted connection.
pub(crate) struct Served {
    pub(crate) peer: SocketAddr,
    pub(crate) permit: tokio::sync::OwnedSemaphorePermit,
    pub(crate) drain: crate::drain::Watch,
    /// Plain-text HTTP on a strict inbound port: every request is answered `mtls-required`.
    pub(crate) mtls_required: bool,
}

/// Serves `io` as HTTP or opaque TCP. `client_id` is the caller's mesh identity when the
/// connection arrived over mTLS.
pub(crate) async fn carry(
    shared: Arc<Shared>,
    io: ProxyIo,
    conn: Served,
    direction: Direction,
    dst: Option<SocketAddr>,
    carried: Carried,
    client_id: Option<SpiffeId>,
) {
    let version = match carried {
        Carried::Http(v) => v,
        Carried::Opaque => {
            if direction == Direction::Inbound {
                let port = dst.map_or(0, |d| d.port());
                if !crate::inbound::authorize_tcp(&shared, client_id.as_ref(), port) {
                    return; // Denied: closing the connection is the answer (logged, counted).
                }
            }
            let Some(dst) = dst.or_else(|| shared.explicit_target()) else {
                tracing::warn!(peer = %conn.peer, "opaque outbound connection with no destination: set SHOAL_OUTBOUND_TARGET or use transparent mode");
                return;
            };
            let Some(dst) = shared.check_loop(dst).ok() else {
                tracing::warn!(peer = %conn.peer, destination = %dst, "opaque connection to the proxy itself: refusing to loop");
                return;
            };
            let upstream = match direction {
                Direction::Outbound => {
                    crate::outbound::resolve_opaque(&shared, dst, conn.peer).await
                }
                Direction::Inbound => crate::tcp::Upstream::plain(dst),
            };
            let http = &shared.config.http;
            // Boxed for the same reason as HTTP/2: keep every connection's task small.
            Box::pin(crate::tcp::forward(
                io,
                upstream,
                shared.identity.as_deref(),
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
        client_id_header: client_id
            .as_ref()
            .and_then(|id| ::http::HeaderValue::from_str(id.as_str()).ok()),
        client_id,
        mtls_required: conn.mtls_required,
        response_deadline: (version == http::Downstream::Http1).then(Default::default),
        stream_deadlines: (version == http::Downstream::Http2).then(Default::default),
    });
    // From here the connection is served by a task of its own, and this one ends. An async fn
    // keeps its arguments for its whole life, so each layer that led here (accept, detection,
    // mesh TLS, this function) would otherwise stay in the connection's task as long as the
    // connection lives: about 1.5 KB of an idle keep-alive connection's memory (BENCHMARKS.md,
    // session 6). Once per connection, not per request.
    tokio::spawn(http::serve(c, io, conn.drain, conn.permit));
}
