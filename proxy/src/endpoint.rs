//! Upstream connections per endpoint: a pool of HTTP/1.1 connections, or one multiplexed
//! HTTP/2 connection.
//!
//! An endpoint in the mesh (it has an identity) is reached over mTLS: the peer proxy must prove
//! that identity, and the connection is keyed by it, so a changed identity never reuses a
//! connection authenticated as someone else.
//!
//! HTTP/2 is driven with the `h2` crate directly ([`http2`]); HTTP/1 with hyper's client.
//!
//! HTTP/1 connections return to the pool when their response body ends ([`Release`]); a pooled
//! connection the server closed meanwhile is detected before use, and a request that could not
//! be written on a reused connection is retried once on a fresh one (it never reached the
//! server, so this is safe for any method).
//!
//! A backend policy's connection limits ([`limits`]) count both kinds of connection per backend:
//! a new connection needs a permit, and one that carried `max_requests_per_connection` requests is
//! retired (HTTP/1: not pooled again, so it closes; HTTP/2: no new streams, and it closes once its
//! streams end).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod http2;
mod limits;

pub(crate) use limits::{ConnGate, ConnLimits};
use limits::{ConnPermit, Opened};

use futures_util::future::Either;
use http::{Request, Response};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::HttpConfig;
use crate::errors::{ProxyError, Reason, connect_reason, upstream_reason};
use crate::http::body::{RequestBody, ResponseBody};
use crate::identity::Identity;
use crate::metrics::RequestMetrics;
use crate::sync::lock;
use crate::tls::{self, Alpn, ClientStream, MaybeTls, SpiffeId};

/// An upstream connection's transport: plain TCP, or mTLS to a peer proxy.
pub type UpstreamIo = MaybeTls<ClientStream>;

/// Where a connection goes: the address, and the identity its peer must prove (mesh mTLS).
pub type Peer = (SocketAddr, Option<SpiffeId>);

/// Per-endpoint state, looked up on every request (keys come from discovery, not from clients).
type PeerMap<V> = crate::state::FastMap<Peer, V>;

/// `peer`'s state in `map`, created on first use (without cloning the key when it exists: this
/// runs per request).
fn entry<V: Default>(map: &Mutex<PeerMap<Arc<V>>>, peer: &Peer) -> Arc<V> {
    let mut map = lock(map);
    match map.get(peer) {
        Some(v) => v.clone(),
        None => map.entry(peer.clone()).or_default().clone(),
    }
}

/// Most idle HTTP/1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// What a backend policy says about connecting to its endpoints.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConnPolicy<'a> {
    /// Bounds TCP and mTLS together, instead of `SHOAL_CONNECT_TIMEOUT` (TCP alone).
    pub(crate) connect_timeout: Option<Duration>,
    /// The connection limits.
    pub(crate) gate: Option<&'a Arc<ConnGate>>,
}

/// Which HTTP version to speak to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1 (connection pool).
    Http1,
    /// HTTP/2 prior knowledge (one multiplexed connection).
    Http2,
}

/// Connections to every endpoint this proxy talks to.
#[derive(Debug)]
pub struct Clients {
    cfg: HttpConfig,
    identity: Option<Arc<Identity>>,
    h1: Mutex<PeerMap<Arc<H1Pool>>>,
    h2: Mutex<PeerMap<Arc<http2::Slot>>>,
}

/// An idle HTTP/1 connection: its handle, since when it is idle, and how many requests it carried.
type Idle = (http1::SendRequest<RequestBody>, Instant, u32);

#[derive(Debug, Default)]
pub(crate) struct H1Pool {
    /// Oldest first: the connection released longest ago is the likeliest to be ready again.
    idle: Mutex<std::collections::VecDeque<Idle>>,
}

impl H1Pool {
    fn has_idle(&self) -> bool {
        !lock(&self.idle).is_empty()
    }

    /// Closes the connection idle longest (dropping its handle ends it); whether there was one.
    fn close_one_idle(&self) -> bool {
        lock(&self.idle).pop_front().is_some()
    }
}

/// Returns an HTTP/1 connection to its pool when the response body is complete.
#[derive(Debug)]
pub struct Release {
    tx: http1::SendRequest<RequestBody>,
    pool: Arc<H1Pool>,
    /// Requests the connection carried, this one included.
    uses: u32,
    /// The backend's connection limits, when its policy sets them.
    gate: Option<Arc<ConnGate>>,
}

