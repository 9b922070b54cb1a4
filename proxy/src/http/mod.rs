//! HTTP: serving a downstream connection (HTTP/1.1 or HTTP/2) and forwarding each request.

pub mod body;
pub mod deadline;
pub(crate) mod digest;
mod forward;
mod grpc_outcome;
mod h2_server;
pub mod h2body;
pub mod headers;
mod mtls_explain;
pub(crate) mod replay;
mod respond;
pub(crate) mod send;
pub(crate) mod stack;
pub(crate) mod tee;
pub(crate) mod timeout;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Instant;

use crate::app::Shared;
use crate::drain;
use crate::io::{Activity, Gated, ProxyIo};
use crate::metrics::Direction;

/// An HTTP/1 connection idle this long is parked: its HTTP state and buffers are freed and it
/// waits for the client's next request holding only the socket.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Set when a connection parked, so housekeeping hands the freed buffers back to the OS.
pub static PARKED_SINCE_COLLECT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

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
    /// Inbound over mesh mTLS: the caller's identity.
    pub client_id: Option<crate::tls::SpiffeId>,
    /// [`Self::client_id`] as the `shoal-client-id` value the app receives (built once per
    /// connection; cloning it per request shares its bytes).
    pub client_id_header: Option<http::HeaderValue>,
    /// Inbound, plain text on a strict mTLS port: no request reaches the app; each is answered
    /// 403 `mtls-required` (`inbound::http`'s authorize stage), explaining what to check.
    pub mtls_required: bool,
    /// HTTP/1: the request's response deadline, enforced by the connection loop's timer.
    pub response_deadline: Option<deadline::ResponseDeadline>,
    /// HTTP/2: the streams' response deadlines, enforced by the connection loop's timer (boxed:
    /// every HTTP/1 connection carries the field).
    pub stream_deadlines: Option<Box<deadline::StreamDeadlines>>,
}

/// Serves HTTP on `io` until the client is done or draining asks the connection to close;
/// `permit` (the connection's slot under the listener's limit) is held until then.
pub async fn serve(
    conn: Arc<Conn>,
    io: ProxyIo,
    drain: drain::Watch,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _permit = permit;
    match conn.version {
        Downstream::Http1 => serve_h1(conn, io, drain).await,
        // Boxed: the HTTP/2 connection state is large, and keeping it inline would size every
        // connection's task — including parked HTTP/1 ones — for it.
        Downstream::Http2 => Box::pin(h2_server::serve(conn, io, drain)).await,
    }
}

/// The HTTP/1 connection's service: forwards each request, marking it in flight until its
/// response body is done (so the connection is never parked mid-response).
fn service(
    conn: Arc<Conn>,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<body::ResponseBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<body::ResponseBody>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        let guard = activity.begin();
        // The framing gate stops reading requests after one that may switch protocols
        // (io::framing): unless it switched, the connection must close after its answer.
        let may_switch = req.method() == http::Method::CONNECT
            || req.headers().contains_key(http::header::UPGRADE);
        let req = req.map(body::RequestBody::Http1);
        async move {
            let mut resp = forward::handle(&conn, req).await;
            if may_switch && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            resp.body_mut().set_in_flight(guard);
            Ok::<_, Infallible>(resp)
        }
    })
}

/// How often an active HTTP/1 connection's loop looks at itself (idleness, the request-head and
/// response deadlines).
pub(crate) fn loop_tick(cfg: &crate::config::HttpConfig) -> Duration {
    PARK_AFTER.min(cfg.header_read_timeout)
}

/// hyper's HTTP/1 server settings for one active phase of a connection.
///
/// hyper's own header read timeout is off: it would allocate and arm a timer for every request;
/// `serve_h1` enforces `SHOAL_HEADER_READ_TIMEOUT` with its one timer instead.
fn h1_builder(cfg: &crate::config::HttpConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(cfg.max_headers)
        .max_buf_size(cfg.max_header_bytes.max(8192) + 8192)
        .max_header_size(cfg.max_header_bytes)
        // Flattened writes: head and (small) body leave in one `write` from one buffer; cheaper
        // than `writev` with separate slices (A/B measured, BENCHMARKS.md).
        .writev(false);
    builder
}

