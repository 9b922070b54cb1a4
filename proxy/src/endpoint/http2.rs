//! The upstream HTTP/2 client: one multiplexed connection per endpoint, driven by the `h2` crate
//! directly.
//!
//! Each request opens its stream from its own future, through the connection's one
//! `SendRequest` (under the slot's lock, `Slot::try_send`), and waits for the response head there:
//! no dispatch channel and no task per request (hyper's client had both), and no clone of the
//! handle per request (each clone and drop takes h2's connection lock). One task per connection
//! drives it and sends keep-alive pings. A request body that is still streaming when the response
//! head arrives moves into the response body, which pipes it whenever it is polled
//! ([`crate::http::body::ResponseBody::h2`]). Dropping either side before the end resets the
//! upstream stream (RST_STREAM CANCEL), so a downstream cancel reaches the upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use h2::SendStream;
use h2::client::{Connection, ResponseFuture, SendRequest};
use http::{HeaderValue, Method, Request, Response, header};
use http_body::Body;
use tokio::time::Instant;

use super::limits::{ConnGate, ConnPermit, Opened};
use super::{Clients, Peer, UpstreamIo, lock};
use crate::errors::{ProxyError, Reason};
use crate::http::body::{RequestBody, ResponseBody};
use crate::http::h2body::{Pipe, PipeEnd, RecvBody};
use crate::http::replay::Replay;
use crate::metrics::{RequestMetrics, Resent};
use crate::tls::Alpn;

/// Keep-alive: a PING this often (as hyper's client was configured) ...
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// ... and the connection is given up when its PONG takes longer than this.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

// hyper's HTTP/2 client defaults, kept: large windows so one stream is never throttled by the
// spec's 64 KiB, and a bounded send buffer per stream.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUF: usize = 1024 * 1024;

/// One endpoint's HTTP/2 connection.
#[derive(Debug, Default)]
pub(super) struct Slot {
    current: std::sync::Mutex<Option<Handle>>,
    /// Single-flight connect: concurrent first requests share one connection attempt.
    connecting: tokio::sync::Mutex<()>,
    /// Numbers this slot's connections, so a request can name the one it used without holding a
    /// reference to it.
    generation: AtomicU64,
}

/// What trying the current connection gave.
enum Attempt {
    /// A stream was opened for the request head (or refused) on connection number `.1`.
    Sent(Result<(ResponseFuture, SendStream<Bytes>), h2::Error>, u64),
    /// The connection failed before the stream was opened.
    Unusable(h2::Error, u64),
    /// No live connection.
    None,
}

impl Slot {
    /// Forgets a connection that has ended; whether a live one remains.
    pub(super) fn sweep(&self) -> bool {
        let mut cur = lock(&self.current);
        if cur.as_ref().is_some_and(Handle::is_closed) {
            *cur = None;
        }
        cur.is_some()
    }

    /// Whether a connection is current and not known to have ended.
    fn has_live(&self) -> bool {
        lock(&self.current).as_ref().is_some_and(|h| !h.is_closed())
    }

    /// Opens a stream for `head` on the live connection, through the slot's own handle: a clone
    /// per request would take the h2 connection's lock twice more. `head` is taken only when it
    /// is sent.
    /// `max_streams`: the backend policy's `max_requests_per_connection`; the connection that
    /// opened that many streams leaves the slot (no new streams; it closes once they end).
    fn try_send(
        &self,
        cx: &mut Context<'_>,
        head: &mut Request<()>,
        eos: bool,
        max_streams: Option<u32>,
    ) -> Attempt {
        let mut cur = lock(&self.current);
        let Some(h) = cur.as_mut().filter(|h| !h.is_closed()) else {
            return Attempt::None;
        };
        // `poll_ready` waits only while the handle holds a stream h2 could not open yet, and the
        // slot's handle never keeps one (below): this asks whether the connection failed.
        if let Poll::Ready(Err(e)) = h.tx.poll_ready(cx) {
            return Attempt::Unusable(e, h.id);
        }
        let sent = h.tx.send_request(std::mem::take(head), eos);
        // A stream h2 cannot open yet (the peer's stream limit is reached, or its SETTINGS are
        // still to come) stays referenced by the handle that sent it, to hold back that handle's
        // next request. The slot's handle is every request's, so it must not keep one (a
        // cancelled request's stream would stay open upstream): a fresh clone holds none.
        if sent.is_ok() && h.tx.poll_ready(cx).is_pending() {
            h.tx = h.tx.clone();
        }
        let id = h.id;
        if sent.is_ok() {
            h.streams += 1;
            if max_streams.is_some_and(|max| h.streams >= max) {
                // Dropping the slot's handle: h2 ends the connection once its streams end.
                *cur = None;
            }
        }
        Attempt::Sent(sent, id)
    }

