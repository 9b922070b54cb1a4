//! Test backends: a recording HTTP/1.1 + h2c server and a raw TCP server, each on `127.0.0.1:0`,
//! stopped (with all their connections) when dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::client::{AbortOnDrop, Body, empty, full};

/// A boxed future, as handlers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the HTTP backend received: one complete request.
#[derive(Debug)]
pub struct Recorded {
    /// Request method.
    pub method: Method,
    /// Request target as the server saw it (HTTP/2: with scheme and authority).
    pub uri: Uri,
    /// HTTP version the request arrived with.
    pub version: Version,
    /// Header fields.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Trailer fields, if the body had any.
    pub trailers: Option<HeaderMap>,
    /// The client's address (the proxy's upstream connection): equal ports mean one connection.
    pub peer: SocketAddr,
    /// When the request head arrived.
    pub at: Instant,
    upgrade: Mutex<Option<OnUpgrade>>,
}

impl Recorded {
    /// One header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of one header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The request's authority: the URI's (HTTP/2) or the Host header's (HTTP/1).
    pub fn authority(&self) -> Option<String> {
        self.uri
            .authority()
            .map(|a| a.to_string())
            .or_else(|| self.header("host").map(str::to_string))
    }

    /// Takes the upgrade handle of a request that asked to switch protocols (only the first
    /// caller gets it).
    pub fn take_upgrade(&self) -> Option<OnUpgrade> {
        self.upgrade
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Answers one recorded request.
pub type Handler = Arc<dyn Fn(Arc<Recorded>) -> BoxFuture<Response<Body>> + Send + Sync>;

#[derive(Debug, Default)]
struct Record {
    requests: Mutex<Vec<Arc<Recorded>>>,
    heads: AtomicUsize,
    connections: AtomicUsize,
    body_errors: AtomicUsize,
}

/// An HTTP/1.1 and h2c server that records every request and answers with a handler.
pub struct HttpBackend {
    addr: SocketAddr,
    record: Arc<Record>,
    _task: AbortOnDrop<()>,
}

impl HttpBackend {
    /// Starts a backend answering with `handler` (async).
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Arc<Recorded>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let record = Arc::new(Record::default());
        let task = tokio::spawn(serve(listener, record.clone(), handler));
        Self {
            addr,
            record,
            _task: AbortOnDrop(task),
        }
    }

    /// Starts a backend answering with a synchronous `respond`.
    pub async fn respond<F>(respond: F) -> Self
    where
        F: Fn(&Recorded) -> Response<Body> + Send + Sync + 'static,
    {
        let respond = Arc::new(respond);
        Self::start(move |r| {
            let respond = respond.clone();
            async move { respond(&r) }
        })
        .await
    }

    /// Starts the default backend: `200`, body = the request's body, and `x-echo-method`,
    /// `x-echo-path` and `x-echo-version` headers describing the request.
    pub async fn echo() -> Self {
        Self::respond(echo_response).await
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every complete request received so far.
    pub fn requests(&self) -> Vec<Arc<Recorded>> {
        self.record
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The most recent complete request. Panics if there is none.
    pub fn last(&self) -> Arc<Recorded> {
        self.requests()
            .last()
            .cloned()
            .expect("the backend received no request")
    }

    /// Number of complete requests received.
    pub fn count(&self) -> usize {
        self.record
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Number of request heads received (counted before the body is read, so it includes
    /// requests whose body never completed).
    pub fn heads(&self) -> usize {
        self.record.heads.load(Ordering::SeqCst)
    }

    /// Number of requests whose body failed to arrive completely.
    pub fn body_errors(&self) -> usize {
        self.record.body_errors.load(Ordering::SeqCst)
    }

    /// Number of TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.record.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` complete requests have arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Arc<Recorded>> {
        crate::wait::eventually(timeout, &format!("{n} requests at the backend"), || async {
            let reqs = self.requests();
            if reqs.len() >= n {
                Ok(reqs)
            } else {
                Err(format!("{} so far", reqs.len()))
            }
        })
        .await
    }
}

/// The echo backend's response to `r`.
pub fn echo_response(r: &Recorded) -> Response<Body> {
    Response::builder()
        .header("x-echo-method", r.method.as_str())
        .header("x-echo-path", r.uri.path())
        .header("x-echo-version", format!("{:?}", r.version))
        .body(full(r.body.clone()))
        .expect("echo response")
}

/// A response with `status` and a text body.
pub fn text_response(status: u16, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(if text.is_empty() {
            empty()
        } else {
            full(text.to_string())
        })
        .expect("text response")
}

async fn serve(listener: TcpListener, record: Arc<Record>, handler: Handler) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        record.connections.fetch_add(1, Ordering::SeqCst);
        let record = record.clone();
        let handler = handler.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let record = record.clone();
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handle(req, peer, &record, &handler).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
}

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    record: &Record,
    handler: &Handler,
) -> Response<Body> {
    record.heads.fetch_add(1, Ordering::SeqCst);
    let at = Instant::now();
    let upgrade = req
        .headers()
        .contains_key(http::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => {
            record.body_errors.fetch_add(1, Ordering::SeqCst);
            return text_response(400, &format!("backend: request body failed: {e}"));
        }
    };
    let trailers = collected.trailers().cloned();
    let recorded = Arc::new(Recorded {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
        peer,
        at,
        upgrade: Mutex::new(upgrade),
    });
    record
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(recorded.clone());
    handler(recorded).await
}

/// A `101 Switching Protocols` answer to a WebSocket handshake in `r`, with the connection
/// echoing every message back once upgraded. Use as (part of) an [`HttpBackend`] handler.
pub fn websocket_echo(r: &Recorded) -> Response<Body> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let (Some(key), Some(upgrade)) = (r.header("sec-websocket-key"), r.take_upgrade()) else {
        return text_response(400, "not a WebSocket handshake");
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                let _ = ws.close(None).await;
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(empty())
        .expect("101 response")
}

/// A raw TCP server running a handler per accepted connection.
pub struct TcpBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    _task: AbortOnDrop<()>,
}

impl TcpBackend {
    /// Starts a server that runs `handler` on every accepted connection.
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                conns.spawn(handler(stream));
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            accepted,
            _task: AbortOnDrop(task),
        }
    }

    /// An echo server: every byte read is written back; end of file is passed on.
    pub async fn echo() -> Self {
        Self::start(|mut s| async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
        })
        .await
    }

    /// A server that answers every connection with the fixed bytes `response` once the request
    /// head (up to the first empty line) has arrived, then closes.
    pub async fn http_response(response: &'static [u8]) -> Self {
        Self::start(move |mut s| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = s.write_all(response).await;
            let _ = s.shutdown().await;
            // Drain what the client still sends so closing does not reset the connection.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        })
        .await
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}
