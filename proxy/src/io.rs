//! The downstream connection's I/O: replays the bytes detection read, and counts traffic.
//!
//! Byte counts live in plain fields (no atomics on the hot path) and are reported to metrics
//! once, when the connection is dropped.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::errors::{ERROR_HEADER, Reason};
use crate::metrics::ConnMetrics;
use crate::tls::{MaybeTls, ServerStream};

mod gated;
pub use gated::{Gated, GatedTcp, WakeGate};

/// A downstream connection's transport: plain TCP, or mesh mTLS the proxy terminated.
pub type Transport = MaybeTls<ServerStream>;

/// A downstream stream with detection's buffered prefix in front of it.
#[derive(Debug)]
pub struct ProxyIo {
    prefix: Bytes,
    inner: Transport,
    read: u64,
    written: u64,
    protocol: &'static str,
    metrics: ConnMetrics,
    activity: Arc<Activity>,
    /// HTTP/1 only: label hyper's automatic error responses with the proxy's reason.
    label_errors: bool,
    /// Rewritten bytes not yet written.
    pending: Bytes,
    /// Framing headers seen in the request head being read (see [`FramingScan`]).
    scan: FramingScan,
}

/// Notices a request head that carries both `Content-Length` and `Transfer-Encoding`.
///
/// hyper resolves that conflict itself (RFC 9112 §6.1: chunked wins, the length is dropped) and
/// does not tell the service, but a proxy should refuse such a request outright (a classic
/// smuggling probe). Only bytes read while no request is being served are looked at, and only up
/// to the end of the head: a line-start check of two header names, not an HTTP parser.
#[derive(Debug, Default)]
struct FramingScan {
    at_line_start: bool,
    in_head: bool,
    content_length: bool,
    transfer_encoding: bool,
}

