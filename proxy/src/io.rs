//! The downstream connection's I/O: replays the bytes detection read, and counts traffic.
//!
//! Byte counts live in plain fields (no atomics on the hot path) and are reported to metrics
//! once, when the connection is dropped.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::errors::Reason;
use crate::metrics::ConnMetrics;
use crate::tls::{MaybeTls, ServerStream};

mod framing;
mod gated;
use framing::RequestFraming;
use framing::{Rejection, Then};
pub use gated::{Gated, GatedTcp, WakeGate};

/// A downstream connection's transport: plain TCP, or mesh mTLS the proxy terminated.
pub type Transport = MaybeTls<ServerStream>;

/// A downstream stream with detection's buffered prefix in front of it.
///
/// On an HTTP/1 connection every byte read passes the request framing gate ([`framing`])
/// first: hyper only sees request heads that passed its checks, and a head that fails is
/// answered here, by the proxy, with its own reason — hyper's error responses are never relied
/// on or rewritten.
#[derive(Debug)]
pub struct ProxyIo {
    /// Bytes to read back first that need no checking (detection's prefix on a connection that
    /// is not gated, or what hyper had buffered when the connection parked).
    admitted: Bytes,
    /// HTTP/1: bytes read but not yet through the gate (the start of a head still arriving).
    stash: BytesMut,
    /// HTTP/1: the request framing gate.
    framing: Option<RequestFraming>,
    /// HTTP/1: a request the gate refused, and how far answering it got.
    refusal: Option<Refusal>,
    inner: Transport,
    read: u64,
    written: u64,
    protocol: &'static str,
    metrics: ConnMetrics,
    activity: Arc<Activity>,
    /// The proxy's own error response, not yet written.
    pending: Bytes,
}

/// A request the gate refused.
#[derive(Debug)]
enum Refusal {
    /// A bad head hyper never saw: answered here once the responses before it are written.
    Head(Rejection),
    /// A body whose framing broke after hyper got its head: hyper sees the stream end, and the
    /// request fails as a malformed one where every request error is answered (`http::forward`).
    Body,
    /// Answered (or the body cut): the client's stream has ended for hyper.
    Done,
}

/// What the HTTP/1 server loop needs to know to park an idle keep-alive connection: whether
/// the connection moved bytes lately, is waiting to read, has unflushed writes, or is serving a
/// request. Written only by the connection's own task, so plain loads and stores suffice.
///
/// It also times the request head being read, so the server loop enforces
/// `SHOAL_HEADER_READ_TIMEOUT` with the one timer it already has, instead of hyper arming (and
/// allocating) a timer of its own for every request.
#[derive(Debug)]
pub struct Activity {
    /// Time base of `head_since_us`.
    epoch: Instant,
    /// When the first byte of the request head being read arrived (µs since `epoch`); valid
    /// while `head_started` is set.
    head_since_us: AtomicU64,
    ops: AtomicU64,
    read_pending: AtomicBool,
    unflushed: AtomicBool,
    in_flight: AtomicUsize,
    /// Bytes of a request head arrived while no request was being served.
    head_started: AtomicBool,
    /// A refused request waits for the responses before it: wake the reader when they are done.
    refusal_waits: AtomicBool,
    reader: futures_util::task::AtomicWaker,
    /// The request the gate refused on this connection, if any.
    rejected: std::sync::OnceLock<Rejected>,
}

/// A request head refused before hyper saw it, for the connection's log line and metrics.
#[derive(Debug)]
pub struct Rejected {
    /// The reason it was answered with.
    pub reason: Reason,
    /// What was wrong.
    pub detail: String,
    /// The request id of the proxy's answer.
    pub request_id: String,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            head_since_us: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            read_pending: AtomicBool::new(false),
            unflushed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            head_started: AtomicBool::new(false),
            refusal_waits: AtomicBool::new(false),
            reader: futures_util::task::AtomicWaker::new(),
            rejected: std::sync::OnceLock::new(),
        }
    }
}

impl Activity {
    /// Bytes of a request head arrived while no request is being served: the head's clock
    /// starts with the first of them.
    fn head_bytes(&self) {
        if !self.head_started.load(Ordering::Relaxed) {
            let us = Instant::now()
                .saturating_duration_since(self.epoch)
                .as_micros() as u64;
            self.head_since_us.store(us, Ordering::Relaxed);
            self.head_started.store(true, Ordering::Relaxed);
        }
    }