    /// Marks connection number `id` unusable (it failed or is going away), and forgets it if it
    /// is current.
    fn retire(&self, id: u64) {
        let mut cur = lock(&self.current);
        if let Some(h) = cur.as_ref().filter(|h| h.id == id) {
            h.closed.store(true, Ordering::Relaxed);
            *cur = None;
        }
    }
}

/// A connection's request handle and whether its driver task has ended.
#[derive(Debug)]
struct Handle {
    tx: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
    /// The connection's number in its slot.
    id: u64,
    /// Streams opened on it.
    streams: u32,
}

impl Handle {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

impl Clients {
    /// Connects the HTTP/2 connection of `slot` (one attempt at a time; none if a concurrent
    /// request already did).
    async fn connect_h2(
        &self,
        peer: &Peer,
        slot: &Slot,
        connect_timeout: Option<Duration>,
        gate: Option<&Arc<ConnGate>>,
    ) -> Result<(), ProxyError> {
        let addr = peer.0;
        let _connecting = slot.connecting.lock().await;
        if slot.has_live() {
            return Ok(());
        }
        // At the backend's cap on connections, the request waits as a pending one.
        let permit: Option<ConnPermit> = match gate {
            None => None,
            Some(gate) => match gate.open(self.wait_until(connect_timeout), None).await? {
                Opened::Permit(p) => Some(p),
                Opened::Released => unreachable!("no pool to release into"),
            },
        };
        let io = self.connect_io(peer, Alpn::H2, connect_timeout).await?;
        let (tx, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUF)
            .max_header_list_size(self.cfg.max_header_bytes as u32)
            // Until the peer's SETTINGS arrive (one round trip), open one stream at a time: h2
            // would otherwise open any number, and a server with a lower stream limit refuses
            // the excess (REFUSED_STREAM), failing requests that only arrived together with
            // the connection. The peer's own limit applies from its SETTINGS on.
            .initial_max_send_streams(1)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| {
                ProxyError::new(
                    Reason::UpstreamConnectError,
                    format!("HTTP/2 handshake with {addr}: {e}; is the endpoint speaking h2c?"),
                )
            })?;
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(conn, closed.clone(), addr, permit));
        let id = slot.generation.fetch_add(1, Ordering::Relaxed);
        *lock(&slot.current) = Some(Handle {
            tx,
            closed,
            id,
            streams: 0,
        });
        Ok(())
    }

    /// Sends `req` on the endpoint's HTTP/2 connection, returning the response head.
    pub(super) async fn send_h2(
        &self,
        peer: &Peer,
        req: Request<RequestBody>,
        connect_timeout: Option<Duration>,
        metrics: &RequestMetrics,
        gate: Option<&Arc<ConnGate>>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let addr = peer.0;
        let slot = super::entry(&self.h2, peer);
        let (mut parts, body) = req.into_parts();
        if let Some(len) = body.size_hint().exact()
            && (len != 0 || has_payload_semantics(&parts.method))
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let eos = body.is_end_stream();
        let mut head = Request::from_parts(parts, ());
        // A request the upstream provably never processed — its stream above a GOAWAY's
        // last-stream-id, or refused with REFUSED_STREAM — is sent again, whatever its method
        // (RFC 9113 §8.7): an upstream rotating its connections (nginx closes one every 1,000
        // requests) must not fail the requests that raced the rotation. Its head is copied before
        // it is sent, and a body is kept as it streams (up to `http::replay`'s limit; a larger
        // one cannot be sent again). A body the retry stage already keeps is not kept twice: that
        // stage retries it.
        let spare = crate::http::headers::copy_head(&head);
        let (replay, mut body) = if !eos && !matches!(body, RequestBody::Replay(_)) {
            let replay = Replay::new(body);
            let first = replay.attempt().map(RequestBody::Replay);
            (Some(replay), first)
        } else {
            (None, Some(body))
        };
        // Whether the body (if any) can be sent again now.
        let can_resend = |body: &Option<RequestBody>| {
            eos || replay.as_ref().is_some_and(Replay::replayable) || body.is_some()
        };
        let mut resent = 0;
        loop {
            let (id, sent) = self
                .open_stream(peer, &slot, &mut head, eos, connect_timeout, gate)
                .await?;
            // The next attempt's head and body, when the upstream never processed this one and
            // it can be sent again.
            let resend = |e: &h2::Error,
                          resent: &mut usize,
                          body: &mut Option<RequestBody>|
             -> Option<Request<()>> {
                let why = never_processed(e)?;
                if *resent >= MAX_RESENDS || !can_resend(body) {
                    return None;
                }
                if let Some(r) = &replay {
                    *body = Some(RequestBody::Replay(r.attempt()?));
                }
                *resent += 1;
                tracing::debug!(%addr, error = %e, "the upstream never processed the request; sending it again");
                metrics.resent(why);
                Some(crate::http::headers::copy_head(&spare))
            };
            let (mut response, stream) = match sent {
                Ok(sent) => sent,
                Err(e) => {
                    if !e.is_reset() {
                        slot.retire(id);
                    }
                    if let Some(again) = resend(&e, &mut resent, &mut body) {
                        head = again;
                        continue;
                    }
                    return Err(exchange_error(addr, &e));
                }
            };
            let mut pipe = if eos {
                None
            } else {
                body.take().map(|b| Box::new(Pipe::new(b, stream)))
            };
            let mut body_failed = None;
            let polled = std::future::poll_fn(|cx| {
                if let Some(p) = &mut pipe
                    && let Poll::Ready(end) = p.poll_pipe(cx)
                {
                    if let PipeEnd::BodyFailed(e) = end {
                        body_failed = Some(e);
                    }
                    pipe = None;
                }
                response.poll_unpin(cx)
            })
            .await;
            match polled {
                Ok(resp) => {
                    let (parts, recv) = resp.into_parts();
                    let body = RecvBody::new(recv, &parts.headers);
                    return Ok(Response::from_parts(parts, ResponseBody::h2(body, pipe)));
                }
                Err(e) => {
                    if let Some(b) = body_failed {
                        return Err(ProxyError::new(
                            Reason::MalformedRequest,
                            format!("reading the request body from the client failed: {b}"),
                        ));
                    }
                    if e.is_go_away() || e.is_io() {
                        // Going away or gone: new requests go to a new connection.
                        slot.retire(id);
                    }
                    if let Some(again) = resend(&e, &mut resent, &mut body) {
                        head = again;
                        continue;
                    }
                    return Err(exchange_error(addr, &e));
                }
            }
        }
    }

    /// Opens a stream for `head` on the endpoint's connection, connecting it first if there is
    /// none. A second connection attempt only where the request provably never left: the
    /// connection had failed before its stream was opened. Returns the connection's number and
    /// what opening the stream gave.
    async fn open_stream(
        &self,
        peer: &Peer,
        slot: &Slot,
        head: &mut Request<()>,
        eos: bool,
        connect_timeout: Option<Duration>,
        gate: Option<&Arc<ConnGate>>,
    ) -> Result<(u64, Result<(ResponseFuture, SendStream<Bytes>), h2::Error>), ProxyError> {
        let addr = peer.0;
        let max_streams = gate.and_then(|g| g.max_per_connection());
        let mut retried = false;
        let mut connected = false;
        loop {
            let (e, id) = match with_context(|cx| slot.try_send(cx, head, eos, max_streams)).await {
                Attempt::Sent(sent, id) => return Ok((id, sent)),
                Attempt::Unusable(e, id) => (e, id),
                // Cold path, boxed so the per-request future stays small. The new connection
                // is the slot's: the next attempt uses it (or finds it failed already).
                Attempt::None if !connected => {
                    Box::pin(self.connect_h2(peer, slot, connect_timeout, gate)).await?;
                    connected = true;
                    continue;
                }
                Attempt::None => {
                    return Err(ProxyError::new(
                        Reason::UpstreamReset,
                        format!("{addr} closed the new HTTP/2 connection at once"),
                    ));
                }
            };
            if retried {
                return Err(exchange_error(addr, &e));
            }
            tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection unusable; reconnecting");
            slot.retire(id);
            retried = true;
        }
    }
}