impl Release {
    /// Puts the connection back for reuse — unless it carried the backend policy's
    /// `max_requests_per_connection`: then dropping it closes it.
    pub fn release(self) {
        let gate = self.gate.as_deref();
        if gate
            .and_then(ConnGate::max_per_connection)
            .is_some_and(|max| self.uses >= max)
        {
            return;
        }
        {
            let mut idle = lock(&self.pool.idle);
            if idle.len() < MAX_IDLE_PER_ENDPOINT {
                idle.push_back((self.tx, Instant::now(), self.uses));
            }
        }
        if let Some(gate) = gate {
            gate.released();
        }
    }
}

impl Clients {
    /// A client set using `cfg`'s limits and timeouts, and `identity` for mesh mTLS.
    pub fn new(cfg: HttpConfig, identity: Option<Arc<Identity>>) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            identity,
            h1: Mutex::default(),
            h2: Mutex::default(),
        })
    }

    /// Sends `req` to `peer`, returning the response head (its body streams). `upgrade`: the
    /// request asks to switch protocols (HTTP/1: its connection is not pooled again). A re-send
    /// of a request the upstream never processed counts in `metrics`. `policy`: the backend
    /// policy's connect timeout and connection limits.
    ///
    /// Not an `async fn`: the chosen exchange's own future is returned, so a request's future
    /// does not hold a second copy of the request and is not copied once more (≈1.8 KiB).
    pub(crate) fn send<'a>(
        &'a self,
        peer: &'a Peer,
        version: Version,
        req: Request<RequestBody>,
        upgrade: bool,
        policy: ConnPolicy<'a>,
        metrics: &'a RequestMetrics,
    ) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + Send + 'a {
        let ConnPolicy {
            connect_timeout,
            gate,
        } = policy;
        match version {
            Version::Http1 => Either::Left(self.send_h1(peer, req, upgrade, connect_timeout, gate)),
            Version::Http2 => {
                Either::Right(self.send_h2(peer, req, connect_timeout, metrics, gate))
            }
        }
    }

    /// Until when a request may wait for a connection at a backend's cap: its connect timeout.
    fn wait_until(&self, connect_timeout: Option<Duration>) -> Instant {
        Instant::now() + connect_timeout.unwrap_or(self.cfg.connect_timeout)
    }

    /// A connection to `peer`: `connect_timeout` (a backend policy's) bounds TCP and mTLS
    /// together; without one, `SHOAL_CONNECT_TIMEOUT` bounds the TCP connect.
    async fn connect_io(
        &self,
        peer: &Peer,
        alpn: Alpn,
        connect_timeout: Option<Duration>,
    ) -> Result<UpstreamIo, ProxyError> {
        match connect_timeout {
            None => {
                self.connect_io_within(peer, alpn, self.cfg.connect_timeout)
                    .await
            }
            // The outer limit fires first and names the policy's setting.
            Some(limit) => {
                let tcp = limit.saturating_mul(2);
                within(limit, peer.0, self.connect_io_within(peer, alpn, tcp)).await
            }
        }
    }

    async fn connect_io_within(
        &self,
        peer: &Peer,
        alpn: Alpn,
        tcp_timeout: Duration,
    ) -> Result<UpstreamIo, ProxyError> {
        let (addr, id) = peer;
        let stream = connect_tcp(*addr, tcp_timeout).await?;
        let Some(id) = id else {
            return Ok(MaybeTls::Plain(stream.into()));
        };
        let stream = originate(self.identity.as_deref(), stream, *addr, id, alpn).await?;
        Ok(MaybeTls::Tls(Box::new(stream)))
    }

    fn h1_pool(&self, peer: &Peer) -> Arc<H1Pool> {
        entry(&self.h1, peer)
    }

    /// A new connection to `peer`; `permit` (the backend's connection limits) is held until it
    /// ends.
    async fn connect_h1(
        &self,
        peer: &Peer,
        connect_timeout: Option<Duration>,
        permit: Option<ConnPermit>,
    ) -> Result<http1::SendRequest<RequestBody>, ProxyError> {
        let addr = peer.0;
        let io = TokioIo::new(self.connect_io(peer, Alpn::Http1, connect_timeout).await?);
        let (tx, conn) = http1::Builder::new()
            .max_headers(self.cfg.max_headers)
            .max_buf_size(self.cfg.max_header_bytes.max(8192) + 8192)
            // One flattened `write` per request rather than `writev` (A/B measured, BENCHMARKS.md).
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| {
                ProxyError::new(
                    Reason::UpstreamConnectError,
                    format!("HTTP/1 handshake with {addr}: {e}"),
                )
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1 connection ended");
            }
            drop(permit);
        });
        Ok(tx)
    }

    /// A ready pooled connection and the requests it carried, or `None`.
    async fn checkout_h1(&self, pool: &H1Pool) -> Option<(http1::SendRequest<RequestBody>, u32)> {
        loop {
            let (mut tx, since, uses) = lock(&pool.idle).pop_front()?;
            if tx.is_closed() || since.elapsed() > self.cfg.upstream_idle_timeout {
                continue;
            }
            // The connection finishes its previous exchange asynchronously: wait for it.
            if tx.ready().await.is_ok() {
                return Some((tx, uses));
            }
        }
    }

    /// A new HTTP/1 connection under the backend's connection limits: at its cap, the request
    /// waits as a pending one, and takes a pooled connection released meanwhile (`Ok(.., true)`).
    async fn connect_h1_gated(
        &self,
        peer: &Peer,
        pool: &Arc<H1Pool>,
        connect_timeout: Option<Duration>,
        gate: Option<&Arc<ConnGate>>,
    ) -> Result<(http1::SendRequest<RequestBody>, u32, bool), ProxyError> {
        let Some(gate) = gate else {
            return Ok((
                self.connect_h1(peer, connect_timeout, None).await?,
                0,
                false,
            ));
        };
        gate.track(pool);
        let until = self.wait_until(connect_timeout);
        loop {
            match gate.open(until, Some(pool)).await? {
                Opened::Permit(permit) => {
                    let tx = self.connect_h1(peer, connect_timeout, Some(permit)).await?;
                    return Ok((tx, 0, false));
                }
                Opened::Released => {
                    if let Some((tx, uses)) = self.checkout_h1(pool).await {
                        return Ok((tx, uses, true));
                    }
                }
            }
        }
    }

    async fn send_h1(
        &self,
        peer: &Peer,
        mut req: Request<RequestBody>,
        upgrade: bool,
        connect_timeout: Option<Duration>,
        gate: Option<&Arc<ConnGate>>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let addr = peer.0;
        let pool = self.h1_pool(peer);
        let (mut tx, mut uses, mut reused) = match self.checkout_h1(&pool).await {
            Some((tx, uses)) => (tx, uses, true),
            // Boxed here and below: connecting is the cold path, and inline it would make
            // every request's future (moved around by hyper and the runtime) larger.
            None => Box::pin(self.connect_h1_gated(peer, &pool, connect_timeout, gate)).await?,
        };
        let resp = loop {
            match tx.try_send_request(req).await {
                Ok(resp) => break resp,
                Err(mut e) => match e.take_message() {
                    // Never written: the pooled connection was closed under us. Try a new one.
                    Some(r) if reused => {
                        req = r;
                        // The closed connection's permit is freed when its task ends.
                        (tx, uses, reused) =
                            Box::pin(self.connect_h1_gated(peer, &pool, connect_timeout, gate))
                                .await?;
                    }
                    _ => {
                        let err = e.into_error();
                        return Err(ProxyError::new(
                            upstream_reason(&err),
                            format!("HTTP/1 exchange with {addr}: {err}"),
                        ));
                    }
                },
            }
        };
        let (parts, body) = resp.into_parts();
        if parts.headers.contains_key(http::header::TRANSFER_ENCODING)
            && parts.headers.contains_key(http::header::CONTENT_LENGTH)
        {
            // The connection is dropped with `tx`: its framing cannot be trusted.
            return Err(ProxyError::new(
                Reason::UpstreamMalformedResponse,
                format!(
                    "{addr} answered with both Content-Length and Transfer-Encoding (a response-smuggling pattern); fix the upstream's framing"
                ),
            ));
        }
        // hyper bounds the head it buffers only roughly (its read buffer); the limit is exact.
        let head = response_head_len(&parts);
        if head > self.cfg.max_header_bytes {
            return Err(ProxyError::new(
                Reason::UpstreamMalformedResponse,
                format!(
                    "{addr} answered with a {head}-byte response head, over SHOAL_MAX_HEADER_BYTES ({}); fix the upstream or raise the limit",
                    self.cfg.max_header_bytes
                ),
            ));
        }
        let reusable = !upgrade && parts.status != http::StatusCode::SWITCHING_PROTOCOLS;
        let release = reusable.then(|| Release {
            tx,
            pool,
            uses: uses + 1,
            gate: gate.cloned(),
        });
        Ok(Response::from_parts(
            parts,
            ResponseBody::upstream(body, release),
        ))
    }

    /// Drops idle connections past `SHOAL_UPSTREAM_IDLE_TIMEOUT` and forgets unused endpoints.
    pub fn sweep(&self) {
        let limit = self.cfg.upstream_idle_timeout;
        lock(&self.h1).retain(|_, pool| {
            let mut idle = lock(&pool.idle);
            idle.retain(|(tx, since, _)| !tx.is_closed() && since.elapsed() <= limit);
            !idle.is_empty() || Arc::strong_count(pool) > 1
        });
        lock(&self.h2).retain(|_, slot| slot.sweep() || Arc::strong_count(slot) > 1);
    }
}