    /// When the request head being read started arriving, if one is being read.
    pub fn head_since(&self) -> Option<Instant> {
        (self.head_started.load(Ordering::Relaxed) && self.in_flight.load(Ordering::Relaxed) == 0)
            .then(|| {
                self.epoch
                    + std::time::Duration::from_micros(self.head_since_us.load(Ordering::Relaxed))
            })
    }

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

    /// True when nothing is in flight, every write is flushed, no request head is half-read
    /// and the server waits to read.
    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && !self.unflushed.load(Ordering::Relaxed)
            && !self.head_started.load(Ordering::Relaxed)
            && self.read_pending.load(Ordering::Relaxed)
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(false, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The request the gate refused on this connection, if it did.
    pub fn rejected(&self) -> Option<&Rejected> {
        self.rejected.get()
    }

    /// Every response before a refused request is written: its answer may go out now.
    fn quiet(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && !self.unflushed.load(Ordering::Relaxed)
    }

    fn wake_refusal(&self) {
        if self.refusal_waits.load(Ordering::Relaxed) {
            self.reader.wake();
        }
    }
}

/// A request (and its response body) being served; see [`Activity::begin`].
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.wake_refusal();
    }
}

impl ProxyIo {
    /// Wraps `inner`; `prefix` (already read by detection) is read back first.
    pub fn new(
        inner: Transport,
        prefix: Bytes,
        protocol: &'static str,
        metrics: ConnMetrics,
    ) -> Self {
        let read = prefix.len() as u64;
        Self {
            admitted: prefix,
            stash: BytesMut::new(),
            framing: None,
            refusal: None,
            inner,
            read,
            written: 0,
            protocol,
            metrics,
            activity: Arc::default(),
            pending: Bytes::new(),
        }
    }

    /// Puts every byte read from now on (detection's prefix included) through the HTTP/1
    /// request framing gate, with these limits.
    pub fn gate_http1(&mut self, max_header_bytes: usize, max_headers: usize) {
        let mut gate = RequestFraming::new(max_header_bytes, max_headers);
        let prefix = std::mem::take(&mut self.admitted);
        if !prefix.is_empty() {
            self.activity.head_bytes();
        }
        let verdict = gate.admit(&prefix);
        self.framing = Some(gate);
        if verdict.pass < prefix.len() {
            self.stash = BytesMut::from(&prefix[verdict.pass..]);
        }
        self.admitted = prefix.slice(..verdict.pass);
        self.settle(verdict.then);
    }

    /// Acts on what the gate said follows the bytes it passed.
    fn settle(&mut self, then: Then) {
        let refusal = match then {
            Then::More => return,
            Then::RejectHead(r) => Refusal::Head(r),
            Then::RejectBody(r) => {
                // The request itself fails (hyper sees its body end early) and is answered,
                // logged and counted where every request error is; this says why.
                tracing::warn!(
                    reason = r.reason.as_str(),
                    "{}; the request fails and the connection closes",
                    r.detail
                );
                Refusal::Body
            }
        };
        self.stash = BytesMut::new();
        self.refusal = Some(refusal);
    }

    /// Writes what is left of the proxy's own response first.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n as u64;
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// The activity record the HTTP/1 server loop watches.
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Puts bytes hyper read but did not process back in front of the stream (they already
    /// passed the gate).
    pub fn unread(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            debug_assert!(self.admitted.is_empty());
            self.admitted = bytes;
        }
    }

    /// Whether reading would make progress without the socket: bytes are waiting to be read
    /// again, or a refused request waits for its answer.
    pub fn has_buffered(&self) -> bool {
        !self.admitted.is_empty() || !self.stash.is_empty() || self.refusal.is_some()
    }

    /// Waits until the socket has bytes (or EOF) to read, holding no buffers meanwhile. A TLS
    /// session may hold decrypted bytes the socket no longer shows, so it never waits.
    pub async fn readable(&self) -> io::Result<()> {
        match &self.inner {
            MaybeTls::Plain(s) => s.get_ref().readable().await,
            MaybeTls::Tls(_) => Ok(()),
        }
    }

