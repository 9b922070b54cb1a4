//! Opaque TCP forwarding: bidirectional copy with half-close, and upgraded HTTP connections.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::errors::{Reason, connect_reason};
use crate::io::ProxyIo;
use crate::metrics::{self, Direction};

/// Forwards `client` to `dst` byte for byte until both sides have closed. Each side's EOF is
/// passed on as a half-close (shutdown of the write side), so request/response protocols that
/// signal the end of a request by closing their write half keep working.
pub async fn forward(
    mut client: ProxyIo,
    dst: SocketAddr,
    direction: Direction,
    connect_timeout: Duration,
    idle: Duration,
) {
    let upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = connect_reason(&e);
            metrics::proxy_error(direction, reason);
            tracing::warn!(direction = direction.as_str(), destination = %dst, reason = reason.as_str(), error = %e, "opaque connection: cannot connect upstream; check that it is listening");
            return;
        }
        Err(_) => {
            metrics::proxy_error(direction, Reason::UpstreamConnectTimeout);
            tracing::warn!(direction = direction.as_str(), destination = %dst, "opaque connection: connect timed out (SHOAL_CONNECT_TIMEOUT)");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
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