/// How many times one request is sent again after the upstream never processed it.
const MAX_RESENDS: usize = 3;

/// Whether the upstream provably never processed a request whose stream ended with `err`
/// (RFC 9113 §8.7), and why: a stream above the last-stream-id of the upstream's GOAWAY (or
/// opened after it), or one it refused with REFUSED_STREAM.
fn never_processed(err: &h2::Error) -> Option<Resent> {
    if err.is_go_away() && err.is_remote() {
        Some(Resent::Goaway)
    } else if err.is_reset() && err.is_remote() && err.reason() == Some(h2::Reason::REFUSED_STREAM)
    {
        Some(Resent::Refused)
    } else {
        None
    }
}

/// Runs `f` with the current task's context (once: the future is ready at its first poll).
async fn with_context<R>(f: impl FnOnce(&mut Context<'_>) -> R) -> R {
    let mut f = Some(f);
    std::future::poll_fn(|cx| Poll::Ready(f.take().map(|f| f(cx))))
        .await
        .expect("polled once")
}

/// Methods whose requests carry a body by definition: an empty one gets `content-length: 0`
/// (as hyper's client did).
fn has_payload_semantics(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::CONNECT
            | Method::OPTIONS
            | Method::TRACE
    )
}

/// Maps an HTTP/2 failure before the response head to the proxy's reasons.
fn exchange_error(addr: SocketAddr, err: &h2::Error) -> ProxyError {
    let (reason, what) = if err.is_go_away() {
        (
            Reason::UpstreamReset,
            "closed the HTTP/2 connection (GOAWAY) before answering",
        )
    } else if err.is_reset() && err.is_remote() {
        (
            Reason::UpstreamReset,
            "reset the stream before sending a response head",
        )
    } else if err.is_reset() && err.is_library() {
        // The h2 crate reset the stream because the response broke the protocol (malformed or
        // oversized head, content-length mismatch).
        (
            Reason::UpstreamMalformedResponse,
            "sent a response that breaks HTTP/2 rules",
        )
    } else if err.is_io() {
        (Reason::UpstreamReset, "connection failed")
    } else {
        (Reason::UpstreamReset, "HTTP/2 exchange failed")
    };
    let e = ProxyError::new(reason, format!("{addr} {what}: {err}"));
    if never_processed(err).is_some() {
        e.unprocessed()
    } else {
        e
    }
}