    /// Reads from the socket into `buf`: the number of bytes read (0: end of stream).
    fn poll_socket(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read += n as u64;
        let pending = res.is_pending();
        self.activity.read_pending.store(pending, Ordering::Relaxed);
        ready!(res)?;
        self.activity.touch();
        if n > 0
            && self.activity.in_flight.load(Ordering::Relaxed) == 0
            && self.framing.as_ref().is_none_or(RequestFraming::at_head)
        {
            self.activity.head_bytes();
        }
        Poll::Ready(Ok(n))
    }

    /// The gated read: hands hyper only what the framing gate passed.
    fn poll_gated(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.admitted.is_empty() {
                let n = self.admitted.len().min(buf.remaining());
                buf.put_slice(&self.admitted[..n]);
                self.admitted.advance(n);
                if self.admitted.is_empty() {
                    // Release the buffer: a long-lived idle connection should not keep it.
                    self.admitted = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            if self.refusal.is_some() {
                return self.poll_refusal(cx);
            }
            let gate = self
                .framing
                .as_mut()
                .expect("a gated connection has a gate");
            if gate.is_tunnel() && self.stash.is_empty() {
                // No longer HTTP (or closing after its answer): bytes go as they come.
                ready!(self.poll_socket(cx, buf))?;
                return Poll::Ready(Ok(()));
            }
            // Read straight into hyper's buffer; only bytes the gate holds back are copied.
            let before = buf.filled().len();
            let fresh = self.stash.is_empty();
            let n = ready!(self.poll_socket(cx, buf))?;
            if n == 0 {
                // The client closed; a head it left incomplete is dropped with it.
                self.stash = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
            let gate = self
                .framing
                .as_mut()
                .expect("a gated connection has a gate");
            let verdict = if fresh {
                let verdict = gate.admit(&buf.filled()[before..]);
                if verdict.pass < n {
                    self.stash
                        .extend_from_slice(&buf.filled()[before + verdict.pass..]);
                    buf.set_filled(before + verdict.pass);
                }
                verdict
            } else {
                // A head arriving in pieces: it must be whole to be checked.
                self.stash.extend_from_slice(&buf.filled()[before..]);
                buf.set_filled(before);
                let verdict = gate.admit(&self.stash);
                self.admitted = self.stash.split_to(verdict.pass).freeze();
                verdict
            };
            if self.stash.is_empty() {
                self.stash = BytesMut::new();
            }
            self.settle(verdict.then);
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// A refused request: once every response before it is written, the proxy's own answer
    /// goes out and hyper sees the client's stream end.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(Refusal::Head(r)) = &self.refusal {
            if !self.activity.quiet() {
                self.activity.reader.register(cx.waker());
                self.activity.refusal_waits.store(true, Ordering::Relaxed);
                if !self.activity.quiet() {
                    return Poll::Pending;
                }
            }
            let err = r.to_error();
            let id = crate::trace_context::new_request_id();
            let id = id.to_str().unwrap_or("-").to_string();
            self.pending = Bytes::from(err.http1_response(&id));
            let _ = self.activity.rejected.set(Rejected {
                reason: err.kind,
                detail: err.detail,
                request_id: id,
            });
            self.refusal = Some(Refusal::Done);
        }
        ready!(self.poll_pending(cx))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.refusal = Some(Refusal::Done);
        Poll::Ready(Ok(()))
    }

    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        self.activity.unflushed.store(true, Ordering::Relaxed);
        self.activity.touch();
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
        if this.framing.is_some() {
            return this.poll_gated(cx, buf);
        }
        if !this.admitted.is_empty() {
            let n = this.admitted.len().min(buf.remaining());
            buf.put_slice(&this.admitted[..n]);
            if this.activity.in_flight.load(Ordering::Relaxed) == 0 {
                this.activity.head_bytes();
            }
            this.admitted.advance(n);
            if this.admitted.is_empty() {
                // Release detection's buffer: a long-lived idle connection should not keep it.
                this.admitted = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.poll_socket(cx, buf).map_ok(|_| ())
    }
}

impl AsyncWrite for ProxyIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
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
        ready!(self.poll_pending(cx))?;
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
        ready!(self.poll_pending(cx))?;
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            self.activity.unflushed.store(false, Ordering::Relaxed);
            self.activity.wake_refusal();
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
