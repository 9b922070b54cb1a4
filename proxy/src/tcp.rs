//! Opaque TCP forwarding: bidirectional copy with half-close, and upgraded HTTP connections.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::endpoint::{UpstreamIo, connect_tcp, originate};
use crate::identity::Identity;
use crate::io::ProxyIo;
use crate::metrics::{self, Direction};
use crate::tls::{Alpn, MaybeTls, SpiffeId};

/// Where opaque bytes go: an address, and for a mesh endpoint the identity its proxy must
/// prove (the bytes then ride mTLS, and the peer proxy delivers them to the same port).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The destination.
    pub addr: SocketAddr,
    /// Mesh mTLS to the destination's proxy.
    pub tls: Option<SpiffeId>,
    /// A backend policy's connect timeout (TCP and mTLS), instead of `SHOAL_CONNECT_TIMEOUT`.
    pub connect_timeout: Option<Duration>,
}

impl Upstream {
    /// A plain-text destination.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            connect_timeout: None,
        }
    }
}

/// Connects to `upstream`, over mTLS when it is in the mesh; failures are logged and counted.
async fn connect(
    upstream: &Upstream,
    identity: Option<&Identity>,
    direction: Direction,
    connect_timeout: Duration,
) -> Option<UpstreamIo> {
    let dst = upstream.addr;
    let attempt = |tcp_timeout| async move {
        let tcp = connect_tcp(dst, tcp_timeout).await?;
        match &upstream.tls {
            None => Ok(MaybeTls::Plain(tcp.into())),
            Some(id) => originate(identity, tcp, dst, id, Alpn::Tcp)
                .await
                .map(|s| MaybeTls::Tls(Box::new(s))),
        }
    };
    let result = match upstream.connect_timeout {
        None => attempt(connect_timeout).await,
        // The outer limit fires first and names the policy's setting.
        Some(limit) => crate::endpoint::within(limit, dst, attempt(limit.saturating_mul(2))).await,
    };
    match result {
        Ok(io) => Some(io),
        Err(e) => {
            metrics::proxy_error(direction, e.kind);
            tracing::warn!(direction = direction.as_str(), destination = %dst, reason = e.kind.as_str(), error = %e.detail, "opaque connection: cannot connect upstream");
            None
        }
    }
}

/// Forwards `client` to `upstream` byte for byte until both sides have closed. Each side's EOF
/// is passed on as a half-close (shutdown of the write side), so request/response protocols
/// that signal the end of a request by closing their write half keep working.
pub async fn forward(
    mut client: ProxyIo,
    upstream: Upstream,
    identity: Option<&Identity>,
    direction: Direction,
    connect_timeout: Duration,
    idle: Duration,
) {
    let dst = upstream.addr;
    let Some(upstream) = connect(&upstream, identity, direction, connect_timeout).await else {
        return;
    };
    let activity = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let mut a = Active::new(&mut client, &activity, epoch);
    let mut upstream = upstream;
    let mut b = Active::new(&mut upstream, &activity, epoch);
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let last = Duration::from_millis(activity.load(Ordering::Relaxed));
        let deadline = epoch + last + idle;
        tokio::select! {
            res = &mut copy => {
                if let Err(e) = res {
                    tracing::debug!(destination = %dst, error = %e, "opaque connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                if epoch + last + idle <= Instant::now() {
                    tracing::debug!(destination = %dst, "opaque connection idle for SHOAL_IDLE_TIMEOUT: closing");
                    return;
                }
            }
        }
    }
}

/// Joins an upgraded client connection (e.g. WebSocket) to the upgraded upstream connection.
pub async fn splice_upgraded(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(down, up) {
        Ok((down, up)) => {
            let mut down = TokioIo::new(down);
            let mut up = TokioIo::new(up);
            if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "protocol upgrade did not complete"),
    }
}

/// Stamps the time of the last byte moved, for the idle timeout (one relaxed store per I/O).
struct Active<'a, T> {
    inner: &'a mut T,
    last: &'a AtomicU64,
    epoch: Instant,
}

impl<'a, T> Active<'a, T> {
    fn new(inner: &'a mut T, last: &'a AtomicU64, epoch: Instant) -> Self {
        Self { inner, last, epoch }
    }

    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let res = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if res.is_ready() {
            self.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if res.is_ready() {
            self.touch();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