async fn serve_h1(conn: Arc<Conn>, mut io: ProxyIo, mut drain: drain::Watch) {
    // Borrowed, not copied, and no builder kept across awaits: a parked connection's task should
    // hold as little as possible.
    let shared = conn.shared.clone();
    let cfg = &shared.config.http;
    let activity = io.activity();
    // How often the active connection looks at itself: for idleness (parking), and for a request
    // head that is taking too long.
    let tick = loop_tick(cfg);
    let mut timer = Box::pin(tokio::time::sleep(tick));
    io.gate_http1(cfg.max_header_bytes, cfg.max_headers);
    // A request head left half-read when the connection parked keeps its original deadline.
    let mut head_deadline: Option<Instant> = None;
    loop {
        // Active: hyper serves requests until the client is done or the connection idles.
        let svc = service(conn.clone(), activity.clone());
        // Boxed so a parked connection's task does not keep room for hyper's state.
        let mut hconn = Box::pin(
            h1_builder(cfg)
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades(),
        );
        let mut draining = false;
        let mut seen = activity.ops();
        // One boxed timer for the whole loop: the idle and head-deadline checks while active,
        // the keep-alive limit while parked (a parked task keeps a pointer, not a timer entry).
        timer.as_mut().reset(Instant::now() + tick);
        let parked = loop {
            // Biased, and the rare branches gated: the connection wakes this task for every
            // request, and only it needs polling then (io::gated).
            tokio::select! {
                biased;
                res = hconn.as_mut() => {
                    match (activity.rejected(), res) {
                        (Some(rejected), _) => respond::refused(rejected, conn.client, conn.direction),
                        (None, Err(e)) => respond::connection_error(&e, conn.client, conn.direction),
                        (None, Ok(())) => {}
                    }
                    return;
                }
                _ = Gated::new(drain.signaled()), if !draining => {
                    // Finish the in-flight request, then close (Connection: close).
                    draining = true;
                    hconn.as_mut().graceful_shutdown();
                }
                _ = Gated::new(timer.as_mut()) => {
                    let now = Instant::now();
                    // The head being read, if any, must be complete by its deadline.
                    let deadline = match (activity.head_since(), head_deadline) {
                        (Some(since), carried) => {
                            let d = since + cfg.header_read_timeout;
                            Some(carried.map_or(d, |c| c.min(d)))
                        }
                        (None, _) => None,
                    };
                    if deadline.is_some_and(|d| d <= now) {
                        tracing::debug!(client = %conn.client, "closing: the request head did not arrive within SHOAL_HEADER_READ_TIMEOUT");
                        return;
                    }
                    if activity.head_since().is_none() {
                        head_deadline = None;
                    }
                    // A request past its response deadline is answered 504 by `forward`.
                    let response = conn.response_deadline.as_ref().and_then(|d| d.check(now));
                    let ops = activity.ops();
                    if !draining && ops == seen && activity.is_idle() {
                        match std::pin::Pin::into_inner(hconn).into_parts() {
                            Some(parts) => break parts,
                            None => return,
                        }
                    }
                    seen = ops;
                    let next = [deadline, response].into_iter().flatten().fold(now + tick, Instant::min);
                    timer.as_mut().reset(next);
                }
            }
        };
        tracing::trace!(client = %conn.client, "idle HTTP/1 connection parked");
        PARKED_SINCE_COLLECT.store(true, std::sync::atomic::Ordering::Relaxed);
        io = parked.io.into_inner();
        io.unread(parked.read_buf);
        drop(parked.service);
        if io.has_buffered() {
            head_deadline
                .get_or_insert(Instant::now() + cfg.header_read_timeout.saturating_sub(PARK_AFTER));
            continue;
        }
        head_deadline = None;
        // Parked: only the socket and this small task remain until the client speaks again.
        let keepalive = cfg.header_read_timeout.saturating_sub(PARK_AFTER);
        timer.as_mut().reset(Instant::now() + keepalive);
        tokio::select! {
            ready = io.readable() => if ready.is_err() { return },
            _ = timer.as_mut() => return,
            _ = drain.signaled() => return,
        }
    }
}
