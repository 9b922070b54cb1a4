//! Upstream connections per endpoint: a pool of HTTP/1.1 connections, or one multiplexed
//! HTTP/2 connection.
//!
//! HTTP/1 connections return to the pool when their response body ends ([`Release`]); a pooled
//! connection the server closed meanwhile is detected before use, and a request that could not
//! be written on a reused connection is retried once on a fresh one (it never reached the
//! server, so this is safe for any method).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::HttpConfig;
use crate::errors::{ProxyError, Reason, connect_reason, upstream_reason};
use crate::http::body::ResponseBody;

/// Most idle HTTP/1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

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
    h1: Mutex<HashMap<SocketAddr, Arc<H1Pool>>>,
    h2: Mutex<HashMap<SocketAddr, Arc<H2Slot>>>,
}

#[derive(Debug, Default)]
struct H1Pool {
    /// Oldest first: the connection released longest ago is the likeliest to be ready again.
    idle: Mutex<std::collections::VecDeque<(http1::SendRequest<Incoming>, Instant)>>,
}

#[derive(Debug, Default)]
struct H2Slot {
    current: Mutex<Option<http2::SendRequest<Incoming>>>,
    /// Single-flight connect: concurrent first requests share one connection attempt.
    connecting: tokio::sync::Mutex<()>,
}

/// Returns an HTTP/1 connection to its pool when the response body is complete.
#[derive(Debug)]
pub struct Release {
    tx: http1::SendRequest<Incoming>,
    pool: Arc<H1Pool>,
}

impl Release {
    /// Puts the connection back for reuse.
    pub fn release(self) {
        let mut idle = lock(&self.pool.idle);
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push_back((self.tx, Instant::now()));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Clients {
    /// A client set using `cfg`'s limits and timeouts.
    pub fn new(cfg: HttpConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            h1: Mutex::default(),
            h2: Mutex::default(),
        })
    }

    /// Sends `req` to `addr`, returning the response head (its body streams).
    pub async fn send(
        &self,
        addr: SocketAddr,
        version: Version,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        match version {
            Version::Http1 => self.send_h1(addr, req).await,
            Version::Http2 => self.send_h2(addr, req).await,
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TokioIo<TcpStream>, ProxyError> {
        let stream = match tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(addr))
            .await
        {
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
                        "connecting to {addr} took longer than {:?} (SHOAL_CONNECT_TIMEOUT); check network policy and the endpoint's health",
                        self.cfg.connect_timeout
                    ),
                ));
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    fn h1_pool(&self, addr: SocketAddr) -> Arc<H1Pool> {
        lock(&self.h1).entry(addr).or_default().clone()
    }

    async fn connect_h1(
        &self,
        addr: SocketAddr,
    ) -> Result<http1::SendRequest<Incoming>, ProxyError> {
        let io = self.connect(addr).await?;
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
        });
        Ok(tx)
    }

    /// A ready pooled connection, or `None`.
    async fn checkout_h1(&self, pool: &H1Pool) -> Option<http1::SendRequest<Incoming>> {
        loop {
            let (mut tx, since) = lock(&pool.idle).pop_front()?;
            if tx.is_closed() || since.elapsed() > self.cfg.upstream_idle_timeout {
                continue;
            }
            // The connection finishes its previous exchange asynchronously: wait for it.
            if tx.ready().await.is_ok() {
                return Some(tx);
            }
        }
    }

    async fn send_h1(
        &self,
        addr: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let pool = self.h1_pool(addr);
        let mut reused = true;
        let mut tx = match self.checkout_h1(&pool).await {
            Some(tx) => tx,
            None => {
                reused = false;
                // Boxed here and below: connecting is the cold path, and inline it would make
                // every request's future (moved around by hyper and the runtime) larger.
                Box::pin(self.connect_h1(addr)).await?
            }
        };
        let upgrade = crate::http::headers::is_upgrade(req.headers());
        let resp = loop {
            match tx.try_send_request(req).await {
                Ok(resp) => break resp,
                Err(mut e) => match e.take_message() {
                    // Never written: the pooled connection was closed under us. Try a new one.
                    Some(r) if reused => {
                        req = r;
                        reused = false;
                        tx = Box::pin(self.connect_h1(addr)).await?;
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
        let reusable = !upgrade && parts.status != http::StatusCode::SWITCHING_PROTOCOLS;
        let release = reusable.then(|| Release { tx, pool });
        Ok(Response::from_parts(
            parts,
            ResponseBody::upstream(body, release),
        ))
    }

    async fn h2_sender(
        &self,
        addr: SocketAddr,
    ) -> Result<http2::SendRequest<Incoming>, ProxyError> {
        let slot = lock(&self.h2).entry(addr).or_default().clone();
        if let Some(tx) = lock(&slot.current).as_ref().filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        // Cold path, boxed so the per-request future stays small.
        Box::pin(self.connect_h2(addr, &slot)).await
    }

    /// Connects the HTTP/2 connection of `slot` (one attempt at a time).
    async fn connect_h2(
        &self,
        addr: SocketAddr,
        slot: &H2Slot,
    ) -> Result<http2::SendRequest<Incoming>, ProxyError> {
        let _connecting = slot.connecting.lock().await;
        if let Some(tx) = lock(&slot.current).as_ref().filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        let io = self.connect(addr).await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(self.cfg.max_header_bytes as u32)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await
            .map_err(|e| {
                ProxyError::new(
                    Reason::UpstreamConnectError,
                    format!("HTTP/2 handshake with {addr}: {e}; is the endpoint speaking h2c?"),
                )
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *lock(&slot.current) = Some(tx.clone());
        Ok(tx)
    }

    async fn send_h2(
        &self,
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let mut tx = self.h2_sender(addr).await?;
        tx.ready().await.map_err(|e| {
            ProxyError::new(
                Reason::UpstreamReset,
                format!("HTTP/2 connection to {addr}: {e}"),
            )
        })?;
        let resp = tx.send_request(req).await.map_err(|e| {
            ProxyError::new(
                upstream_reason(&e),
                format!("HTTP/2 exchange with {addr}: {e}"),
            )
        })?;
        Ok(resp.map(|body| ResponseBody::upstream(body, None)))
    }

    /// Drops idle connections past `SHOAL_UPSTREAM_IDLE_TIMEOUT` and forgets unused endpoints.
    pub fn sweep(&self) {
        let limit = self.cfg.upstream_idle_timeout;
        lock(&self.h1).retain(|_, pool| {
            let mut idle = lock(&pool.idle);
            idle.retain(|(tx, since)| !tx.is_closed() && since.elapsed() <= limit);
            !idle.is_empty() || Arc::strong_count(pool) > 1
        });
        lock(&self.h2).retain(|_, slot| {
            let mut cur = lock(&slot.current);
            if cur.as_ref().is_some_and(|tx| tx.is_closed()) {
                *cur = None;
            }
            cur.is_some() || Arc::strong_count(slot) > 1
        });
    }
}
