//! The downstream connection's I/O: replays the bytes detection read, and counts traffic.
//!
//! Byte counts live in plain fields (no atomics on the hot path) and are reported to metrics
//! once, when the connection is dropped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::ConnMetrics;

/// A downstream TCP stream with detection's buffered prefix in front of it.
#[derive(Debug)]
pub struct ProxyIo {
    prefix: Bytes,
    inner: TcpStream,
    read: u64,
    written: u64,
    protocol: &'static str,
    metrics: ConnMetrics,
}

impl ProxyIo {
    /// Wraps `inner`; `prefix` (already read by detection) is read back first.
    pub fn new(
        inner: TcpStream,
        prefix: Bytes,
        protocol: &'static str,
        metrics: ConnMetrics,
    ) -> Self {
        let read = prefix.len() as u64;
        Self {
            prefix,
            inner,
            read,
            written: 0,
            protocol,
            metrics,
        }
    }
}

impl Drop for ProxyIo {
    fn drop(&mut self) {
        self.metrics.closed(self.protocol, self.read, self.written);
    }
}

impl AsyncRead for ProxyIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        res
    }
}

impl AsyncWrite for ProxyIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.written += n as u64;
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            self.written += n as u64;
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