/// Drives one upstream connection until it ends, pinging it every [`PING_INTERVAL`]; marks it
/// closed for the next request, and frees its `permit` (the backend's connection limits).
async fn drive(
    mut conn: Connection<UpstreamIo, Bytes>,
    closed: Arc<AtomicBool>,
    addr: SocketAddr,
    permit: Option<ConnPermit>,
) {
    let mut pinger = conn.ping_pong();
    let timer = tokio::time::sleep(PING_INTERVAL);
    tokio::pin!(timer);
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            res = &mut conn => {
                if let Err(e) = res {
                    tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
                }
                break;
            }
            _ = timer.as_mut() => {
                if awaiting_pong {
                    tracing::debug!(%addr, "upstream HTTP/2 connection did not answer a PING within {PING_TIMEOUT:?}; closing it");
                    break;
                }
                let Some(p) = pinger.as_mut() else { break };
                if p.send_ping(h2::Ping::opaque()).is_err() {
                    break;
                }
                awaiting_pong = true;
                timer.as_mut().reset(Instant::now() + PING_TIMEOUT);
            }
            pong = std::future::poll_fn(|cx| match pinger.as_mut() {
                Some(p) => p.poll_pong(cx),
                None => Poll::Pending,
            }), if awaiting_pong => {
                if pong.is_err() {
                    break;
                }
                awaiting_pong = false;
                timer.as_mut().reset(Instant::now() + PING_INTERVAL);
            }
        }
    }
    closed.store(true, Ordering::Relaxed);
    drop(permit);
}
