//! Listeners: bind, accept, enforce the connection limit, learn the original destination.

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Mode;
use crate::drain;
use crate::errors::Reason;
use crate::metrics::{self, ConnMetrics};

/// An accepted downstream connection.
#[derive(Debug)]
pub struct Accepted {
    /// The socket.
    pub stream: TcpStream,
    /// The client.
    pub peer: SocketAddr,
    /// Transparent mode: where the client was connecting before iptables redirected it.
    pub orig_dst: Option<SocketAddr>,
    /// Holds one slot of the listener's connection limit until dropped.
    pub permit: OwnedSemaphorePermit,
    /// Connection metrics of this listener's direction.
    pub metrics: ConnMetrics,
    /// Keeps shutdown waiting for this connection; signals it to finish.
    pub drain: drain::Watch,
}

/// Binds a listening socket (SO_REUSEADDR, a deep backlog for bursts).
pub fn bind(addr: SocketAddr, setting: &str) -> Result<TcpListener, String> {
    let fail = |e: std::io::Error| format!("cannot listen on {setting}={addr}: {e}");
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(4096).map_err(fail)?;
    TcpListener::from_std(socket.into()).map_err(fail)
}

/// The original destination of a redirected connection (SO_ORIGINAL_DST), or `None` when the
/// connection was not redirected (its "original" destination is the listener itself).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = SockRef::from(stream);
    let dst = sock
        .original_dst_v4()
        .or_else(|_| sock.original_dst_v6())
        .ok()?
        .as_socket()?;
    let local = stream.local_addr().ok()?;
    (dst != local).then_some(dst)
}

/// Accepts connections until draining starts, handing each to `handle` on its own task.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mode: Mode,
    max_connections: usize,
    metrics: ConnMetrics,
    mut drain: drain::Watch,
    handle: F,
) where
    F: Fn(Accepted) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections));
    let direction = metrics.direction();
    loop {
        let (stream, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(direction = direction.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.signaled() => return,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics::proxy_error(direction, Reason::ConnectionLimit);
            tracing::warn!(direction = direction.as_str(), %peer, max_connections, "connection limit reached (SHOAL_MAX_CONNECTIONS): closing the new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let orig_dst = match mode {
            Mode::Transparent => original_dst(&stream),
            _ => None,
        };
        metrics.opened();
        tokio::spawn(handle(Accepted {
            stream,
            peer,
            orig_dst,
            permit,
            metrics: metrics.clone(),
            drain: drain.clone(),
        }));
    }
}