/// `connect` within `limit` (a backend policy's connect timeout, TCP and mTLS together).
pub(crate) async fn within<T>(
    limit: Duration,
    addr: SocketAddr,
    connect: impl Future<Output = Result<T, ProxyError>>,
) -> Result<T, ProxyError> {
    tokio::time::timeout(limit, connect).await.unwrap_or_else(|_| {
        Err(ProxyError::new(
            Reason::UpstreamConnectTimeout,
            format!(
                "connecting to {addr} (TCP and mTLS) took longer than {limit:?}, the backend policy's limits.connect_timeout_ms; check network policy and the endpoint's health"
            ),
        ))
    })
}

/// Opens a TCP connection, with `SHOAL_CONNECT_TIMEOUT`.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = connect_reason(&e);
            return Err(ProxyError::new(
                reason,
                format!("connecting to {addr}: {e}; check that the endpoint is listening"),
            ));
        }
        Err(_) => {
            return Err(ProxyError::new(
                Reason::UpstreamConnectTimeout,
                format!(
                    "connecting to {addr} took longer than {timeout:?} (SHOAL_CONNECT_TIMEOUT); check network policy and the endpoint's health"
                ),
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The size of a response head on the wire, as HTTP/1.1 frames it: the status line, each field
/// as `name: value` CRLF, and the empty line.
fn response_head_len(parts: &http::response::Parts) -> usize {
    let status_line =
        "HTTP/1.1 200 \r\n".len() + parts.status.canonical_reason().map_or(0, str::len);
    parts
        .headers
        .iter()
        .fold(status_line + 2, |n, (name, value)| {
            n + name.as_str().len() + value.len() + 4
        })
}

/// Runs the client side of a mesh mTLS handshake on `stream`: the peer must prove `id`.
pub async fn originate(
    identity: Option<&Identity>,
    stream: TcpStream,
    addr: SocketAddr,
    id: &SpiffeId,
    alpn: Alpn,
) -> Result<ClientStream, ProxyError> {
    let Some(creds) = identity.and_then(Identity::current) else {
        return Err(ProxyError::new(
            Reason::NoIdentity,
            format!(
                "{addr} is in the mesh (identity {id}), so the call needs mTLS, but this proxy has no certificate yet: check SHOAL_IDENTITY_*, the identity section of /config (its last error) and that the control plane's identity endpoint (SHOAL_IDENTITY_ADDR) is reachable"
            ),
        ));
    };
    match tls::originate(&creds, stream, id, alpn).await {
        Ok(s) => {
            crate::metrics::tls_originated("ok");
            Ok(s)
        }
        Err(e) => {
            crate::metrics::tls_originated("failed");
            Err(ProxyError::new(
                Reason::UpstreamTlsHandshake,
                format!("mTLS to {addr} failed: {e}"),
            ))
        }
    }
}
