//! HTTP: serving a downstream connection (HTTP/1.1 or HTTP/2) and forwarding each request.

pub mod body;
mod forward;
pub mod headers;
mod respond;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::app::Shared;
use crate::drain;
use crate::io::ProxyIo;
use crate::metrics::Direction;

/// The HTTP version a downstream connection speaks (from detection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downstream {
    /// HTTP/1.0 or 1.1.
    Http1,
    /// HTTP/2 (prior knowledge).
    Http2,
}

/// What every request on one downstream connection shares.
#[derive(Debug)]
pub struct Conn {
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Inbound or outbound.
    pub direction: Direction,
    /// The client's address.
    pub client: SocketAddr,
    /// The original destination (transparent) or the fixed target (explicit inbound).
    pub dst: Option<SocketAddr>,
    /// The downstream HTTP version.
    pub version: Downstream,
}

/// Serves HTTP on `io` until the client is done or draining asks the connection to close.
pub async fn serve(conn: Arc<Conn>, io: ProxyIo, mut drain: drain::Watch) {
    let config = conn.shared.config.clone();
    let cfg = &config.http;
    let client = conn.client;
    let version = conn.version;
    let direction = conn.direction;
    let svc = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(forward::handle(&conn, req).await) }
    });
    let io = TokioIo::new(io);
    let result = match version {
        Downstream::Http1 => {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(cfg.header_read_timeout)
                .max_headers(cfg.max_headers)
                .max_buf_size(cfg.max_header_bytes.max(8192) + 8192)
                .max_header_size(cfg.max_header_bytes);
            let conn = builder.serve_connection(io, svc).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => res,
                _ = drain.signaled() => {
                    // Finish the in-flight request, then close (Connection: close).
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Downstream::Http2 => {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(cfg.h2_max_concurrent_streams)
                .max_header_list_size(cfg.max_header_bytes as u32)
                .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
                .keep_alive_timeout(std::time::Duration::from_secs(20));
            let conn = builder.serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => res,
                _ = drain.signaled() => {
                    // GOAWAY: streams in flight finish, no new ones start.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        respond::connection_error(&e, client, direction);
    }
}