impl FramingScan {
    fn feed(&mut self, bytes: &[u8]) -> bool {
        if !self.in_head {
            *self = FramingScan {
                in_head: true,
                ..FramingScan::default()
            };
        }
        let mut i = 0;
        while i < bytes.len() {
            if self.at_line_start {
                let rest = &bytes[i..];
                if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
                    self.in_head = false; // end of head
                    break;
                }
                let starts = |name: &[u8]| {
                    rest.len() >= name.len() && rest[..name.len()].eq_ignore_ascii_case(name)
                };
                // Most lines start with neither letter: one byte decides.
                match rest[0].to_ascii_lowercase() {
                    b'c' => self.content_length |= starts(b"content-length:"),
                    b't' => self.transfer_encoding |= starts(b"transfer-encoding:"),
                    _ => {}
                }
            }
            match memchr::memchr(b'\n', &bytes[i..]) {
                Some(nl) => {
                    i += nl + 1;
                    self.at_line_start = true;
                }
                None => {
                    self.at_line_start = false;
                    break;
                }
            }
        }
        self.content_length && self.transfer_encoding
    }
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
    /// Responses the service produced whose head has not been written yet.
    owed: AtomicUsize,
    /// The request head being read carries both Content-Length and Transfer-Encoding.
    ambiguous_framing: AtomicBool,
    /// The request id given to hyper's own error response on this connection, if any.
    rejected: std::sync::OnceLock<(Reason, String)>,
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
            owed: AtomicUsize::new(0),
            ambiguous_framing: AtomicBool::new(false),
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
        self.owed.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(false, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Whether the request whose head was just read framed its body twice (Content-Length and
    /// Transfer-Encoding); resets the flag.
    pub fn take_ambiguous_framing(&self) -> bool {
        self.ambiguous_framing.swap(false, Ordering::Relaxed)
    }

    /// The reason and request id of the error response hyper sent by itself, if it did.
    pub fn rejected(&self) -> Option<&(Reason, String)> {
        self.rejected.get()
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
        inner: Transport,
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
            label_errors: false,
            pending: Bytes::new(),
            scan: FramingScan::default(),
        }
    }

    /// Gives hyper's automatic HTTP/1 error responses (malformed or oversized request heads,
    /// sent while no request is in flight) the proxy's `shoal-proxy-error` reason and a request id.
    pub fn label_error_responses(&mut self) {
        self.label_errors = true;
    }

    /// If `buf` is hyper's own error response, the labelled version of it. hyper answers by
    /// itself only when a request head fails to parse: head bytes were read, the service was not
    /// called for them, and every response the service produced has been written.
    fn labelled(&self, buf: &[u8]) -> Option<Bytes> {
        let a = &self.activity;
        if !self.label_errors
            || !a.head_started.load(Ordering::Relaxed)
            || a.in_flight.load(Ordering::Relaxed) != 0
            || a.owed.load(Ordering::Relaxed) != 0
        {
            return None;
        }
        let reason = match buf.get(..13)? {
            b"HTTP/1.1 400 " => Reason::MalformedRequest,
            b"HTTP/1.1 431 " => Reason::HeadersTooLarge,
            b"HTTP/1.1 414 " => Reason::UriTooLong,
            _ => return None,
        };
        let line_end = buf.windows(2).position(|w| w == b"\r\n")? + 2;
        let id = crate::trace_context::new_request_id();
        let id = id.to_str().unwrap_or("-").to_string();
        let mut out = Vec::with_capacity(buf.len() + 96);
        out.extend_from_slice(&buf[..line_end]);
        for (name, value) in [
            (ERROR_HEADER, reason.as_str()),
            ("x-request-id", id.as_str()),
        ] {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&buf[line_end..]);
        let _ = self.activity.rejected.set((reason, id));
        Some(Bytes::from(out))
    }

    /// Writes what is left of a rewritten response first.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
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

    /// Waits until the socket has bytes (or EOF) to read, holding no buffers meanwhile. A TLS
    /// session may hold decrypted bytes the socket no longer shows, so it never waits.
    pub async fn readable(&self) -> io::Result<()> {
        match &self.inner {
            MaybeTls::Plain(s) => s.get_ref().readable().await,
            MaybeTls::Tls(_) => Ok(()),
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
            if this.activity.in_flight.load(Ordering::Relaxed) == 0 {
                this.activity.head_bytes();
                this.scan_head(n);
            }
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Release detection's buffer: a long-lived idle connection should not keep it.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        let pending = res.is_pending();
        this.activity.read_pending.store(pending, Ordering::Relaxed);
        if !pending {
            this.activity.touch();
            if buf.filled().len() > before && this.activity.in_flight.load(Ordering::Relaxed) == 0 {
                this.activity.head_bytes();
                if this.label_errors && this.scan.feed(&buf.filled()[before..]) {
                    this.activity
                        .ambiguous_framing
                        .store(true, Ordering::Relaxed);
                }
            }
        }
        res
    }
}

impl ProxyIo {
    fn scan_head(&mut self, n: usize) {
        if self.label_errors && self.scan.feed(&self.prefix[..n]) {
            self.activity
                .ambiguous_framing
                .store(true, Ordering::Relaxed);
        }
    }

    /// The first write after the service answered carries that response's head.
    fn settle_owed(&self) {
        let owed = self.activity.owed.load(Ordering::Relaxed);
        if owed > 0 {
            self.activity.owed.store(owed - 1, Ordering::Relaxed);
        }
    }

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
        ready!(self.poll_pending(cx))?;
        let owed = self.label_errors && self.activity.owed.load(Ordering::Relaxed) > 0;
        if !owed && let Some(labelled) = self.labelled(buf) {
            // Accept all of hyper's bytes; the labelled copy is written from `pending`.
            self.pending = labelled;
            self.wrote(buf.len());
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.wrote(n);
            if owed {
                self.settle_owed();
            }
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        let owed = self.label_errors && self.activity.owed.load(Ordering::Relaxed) > 0;
        if !owed
            && self.label_errors
            && bufs
                .iter()
                .find(|b| !b.is_empty())
                .is_some_and(|b| b.starts_with(b"HTTP/1.1 4"))
        {
            // Possibly hyper's own error response (rare): flatten, and let poll_write decide.
            let flat: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            return self.poll_write(cx, &flat);
        }
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            self.wrote(n);
            if owed {
                self.settle_owed();
            }
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
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::FramingScan;

    #[test]
    fn framing_scan_finds_both_headers_in_the_head_only() {
        let mut s = FramingScan::default();
        assert!(
            s.feed(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTRANSFER-ENCODING: chunked\r\n\r\n")
        );

        // Split across reads, at a line start.
        let mut s = FramingScan::default();
        assert!(!s.feed(b"POST / HTTP/1.1\r\ncontent-length: 4\r\n"));
        assert!(s.feed(b"transfer-encoding: chunked\r\n\r\n"));

        // Either header alone is fine; a body mentioning the other is not the head.
        let mut s = FramingScan::default();
        assert!(
            !s.feed(b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\ntransfer-encoding: chunked\r\n")
        );
        // A value mentioning a header name is not a header line.
        let mut s = FramingScan::default();
        assert!(!s.feed(
            b"GET / HTTP/1.1\r\nX-Note: content-length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }
}
