//! The downstream connection's I/O: replays the bytes detection read, and counts traffic.
//!
//! Byte counts live in plain fields (no atomics on the hot path) and are reported to metrics
//! once, when the connection is dropped.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    activity: Arc<Activity>,
}

/// What the HTTP/1 server loop needs to know to park an idle keep-alive connection: whether
/// the connection moved bytes lately, is waiting to read, has unflushed writes, or is serving a
/// request. Written only by the connection's own task, so plain loads and stores suffice.
#[derive(Debug, Default)]
pub struct Activity {
    ops: AtomicU64,
    read_pending: AtomicBool,
    unflushed: AtomicBool,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.ops.store(
            self.ops.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// A counter that changes whenever bytes move.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// True when nothing is in flight, every write is flushed and the server waits to read.
    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && !self.unflushed.load(Ordering::Relaxed)
            && self.read_pending.load(Ordering::Relaxed)
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request (and its response body) being served; see [`Activity::begin`].
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
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
            activity: Arc::default(),
        }
    }

    /// The activity record the HTTP/1 server loop watches.
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Puts bytes read but not yet processed back in front of the stream.
    pub fn unread(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            // Already counted when first read from the socket.
            debug_assert!(self.prefix.is_empty());
            self.prefix = bytes;
        }
    }

    /// Whether bytes are waiting to be read again.
    pub fn has_buffered(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// Waits until the socket has bytes (or EOF) to read, holding no buffers meanwhile.
    pub async fn readable(&self) -> io::Result<()> {
        self.inner.readable().await
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
        let pending = res.is_pending();
        this.activity.read_pending.store(pending, Ordering::Relaxed);
        if !pending {
            this.activity.touch();
        }
        res
    }
}

impl ProxyIo {
    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        self.activity.unflushed.store(true, Ordering::Relaxed);
        self.activity.touch();
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
            self.wrote(n);
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
            self.wrote(n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            self.activity.unflushed.store(false, Ordering::Relaxed);
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
